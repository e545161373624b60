"""The optimizer and the learning-rate schedule, and how long a time-budgeted schedule is.

- `param_groups` / `make_optimizer`: AdamW with weight decay on the weight matrices only.
- `lr_at`: linear warmup, then a cosine down to `min_lr_ratio * lr`.
- `ScheduleSizer`: with only `time_budget_s`, the cosine needs a length. The first warmup steps
  (whose learning rate does not depend on it) are timed and the length is fixed from their
  pace; it is timed again, from the steadier steps since, when warmup ends, and then every
  `RESIZE_EVERY` steps from the pace since warmup: a machine that was busy for a while (or got
  faster) does not leave the run short of its budget, or the cosine cut before its end. The run
  still stops when the time is up. A checkpoint keeps the sizer's place (`state_dict`), so a
  resumed run is timed again at the same steps, from the same pace, as one that never stopped
  (the first step after a resume pays start-up again, and is left out of the pace).

Not here: the loop that applies them (`train.py`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

TIME_PROBE_STEPS = 10  # at most this many warmup steps are timed to size a time-budgeted schedule
RESIZE_EVERY = 50  # after warmup, a time-budgeted schedule is sized again this often (steps)


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay the weight matrices (in/out/x/dt projections, conv kernels, an
    untied lm_head) and nothing else.

    No decay for: biases and norm weights (1-D), `A_log` (the state's decay rates; 2-D in
    Mamba-1 but not a mixing matrix), `D` and the dt bias (1-D), and the input embedding
    (decay would pull rare tokens' rows to zero; a tied lm_head is the same tensor).
    """
    emb = model.get_input_embeddings().weight
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p is emb or p.ndim < 2 or name.endswith("A_log"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, cfg, device: torch.device) -> torch.optim.AdamW:
    """AdamW for a `TrainConfig`'s lr and weight decay."""
    # fused AdamW is one kernel per step on CUDA; on the CPU the default (foreach) is best
    fused = device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95),
                             eps=1e-8, fused=fused)


def lr_at(step: int, cfg, total_steps: Optional[int]) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio.

    `cfg`: a `TrainConfig` (lr, warmup_steps, min_lr_ratio). `total_steps` may be None only
    during warmup (and at the first step after it, where the cosine is at its peak whatever
    the length).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if total_steps is None:
        if step == cfg.warmup_steps:
            return cfg.lr
        raise ValueError(f"the schedule's length is unknown at step {step}")
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def estimate_total_steps(budget_s: float, done: int, elapsed_s: float, step_s: float) -> int:
    """Steps that fit `budget_s`, given `done` steps in `elapsed_s` and `step_s` per step.

    The budget counts training steps only (`elapsed_s` is their sum): validations and
    checkpoints come on top, so they never shorten the schedule.
    """
    return max(done + 1, done + int((budget_s - elapsed_s) / step_s))


class ScheduleSizer:
    """When to fix a time-budgeted schedule's length, and from which pace (module docstring).

    Call `after_step` after every step; it returns (seconds per step, note) when the length
    should be (re)computed now, else None. A run with `max_steps` never asks. A resumed run
    loads the sizer's place from its checkpoint (`load_state_dict`) and goes on asking at the
    steps an uninterrupted run would (a checkpoint that predates it: timed again from the resume).
    """

    def __init__(self, cfg, budget_s: Optional[float]):
        self.active = budget_s is not None and cfg.max_steps is None
        self.probe_end = max(1, min(cfg.warmup_steps, TIME_PROBE_STEPS))
        # the step at which the schedule is sized again (end of warmup), if it comes after the probe
        self.refine_at = cfg.warmup_steps if cfg.warmup_steps > self.probe_end + 1 else None
        self.since: Optional[tuple[int, float]] = None  # (step, elapsed_s) where timing began
        # (steps, seconds) inside the timed stretch left out of the pace: the first step of a resume
        self.untimed = (0, 0.0)
        self.skip_next = False  # the next step is the first of a resumed process

    def state_dict(self) -> dict:
        """The sizer's place, for the checkpoint."""
        return {"since": list(self.since) if self.since is not None else None, "untimed": list(self.untimed)}

    def load_state_dict(self, state: Optional[dict]) -> None:
        """Go on from a checkpoint's `state_dict()` (None: a checkpoint that predates it, timed again
        from the resume on). The step after this is not timed (start-up)."""
        if state is not None:
            self.since = tuple(state["since"]) if state["since"] is not None else None
            self.untimed = tuple(state["untimed"])
        self.skip_next = True

    def _pace(self, step: int, elapsed_s: float, step_s: float) -> float:
        n = step - self.since[0] - self.untimed[0]
        # nothing timed yet: this step's time
        return (elapsed_s - self.since[1] - self.untimed[1]) / n if n > 0 else step_s

    def _restart(self, step: int, elapsed_s: float) -> None:
        self.since, self.untimed = (step, elapsed_s), (0, 0.0)

    def after_step(self, step: int, elapsed_s: float, step_s: float,
                   total_steps: Optional[int]) -> Optional[tuple[float, str]]:
        # The first step is not timed (it pays for start-up, such as DataLoader workers), nor is the
        # first after a resume. The early steps are slow (allocator and caches warming up): the first
        # estimate gives the progress bar its length, the one at the end of warmup (the cosine's
        # first use of it) is kept.
        if not self.active:
            return None
        if self.since is None:
            self._restart(step, elapsed_s)
        elif self.skip_next:
            self.untimed = (self.untimed[0] + 1, self.untimed[1] + step_s)
        self.skip_next = False
        if total_steps is None:
            if step >= self.probe_end:
                pace = self._pace(step, elapsed_s, step_s)
                self._restart(step, elapsed_s)  # the refinement times the steps after this one
                return pace, ""
        elif step == self.refine_at and step > self.since[0]:
            pace = self._pace(step, elapsed_s, step_s)
            self._restart(step, elapsed_s)  # from here on: the pace after warmup
            return pace, " (timed again after warmup)"
        elif step > self.since[0] and step > self.probe_end and (step - self.since[0]) % RESIZE_EVERY == 0:
            return self._pace(step, elapsed_s, step_s), f" (timed again at step {step})"
        return None
