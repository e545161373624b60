"""Every bad input a person gives the command line gets one `error: ...` line naming the value,
exit status 2, and no traceback: one table, one row per input (the list of issue 18)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mamba_nb import cli
from mamba_nb.train import train
from test_train import small


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad-input") / "run"
    train(small(tiny_dataset, out, max_steps=2, eval_every=2, save_every=2))
    return out


def _copy_run(trained: Path, tmp: Path) -> Path:
    run = tmp / "run-copy"
    shutil.copytree(trained, run)
    return run


def _truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _yaml(tmp: Path, text: str) -> str:
    (tmp / "run.yaml").write_text(text)
    return str(tmp / "run.yaml")


def _files(tmp: Path, prefix: bytes = b"def f():\n    return ", suffix: bytes = b"\n") -> tuple[str, str]:
    (tmp / "pre.py").write_bytes(prefix)
    (tmp / "suf.py").write_bytes(suffix)
    return str(tmp / "pre.py"), str(tmp / "suf.py")


def _infill(run, tmp, **damage) -> list[str]:
    pre, suf = _files(tmp, **damage)
    return ["infill", "--checkpoint", str(run), "--prefix-file", pre, "--suffix-file", suf]


def _damaged_run(file: str, how: str):
    """infill on a copy of the trained run with one of its files truncated or deleted."""
    def build(trained, tmp, ds):
        run = _copy_run(trained, tmp)
        target = run / "latest" / file
        _truncate(target) if how == "truncate" else target.unlink()
        return _infill(run, tmp)
    return build


def _resume_truncated_state(trained, tmp, ds):
    run = _copy_run(trained, tmp)
    _truncate(run / "latest" / "training_state.pt")
    return ["train", "--config", str(run / "latest" / "run_config.yaml"), "--out-dir", str(run), "--max-steps", "3"]


def _foreign_tokenizer_dataset(trained, tmp, ds):
    """evaluate a checkpoint against a dataset whose tokenizer has fewer tokens than the model's."""
    from mamba_nb.config import DataConfig
    from mamba_nb.dataset import build_dataset

    corpus = tmp / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 5)
    other = build_dataset(DataConfig(source="dir", path=str(corpus), out_dir=str(tmp / "other"), vocab_size=300,
                                     validation_fraction=0.2))
    return ["evaluate", "--checkpoint", str(trained), "--dataset", str(other.path), "--no-humaneval"]


# A case the CLI wrongly accepted would train: a step and a few seconds at most, not a course.
GUARD = ["--preset", "micro", "--max-steps", "1", "--time-budget-s", "5", "--num-workers", "0"]


def _train(ds, tmp, *flags) -> list[str]:
    return ["train", "--dataset", str(ds.path), "--out-dir", str(tmp / "out"), *GUARD, "--context-len", "32",
            "--batch-size", "2", *flags]


def _yaml_train(text):
    """train with a YAML file and no flag that would override what it sets."""
    return lambda trained, tmp, ds: ["train", "--config", _yaml(tmp, text), "--dataset", str(ds.path),
                                     "--out-dir", str(tmp / "out"), *GUARD]


def _out_dir_is_a_file(trained, tmp, ds):
    (tmp / "a-file").write_text("x")
    return ["train", "--dataset", str(ds.path), "--out-dir", str(tmp / "a-file"), *GUARD]


def _out_file_is_a_dir(trained, tmp, ds):
    (tmp / "a-dir").mkdir()
    return ["evaluate", "--checkpoint", str(trained), "--dataset", str(ds.path), "--out-file", str(tmp / "a-dir")]


def _prefix_is_a_dir(trained, tmp, ds):
    (tmp / "d").mkdir()
    return ["infill", "--checkpoint", str(trained), "--prefix-file", str(tmp / "d"), "--suffix-file", str(tmp / "d")]


# (case, argv builder, what the error line must name)
CASES = [
    ("eval-every 0", lambda r, t, d: _train(d, t, "--eval-every", "0"), "eval_every"),
    ("save-every 0", lambda r, t, d: _train(d, t, "--save-every", "0"), "save_every"),
    ("max-steps 0", lambda r, t, d: _train(d, t, "--max-steps", "0"), "max_steps"),
    ("max-steps -3", lambda r, t, d: _train(d, t, "--max-steps", "-3"), "max_steps"),
    ("time-budget -5", lambda r, t, d: _train(d, t, "--time-budget-s", "-5"), "time_budget_s"),
    ("eval-windows 0", lambda r, t, d: _train(d, t, "--eval-windows", "0"), "eval_windows"),
    ("device tpu", lambda r, t, d: _train(d, t, "--device", "tpu"), "tpu"),
    ("out-dir a file", _out_dir_is_a_file, "a-file"),
    ("yaml malformed", _yaml_train("lr: [3e-3\n"), "run.yaml"),
    ("yaml a scalar", _yaml_train("just a string\n"), "run.yaml"),
    ("yaml string number", _yaml_train('context_len: "64"\n'), "context_len"),
    ("yaml string float", _yaml_train('lr: "3e-3"\n'), "lr"),
    ("yaml float for int", _yaml_train("batch_size: 4.7\n"), "batch_size"),
    ("patterns outside", lambda r, t, d: ["build-dataset", "--source", "dir", "--path", str(t), "--patterns", "/etc/*",
                                          "--out-dir", str(t / "o")], "/etc/*"),
    ("truncated weights", _damaged_run("model.safetensors", "truncate"), "safetensors) in"),
    ("truncated training state", _resume_truncated_state, "training_state.pt"),
    ("truncated run config", _damaged_run("run_config.yaml", "truncate"), "run_config.yaml"),
    ("deleted tokenizer", _damaged_run("tokenizer.json", "delete"), "tokenizer"),
    ("truncated tokenizer", _damaged_run("tokenizer.json", "truncate"), "tokenizer"),
    ("foreign tokenizer", _foreign_tokenizer_dataset, "tokenizer"),
    ("out-file a dir", _out_file_is_a_dir, "a-dir"),
    ("prefix file a dir", _prefix_is_a_dir, "/d"),
    ("prefix invalid utf-8", lambda r, t, d: _infill(r, t, prefix=b"def f():\n    \xff\xfe"), "pre.py"),
    ("prefix lone surrogate", lambda r, t, d: _infill(r, t, prefix="x = '\udc80'".encode("utf-8", "surrogatepass")),
     "pre.py"),
]


@pytest.mark.parametrize("case, build, names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(case, build, names, trained, tiny_dataset, tmp_path, capsys):
    argv = build(trained, tmp_path, tiny_dataset)
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's own errors: also status 2 and one `error:` line
        status = e.code
    err = capsys.readouterr().err
    assert status == 2, (case, err)
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1].startswith(("error:", "python -m mamba_nb")) or "error:" in lines[-1], err
    assert names in err, (case, err)
