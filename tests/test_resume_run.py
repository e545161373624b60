"""A resumed run is the run it continues: a time-budgeted schedule is timed again where an
uninterrupted run's is (its learning-rate curve the same, down to its end), and `loss.png` is
never drawn from less than the run has (the metrics come back from the checkpoint, or the old
picture is kept and the run says so).

The loop's clock is a fake one (`fake_clock`): steps take a fixed time that depends on their
number only, so a run and its resumed copy see the same pace however busy the machine is."""
from __future__ import annotations

import contextlib
import os
import signal
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb import checkpoint as ckpt
from mamba_nb import schedule
from mamba_nb import train as train_module
from mamba_nb.config import TrainConfig
from mamba_nb.schedule import ScheduleSizer, lr_at
from mamba_nb.train import train
from test_train import records, small

SLOW_STEPS = 6  # the first steps are three times slower (a machine warming up), then a steady pace
TICK = 1 / 32  # seconds per clock reading once steady (a power of two: every sum is exact)
BUDGET_S = 2.25 + 20 * 3 * TICK  # 12 steps' time (6 slow, 6 steady) + 20 steady steps: 32 steps in all


class StepClock:
    """`time.perf_counter` for train.py: each reading advances by a step-dependent tick (the loop
    reads it 4 times a step, 3 ticks of which are the step's time). `step` is the last step done,
    kept up to date by `on_step`; a resumed process starts it at the checkpoint's step."""

    def __init__(self):
        self.t, self.step = 0.0, 0

    def perf_counter(self) -> float:
        self.t += TICK * (3 if self.step < SLOW_STEPS else 1)
        return self.t

    def on_step(self, record, model, batch) -> None:
        self.step = record["step"]


@pytest.fixture
def fake_clock(monkeypatch):
    clock = StepClock()
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(schedule, "RESIZE_EVERY", 6)  # timed again every 6 steps after warmup, not 50
    return clock


def budgeted(tiny_dataset, out_dir, **changes):
    # warmup 12: the probe times steps 2-10 (mostly slow ones: a schedule too short), the end of
    # warmup times steps 11-12 again (the steady pace: 32 steps fill the budget)
    return small(tiny_dataset, out_dir, max_steps=None, time_budget_s=BUDGET_S, warmup_steps=12, eval_every=10**6,
                 save_every=10, gain_holes=0, **changes)


def stop_after(clock: StepClock, step: int, how: str):
    """An on_step hook that, once `step` is done, sends Ctrl-C (the run saves there) or crashes
    (the run keeps its last periodic checkpoint, as after kill -9)."""

    def hook(record, model, batch):
        clock.on_step(record, model, batch)
        if record["step"] == step:
            if how == "ctrl-c":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise RuntimeError("crash")

    return hook


def resume(cfg, clock: StepClock) -> None:
    clock.step = ckpt.load_training_state(ckpt.find_resumable(cfg.out_dir))["step"]
    train(cfg, on_step=clock.on_step)


def lr_curve(out_dir) -> list[float]:
    train_records = records(out_dir, "train")
    assert sorted(train_records) == list(range(1, len(train_records) + 1))  # every step once
    return [train_records[s]["lr"] for s in sorted(train_records)]


def assert_whole_schedule(cfg, curve: list[float]) -> None:
    """Warmup, then one cosine whose length is the run's: the last step is the cosine's last."""
    total = ckpt.load_training_state(ckpt.find_resumable(cfg.out_dir))["total_steps"]
    assert total == len(curve)
    assert curve == pytest.approx([lr_at(i, cfg, total) for i in range(total)], rel=1e-12)
    assert curve[-1] == pytest.approx(lr_at(total - 1, cfg, total)) and curve[-1] < 1.1 * cfg.min_lr_ratio * cfg.lr


@settings(max_examples=200, deadline=None)
@given(warmup=st.integers(0, 30), steps=st.integers(1, 200), data=st.data(), step_s=st.sampled_from([0.25, 0.5]))
def test_a_sizer_loaded_from_its_state_asks_at_the_same_steps_with_the_same_pace(warmup, steps, data, step_s):
    """The sizer saved after any step and loaded into a new process asks for a new length at the
    steps the uninterrupted one does, from the same pace (steps of equal time: the resumed first
    step, left out, changes nothing)."""
    cfg = TrainConfig(warmup_steps=warmup, max_steps=None, time_budget_s=100.0)
    stop = data.draw(st.integers(0, steps), label="interrupted after step")

    def run(sizer, numbers, total):  # → ({step: pace asked for}, the length the run has then)
        asked = {}
        for step in numbers:
            sized = sizer.after_step(step, step * step_s, step_s, total)
            if sized is not None:
                asked[step], total = sized[0], 10**6
        return asked, total

    whole, _ = run(ScheduleSizer(cfg, 100.0), range(1, steps + 1), None)
    first = ScheduleSizer(cfg, 100.0)
    asked_first, total = run(first, range(1, stop + 1), None)
    resumed = ScheduleSizer(cfg, 100.0)
    resumed.load_state_dict(first.state_dict())
    asked_rest, _ = run(resumed, range(stop + 1, steps + 1), total)
    assert {**asked_first, **asked_rest} == whole


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        clock = StepClock()
        mp.setattr(train_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
        mp.setattr(schedule, "RESIZE_EVERY", 6)
        cfg = budgeted(tiny_dataset, tmp_path_factory.mktemp("uninterrupted") / "run")
        train(cfg, on_step=clock.on_step)
    return cfg, lr_curve(cfg.out_dir)


def test_an_uninterrupted_budgeted_run_ends_its_cosine_at_its_last_step(uninterrupted):
    cfg, curve = uninterrupted
    assert len(curve) == 32
    assert_whole_schedule(cfg, curve)


@pytest.mark.parametrize("step, how", [
    (5, "ctrl-c"),  # before the probe: no length yet
    (11, "crash"),  # resumes at 10: after the probe, before warmup's end times it again (the bug)
    (21, "crash"),  # resumes at 20: after warmup, before the next timing (step 24)
    (25, "ctrl-c"),  # after a timing since warmup
])
def test_a_resumed_budgeted_run_has_the_uninterrupted_schedule(uninterrupted, tiny_dataset, tmp_path, fake_clock,
                                                               step, how):
    cfg = budgeted(tiny_dataset, tmp_path / "run")
    with pytest.raises(RuntimeError, match="crash") if how == "crash" else contextlib.nullcontext():
        train(cfg, on_step=stop_after(fake_clock, step, how))
    resume(cfg, fake_clock)
    curve = lr_curve(cfg.out_dir)
    assert curve == pytest.approx(uninterrupted[1], rel=1e-12)
    assert_whole_schedule(cfg, curve)


def test_a_checkpoint_from_before_the_sizer_was_saved_is_timed_again_from_the_resume(tiny_dataset, tmp_path,
                                                                                     fake_clock):
    cfg = budgeted(tiny_dataset, tmp_path / "run")
    with pytest.raises(RuntimeError, match="crash"):
        train(cfg, on_step=stop_after(fake_clock, 11, "crash"))
    state_file = ckpt.find_resumable(cfg.out_dir) / ckpt.STATE_FILE
    state = torch.load(state_file, weights_only=True)
    assert state["total_steps"] < 25  # the probe's schedule, from the slow steps
    del state["schedule_sizer"]
    torch.save(state, state_file)
    resume(cfg, fake_clock)
    assert_whole_schedule(cfg, lr_curve(cfg.out_dir))


# --- loss.png on resume: never drawn from less than the run has -----------------------------


@pytest.fixture
def drawn(monkeypatch):
    """The steps of the train records each `loss.png` was drawn from, in order."""
    from mamba_nb.viz import training

    draws: list[list[int]] = []
    plot_loss = training.plot_loss

    def spy(records, *args, **kwargs):
        draws.append(sorted(r["step"] for r in records if r["kind"] == "train"))
        return plot_loss(records, *args, **kwargs)

    monkeypatch.setattr(training, "plot_loss", spy)
    return draws


def lose_metrics(out_dir, how: str) -> None:
    path = out_dir / ckpt.METRICS_FILE
    if how == "deleted":
        path.unlink()
    else:  # cut short: only its last three lines left
        path.write_text("".join(path.read_text().splitlines(keepends=True)[-3:]))


@pytest.mark.parametrize("how", ["deleted", "cut short"])
def test_lost_metrics_come_back_from_the_checkpoint(tiny_dataset, tmp_path, drawn, capsys, how):
    out = tmp_path / "run"
    train(small(tiny_dataset, out, max_steps=6, gain_holes=0))
    lose_metrics(out, how)
    capsys.readouterr()
    train(small(tiny_dataset, out, max_steps=9, gain_holes=0))
    assert "restored them from the checkpoint's copy" in capsys.readouterr().out
    assert sorted(records(out, "train")) == list(range(1, 10))
    assert sorted(records(out, "eval")) == [3, 6, 9]
    assert drawn[-1] == list(range(1, 10))  # the picture of the whole run, not of steps 7-9


def test_without_a_copy_the_old_picture_is_kept_and_the_run_says_so(tiny_dataset, tmp_path, drawn, capsys):
    out = tmp_path / "run"
    train(small(tiny_dataset, out, max_steps=6, gain_holes=0))
    picture = (out / "loss.png").read_bytes()
    (out / ckpt.LATEST / ckpt.METRICS_FILE).unlink()  # a checkpoint written before the copy was kept
    lose_metrics(out, "deleted")
    drawn.clear()
    capsys.readouterr()
    train(small(tiny_dataset, out, max_steps=9, gain_holes=0))
    said = capsys.readouterr().out
    assert "holds 0 of the run's 6 steps" in said and "kept as it was" in said
    assert drawn == [] and (out / "loss.png").read_bytes() == picture
    assert sorted(records(out, "train")) == [7, 8, 9]  # the new steps are still logged
