"""Every knob of the course, one dataclass per stage, and how they reach the CLI.

A setting has one name everywhere it travels: the notebook's config cell, the
YAML file, the `--flag` of `python -m mamba_nb`, and the function parameter.
`context_len` is `context_len` in all four. It has one explanation too, written once
beside its field (`setting(default, "what it does")`, the field's `help`), which
`--help`, the README's settings reference and the notebooks' config comments show
(`reference.py`); its heading (`GROUP`) and its choices (`_RULES`) come from here too.

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
from typing import Any, Callable, ClassVar, Optional

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
    def check(value) -> bool:
        return value in options

    check.options = options  # the choices `--help` and the settings reference list (`choices_of`)
    return check, "one of " + ", ".join(options)


# The model's size presets (`model.PRESETS`, which a test holds this to): named here so that
# `--help` lists them without importing torch.
PRESET_NAMES = ("micro", "tiny", "130m", "370m", "790m", "1.4b", "2.8b")

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
    "region_share": _PROBABILITY,
    "fim_region_lines": _at_least(0, "(0: whole documents)"),
    "fim_level": _one_of("char", "token"),
    "arch": _one_of("mamba", "mamba2", "llama"),
    "preset": _one_of(*PRESET_NAMES),
    "scan": _one_of("auto", "kernels", "fast", "reference"),
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


# --- the settings' words: one explanation per field, read by --help, the README's settings
# reference and the notebooks' config comments (`reference.py`) -------------------------------

# The headings settings are grouped under, in the order `--help` and the reference show them.
GROUP_ORDER = ("corpus", "tokenizer and split", "data", "model and data", "windows and FIM", "model", "training",
               "validation", "run directory and logging", "process", "infilling", "the course report", "benchmark",
               "output")


def setting(default: Any = None, help: str = "", *, factory: Optional[Callable[[], Any]] = None,
            group: Optional[str] = None) -> Any:
    """A config field with its one-line explanation (`help`: what it does, what unset means).
    `factory`: a default made afresh for each config (a list); `group`: its heading, where it is
    not its class's `GROUP`."""
    metadata = {"help": help, **({"group": group} if group else {})}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _storage_options_help(flag: str) -> str:
    """The words of every stage's `storage_options` (one setting, read for the stage's `flag`)."""
    return (f"Lance storage options for a remote {flag}: key=value items or YAML files of them (the environment's "
            "AWS_*, ... are read too)")


def help_of(f: dataclasses.Field) -> str:
    """A field's explanation (its `help`)."""
    return f.metadata.get("help", "")


def group_of(cls: type, f: dataclasses.Field) -> str:
    """The heading of field `f` of `cls`: its own, or the `GROUP` of the class that declares it."""
    owner = next(c for c in cls.__mro__ if f.name in c.__dict__.get("__annotations__", {}))
    return f.metadata.get("group") or owner.GROUP


def choices_of(name: str) -> Optional[tuple[str, ...]]:
    """The values a setting must be one of, where they are a fixed set."""
    rule = _RULES.get(name)
    return getattr(rule[0], "options", None) if rule else None


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def grouped_fields(cls: type) -> dict[str, list[dataclasses.Field]]:
    """`cls`'s fields under their headings, in `GROUP_ORDER` (fields in declaration order)."""
    groups: dict[str, list[dataclasses.Field]] = {}
    for f in dataclasses.fields(cls):
        groups.setdefault(group_of(cls, f), []).append(f)
    return dict(sorted(groups.items(), key=lambda kv: GROUP_ORDER.index(kv[0])))


@dataclass
class DataConfig(Checked):
    """Corpus → tokenizer → Lance token dataset (notebook 01, `build-dataset`)."""

    GROUP: ClassVar[str] = "corpus"

    source: str = setting("stdlib", "where the documents come from: this Python's standard library, a directory "
                                    "(--path, --patterns) or a Hugging Face dataset (--path)")
    path: Optional[str] = setting(None, "source dir: the directory; source hf: a hub dataset name, or local data files "
                                        "(a file, a glob, or a directory of json/jsonl/parquet/csv/txt)")
    patterns: list[str] = setting(factory=lambda: ["**/*.py"],
                                  help="source dir: the files to read, globs relative to --path (e.g. '**/*.py' "
                                       "'**/*.js')")
    hf_config: Optional[str] = setting(None, "source hf: the hub dataset's configuration name, if it has several")
    hf_split: str = setting("train", "source hf: the split to read (the validation documents are held out of it)")
    hf_text_column: str = setting("content", "source hf: the column that holds each document's text")
    hf_streaming: bool = setting(True, "source hf: stream the rows rather than download the whole dataset first")
    max_documents: Optional[int] = setting(None, "read only the first N documents (smoke runs, quick looks); unset: "
                                                 "all")
    max_document_bytes: int = setting(1_000_000, "larger documents are skipped (and counted), so memory stays flat")
    tokenizer: Optional[str] = setting(None, "unset: train a byte-level BPE on the train split; else an HF tokenizer "
                                             "(hub name or directory), given the FIM tokens it lacks",
                                   group="tokenizer and split")
    vocab_size: int = setting(8192, "the trained BPE's vocabulary, its five special tokens included (not used with "
                                    "--tokenizer)", group="tokenizer and split")
    validation_fraction: float = setting(0.05, "the share of documents held out for validation (whole documents)",
                                         group="tokenizer and split")
    seed: int = setting(0, "the seed of the train/validation split", group="tokenizer and split")
    out_dir: str = setting(DEFAULT_DATA_DIR, "where the dataset goes: a directory, or an object-store URI "
                                             "(s3://bucket/prefix, gs://, az://)", group="output")
    overwrite: bool = setting(False, "replace the dataset at --out-dir; without it one built with the same settings "
                                     "is reused, one with other settings refused", group="output")
    # secrets are better left in the environment (AWS_SECRET_ACCESS_KEY, ...), which is read too
    storage_options: list[str] = setting(factory=list, group="output", help=_storage_options_help("--out-dir"))
    build_engine: str = setting("local", "local: one process; ray: tokenize and write in parallel Ray tasks (pip "
                                         "install -e '.[scale]'; RAY_ADDRESS joins a running cluster), the same output",
                                group="output")
    build_workers: Optional[int] = setting(None, "--build-engine ray: the local Ray cluster's CPUs; unset: all of this "
                                                 "machine's", group="output")


@dataclass
class WindowConfig(Checked):
    """Where windows fall and what FIM does to them (notebooks 02 and 03)."""

    GROUP: ClassVar[str] = "windows and FIM"

    context_len: int = setting(256, "tokens per window: the context the model trains with (infill cuts longer prompts "
                                    "to it)")
    fim_rate: float = setting(0.9, "share of document pieces (or regions) FIM transforms; the rest stay left to right")
    spm_rate: float = setting(0.5, "share of the transformed pieces laid out SPM (suffix first); the rest PSM")
    fim_level: str = setting("char", "char: a hole's ends anywhere in the decoded text (the FIM paper's); token: "
                                     "between tokens")
    # Short regions keep both sides of a hole near it (fim.py, "Regions").
    fim_region_lines: int = setting(0, "FIM per region of this many lines, several a document (0: whole document "
                                       "pieces); needs fim_level char")
    line_hole_rate: float = setting(0.0, "share of FIM middles shaped like real holes (whole lines, a line's end), "
                                         "not random spans")
    # A mix: near holes for reading the suffix, whole documents for reaching far back (fim.py, "Regions").
    region_share: float = setting(1.0, "with fim_region_lines: share of windows FIM'd in regions; the rest get "
                                       "whole-document FIM, the paper's")
    seed: int = setting(0, "the seed of the window offsets and order and of the FIM draws (a run's initial weights "
                           "too)")
    # Training and its validation losses both follow it (doc_reset.py).
    reset_at_documents: bool = setting(False, "read each file of a window on its own: the state (llama: attention) "
                                              "starts afresh after each <|endoftext|> between files; not for mamba2")


    def __post_init__(self):
        super().__post_init__()
        if self.fim_region_lines and self.fim_level != "char":
            raise ValueError(f"fim_region_lines={self.fim_region_lines} cuts regions on line ends in the decoded text, "
                             f"which needs fim_level='char' (got {self.fim_level!r}); pass --fim-level char or "
                             "--fim-region-lines 0")
        if self.region_share < 1 and not self.fim_region_lines:
            raise ValueError(f"region_share={self.region_share} mixes FIM in regions with whole-document FIM, "
                             "which needs regions: pass --fim-region-lines (e.g. 4), or --region-share 1")


@dataclass
class ModelConfig(Checked):
    """Which Mamba, how big, from scratch or from a checkpoint (notebook 04)."""

    GROUP: ClassVar[str] = "model"

    # Mamba-1 is the course default: on the fast PyTorch scan it learns as much as Mamba-2 in the CPU
    # budget (README, "Benchmarks"), and it is the architecture of the public state-spaces/mamba-*-hf
    # checkpoints.
    arch: str = setting("mamba", "mamba (Mamba-1, the course's), mamba2, or llama (a transformer of the same size, "
                                 "the peer the course compares with)")
    preset: str = setting("tiny", "the size: micro (the tests'), tiny (the CPU course's), or a public checkpoint's "
                                  "130m ... 2.8b (llama: micro and tiny only)")
    pretrained: Optional[str] = setting(None, "a hub id or local directory to fine-tune instead of training from "
                                              "scratch (the dataset must use its tokenizer: build-dataset --tokenizer)")
    scan: str = setting("auto", "the selective scan: auto (kernels on CUDA when installed, else fast), kernels (the "
                                "fused CUDA kernels), fast (this project's), reference (the paper's recurrence step by "
                                "step: slow, to compare)")
    hidden_size: Optional[int] = setting(None, "width of a from-scratch model; unset: the preset's")
    num_hidden_layers: Optional[int] = setting(None, "blocks of a from-scratch model; unset: the preset's")
    state_size: Optional[int] = setting(None, "Mamba's recurrent state per channel (N) of a from-scratch model; "
                                              "unset: the preset's (not for llama)")


@dataclass
class TrainConfig(WindowConfig, ModelConfig):
    """The training run (notebook 04, `train`). Windows, FIM and model settings are inherited
    so each keeps its single name on the command line."""

    GROUP: ClassVar[str] = "training"

    dataset: str = setting(DEFAULT_DATA_DIR, "the token dataset (build-dataset's --out-dir): a directory or an "
                                             "object-store URI (s3://...)", group="data")
    storage_options: list[str] = setting(factory=list, group="data", help=_storage_options_help("--dataset"))
    dataset_cache: Optional[str] = setting(None, "where a remote dataset's fragments are copied as reads need them; "
                                                 "none: read the store directly; unset: ~/.cache/mamba_nb/datasets",
                                           group="data")
    out_dir: str = setting(DEFAULT_RUN_DIR, "the run directory: latest/ (the resumable checkpoint, an HF model), "
                                            "snapshots/, metrics.jsonl, loss.png", group="run directory and logging")
    batch_size: int = setting(8, "windows per micro-batch, in each process")
    grad_accum: int = setting(1, "micro-batches per optimizer step (gradient accumulation)")
    lr: float = setting(3e-3, "the peak learning rate (AdamW), reached at the end of warmup")
    min_lr_ratio: float = setting(0.1, "the cosine ends at this fraction of --lr")
    weight_decay: float = setting(0.1, "AdamW's weight decay, on weight matrices only (not the input embedding, "
                                       "norms, biases, A_log, D)")
    warmup_steps: int = setting(100, "steps of linear warmup up to --lr, before the cosine")
    max_steps: Optional[int] = setting(None, "optimizer steps of the run (the cosine's length); unset: as many as "
                                             "--time-budget-s allows")
    time_budget_s: Optional[float] = setting(600.0, "seconds of training steps (validations and saves not counted) "
                                                    "the schedule is sized to fill; with --max-steps, whichever ends "
                                                    "first; 0 or unset: no limit")
    grad_clip: float = setting(1.0, "clip the gradients' norm to this (0: no clipping)")
    middle_loss_weight: float = setting(1.0, "weight of FIM-middle targets in the training loss (1: every token "
                                             "counts the same, as the FIM paper trains)")
    gradient_checkpointing: bool = setting(False, "recompute each block's activations in the backward pass instead "
                                                  "of keeping them: less memory, the same numbers, about a third more "
                                                  "compute")
    lora_rank: int = setting(0, "train LoRA adapters of this rank on a --pretrained model (needs peft); 0: a full "
                                "fine-tune")
    # see lora.py for why in_proj
    lora_targets: list[str] = setting(factory=lambda: ["in_proj"],
                                      help="the modules LoRA adapts (x_proj, dt_proj, out_proj and conv1d are refused: "
                                           "the fused CUDA kernels read their weights directly)")
    fsdp: bool = setting(False, "under torchrun: shard the weights, gradients and optimizer state over the processes "
                                "(FSDP) instead of a whole copy on each (DDP); not with LoRA", group="process")
    eval_every: int = setting(200, "validate every this many steps and at the end (losses, suffix gain, a snapshot, "
                                   "loss.png)", group="validation")
    eval_windows: int = setting(64, "validation windows each validation reads", group="validation")
    # when does the model start to use the suffix?
    gain_holes: int = setting(64, "held-out lines whose suffix gain (SPM prompt) each validation logs; 0: not "
                                  "measured", group="validation")
    save_every: int = setting(500, "write the resumable checkpoint (latest/) every this many steps, at the end and on "
                                   "Ctrl-C / SIGTERM", group="run directory and logging")
    num_workers: int = setting(1, "DataLoader worker processes of each process (0: batches made in the training "
                                  "process)", group="process")
    device: str = setting("auto", "auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:N or mps",
                          group="process")
    resume: bool = setting(True, "go on from --out-dir's checkpoint; --no-resume starts over, moving the earlier run "
                                 "into replaced-<time>/", group="run directory and logging")
    log_tensorboard: bool = setting(False, "also log to TensorBoard (<out-dir>/tensorboard; needs tensorboard)",
                                    group="run directory and logging")
    log_wandb: bool = setting(False, "also log to Weights & Biases (project mamba-nb; needs wandb)",
                              group="run directory and logging")

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

    GROUP: ClassVar[str] = "infilling"

    checkpoint: str = setting(DEFAULT_RUN_DIR, "the model: a run directory, its latest/ or a snapshot, or an HF model "
                                               "directory")
    mode: str = setting(INFILL_MODE, "the prompt: spm (suffix, then prefix, then the middle), psm (prefix, suffix, "
                                     "middle), or lm (the prefix only)")
    max_new_tokens: int = setting(64, "the most tokens the middle may have")
    temperature: float = setting(0.0, "0: greedy; above: sampling at this temperature (with --top-p)")
    top_p: float = setting(1.0, "nucleus sampling: draw from the likeliest tokens holding this much probability "
                                "(1: all)")
    best_of: int = setting(1, "samples per hole: those that ended with <|endoftext|> first, then the highest mean "
                              "log-probability (needs --temperature > 0)")
    stop: list[str] = setting(factory=list, help="texts that end the middle, cut before them (e.g. --stop '\\n' for "
                                                 "one line)")
    seed: int = setting(0, "the sampling seed")


@dataclass
class EvalConfig(Checked):
    """What `evaluate` measures for a checkpoint (notebook 05, `evaluate`)."""

    GROUP: ClassVar[str] = "the course report"

    checkpoint: str = setting(DEFAULT_RUN_DIR, "the model: a run directory, its latest/ or a snapshot, or an HF model "
                                               "directory", group="model and data")
    dataset: str = setting(DEFAULT_DATA_DIR, "the dataset whose validation split gives the held-out holes and loss "
                                             "windows", group="model and data")
    storage_options: list[str] = setting(factory=list, group="model and data", help=_storage_options_help("--dataset"))
    dataset_cache: Optional[str] = setting(None, "where a remote dataset's fragments are copied as reads need them; "
                                                 "none: read the store directly; unset: ~/.cache/mamba_nb/datasets",
                                           group="model and data")
    num_line_tasks: int = setting(200, "held-out lines infilled and scored, FIM prompt and prefix only (--benchmark "
                                       "lines: its holes, half lines, half blocks)")
    num_loss_windows: int = setting(64, "validation windows for the losses (0: not measured)")
    humaneval: bool = setting(True, "also run HumanEval's single-line holes in the sandbox (pass@1)")
    humaneval_limit: Optional[int] = setting(None, "at most this many HumanEval holes (here and in --benchmark "
                                                   "humaneval-*); unset: all")
    mode: str = setting(INFILL_MODE, "the FIM prompt (spm or psm) scored against the prefix-only one, and the one "
                                     "--benchmark uses")
    max_line_tokens: int = setting(48, "longer held-out lines are skipped (blocks: 3x); an infill may write this many "
                                       "+ 8 tokens (multi-line benchmarks: 4x)")
    num_gain_tasks: int = setting(200, "holes per set (held-out lines, held-out blocks, --tasks-from lines) for the "
                                       "suffix gain; 0: not measured")
    tasks_from: Optional[str] = setting(None, "code outside the corpus whose lines join the suffix gain's sets (and "
                                              "are --benchmark lines' holes): a directory, or an installed package")
    benchmark: Optional[str] = setting(None, "run this benchmark instead of the course report (lines: holes cut from "
                                             "--tasks-from, or the held-out split)", group="benchmark")
    n_samples: int = setting(1, "samples per task (pass@k needs n >= k; more than 1 needs --temperature > 0)",
                             group="benchmark")
    k: list[int] = setting(factory=lambda: [1], help="the k of pass@k, each at most --n-samples", group="benchmark")
    temperature: float = setting(0.0, "--benchmark's sampling: 0 greedy; above, this temperature (with --top-p)",
                                 group="benchmark")
    top_p: float = setting(1.0, "--benchmark's nucleus sampling: the probability the drawn tokens hold (1: all)",
                           group="benchmark")
    out_file: Optional[str] = setting(None, "where the JSON report goes; unset: eval.json (or <benchmark>.json) in "
                                            "the checkpoint's directory", group="output")
    seed: int = setting(0, "the seed that picks the holes (and draws --benchmark's samples)")

# --- YAML and CLI mapping ---------------------------------------------------


def shown(value: Any) -> str:
    """A default as `--help` and the settings reference write it (unset, true, a list as flags take it)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


def flag_help(f: dataclasses.Field) -> str:
    """A field's `--help` line: its explanation and its default (argparse's % escaped)."""
    return f"{help_of(f)} (default: {shown(default_of(f))})".replace("%", "%%")


METAVARS = {int: "N", float: "X", str: "TEXT"}  # what a flag's value is, in --help


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--flag` per field of `cls`, named like the field (`context_len` → `--context-len`),
    under the field's heading, with its explanation, default and choices.

    Defaults are left as None so `from_sources` can tell a flag given from a flag omitted,
    which is what lets a YAML file and flags be combined.
    """
    parser.add_argument("--config", metavar="YAML", help="a YAML file of these settings, one `name: value` a line "
                        "(names with underscores; `python -m mamba_nb reference` prints them all); flags given as "
                        "well override it")
    hints = typing.get_type_hints(cls)
    for heading, fields in grouped_fields(cls).items():
        group = parser.add_argument_group(heading)
        for f in fields:
            tp = hints[f.name]
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            base = args[0] if typing.get_origin(tp) is typing.Union and args else tp
            flag = "--" + f.name.replace("_", "-")
            choices = choices_of(f.name)
            # the choices beside the flag; the config checks the value (one line naming the flag)
            item = typing.get_args(base)[0] if typing.get_origin(base) is list else base
            metavar = "{" + ",".join(choices) + "}" if choices else METAVARS.get(item, "VALUE")
            if base is bool:
                group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                   help=flag_help(f))
            elif typing.get_origin(base) is list:
                group.add_argument(flag, dest=f.name, nargs="*", default=None, type=item if item is not str else None,
                                   metavar=metavar, help=flag_help(f))
            else:
                group.add_argument(flag, dest=f.name, type=base, default=None, metavar=metavar, help=flag_help(f))


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
# paper's whole-document FIM left the course model unable to use the suffix (content gain 0.007).
# The learning rate 3.3 times the general default: of the recipes compared at equal time and at
# equal tokens, the lowest absolute FIM-prompt middle loss among those that read the suffix (3e-3,
# 6e-3 and 1e-2 each measured; benchmarks/bench_recipe.py); a fine-tune of a pretrained checkpoint
# wants the general default or lower.
COURSE_RECIPE = dict(fim_region_lines=4, line_hole_rate=0.5, lr=1e-2)


def course_train_config(smoke: bool = SMOKE, root: str = ".") -> TrainConfig:
    data = course_data_config(smoke, root)
    if smoke:
        return TrainConfig(
            dataset=data.out_dir, out_dir=f"{root}/runs/smoke", context_len=64, batch_size=4,
            max_steps=6, time_budget_s=None, warmup_steps=2, eval_every=3, eval_windows=4, gain_holes=4, save_every=3,
            num_workers=0, **COURSE_RECIPE,
        )
    # a validation (and a snapshot for notebook 05's curve) about every minute and a half
    out_dir = DEFAULT_RUN_DIR if COURSE_MINUTES == 10 else f"{DEFAULT_RUN_DIR}-{COURSE_MINUTES:g}min"
    return TrainConfig(dataset=data.out_dir, out_dir=f"{root}/{out_dir}", eval_every=100,
                       time_budget_s=60 * COURSE_MINUTES, **COURSE_RECIPE)


def course_eval_config(smoke: bool = SMOKE, root: str = ".") -> EvalConfig:
    """What `make course` measures after training: held-out lines and a sample of HumanEval's
    single-line tasks (all 1,000+ take long on CPU: `python -m mamba_nb evaluate` runs them)."""
    run = course_train_config(smoke, root)
    if smoke:
        return EvalConfig(checkpoint=run.out_dir, dataset=run.dataset, num_line_tasks=6, num_loss_windows=4,
                          humaneval_limit=4, num_gain_tasks=6, tasks_from=OUTSIDE_PACKAGE)
    return EvalConfig(checkpoint=run.out_dir, dataset=run.dataset, humaneval_limit=200, tasks_from=OUTSIDE_PACKAGE)
