"""`python -m mamba_nb course`: the whole course headless, as a short sequence of calls.

Builds (or reuses) the course dataset and prints what it holds; trains the course model
(`course_train_config()`: about 10 minutes on 2 CPU cores, printing the validation loss at
each validation); evaluates it (`course_eval_config()`: held-out lines and a sample of
HumanEval, the suffix gain) and prints the table, then held-out holes where reading the suffix
helped beside holes where it did not, each infill beside the truth. With MAMBA_NB_SMOKE=1 the same sequence runs on a tiny dataset in seconds.

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
    return checkpoint
