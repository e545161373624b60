"""The training loop: `train(cfg) -> Path` trains or fine-tunes a Mamba with FIM windows.

What one run does, in order:
1. joins a `torchrun` group when WORLD_SIZE > 1 (`runtime.py`), and locks its run directory;
2. opens the Lance dataset, then resumes from `<out_dir>/latest/` or builds the model
   (`model.build_model`, which says which selective scan runs); under torchrun, wraps it in DDP
   or, with `fsdp`, shards it (`fsdp.py`);
3. steps: AdamW and a warmup + cosine schedule (`schedule.py`), gradient accumulation and
   clipping, bf16 autocast on CUDA with fp32 weights, the loss of `losses.py`; with
   `reset_at_documents`, each document of a window read on its own (`doc_reset.py`);
4. every `eval_every` steps and at the end: the validation losses (`losses.validation_losses`),
   a snapshot for notebook 05, and `loss.png` (`runlog.py`);
5. every `save_every` steps, at the end, and on Ctrl-C / SIGTERM: `<out_dir>/latest/`.

Resume is exact: the checkpoint holds the optimizer, the schedule's length (and where a time
budget times it again), the data position, the RNG states, the step and the tokens seen, so a
run stopped at step k and resumed gives bit for bit the losses of a run that never stopped (on
CPU).

Not here: windows and FIM (`windows.py`), the model (`model.py`), the files of a run
(`checkpoint.py`), sharding and the shards (`fsdp.py`), the schedule (`schedule.py`), the
losses (`losses.py`).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from mamba_nb import checkpoint as ckpt
from mamba_nb.config import TrainConfig, to_dict
from mamba_nb.doc_reset import model_logits
from mamba_nb.losses import autocast, training_loss, validation_losses
from mamba_nb.rng import rng_state, seed_everything, set_rng_state
from mamba_nb.runtime import (Dist, StopRequest, TrainingError, any_rank, init_distributed, mean_over_ranks,
                              min_over_ranks, pick_device)
from mamba_nb.schedule import ScheduleSizer, estimate_total_steps, lr_at, make_optimizer
from mamba_nb.windows import DataStream

# Settings a resumed run must share with the checkpoint: anything else would not continue
# the same run (another model, other windows, another order of data).
MUST_MATCH = ("arch", "preset", "pretrained", "hidden_size", "num_hidden_layers", "state_size", "context_len",
              "fim_rate", "spm_rate", "fim_level", "fim_region_lines", "line_hole_rate", "seed", "batch_size",
              "grad_accum", "lora_rank", "lora_targets", "fsdp", "reset_at_documents", "region_share")


def dataset_fingerprint(ds) -> dict:
    """What identifies a dataset for resuming: its sizes and its tokenizer (not its path)."""
    vocab = ds.tokenizer.get_vocab()
    return {"train_tokens": int(ds.num_tokens("train")), "validation_tokens": int(ds.num_tokens("validation")),
            "vocab_size": max(vocab.values()) + 1}


def _check_fits(ds, cfg: TrainConfig, d: Dist) -> None:
    from mamba_nb.sampler import check_fits

    try:
        check_fits(ds.num_tokens("train"), cfg.context_len, cfg.batch_size * d.world_size,
                   f"the train split of {str(ds.path)!r}", per=" (a batch x processes)")
        check_fits(ds.num_tokens("validation"), cfg.context_len, 1, f"the validation split of {str(ds.path)!r}")
    except ValueError as err:
        raise TrainingError(str(err)) from None


def _check_resumable(state: dict, cfg: TrainConfig, ds, d: Dist, where: Path) -> None:
    # a setting the checkpoint predates had its default value then
    saved = {**to_dict(TrainConfig()), **state["config"]}
    changed = {k: (saved.get(k), getattr(cfg, k)) for k in MUST_MATCH if saved.get(k) != getattr(cfg, k)}
    if state["dataset"] != dataset_fingerprint(ds):
        changed["dataset"] = (state["dataset"], dataset_fingerprint(ds))
    if state["world_size"] != d.world_size:
        changed["processes (world size)"] = (state["world_size"], d.world_size)
    if changed:
        detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise TrainingError(
            f"cannot resume {str(where)!r}: this run differs from the one that wrote it ({detail}). "
            "Use the same settings to resume, or start a new run with another --out-dir (or --no-resume "
            "to start over: the earlier run is moved aside)"
        )


@dataclass
class RunState:
    """Where a run is, besides its weights and optimizer: what a checkpoint saves to resume it."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # seconds of training steps (validations and saves not counted)
    total_steps: Optional[int] = None  # the schedule's length; None until a time budget has sized it


def train(cfg: TrainConfig, on_step: Optional[Callable] = None, on_eval: Optional[Callable] = None) -> Path:
    """Train (or resume, or fine-tune) as `cfg` says; return the checkpoint directory `<out_dir>/latest`.

    `on_step(record, model, batch)` runs after every optimizer step (`batch`: its last
    micro-batch), `on_eval(record, model)` after every validation; `record` is the dict
    written to metrics.jsonl. Both run on every rank of a DDP run (all ranks hold the same
    record). Under FSDP `model` holds this rank's shards: a forward pass in a hook must run on
    every rank. The notebook redraws its loss plot from them.
    """
    # 0 means no time limit (a flag cannot say None): `--max-steps 5000 --time-budget-s 0`
    budget_s = cfg.time_budget_s if cfg.time_budget_s else None
    if cfg.max_steps is None and budget_s is None:
        raise TrainingError("neither max_steps nor time_budget_s is set: pass --max-steps N or --time-budget-s S")
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out-dir {str(out)!r} is a file, not a directory; pass a directory for the run")
    want_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    d = init_distributed("cuda" if want_cuda else "cpu")
    try:
        if cfg.fsdp and not d.on:
            raise TrainingError("--fsdp shards the model over the processes of a torchrun group, and this is one "
                                "process (WORLD_SIZE is unset or 1): launch it with `torchrun --nproc-per-node N -m "
                                "mamba_nb train ... --fsdp` (N >= 2), or drop --fsdp")
        # one trainer per run directory (rank 0 writes it; the other ranks follow rank 0)
        with ckpt.RunLock(out) if d.main else contextlib.nullcontext():
            return Trainer(cfg, d, budget_s, on_step, on_eval).run()
    finally:
        if d.started_here:
            torch.distributed.destroy_process_group()


class Trainer:
    """One run: built or resumed on creation, then `run()` steps until the schedule, the time
    budget or a stop request ends it."""

    def __init__(self, cfg: TrainConfig, d: Dist, budget_s: Optional[float], on_step, on_eval):
        from tqdm.auto import tqdm

        from mamba_nb.dataset import open_dataset

        self.cfg, self.d, self.budget_s, self.on_step, self.on_eval = cfg, d, budget_s, on_step, on_eval
        self.device = pick_device(cfg.device, d)
        self.out = Path(cfg.out_dir)
        self.say = tqdm.write if d.main else (lambda *a, **k: None)
        self.ds = open_dataset(cfg.dataset, cfg.storage_options, cfg.dataset_cache)
        _check_fits(self.ds, cfg, d)
        self.tokenizer = self.ds.tokenizer
        self.gain_holes = self._gain_holes()
        self.sizer = ScheduleSizer(cfg, budget_s)  # a resume loads its place (`_restore`)
        self.resume_from: Optional[Path] = None  # the checkpoint a resumed run goes on from
        self.resumed = self._build_or_resume()
        self.tokens_per_step = cfg.batch_size * cfg.context_len * cfg.grad_accum * d.world_size
        self.last_saved = self.state.step if self.resumed else None

    def _build_or_resume(self) -> bool:
        """Set the model (and `net`, what the step calls), optimizer, run state and data stream; True
        when resuming a checkpoint."""
        saved = self._load_or_build()
        if self.cfg.gradient_checkpointing:
            from mamba_nb.model import enable_checkpointing

            enable_checkpointing(self.model)
        self.net = self._parallel()
        # after sharding: FSDP replaces the parameters with their shards
        self.optimizer = make_optimizer(self.model, self.cfg, self.device)
        if saved is not None:
            self._restore(saved)
        return saved is not None

    def _parallel(self):
        """The model as the step calls it: itself, wrapped in DDP, or sharded in place (FSDP)."""
        if self.cfg.fsdp:
            from mamba_nb.fsdp import shard_model

            return shard_model(self.model, self.device)
        if not self.d.on:
            return self.model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _load_or_build(self) -> Optional[dict]:
        """Set the model, run state and data stream; → the checkpoint's training state when resuming
        (with "from": its directory), None for a new run."""
        from mamba_nb.model import build_model, load_model, model_from_config, scan_name

        cfg, d = self.cfg, self.d
        resume_from = ckpt.find_resumable(self.out) if cfg.resume else None
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if resume_from is None:
                aside = ckpt.start_fresh(self.out, start_over=not cfg.resume)
                if aside is not None:
                    self.say(f"starting over: the earlier run in {str(self.out)!r} was moved to {str(aside)!r}")
        self.state, self.stream = RunState(total_steps=cfg.max_steps), DataStream(self.ds, cfg, d)
        if resume_from is None:
            seed_everything(cfg.seed)  # same initial weights on every rank, and run to run
            self.model, _ = build_model(cfg, self.tokenizer, device=self.device, verbose=d.main)
            return None
        saved = ckpt.load_training_state(resume_from)
        _check_resumable(saved, cfg, self.ds, d, resume_from)
        if cfg.fsdp:  # the weights are in the shards, read once the model is sharded (`_restore`)
            self.model, scan_path = model_from_config(resume_from, cfg.scan, self.device)
        else:
            self.model, scan_path = load_model(resume_from, cfg.scan, self.device, trainable=True)
        self.say(f"resuming {str(resume_from)!r} at step {saved['step']} ({saved['tokens_seen']:,} tokens seen); "
                 f"selective scan: {scan_name(scan_path)}")
        return {**saved, "from": resume_from}

    def _restore(self, saved: dict) -> None:
        """Go on where the checkpoint left off: its optimizer state (and an FSDP run's weights), step,
        schedule, data position and RNG states."""
        cfg, d = self.cfg, self.d
        if cfg.fsdp:
            from mamba_nb.fsdp import load_shards

            load_shards(self.model, self.optimizer, saved["from"] / ckpt.SHARDS)
        else:
            self.optimizer.load_state_dict(saved["optimizer"])
        s, self.resume_from = self.state, saved["from"]
        s.step, s.tokens_seen, s.elapsed_s = saved["step"], saved["tokens_seen"], saved["elapsed_s"]
        s.total_steps = cfg.max_steps if cfg.max_steps is not None else saved["total_steps"]
        if cfg.max_steps is None and self.budget_s != (saved["config"]["time_budget_s"] or None) and s.step > 0:
            # a new time budget: stretch the schedule at the speed the run has had so far
            s.total_steps = estimate_total_steps(self.budget_s, s.step, s.elapsed_s, s.elapsed_s / s.step)
        # where the time-budgeted schedule is timed again (absent from a checkpoint that predates it)
        self.sizer.load_state_dict(saved.get("schedule_sizer"))
        self.stream = DataStream(self.ds, cfg, d, **saved["data"])
        set_rng_state(saved["rng"])

    # --- the run ------------------------------------------------------------------------

    def run(self) -> Path:
        from tqdm.auto import tqdm

        cfg, s = self.cfg, self.state
        if self.resumed and (s.step >= (s.total_steps or math.inf)
                             or self.budget_s is not None and s.elapsed_s >= self.budget_s):
            self.say(f"the run in {str(self.out)!r} is already complete (step {s.step}, {s.elapsed_s:.0f} s of "
                     "training); pass a larger --max-steps or --time-budget-s to go on, or --no-resume to start over")
            return self.out / ckpt.LATEST
        from mamba_nb.runlog import RunLog

        self.log = RunLog(cfg, self.out, self.d.main, s.step if self.resumed else None, self.resume_from)
        self._announce()
        self.bar = tqdm(total=s.total_steps, initial=s.step, disable=not self.d.main, desc="train", dynamic_ncols=True)
        self.model.train()
        try:
            with StopRequest() as stop:
                while s.total_steps is None or s.step < s.total_steps:
                    record, batch = self._step(stop)
                    if record is None:  # stopped while fetching data: saved as of the step's start
                        return self.out / ckpt.LATEST
                    if self.on_step is not None:
                        self.on_step(record, self.model, batch)
                    sized = self.sizer.after_step(s.step, s.elapsed_s, record["step_s"], s.total_steps)
                    if sized is not None:
                        self._size_schedule(*sized)
                    if self._checkpoints(stop):
                        break
        finally:
            self.bar.close()
            self.log.close()
        self._summary()
        return self.out / ckpt.LATEST

    def _announce(self) -> None:
        if not self.d.main:
            return
        n_params = sum(p.numel() for p in self.model.parameters())
        decayed = sum(p.numel() for p in self.optimizer.param_groups[0]["params"])
        total = self.state.total_steps
        how = " (FSDP)" if self.cfg.fsdp else ""
        apart = ", each document of a window read on its own" if self.cfg.reset_at_documents else ""
        self.say(f"training on {self.device} x {self.d.world_size}{how}: {n_params / 1e6:.2f}M parameters "
                 f"({decayed / 1e6:.2f}M with weight decay), {self.tokens_per_step:,} tokens per step, "
                 + (f"{total} steps" if total else f"time budget {self.budget_s:.0f} s") + apart)

    def _step(self, stop: StopRequest) -> tuple[Optional[dict], Optional[dict]]:
        """One optimizer step over `grad_accum` micro-batches → (its metrics record, its last batch).

        (None, None) when a stop request arrived while fetching data (the state as of the
        step's start was saved)."""
        cfg, d, s, device = self.cfg, self.d, self.state, self.device
        t_step = time.perf_counter()
        lr = lr_at(s.step, cfg, s.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        wait_s = 0.0
        at_step_start = self.stream.state_dict()
        for micro in range(cfg.grad_accum):
            t_wait = time.perf_counter()
            try:
                batch = self.stream.next()
            except Exception:
                # Ctrl-C in a terminal reaches the DataLoader workers too, and a worker that quits
                # fails the batch being fetched. Nothing of this step has touched the weights yet:
                # save the state as of its start and stop.
                if stop.reason is None or d.on:
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                self.stream = DataStream(self.ds, cfg, d, **at_step_start)
                self._save()
                self.say(f"stopped at step {s.step} ({stop.reason}); checkpoint saved in "
                         f"{str(self.out / ckpt.LATEST)!r}. Run the same command again to resume.")
                return None, None
            wait_s += time.perf_counter() - t_wait
            loss_sum += self._forward_backward(batch, last=micro == cfg.grad_accum - 1)
        mean_loss = float(mean_over_ranks(loss_sum / cfg.grad_accum, d))
        if not math.isfinite(mean_loss):
            good = ckpt.find_resumable(self.out)
            raise TrainingError(
                f"the loss is {mean_loss} at step {s.step + 1}; stopping without saving. The last good checkpoint "
                f"is {str(good) + ' (step ' + str(self.last_saved) + ')' if good else 'none (nothing saved yet)'}. "
                f"Lower --lr (now {cfg.lr}) or --grad-clip (now {cfg.grad_clip}), then resume or rerun"
            )
        grad_norm = {}
        if cfg.grad_clip > 0:
            # FSDP: each rank holds shards of the gradients (DTensors); the norm is over all of them
            # (a DTensor replicated on every rank), so every shard is scaled alike
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            grad_norm["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        s.tokens_seen += self.tokens_per_step
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_s = time.perf_counter() - t_step
        s.elapsed_s += step_s
        record = {"kind": "train", "step": s.step, "tokens_seen": s.tokens_seen, "loss": mean_loss, "lr": lr,
                  "tokens_per_s": self.tokens_per_step / step_s, "step_s": step_s, "data_wait_s": wait_s,
                  "elapsed_s": s.elapsed_s, **grad_norm}
        self.log.log(record)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}")
        return record, batch

    def _forward_backward(self, batch: dict, last: bool) -> torch.Tensor:
        """Loss of one micro-batch, its gradient accumulated; → the loss (detached)."""
        device = self.device
        x = batch["input_ids"].to(device, non_blocking=True)
        y = batch["targets"].to(device, non_blocking=True)
        doc_starts = batch["doc_starts"].to(device, non_blocking=True) if self.cfg.reset_at_documents else None
        # DDP and FSDP: reduce the gradients over the ranks once per optimizer step, not per micro-batch
        # (FSDP then holds whole gradients between micro-batches: fewer messages, more memory)
        if self.cfg.fsdp:
            self.net.set_requires_gradient_sync(last)
        sync = self.net.no_sync() if self.d.on and not self.cfg.fsdp and not last else contextlib.nullcontext()
        with sync:
            with autocast(device):
                logits = model_logits(self.net, x, doc_starts)  # (B, L, V)
            loss = training_loss(logits, y, batch["middle_mask"].to(device), self.cfg.middle_loss_weight)
            (loss / self.cfg.grad_accum).backward()
        return loss.detach()

    def _size_schedule(self, per_step_s: float, note: str) -> None:
        """Fix the schedule's length from the steps' pace (`schedule.ScheduleSizer` says when)."""
        s = self.state
        estimate = estimate_total_steps(self.budget_s, s.step, s.elapsed_s, per_step_s)
        s.total_steps = int(min_over_ranks(estimate, self.d, self.device))  # every rank: the slowest's schedule
        self.bar.total = s.total_steps
        self.bar.refresh()
        self.say(f"time budget {self.budget_s:.0f} s at {per_step_s:.3f} s/step: a schedule of {s.total_steps} "
                 f"steps{note}")

    def _checkpoints(self, stop: StopRequest) -> bool:
        """Validate and save when due; → True when the run stops after this step."""
        cfg, s = self.cfg, self.state
        last = s.total_steps is not None and s.step >= s.total_steps
        out_of_time = self.budget_s is not None and s.elapsed_s >= self.budget_s
        stopping = any_rank(stop.reason is not None or out_of_time, self.d, self.device)
        if s.step % cfg.eval_every == 0 or last or stopping and out_of_time:
            try:
                self._validate()
            except Exception as err:
                # keep what this run trained before reporting (a damaged validation split, ...)
                self._save()
                raise TrainingError(
                    f"the validation at step {s.step} failed ({type(err).__name__}: {err}); the run was saved "
                    f"first, at step {s.step}, in {str(self.out / ckpt.LATEST)!r}. Fix the cause (a damaged "
                    "dataset: rebuild it with --overwrite), then run the same command again to resume"
                ) from err
        if s.step % cfg.save_every == 0 or last or stopping:
            self._save(final=last or stopping)
            self.last_saved = s.step
        if stopping:
            why = stop.reason or f"time budget of {self.budget_s:.0f} s used"
            self.say(f"stopped at step {s.step} ({why}); checkpoint saved in {str(self.out / ckpt.LATEST)!r}. "
                     "Run the same command again to resume.")
        return stopping

    def _gain_holes(self) -> list:
        """The fixed held-out lines each validation measures the suffix gain on (the main process only,
        but every process of an FSDP run)."""
        from mamba_nb.holes import line_tasks

        # FSDP: every rank runs the same forward passes, whose gathers of the weights are collective
        if not ((self.d.main or self.cfg.fsdp) and self.cfg.gain_holes):
            return []
        return line_tasks(self.ds.documents("validation"), self.cfg.gain_holes, seed=0, tokenizer=self.tokenizer)

    def _suffix_gain(self) -> dict:
        from mamba_nb.infill import near_lines_for
        from mamba_nb.suffix_gain import suffix_gain

        if not self.gain_holes:
            return {}
        was_training = self.model.training
        self.model.eval()
        try:
            with self._whole_root():
                g = suffix_gain(self.model, self.tokenizer, self.gain_holes, modes=("spm",),
                                context_len=self.cfg.context_len, near_lines=near_lines_for(self.cfg.fim_region_lines))
        finally:
            self.model.train(was_training)
        spm, best = g["spm"], g["best"]  # the gain, its controls (suffix_gain.py), the best prompt's middle loss
        return {"val_suffix_gain": spm["gain"], "val_suffix_gain_interval": spm["interval"],
                "val_content_gain": spm["content_gain"], "val_content_gain_interval": spm["content_interval"],
                "val_best_middle_loss": best["loss"], "val_best_middle_loss_interval": best["interval"],
                "val_best_prompt": best["prompt"]}

    def _validate(self) -> None:
        cfg, s = self.cfg, self.state
        losses = validation_losses(self.model, self.ds, cfg, cfg.batch_size, cfg.eval_windows, self.device, self.d)
        losses.update(self._suffix_gain())
        record = {"kind": "eval", "step": s.step, "tokens_seen": s.tokens_seen, **losses}
        self.log.log(record)
        weights = self._full_weights()
        if self.d.main:
            gain = (f", suffix gain {losses['val_suffix_gain']:+.3f} (content {losses['val_content_gain']:+.3f})"
                    if "val_suffix_gain" in losses else "")
            self.say(f"step {s.step}: val_loss {losses['val_loss']:.4f}, val_fim_loss {losses['val_fim_loss']:.4f}{gain}")
            info = {**record, "elapsed_s": s.elapsed_s}
            ckpt.save_snapshot(self.out, self.model, self.tokenizer, info, weights)
            self.log.plot(self.out)
        if self.on_eval is not None:
            self.on_eval(record, self.model)

    def _whole_root(self):
        if not self.cfg.fsdp:
            return contextlib.nullcontext()
        from mamba_nb.fsdp import whole_root

        return whole_root(self.model)

    def _full_weights(self) -> Optional[dict]:
        """FSDP: the whole weights, gathered on rank 0 (every rank takes part); None otherwise."""
        if not self.cfg.fsdp:
            return None
        from mamba_nb.fsdp import full_weights

        return full_weights(self.model)

    def _training_state(self) -> dict:
        s = self.state
        # FSDP: the optimizer state is in the shards, each rank's part in its own file
        optimizer = {} if self.cfg.fsdp else {"optimizer": self.optimizer.state_dict()}
        return {"step": s.step, "tokens_seen": s.tokens_seen, "elapsed_s": s.elapsed_s, "total_steps": s.total_steps,
                "schedule_sizer": self.sizer.state_dict(), **optimizer, "data": self.stream.state_dict(),
                "rng": rng_state(), "config": to_dict(self.cfg), "dataset": dataset_fingerprint(self.ds),
                "world_size": self.d.world_size}

    def _save(self, final: bool = False) -> None:
        """Write `latest/`. An FSDP run's ranks write their shards; its `final` save (the run ends)
        also writes the whole weights, so `latest/` loads anywhere like a DDP run's."""
        if self.cfg.fsdp:
            from mamba_nb.fsdp import save_shards

            weights = self._full_weights() if final else None
            state = self._training_state() if self.d.main else None
            ckpt.save_sharded_checkpoint(self.out, self.d.main, lambda to: save_shards(self.model, self.optimizer, to),
                                         self.model, self.tokenizer, state, to_dict(self.cfg), weights)
        elif self.d.main:
            ckpt.save_checkpoint(self.out, self.model, self.tokenizer, self._training_state(), to_dict(self.cfg))
        if self.d.on:
            torch.distributed.barrier()

    def _summary(self) -> None:
        if not self.d.main:
            return
        if self.log.records and self.log.records[-1]["kind"] == "train":
            self.log.plot(self.out)  # (a validation just drew it otherwise)
        spent, waits = self.log.time_shares()
        if spent > 0:
            self.say(f"done: {self.state.step} steps, {self.state.tokens_seen:,} tokens; waiting for data took "
                     f"{100 * waits / spent:.1f}% of the step time")
