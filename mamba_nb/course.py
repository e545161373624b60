"""`python -m mamba_nb course`: the whole course headless, as a short sequence of calls.

Builds (or reuses) the course dataset and prints what it holds; trains the course model
(`course_train_config()`: about 10 minutes on 2 CPU cores, printing the validation loss at
each validation); evaluates it (`course_eval_config()`: held-out lines and a sample of
HumanEval, the suffix gain beside its controls) and prints the table, then held-out holes where
reading the suffix helped beside holes where it did not, each FIM infill beside the left-to-right
one and the truth, and the suffix gain and content gain of the run's snapshots (when the model
started to use the suffix). With MAMBA_NB_SMOKE=1 the same sequence runs on a tiny dataset in seconds.

Not here: any setting (they live in `config.py`) or any logic of the stages.
"""
from __future__ import annotations

from pathlib import Path

from mamba_nb.config import SMOKE, course_data_config, course_eval_config, course_train_config


def run_course(smoke: bool = SMOKE, root: str = ".") -> Path:
    from mamba_nb.dataset import build_dataset
    from mamba_nb.evaluate import evaluate_cli, format_examples
    from mamba_nb.train import train

    ds = build_dataset(course_data_config(smoke, root))
    print(ds.summary())
    checkpoint = train(course_train_config(smoke, root))
    print(f"checkpoint: {checkpoint}  (load it with mamba_nb.model.load_checkpoint({str(checkpoint)!r}))\n")
    eval_cfg = course_eval_config(smoke, root)
    report = evaluate_cli(eval_cfg)
    print()
    print(format_examples(report, n=2))
    print()
    print(gain_curve(eval_cfg))
    return checkpoint


CURVE_SNAPSHOTS = 5  # snapshots the suffix-gain curve is measured at (spread over the run)


def gain_curve(cfg) -> str:
    """The suffix gain (SPM prompt) of the run's snapshots as text, beside its content gain (what the
    suffix's content is worth, `suffix_gain.py`) and the middle's loss with the best prompt: when did
    the model start to use the suffix? Measured on `cfg.tasks_from`'s lines, half as many holes as
    the report."""
    from dataclasses import replace

    from mamba_nb.evaluate import snapshot_gains
    from mamba_nb.suffix_gain import prompt_label

    points = snapshot_gains(cfg.checkpoint, cfg.dataset, replace(cfg, num_gain_tasks=max(1, cfg.num_gain_tasks // 2)),
                            max_snapshots=CURVE_SNAPSHOTS, modes=("spm",))
    rows = [f"  {p['tokens_seen'] / 1e6:5.2f} M tokens (step {p['step']:>5}): {_figure(p['spm'], 'gain', 'interval')}, "
            f"content {_figure(p['spm'], 'content_gain', 'content_interval')}, best middle loss "
            f"{p['best']['loss']:.3f} ({prompt_label(p['best']['prompt'])})"
            for p in points]
    return ("suffix gain as training went on (nats per token, SPM prompt, 95 % interval), its content gain "
            "(shuffled suffix - true suffix) and the middle's loss with the best prompt:\n" + "\n".join(rows))


def _figure(r: dict, value: str, interval: str) -> str:
    return f"{r[value]:+.3f} [{r[interval][0]:+.3f}, {r[interval][1]:+.3f}]"
