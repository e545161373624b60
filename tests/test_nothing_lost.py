"""Runs and datasets that cannot be wiped or wedged: one test per fault a machine or a person
causes, each checking what survives and that the error says what to do."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mamba_nb import checkpoint as ckpt
from mamba_nb.checkpoint import CheckpointError
from mamba_nb.dataset import DatasetError, build_dataset, open_dataset
from mamba_nb.train import TrainingError, train
from test_train import REPO, records, small


def test_a_run_without_its_training_state_is_never_replaced(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    train(small(tiny_dataset, out))
    (out / "latest" / ckpt.STATE_FILE).unlink()
    (out / f".latest.old").mkdir(exist_ok=True)  # (nothing to resume from there either)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(CheckpointError, match=r"holds an earlier run .*snapshots.*--no-resume"):
        train(small(tiny_dataset, out))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before  # nothing touched
    # --no-resume starts over, and the earlier run is moved aside, whole
    train(small(tiny_dataset, out, resume=False))
    aside = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and (aside[0] / "snapshots").is_dir() and (aside[0] / "metrics.jsonl").is_file()
    assert (aside[0] / "latest" / "model.safetensors").is_file()
    assert (out / "latest" / ckpt.STATE_FILE).is_file()


def test_two_trainings_cannot_share_a_run_directory(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    with ckpt.RunLock(out):  # as a running training holds it
        with pytest.raises(CheckpointError, match=r"in use by another training \(pid \d+"):
            train(small(tiny_dataset, out))
    assert not (out / "metrics.jsonl").exists()
    train(small(tiny_dataset, out))  # released: the next one runs
    steps = [r["step"] for r in (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    assert steps == sorted(set(steps))  # no duplicate steps


def test_a_torn_metrics_line_is_dropped_on_resume(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    train(small(tiny_dataset, out, max_steps=3))
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 4, "loss": 3.2')  # a disk that filled mid-write
    train(small(tiny_dataset, out, max_steps=6))
    assert sorted(records(out, "train")) == [1, 2, 3, 4, 5, 6]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)


def test_a_damaged_metrics_line_in_the_middle_is_named(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    train(small(tiny_dataset, out, max_steps=3))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(CheckpointError, match=r"metrics.jsonl' line 2 is not a JSON record"):
        train(small(tiny_dataset, out, max_steps=6))


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tiny_dataset, tmp_path,
                                                                                   monkeypatch):
    out = tmp_path / "run"
    train(small(tiny_dataset, out, max_steps=3))
    kept = (out / "latest" / "model.safetensors").read_bytes()
    monkeypatch.setattr("torch.save", _enospc)
    with pytest.raises(CheckpointError, match=r"could not write .*latest.* \(No space left on device\); the previous "
                                              r"'latest' is unchanged.*MiB free"):
        train(small(tiny_dataset, out, max_steps=6))
    assert (out / "latest" / "model.safetensors").read_bytes() == kept
    monkeypatch.undo()
    train(small(tiny_dataset, out, max_steps=6))  # and the run resumes from it
    assert ckpt.load_training_state(out / "latest")["step"] == 6


def test_a_full_disk_while_logging_names_the_file(tiny_dataset, tmp_path, monkeypatch):
    from mamba_nb.runlog import RunLog

    out = tmp_path / "run"
    real = RunLog._write
    calls = {"n": 0}

    def failing(self, write, mode):
        calls["n"] += 1
        if calls["n"] == 4:  # the third step's record: the disk is full now
            write = _enospc
        return real(self, write, mode)

    monkeypatch.setattr(RunLog, "_write", failing)
    with pytest.raises(TrainingError, match=r"could not write .*metrics.jsonl' \(No space left on device\)"):
        train(small(tiny_dataset, out))


def test_a_failing_validation_saves_the_step_first(tiny_dataset, tmp_path, monkeypatch):
    from mamba_nb import train as train_module

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(train_module, "validation_losses", broken)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"validation at step 3 failed .*saved first, at step 3"):
        train(small(tiny_dataset, out, save_every=1000))
    assert ckpt.load_training_state(out / "latest")["step"] == 3


@pytest.fixture
def own_dataset(tiny_data_config, tmp_path):
    cfg = dataclasses.replace(tiny_data_config, out_dir=str(tmp_path / "data"))
    return cfg, build_dataset(cfg, progress=False)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_fragment_is_refused_and_overwrite_rebuilds(own_dataset, damage):
    cfg, ds = own_dataset
    fragment = sorted((ds.path / "validation.lance" / "data").glob("*"))[0]
    if damage == "truncate":
        fragment.write_bytes(fragment.read_bytes()[:100])
    else:
        fragment.unlink()
    with pytest.raises(DatasetError, match=r"is damaged: validation.lance/data/.*--overwrite"):
        open_dataset(ds.path)
    with pytest.raises(DatasetError, match="damaged"):  # a plain rebuild does not reuse it silently
        build_dataset(cfg, progress=False)
    rebuilt = build_dataset(dataclasses.replace(cfg, overwrite=True), progress=False)
    assert rebuilt.num_tokens("validation") == ds.num_tokens("validation")


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_lost_manifest_is_not_a_dead_end(own_dataset, damage):
    cfg, ds = own_dataset
    manifest = ds.path / "manifest.json"
    if damage == "delete":
        manifest.unlink()
    else:
        manifest.write_text(manifest.read_text()[:50])
    with pytest.raises(DatasetError, match="--overwrite"):
        open_dataset(ds.path)
    rebuilt = build_dataset(dataclasses.replace(cfg, overwrite=True), progress=False)  # the suggested fix works
    assert rebuilt.num_tokens("train") == ds.num_tokens("train")


def test_one_huge_document_is_skipped_and_counted(tiny_corpus_dir, tiny_data_config, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus_dir, corpus)
    (corpus / "generated.py").write_text("x = 1\n" * 400_000)  # 2.4 MB
    cfg = dataclasses.replace(tiny_data_config, source="dir", path=str(corpus), out_dir=str(tmp_path / "data"))
    ds = build_dataset(cfg, progress=False)
    assert ds.meta["skipped"]["too_large"] == 1 and "generated.py (too_large)" in ds.meta["skipped"]["examples"]
    assert "1 too large" in ds.summary()


def _descendants(pid: int) -> set[int]:
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, set()).add(int(d.name))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), ()):
            found.add(c)
            todo.append(c)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_training_leaves_no_worker_behind(tiny_dataset, tmp_path):
    cmd = [sys.executable, "-m", "mamba_nb", "train", "--dataset", str(tiny_dataset.path), "--out-dir",
           str(tmp_path / "run"), "--preset", "micro", "--context-len", "32", "--batch-size", "4", "--max-steps",
           "100000", "--time-budget-s", "0", "--num-workers", "1", "--eval-every", "100000"]
    env = {**os.environ, "MAMBA_NB_ALLOCATOR": "system"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        kids: set[int] = set()
        while time.monotonic() < deadline and len(kids) < 2:  # the fork server and its worker
            time.sleep(0.5)
            kids = _descendants(proc.pid)
        assert len(kids) >= 2, f"no DataLoader worker started: {kids}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{k}").exists() for k in kids):
        time.sleep(0.2)
    alive = [k for k in kids if Path(f"/proc/{k}").exists() and "Z" not in Path(f"/proc/{k}/stat").read_text().split()[2]]
    assert not alive, f"processes outlived the killed training: {alive}"
