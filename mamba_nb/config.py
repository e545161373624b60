"""Every knob of the course, one dataclass per stage, and how they reach the CLI.

A setting has one name everywhere it travels: the notebook's config cell, the
YAML file, the `--flag` of `python -m mamba_nb`, and the function parameter.
`context_len` is `context_len` in all four.

This module holds no logic of the stages themselves; it only describes their
inputs. It does not validate values that need data to check (a `context_len`
the dataset cannot fill is caught by the sampler, which knows the dataset).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

# The smoke switch: the tests set MAMBA_NB_SMOKE=1 so every notebook and the
# course shrink their work to seconds. Read once, here, and nowhere else.
SMOKE = os.environ.get("MAMBA_NB_SMOKE", "0") not in ("", "0", "false", "False")

# The course's training time: 10 minutes (`make course`); MAMBA_NB_COURSE_MINUTES=60 make course
# runs the longer course into its own run directory (runs/course-60min).
COURSE_MINUTES = float(os.environ.get("MAMBA_NB_COURSE_MINUTES", "10"))

DEFAULT_DATA_DIR = "data/stdlib"
# Code the course model never saw, to measure infilling on: a package every install of the
# course has (jupyterlab needs it), written by other people than the standard library's.
OUTSIDE_PACKAGE = "requests"
DEFAULT_RUN_DIR = "runs/course"


# --- checking values: types and ranges, whatever they came from (flags, YAML, code) -----------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_type(owner: str, name: str, value: Any, tp: Any) -> Any:
    """`value` as field `name` of type `tp` wants it (an int is a float too), or ValueError."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union:
        if value is None:
            return None
        tp = args[0]
    hint = f"({_flag(name)}, or `{name}:` in a YAML file)"
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be true or false {hint}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            what = "a string; write the number without quotes" if isinstance(value, str) else "not a whole number"
            raise ValueError(f"{name}={value!r} is {what} {hint}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            what = ("a string; write a number (YAML reads 3e-3 as text: write 3.0e-3 or 0.003)"
                    if isinstance(value, str) else "not a number")
            raise ValueError(f"{name}={value!r} is {what} {hint}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{name}={value!r} must be a finite number {hint}")
    elif tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}={value!r} must be text {hint}")
    elif typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}={value!r} must be a list {hint}")
        value = [_check_type(owner, name, v, item) for v in value]
    return value


_PROBABILITY = ((lambda v: 0 <= v <= 1), "a probability in [0, 1] (this one is outside it), e.g. 0.5")


def _at_least(low: int, note: str = "") -> tuple[Any, str]:
    return (lambda v: v >= low), f">= {low}" + (f" {note}" if note else "")


def _one_of(*options: str) -> tuple[Any, str]:
    return (lambda v: v in options), "one of " + ", ".join(options)

# field -> (check, what it must be). Applied after the types; None passes where None is allowed.
_RULES: dict[str, tuple[Any, str]] = {
    "vocab_size": _at_least(261, "(every byte plus the special tokens)"),
    "validation_fraction": (lambda v: 0 < v < 1, "between 0 and 1, e.g. 0.05"),
    "max_documents": _at_least(1),
    "max_document_bytes": _at_least(1),
    "source": _one_of("stdlib", "dir", "hf"),
    "build_engine": _one_of("local", "ray"),
    "build_workers": _at_least(1),
    "context_len": _at_least(2),
    "fim_rate": _PROBABILITY,
    "spm_rate": _PROBABILITY,
    "line_hole_rate": _PROBABILITY,
    "fim_region_lines": _at_least(0, "(0: whole documents)"),
    "fim_level": _one_of("char", "token"),
    "arch": _one_of("mamba", "mamba2", "llama"),
    "scan": _one_of("auto", "kernels", "fast", "hf"),
    "hidden_size": _at_least(1),
    "num_hidden_layers": _at_least(1),
    "state_size": _at_least(1),
    "batch_size": _at_least(1),
    "grad_accum": _at_least(1),
    "lr": (lambda v: v > 0, "> 0"),
    "min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "weight_decay": _at_least(0),
    "warmup_steps": _at_least(0),
    "max_steps": _at_least(1, "(or leave it unset and give --time-budget-s)"),
    "time_budget_s": _at_least(0, "seconds (0: no time limit)"),
    "grad_clip": _at_least(0, "(0: no clipping)"),
    "middle_loss_weight": (lambda v: v > 0, "> 0"),
    "lora_rank": _at_least(0, "(0: no LoRA)"),
    "eval_every": _at_least(1, "step"),
    "eval_windows": _at_least(1, "window"),
    "gain_holes": _at_least(0, "hole"),
    "save_every": _at_least(1, "step"),
    "num_workers": _at_least(0),
    "device": (lambda v: v in ("auto", "cpu", "cuda", "mps") or v.startswith("cuda:"), "auto, cpu, cuda[:N] or mps"),
    "mode": _one_of("spm", "psm", "lm"),
    "max_new_tokens": _at_least(1),
    "temperature": _at_least(0, "(0: greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "best_of": _at_least(1),
    "num_line_tasks": _at_least(0),
    "num_loss_windows": _at_least(0),
    "num_gain_tasks": _at_least(0),
    "humaneval_limit": _at_least(1, "(leave it unset for every task)"),
    "benchmark": _one_of("humaneval-single", "humaneval-multi", "humaneval-random-span", "humaneval-random-span-light",
                         "lines"),
    "n_samples": _at_least(1),
    "k": (lambda v: len(v) >= 1 and all(x >= 1 for x in v), "one or more whole numbers >= 1, e.g. --k 1 10"),
    "max_line_tokens": _at_least(1),
}


class Checked:
    """Mixin of the config dataclasses: every field is checked (type, then range) on creation, so
    a bad value fails here with its name and flag, not deep inside a run."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _check_type(type(self).__name__, f.name, getattr(self, f.name), hints[f.name])
            rule = _RULES.get(f.name)
            if rule is not None and value is not None and not rule[0](value):
                raise ValueError(f"{f.name}={value!r} must be {rule[1]} ({_flag(f.name)})")
            object.__setattr__(self, f.name, value)


@dataclass
class DataConfig(Checked):
    """Corpus → tokenizer → Lance token dataset (notebook 01, `build-dataset`)."""

    source: str = "stdlib"  # "stdlib" | "dir" | "hf"
    path: Optional[str] = None  # a directory for "dir"; a hub name or data files for "hf"
    patterns: list[str] = field(default_factory=lambda: ["**/*.py"])  # globs for "dir"
    hf_config: Optional[str] = None  # the hub dataset's configuration name, if any
    hf_split: str = "train"
    hf_text_column: str = "content"
    hf_streaming: bool = True
    max_documents: Optional[int] = None  # stop after this many (smoke runs, quick looks)
    max_document_bytes: int = 1_000_000  # larger documents are skipped (and counted): flat memory
    tokenizer: Optional[str] = None  # None: train a byte-level BPE; else an HF name or path
    vocab_size: int = 8192
    validation_fraction: float = 0.05
    seed: int = 0
    out_dir: str = DEFAULT_DATA_DIR  # a directory, or an object-store URI (s3://bucket/prefix, gs://, az://)
    overwrite: bool = False
    # Lance storage options for a remote out_dir: key=value items or YAML files (store.py); secrets
    # are better left in the environment (AWS_SECRET_ACCESS_KEY, ...), which is read too
    storage_options: list[str] = field(default_factory=list)
    # "local": one process (the default); "ray": tokenize and write in parallel tasks on a Ray cluster
    # (ray_build.py; `pip install -e '.[scale]'`; RAY_ADDRESS joins a running cluster). Same output.
    build_engine: str = "local"
    build_workers: Optional[int] = None  # the local Ray cluster's CPUs (None: all of this machine's)


@dataclass
class WindowConfig(Checked):
    """Where windows fall and what FIM does to them (notebooks 02 and 03)."""

    context_len: int = 256
    fim_rate: float = 0.9
    spm_rate: float = 0.5
    fim_level: str = "char"  # "char" (the FIM paper's) | "token" (split points between tokens)
    # FIM per region of this many lines, several per document (0: the whole document piece, as in
    # the FIM paper). Short regions keep both sides of a hole near it (fim.py, "Regions").
    fim_region_lines: int = 0
    line_hole_rate: float = 0.0  # share of FIM middles shaped like real holes: whole lines, a line's end
    seed: int = 0
    # read each document of a window on its own: Mamba's state and convolution (the Llama peer's
    # attention) start afresh after each <|endoftext|> between files, not the ones closing FIM middles
    # (doc_reset.py). Training and its validation losses both follow it. Not for Mamba-2.
    reset_at_documents: bool = False


    def __post_init__(self):
        super().__post_init__()
        if self.fim_region_lines and self.fim_level != "char":
            raise ValueError(f"fim_region_lines={self.fim_region_lines} cuts regions on line ends in the decoded text, "
                             f"which needs fim_level='char' (got {self.fim_level!r}); pass --fim-level char or "
                             "--fim-region-lines 0")


@dataclass
class ModelConfig(Checked):
    """Which Mamba, how big, from scratch or from a checkpoint (notebook 04)."""

    # "mamba" (Mamba-1) | "mamba2". Mamba-1 is the course default: on the fast PyTorch scan it
    # learns as much as Mamba-2 in the CPU budget (README, "Benchmarks"), and it is the
    # architecture of the public state-spaces/mamba-*-hf checkpoints.
    # "llama": a transformer of the same size (HF LlamaForCausalLM), the peer the course compares with.
    arch: str = "mamba"
    preset: str = "tiny"  # "tiny" | "130m" | "370m" | "790m" | "1.4b" | "2.8b"
    pretrained: Optional[str] = None  # a hub id or local directory to fine-tune
    scan: str = "auto"  # "auto" | "kernels" | "fast" | "hf": which selective-scan path
    # None: the preset's value. Width, depth and the recurrent state of a from-scratch model.
    hidden_size: Optional[int] = None
    num_hidden_layers: Optional[int] = None
    state_size: Optional[int] = None


@dataclass
class TrainConfig(WindowConfig, ModelConfig):
    """The training run (notebook 04, `train`). Windows, FIM and model settings are inherited
    so each keeps its single name on the command line."""

    dataset: str = DEFAULT_DATA_DIR  # a directory or an object-store URI (s3://...)
    storage_options: list[str] = field(default_factory=list)  # for a remote dataset (store.py)
    # where a remote dataset's fragments are copied as reads need them (mirror.py); "none": read
    # the store directly. None: ~/.cache/mamba_nb/datasets
    dataset_cache: Optional[str] = None
    out_dir: str = DEFAULT_RUN_DIR
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    warmup_steps: int = 100
    max_steps: Optional[int] = None  # None: as many as time_budget_s allows
    time_budget_s: Optional[float] = 600.0  # seconds of training; None or 0: no time limit
    grad_clip: float = 1.0
    middle_loss_weight: float = 1.0  # weight of FIM-middle targets in the training loss (1: all tokens equal)
    # recompute each block's activations in the backward pass instead of keeping them (HF's
    # mechanism): less memory for the same numbers, about a third more compute
    gradient_checkpointing: bool = False
    # LoRA (needs `peft` and a --pretrained model): adapters of this rank, 0 for a full fine-tune
    lora_rank: int = 0
    lora_targets: list[str] = field(default_factory=lambda: ["in_proj"])  # see lora.py for why in_proj
    # under torchrun: shard the weights, gradients and optimizer state over the processes (PyTorch FSDP,
    # fsdp.py) instead of a whole copy on each (DDP), for fine-tunes whose optimizer state does not fit one device
    fsdp: bool = False
    eval_every: int = 200
    eval_windows: int = 64
    # held-out single lines whose suffix gain (SPM prompt) each validation logs: when does the model
    # start to use the suffix? 0: not measured
    gain_holes: int = 64
    save_every: int = 500
    num_workers: int = 1
    device: str = "auto"
    resume: bool = True
    log_tensorboard: bool = False
    log_wandb: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.fsdp and self.lora_rank:
            raise ValueError(f"fsdp=True with lora_rank={self.lora_rank}: LoRA trains small adapters whose optimizer "
                             "state fits any device, and FSDP here shards full fine-tunes only; drop --fsdp (a LoRA "
                             "run under torchrun uses DDP), or pass --lora-rank 0 for a full fine-tune")


# The prompt layout infilling uses unless told otherwise. Training teaches both (spm_rate);
# SPM is the default because Mamba is recurrent: in SPM the prefix comes last, right before
# the middle, so its end is fresh in the state when generation starts, while in PSM it has
# to survive the whole suffix. On the course model SPM's edit similarity is 2-3x PSM's
# (README, "Benchmarks"); the FIM paper also found SPM slightly better with attention.
INFILL_MODE = "spm"


@dataclass
class InfillConfig(Checked):
    """How a hole is filled (notebook 05, `infill`)."""

    checkpoint: str = DEFAULT_RUN_DIR
    mode: str = INFILL_MODE  # "spm" | "psm": the prompt layout
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    best_of: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class EvalConfig(Checked):
    """What `evaluate` measures for a checkpoint (notebook 05, `evaluate`)."""

    checkpoint: str = DEFAULT_RUN_DIR
    dataset: str = DEFAULT_DATA_DIR
    storage_options: list[str] = field(default_factory=list)  # for a remote dataset (store.py)
    dataset_cache: Optional[str] = None  # as in TrainConfig
    num_line_tasks: int = 200
    num_loss_windows: int = 64
    humaneval: bool = True
    humaneval_limit: Optional[int] = None  # None: all single-line tasks
    mode: str = INFILL_MODE  # "spm" | "psm": the FIM prompt scored against the prefix-only one
    max_line_tokens: int = 48  # longer held-out lines are skipped; each infill may write this many + 8 tokens
    num_gain_tasks: int = 200  # holes per set for the suffix gain (0: not measured)
    # code outside the corpus whose lines are scored too: a directory, or an installed package's name
    tasks_from: Optional[str] = None
    # a benchmark to run instead of the course report (benchmark.py): humaneval-single |
    # humaneval-multi | humaneval-random-span | humaneval-random-span-light | lines
    benchmark: Optional[str] = None
    n_samples: int = 1  # samples per task (pass@k needs n >= k; sampling needs temperature > 0)
    k: list[int] = field(default_factory=lambda: [1])  # the k of pass@k
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    out_file: Optional[str] = None  # default: <checkpoint>/eval.json
    seed: int = 0


# --- YAML and CLI mapping ---------------------------------------------------


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--flag` per field of `cls`, named like the field (`context_len` → `--context-len`).

    Defaults are left as None so `from_sources` can tell a flag given from a flag omitted,
    which is what lets a YAML file and flags be combined.
    """
    parser.add_argument("--config", help="a YAML file of settings; flags given here override it")
    for f in dataclasses.fields(cls):
        tp = _field_type(cls, f)
        origin = typing.get_origin(tp)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if origin is typing.Union and args else tp
        flag = "--" + f.name.replace("_", "-")
        if base is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif typing.get_origin(base) is list:
            item = typing.get_args(base)[0]
            parser.add_argument(flag, dest=f.name, nargs="*", default=None, type=item if item is not str else None)
        else:
            parser.add_argument(flag, dest=f.name, type=base, default=None)


def from_sources(cls: type, args: Optional[argparse.Namespace] = None, **overrides: Any):
    """Build `cls` from defaults, then a YAML file (`args.config`), then flags, then overrides."""
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    config_file = getattr(args, "config", None) if args is not None else None
    if config_file:
        import yaml

        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist; pass a YAML file of settings")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            where = getattr(err, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            raise ValueError(f"config file {str(path)!r} is not valid YAML{at}: "
                             f"{getattr(err, 'problem', None) or err}; fix it or pass the settings as flags") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {str(path)!r} holds a {type(loaded).__name__}, not settings; write one "
                             "`name: value` per line (e.g. `context_len: 256`)")
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise ValueError(
                f"unknown setting(s) {unknown} in {str(path)!r}; known settings of {cls.__name__}: {sorted(names)}"
            )
        values.update(loaded)
    if args is not None:
        values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    values.update(overrides)
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain data, for metadata, checkpoints and YAML; secret storage options hidden."""
    from mamba_nb.store import redact

    data = dataclasses.asdict(config)
    if "storage_options" in data:
        data["storage_options"] = redact(data["storage_options"])
    return data


# --- the course's defaults, full and smoke ------------------------------------
# Notebooks and `make course` start from these, so the headless run and the
# notebooks train the same thing. Paths are relative to the repository root;
# notebooks (which run in notebooks/) pass root="..".


def course_data_config(smoke: bool = SMOKE, root: str = ".") -> DataConfig:
    if smoke:
        return DataConfig(out_dir=f"{root}/data/smoke", max_documents=80, vocab_size=1024)
    return DataConfig(out_dir=f"{root}/{DEFAULT_DATA_DIR}")


# How the course teaches infilling (README, "Teaching a small model to infill"): FIM in regions of 4
# lines (each hole's prefix and suffix within 3 lines of it), half the holes shaped like lines. The
# paper's whole-document FIM left the course model unable to use the suffix (suffix gain 0.00).
COURSE_FIM = dict(fim_region_lines=4, line_hole_rate=0.5)


def course_train_config(smoke: bool = SMOKE, root: str = ".") -> TrainConfig:
    data = course_data_config(smoke, root)
    if smoke:
        return TrainConfig(
            dataset=data.out_dir, out_dir=f"{root}/runs/smoke", context_len=64, batch_size=4,
            max_steps=6, time_budget_s=None, warmup_steps=2, eval_every=3, eval_windows=4, gain_holes=4, save_every=3,
            num_workers=0, **COURSE_FIM,
        )
    # a validation (and a snapshot for notebook 05's curve) about every minute and a half
    out_dir = DEFAULT_RUN_DIR if COURSE_MINUTES == 10 else f"{DEFAULT_RUN_DIR}-{COURSE_MINUTES:g}min"
    return TrainConfig(dataset=data.out_dir, out_dir=f"{root}/{out_dir}", eval_every=100,
                       time_budget_s=60 * COURSE_MINUTES, **COURSE_FIM)


def course_eval_config(smoke: bool = SMOKE, root: str = ".") -> EvalConfig:
    """What `make course` measures after training: held-out lines and a sample of HumanEval's
    single-line tasks (all 1,000+ take long on CPU: `python -m mamba_nb evaluate` runs them)."""
    run = course_train_config(smoke, root)
    if smoke:
        return EvalConfig(checkpoint=run.out_dir, dataset=run.dataset, num_line_tasks=6, num_loss_windows=4,
                          humaneval_limit=4, num_gain_tasks=6, tasks_from=OUTSIDE_PACKAGE)
    return EvalConfig(checkpoint=run.out_dir, dataset=run.dataset, humaneval_limit=200, tasks_from=OUTSIDE_PACKAGE)
