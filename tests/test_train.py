"""train.py and checkpoint.py: schedule, weight decay groups, exact resume, signals, atomic
checkpoints, snapshots, and the errors a person can act on. Tiny models (preset "micro":
hidden 32, 2 layers) on the shared `tiny_dataset`, context 32."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mamba_nb import checkpoint as ckpt
from mamba_nb.config import ModelConfig, TrainConfig
from mamba_nb.doc_reset import model_logits
from mamba_nb.model import build_model, enable_checkpointing, load_checkpoint
from mamba_nb.schedule import lr_at, param_groups
from mamba_nb.train import TrainingError, train

REPO = Path(__file__).resolve().parents[1]


def small(tiny_dataset, out_dir, **changes) -> TrainConfig:
    values = dict(dataset=str(tiny_dataset.path), out_dir=str(out_dir), preset="micro", context_len=32, batch_size=4,
                  max_steps=6, time_budget_s=None, warmup_steps=2, eval_every=3, eval_windows=8, save_every=3,
                  num_workers=0, seed=0)
    values.update(changes)
    return TrainConfig(**values)


def records(out_dir, kind: str) -> dict[int, dict]:
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r["kind"] == kind}


def interrupt_at(step: int, sig=signal.SIGINT):
    """An on_step hook that sends this process `sig` once `step` is done (as Ctrl-C would)."""

    def hook(record, model, batch):
        if record["step"] == step:
            os.kill(os.getpid(), sig)

    return hook


# --- the schedule and the optimizer --------------------------------------------------


@given(warmup=st.integers(0, 50), extra=st.integers(1, 500), lr=st.floats(1e-5, 1.0), ratio=st.floats(0.0, 1.0))
def test_lr_warms_up_linearly_then_decays_to_the_floor(warmup, extra, lr, ratio):
    cfg = TrainConfig(lr=lr, min_lr_ratio=ratio, warmup_steps=warmup)
    total = warmup + extra
    lrs = [lr_at(s, cfg, total) for s in range(total + 5)]
    for s in range(warmup):
        assert lrs[s] == pytest.approx(lr * (s + 1) / warmup)
    after = lrs[warmup:]
    assert after[0] == pytest.approx(lr)
    assert all(a >= b - 1e-12 for a, b in zip(after, after[1:]))  # never rises again
    assert lrs[total] == pytest.approx(lr * ratio) and lrs[-1] == pytest.approx(lr * ratio)
    # before the length is known (time budgets), warmup and its first step need no length
    for s in range(warmup + 1):
        assert lr_at(s, cfg, None) == lrs[s]


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_weight_decay_only_on_weight_matrices(arch, tiny_dataset):
    model, _ = build_model(ModelConfig(arch=arch, preset="micro"), tiny_dataset.tokenizer, verbose=False)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert not decayed & kept and decayed | kept == set(names.values())
    for name in kept:
        assert name.endswith(("A_log", "D", "bias", "dt_bias", "norm.weight", "norm_f.weight", "embeddings.weight"))
    for name in decayed:
        assert name.endswith(("in_proj.weight", "out_proj.weight", "x_proj.weight", "dt_proj.weight", "conv1d.weight"))
    assert any(n.endswith("A_log") for n in kept) and any(n.endswith("embeddings.weight") for n in kept)


# --- a run, its files, and exact resume ------------------------------------------


def test_run_writes_checkpoint_snapshots_metrics_and_plot(tiny_dataset, tmp_path, capsys):
    evals = []
    latest = train(small(tiny_dataset, tmp_path / "run"), on_eval=lambda rec, model: evals.append(rec["step"]))
    assert latest == tmp_path / "run" / "latest"
    out = capsys.readouterr()
    assert "selective scan:" in out.out + out.err  # the run says which scan path it takes
    state = ckpt.load_training_state(latest)
    assert state["step"] == 6 and state["tokens_seen"] == 6 * 4 * 32
    assert yaml.safe_load((latest / "run_config.yaml").read_text())["preset"] == "micro"
    train_rec, eval_rec = records(tmp_path / "run", "train"), records(tmp_path / "run", "eval")
    assert sorted(train_rec) == list(range(1, 7)) and sorted(eval_rec) == evals == [3, 6]
    snaps = ckpt.list_snapshots(tmp_path / "run")
    assert [s["step"] for s in snaps] == [3, 6]
    for snap in snaps:
        assert snap["val_loss"] == eval_rec[snap["step"]]["val_loss"]
        assert snap["tokens_seen"] == train_rec[snap["step"]]["tokens_seen"]
    model, tok = load_checkpoint(snaps[-1]["path"])
    assert len(tok) == len(tiny_dataset.tokenizer)
    final, _ = load_checkpoint(tmp_path / "run")
    for a, b in zip(model.state_dict().values(), final.state_dict().values()):
        assert torch.equal(a, b)  # the last snapshot is the final model
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    for r in eval_rec.values():  # FIM off and FIM middles: both finite, both near log(vocab) untrained
        assert 0 < r["val_loss"] < 10 and 0 < r["val_fim_loss"] < 10
        lo, hi = r["val_suffix_gain_interval"]  # the suffix gain on the fixed held-out lines, with its interval
        assert math.isfinite(r["val_suffix_gain"]) and lo <= r["val_suffix_gain"] <= hi
    assert "suffix gain" in out.out + out.err
    # running the finished run again resumes it, finds it complete, and changes nothing
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    capsys.readouterr()
    train(small(tiny_dataset, tmp_path / "run"))
    assert "already complete" in capsys.readouterr().out
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_the_suffix_gain_is_measured_on_fixed_holes_and_leaves_training_alone(tiny_dataset, tmp_path):
    """Measuring the suffix gain at each validation changes no training loss (it draws nothing from
    the training run's random streams), and switching it off leaves it out of the records."""
    with_gain = train(small(tiny_dataset, tmp_path / "a", gain_holes=8))
    without = train(small(tiny_dataset, tmp_path / "b", gain_holes=0))
    a, b = records(with_gain.parent, "train"), records(without.parent, "train")
    assert [r["loss"] for r in a.values()] == [r["loss"] for r in b.values()]
    assert all("val_suffix_gain" in r for r in records(with_gain.parent, "eval").values())
    assert not any("val_suffix_gain" in r for r in records(without.parent, "eval").values())


def test_validation_is_deterministic_and_fim_loss_counts_middles_only(tiny_dataset):
    from mamba_nb.losses import validation_losses
    from mamba_nb.runtime import Dist
    from mamba_nb.windows import make_loader

    cfg = small(tiny_dataset, "unused", eval_windows=4)
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(preset="micro"), tiny_dataset.tokenizer, verbose=False)
    first = validation_losses(model, tiny_dataset, cfg, cfg.batch_size, cfg.eval_windows, torch.device("cpu"), Dist())
    assert validation_losses(model, tiny_dataset, cfg, cfg.batch_size, cfg.eval_windows, torch.device("cpu"),
                             Dist()) == first
    # the FIM-middle loss by hand: FIM on every window, only targets inside a middle count
    loader, _ = make_loader(tiny_dataset, "validation", dataclasses.replace(cfg, fim_rate=1.0), 4, shuffle=True, epoch=0)
    batch = next(iter(loader))
    with torch.no_grad():
        logits = model_logits(model, batch["input_ids"])
    y = batch["targets"].masked_fill(~batch["middle_mask"], -100)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    assert first["val_fim_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_resume_after_ctrl_c_is_exact(tiny_dataset, tmp_path):
    cfg = small(tiny_dataset, tmp_path / "once", max_steps=5, grad_accum=2, eval_every=2, eval_windows=4,
                save_every=100)
    train(cfg)
    stopped = dataclasses.replace(cfg, out_dir=str(tmp_path / "twice"))
    train(stopped, on_step=interrupt_at(3))  # Ctrl-C after step 3: saved there, then returns
    assert ckpt.load_training_state(tmp_path / "twice" / "latest")["step"] == 3
    assert max(records(tmp_path / "twice", "train")) == 3
    assert sorted(records(tmp_path / "twice", "eval")) == [2]
    train(stopped)  # resume
    for kind, key in (("train", "loss"), ("eval", "val_loss"), ("eval", "val_fim_loss")):
        once, twice = records(tmp_path / "once", kind), records(tmp_path / "twice", kind)
        assert sorted(once) == sorted(twice)
        assert [once[s][key] for s in sorted(once)] == [twice[s][key] for s in sorted(twice)]  # bitwise
    a, _ = load_checkpoint(tmp_path / "once")
    b, _ = load_checkpoint(tmp_path / "twice")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_data_stream_resumes_mid_epoch_and_across_the_epoch_boundary(tiny_dataset):
    from mamba_nb.runtime import Dist
    from mamba_nb.windows import DataStream

    # long windows so an epoch is only a few batches
    cfg = small(tiny_dataset, "unused", context_len=tiny_dataset.num_tokens("train") // 40, batch_size=4)
    whole = DataStream(tiny_dataset, cfg, Dist())  # ~39 windows, 9 or 10 batches an epoch
    expected = [whole.next() for _ in range(12)]
    assert whole.epoch == 1  # the boundary was crossed
    first = DataStream(tiny_dataset, cfg, Dist())
    got = [first.next() for _ in range(5)]
    resumed = DataStream(tiny_dataset, cfg, Dist(), **first.state_dict())
    got += [resumed.next() for _ in range(7)]
    for a, b in zip(expected, got):
        assert torch.equal(a["starts"], b["starts"]) and torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["targets"], b["targets"]) and torch.equal(a["middle_mask"], b["middle_mask"])


def test_sigterm_saves_a_checkpoint_before_exiting(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    settings = dataclasses.asdict(small(tiny_dataset, out, max_steps=100000, eval_every=100000,
                                        save_every=100000))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(settings))
    # the CLI with a YAML file, as a user (or a cluster scheduler's SIGTERM) would meet it
    proc = subprocess.Popen([sys.executable, "-m", "mamba_nb", "train", "--config", str(tmp_path / "run.yaml"),
                             "--num-workers", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count('"train"') >= 2):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the run logged no steps in 120 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "SIGTERM" in output
    state = ckpt.load_training_state(out / "latest")
    assert state["step"] == max(records(out, "train")) >= 2


def test_ctrl_c_that_kills_a_data_worker_mid_fetch_still_saves(tiny_dataset, tmp_path, monkeypatch):
    from mamba_nb.windows import DataStream

    real_next, calls = DataStream.next, []

    def next_batch(self):  # the 3rd step's fetch: Ctrl-C arrives and the worker is gone
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
            raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly")
        return real_next(self)

    monkeypatch.setattr(DataStream, "next", next_batch)
    train(small(tiny_dataset, tmp_path / "run", eval_every=100, save_every=100))
    state = ckpt.load_training_state(tmp_path / "run" / "latest")
    assert state["step"] == 2 and state["data"] == {"epoch": 0, "batches": 2}


def test_failed_write_keeps_the_previous_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    cfg = small(tiny_dataset, tmp_path / "run", max_steps=2, eval_every=100, save_every=2)
    train(cfg)
    latest = tmp_path / "run" / "latest"
    before = {p.name: p.read_bytes() for p in latest.iterdir()}

    def disk_full(*args, **kwargs):  # fails after the model files are already written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(ckpt.CheckpointError, match="No space left.*unchanged"):
        train(dataclasses.replace(cfg, max_steps=4))
    assert {p.name: p.read_bytes() for p in latest.iterdir()} == before
    # no temporary directory left behind (the lock file stays: it is released, not removed)
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == [ckpt.LOCK_FILE]
    monkeypatch.undo()
    train(dataclasses.replace(cfg, max_steps=4))  # and the run resumes from it
    assert ckpt.load_training_state(latest)["step"] == 4


def test_interrupted_replace_still_resumes(tiny_dataset, tmp_path):
    # a crash between the two renames of a save leaves only .latest.old: still a checkpoint
    cfg = small(tiny_dataset, tmp_path / "run", max_steps=2, eval_every=100, save_every=2)
    train(cfg)
    (tmp_path / "run" / "latest").rename(tmp_path / "run" / ".latest.old")
    train(dataclasses.replace(cfg, max_steps=3))
    assert ckpt.load_training_state(tmp_path / "run" / "latest")["step"] == 3
    assert sorted(records(tmp_path / "run", "train")) == [1, 2, 3]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tiny_dataset, tmp_path):
    def poison(record, model, batch):
        if record["step"] == 3:  # after the save at step 2, before the one at step 4
            with torch.no_grad():
                model.get_input_embeddings().weight.fill_(float("nan"))

    cfg = small(tiny_dataset, tmp_path / "run", max_steps=6, eval_every=100, save_every=2)
    with pytest.raises(TrainingError, match=r"loss is nan at step 4.*latest.*step 2"):
        train(cfg, on_step=poison)
    state = ckpt.load_training_state(tmp_path / "run" / "latest")
    assert state["step"] == 2
    model, _ = load_checkpoint(tmp_path / "run")
    assert torch.isfinite(model.get_input_embeddings().weight).all()


def test_resume_with_another_model_or_dataset_is_refused(tiny_dataset, tiny_data_config, tmp_path):
    from mamba_nb.dataset import build_dataset

    cfg = small(tiny_dataset, tmp_path / "run", max_steps=1, eval_every=100, save_every=1)
    train(cfg)
    with pytest.raises(TrainingError, match=r"preset: checkpoint 'micro', now 'tiny'.*--out-dir"):
        train(dataclasses.replace(cfg, preset="tiny", max_steps=2))
    other = build_dataset(dataclasses.replace(tiny_data_config, out_dir=str(tmp_path / "other"), max_documents=12),
                          progress=False)
    with pytest.raises(TrainingError, match="dataset: checkpoint"):
        train(dataclasses.replace(cfg, dataset=str(other.path), max_steps=2))
    # --no-resume starts over in the same directory
    train(dataclasses.replace(cfg, preset="micro", dataset=str(other.path), max_steps=2, resume=False))
    assert sorted(records(tmp_path / "run", "train")) == [1, 2]


def test_context_len_the_dataset_cannot_fill(tiny_dataset, tmp_path):
    n = tiny_dataset.num_tokens("validation")
    with pytest.raises(TrainingError, match=rf"context_len={n}.*validation.*--context-len"):
        train(small(tiny_dataset, tmp_path / "run", context_len=n))


def test_time_budget_fixes_a_schedule_and_stops(tiny_dataset, tmp_path):
    # warmup_steps=1: the length is fixed after the first step, however slow the machine
    cfg = small(tiny_dataset, tmp_path / "run", max_steps=None, time_budget_s=2.0, warmup_steps=1,
                eval_every=1000, save_every=1000)
    train(cfg)
    state = ckpt.load_training_state(tmp_path / "run" / "latest")
    assert isinstance(state["total_steps"], int) and state["total_steps"] >= 1
    assert state["elapsed_s"] >= 2.0 or state["step"] == state["total_steps"]
    assert max(records(tmp_path / "run", "train")) == state["step"]
    assert state["step"] in records(tmp_path / "run", "eval")  # the end of a budget is validated


def test_time_budget_is_sized_again_when_warmup_ends(tiny_dataset, tmp_path, capsys, monkeypatch):
    # warmup 20 > the 10 probe steps: a first length for the bar, then one from the steadier steps.
    # The loop's clock is a fake one that advances 25 ms per reading, so 20 steps always fit the
    # 3 s budget, however busy the machine is (a real clock made this test fail on a loaded CI).
    import types

    from mamba_nb import train as train_module

    ticks = iter(range(10**9))
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: 0.025 * next(ticks)))
    cfg = small(tiny_dataset, tmp_path / "run", max_steps=None, time_budget_s=3.0, warmup_steps=20,
                eval_every=1000, save_every=1000)
    train(cfg)
    said = [line for line in capsys.readouterr().out.splitlines() if "a schedule of" in line]
    assert len(said) == 2 and "timed again after warmup" in said[1], said
    state = ckpt.load_training_state(tmp_path / "run" / "latest")
    assert f"a schedule of {state['total_steps']} steps" in said[1]  # the second length is the one kept
    assert state["step"] == state["total_steps"] or state["elapsed_s"] >= 3.0


def test_neither_budget_is_an_error(tiny_dataset, tmp_path):
    with pytest.raises(TrainingError, match="--max-steps"):
        train(small(tiny_dataset, tmp_path / "run", max_steps=None, time_budget_s=None))


def test_fine_tune_a_saved_model_through_train(tiny_dataset, tiny_data_config, tmp_path):
    from mamba_nb.dataset import build_dataset

    # a "pretrained" checkpoint: a micro model saved with the dataset's tokenizer
    base, _ = build_model(ModelConfig(preset="micro"), tiny_dataset.tokenizer, verbose=False)
    base.save_pretrained(tmp_path / "base")
    tiny_dataset.tokenizer.save_pretrained(tmp_path / "base")
    ds = build_dataset(dataclasses.replace(tiny_data_config, out_dir=str(tmp_path / "ds"),
                                           tokenizer=str(tmp_path / "base"), max_documents=12), progress=False)
    latest = train(small(ds, tmp_path / "run", pretrained=str(tmp_path / "base"), max_steps=2, eval_every=100))
    tuned, _ = load_checkpoint(latest)
    assert tuned.get_input_embeddings().weight.shape == base.get_input_embeddings().weight.shape
    assert not torch.equal(tuned.get_input_embeddings().weight, base.get_input_embeddings().weight)


# --- the loss plot ------------------------------------------------------------------


def test_plot_loss_draws_train_and_both_validation_curves():
    from mamba_nb.viz.training import LivePlot, plot_loss, smooth

    recs = [{"kind": "train", "step": s, "tokens_seen": 100 * s, "loss": 5.0 / s} for s in range(1, 11)]
    recs += [{"kind": "eval", "step": 5, "tokens_seen": 500, "val_loss": 2.0, "val_fim_loss": 3.0}]
    ax = plot_loss(recs).axes[0]
    assert len(ax.lines) == 4 and list(ax.lines[2].get_ydata()) == [2.0]
    assert len(plot_loss([]).axes[0].lines) == 0
    live = LivePlot(every=5)
    for r in recs:
        (live.on_eval if r["kind"] == "eval" else live.on_step)(r, None)
    assert live.records == recs
    shown = live.html()  # the picture, captioned with the step it was drawn at
    assert 'class="live-loss" data-step="10"' in shown and "data:image/png;base64," in shown
    assert "training loss 0.500" in shown


def test_plot_throughput_shows_speed_and_the_data_wait_share():
    from mamba_nb.viz.training import plot_throughput

    recs = [{"kind": "train", "step": s, "tokens_per_s": 1000.0 + s, "step_s": 2.0, "data_wait_s": 0.1}
            for s in range(1, 21)]
    speed, wait = plot_throughput(recs).axes
    assert list(speed.lines[0].get_ydata()) == [1000.0 + s for s in range(1, 21)]
    assert wait.lines[0].get_ydata() == pytest.approx([5.0] * 20)  # 0.1 s of 2 s, in percent
    assert wait.lines[1].get_ydata()[0] == pytest.approx(5.0)  # the whole run's share
    assert len(plot_throughput([]).axes[0].lines) == 0


def test_plot_schedule_draws_lr_at_for_every_step():
    from mamba_nb.viz.training import plot_schedule

    ax = plot_schedule(lr=1e-3, warmup_steps=5, min_lr_ratio=0.1, total_steps=40).axes[0]
    ys = ax.lines[0].get_ydata()
    cfg = TrainConfig(lr=1e-3, warmup_steps=5, min_lr_ratio=0.1)
    assert len(ys) == 40 and list(ys) == [lr_at(s, cfg, 40) for s in range(40)]


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50))
def test_smoothing_of_a_constant_is_the_constant_and_stays_in_range(values):
    from mamba_nb.viz.training import smooth

    s = smooth(values)
    assert s[0] == pytest.approx(values[0])
    assert (s >= min(values) - 1e-6).all() and (s <= max(values) + 1e-6).all()
    assert smooth([values[0]] * 5) == pytest.approx([values[0]] * 5)


def test_tensorboard_and_wandb_asked_for_but_not_installed_only_print_a_note(tmp_path, monkeypatch, capsys):
    from mamba_nb.runlog import RunLog

    # None in sys.modules makes the import fail, as on a machine without these packages
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = TrainConfig(log_tensorboard=True, log_wandb=True)
    loggers = RunLog(cfg, tmp_path, main=True, resume_step=None)
    loggers.log({"kind": "train", "step": 1, "loss": 1.0})
    loggers.close()
    printed = capsys.readouterr().out
    assert "pip install tensorboard" in printed and "pip install wandb" in printed
    assert records(tmp_path, "train")[1]["loss"] == 1.0  # metrics.jsonl is written regardless
    # and nothing is even imported when they are not asked for
    RunLog(TrainConfig(), tmp_path, main=True, resume_step=None)
    assert "note" not in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(arch, tiny_dataset):
    from mamba_nb.losses import training_loss
    from mamba_nb.windows import make_loader

    cfg = small(tiny_dataset, "unused", arch=arch)
    batch = next(iter(make_loader(tiny_dataset, "train", cfg, 4)[0]))
    grads, losses = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, _ = build_model(cfg, tiny_dataset.tokenizer, verbose=False)
        model.train()
        if checkpointing:
            enable_checkpointing(model)
            assert model.gradient_checkpointing
        logits = model_logits(model, batch["input_ids"])
        loss = training_loss(logits, batch["targets"], batch["middle_mask"])
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7), name


def test_training_with_gradient_checkpointing_resumes_exactly(tiny_dataset, tmp_path):
    cfg = small(tiny_dataset, tmp_path / "ref", gradient_checkpointing=True, max_steps=4)
    train(cfg)
    stopped = dataclasses.replace(cfg, out_dir=str(tmp_path / "stopped"))
    train(stopped, on_step=interrupt_at(2))  # Ctrl-C after step 2: saved there
    train(stopped)
    ref, resumed = records(tmp_path / "ref", "train"), records(tmp_path / "stopped", "train")
    assert [ref[s]["loss"] for s in (3, 4)] == [resumed[s]["loss"] for s in (3, 4)]


def test_a_time_budget_is_kept_when_the_pace_changes(tiny_dataset, tmp_path, capsys, monkeypatch):
    """Steps three times slower during warmup (a busy machine), normal after: the schedule is sized
    again as the run goes, so it still uses its whole budget instead of ending early."""
    import types

    from mamba_nb import train as train_module
    from mamba_nb.schedule import RESIZE_EVERY

    clock = {"t": 0.0, "calls": 0}

    def perf_counter():  # 4 readings a step; 0.3 s a step while warming up, 0.1 s after
        clock["calls"] += 1
        clock["t"] += 0.1 if clock["calls"] <= 4 * 20 else 0.1 / 3
        return clock["t"]

    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=perf_counter))
    cfg = small(tiny_dataset, tmp_path / "run", max_steps=None, time_budget_s=30.0, warmup_steps=20,
                eval_every=10**6, save_every=10**6)
    train(cfg)
    said = [line for line in capsys.readouterr().out.splitlines() if "a schedule of" in line]
    state = ckpt.load_training_state(tmp_path / "run" / "latest")
    assert len(said) >= 3 and f"timed again at step {20 + RESIZE_EVERY}" in said[2]
    assert state["elapsed_s"] >= 30.0 - 0.5  # the budget was used, not cut short by the slow start
