"""The training loop: `train(cfg) -> Path` trains or fine-tunes a Mamba with FIM windows.

What one run does, in order:
1. joins a `torchrun` group when WORLD_SIZE > 1 (DDP; gloo on CPU, nccl on CUDA);
2. opens the Lance dataset, builds the model (`model.build_model`, which says which
   selective scan runs) or reloads `<out_dir>/latest/` to resume;
3. steps: AdamW (weight decay on weight matrices only, see `param_groups`), linear warmup
   then cosine decay to `min_lr_ratio * lr` (`lr_at`), gradient accumulation and clipping,
   bf16 autocast on CUDA with fp32 weights, loss on every target except `<fim_pad>`;
4. every `eval_every` steps and at the end: the validation loss left-to-right (FIM off)
   and on FIM middles (FIM on every window, loss on middle tokens only), a snapshot
   for notebook 05, and `loss.png`;
5. every `save_every` steps, at the end, and on Ctrl-C / SIGTERM: `<out_dir>/latest/`.

Resume is exact: the checkpoint holds the optimizer, the schedule's length, the data
position, the RNG states, the step and the tokens seen, so a run stopped at step k and
resumed gives bit for bit the losses of a run that never stopped (on CPU).

The schedule needs its length up front. With `max_steps` that is the length. With only
`time_budget_s`, the first few warmup steps (whose learning rate does not depend on the
length) are timed, and the length is fixed from that speed and saved in the checkpoint;
the run still stops when the time is up, even if the estimate was long.

Not here: windows and FIM (`windows.py`), the model and its sizes (`model.py`), the
checkpoint files (`checkpoint.py`), the pictures (`viz/training.py`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from mamba_nb import checkpoint as ckpt
from mamba_nb.config import ModelConfig, TrainConfig, WindowConfig, to_dict

IGNORE = -100  # targets the loss skips (<fim_pad>, and non-middle tokens in the FIM-middle loss)
TIME_PROBE_STEPS = 10  # at most this many warmup steps are timed to size a time-budgeted schedule

# Settings a resumed run must share with the checkpoint: anything else would not continue
# the same run (another model, other windows, another order of data).
MUST_MATCH = ("arch", "preset", "pretrained", "hidden_size", "num_hidden_layers", "state_size", "context_len",
              "fim_rate", "spm_rate", "fim_level", "fim_region_lines", "line_hole_rate", "seed", "batch_size",
              "grad_accum")


class TrainingError(RuntimeError):
    """The run cannot start or go on; the message says why and what to change."""


# --- the optimizer and the schedule ---------------------------------------------


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


def make_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # fused AdamW is one kernel per step on CUDA; on the CPU the default (foreach) is best
    fused = device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95),
                             eps=1e-8, fused=fused)


def lr_at(step: int, cfg: TrainConfig, total_steps: Optional[int]) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio.

    `total_steps` may be None only during warmup (and at the first step after it, where
    the cosine is at its peak whatever the length).
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


def estimate_total_steps(cfg: TrainConfig, done: int, elapsed_s: float, step_s: float) -> int:
    """Steps that fit `time_budget_s`, given `done` steps in `elapsed_s` and `step_s` per step.

    The budget counts training steps only (`elapsed_s` is their sum): validations and
    checkpoints come on top, so they never shorten the schedule.
    """
    return max(done + 1, done + int((cfg.time_budget_s - elapsed_s) / step_s))


def training_loss(logits: torch.Tensor, targets: torch.Tensor, middle_mask: torch.Tensor,
                  middle_weight: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy over the targets (B, L) that count, FIM-middle targets weighted
    `middle_weight` times the others (1: the plain token mean, as the FIM paper trains)."""
    flat = logits.float().flatten(0, 1)  # (B * L, V)
    if middle_weight == 1.0:
        return F.cross_entropy(flat, targets.flatten(), ignore_index=IGNORE)
    per_token = F.cross_entropy(flat, targets.flatten(), ignore_index=IGNORE, reduction="none")
    weights = torch.where(middle_mask.flatten(), middle_weight, 1.0) * (targets.flatten() != IGNORE)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)


def fim_loss_targets(targets: torch.Tensor, middle_mask: torch.Tensor) -> torch.Tensor:
    """Targets (B, L) with every token outside a FIM middle ignored."""
    return targets.masked_fill(~middle_mask, IGNORE)


# --- the distributed group, the device, signals -----------------------------------


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> Dist:
    """Join the process group `torchrun` describes in the environment (RANK, WORLD_SIZE, ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        started = True
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), started)


def pick_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("device='cuda' but torch sees no GPU; pass --device cpu (or auto)")
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device(name)


class StopRequest:
    """Ctrl-C and SIGTERM set a flag; the loop saves at the end of the step and returns.

    A second Ctrl-C interrupts at once (no save). Handlers are installed only in the
    main thread (Python's rule) and put back afterwards.
    """

    def __init__(self):
        self.reason: Optional[str] = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank if it is true on one: all ranks must stop at the same step."""
    if not d.on:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _mean_over_ranks(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.on:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = values / d.world_size
    return values


# --- RNG states (saved as tensors and plain values so the state loads with weights_only) ---


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- data ------------------------------------------------------------------------


def window_config(cfg: TrainConfig, **changes) -> WindowConfig:
    values = {f.name: getattr(cfg, f.name) for f in fields(WindowConfig)}
    values.update(changes)
    return WindowConfig(**values)


def dataset_fingerprint(ds) -> dict:
    """What identifies a dataset for resuming: its sizes and its tokenizer (not its path)."""
    vocab = ds.tokenizer.get_vocab()
    return {"train_tokens": int(ds.num_tokens("train")), "validation_tokens": int(ds.num_tokens("validation")),
            "vocab_size": max(vocab.values()) + 1}


def check_context_len(ds, cfg: TrainConfig, d: Dist) -> None:
    need = (cfg.context_len + 1) * cfg.batch_size * d.world_size
    for split, n_need in (("train", need), ("validation", cfg.context_len + 1)):
        have = ds.num_tokens(split)
        if have < n_need:
            raise TrainingError(
                f"context_len={cfg.context_len} cannot be filled from the {split} split of {str(ds.path)!r}: "
                f"it holds {have} tokens, and one {'batch' if split == 'train' else 'window'} needs {n_need} "
                f"(context_len + 1 per window{' x batch_size x processes' if split == 'train' else ''}); "
                "pass a smaller --context-len (or --batch-size), or build a larger dataset "
                "(`python -m mamba_nb build-dataset` with more documents)"
            )


class DataStream:
    """Endless batches of the train split that knows its place: (epoch, batches taken this epoch).

    The place is counted here, on the consuming side, not read from the sampler, because
    DataLoader workers prefetch ahead of what the loop has used.
    """

    def __init__(self, ds, cfg: TrainConfig, d: Dist, epoch: int = 0, batches: int = 0):
        self.ds, self.cfg, self.d = ds, cfg, d
        self.epoch, self.batches = epoch, batches
        self._it = None

    def _open(self):
        from mamba_nb.windows import make_loader

        loader, sampler = make_loader(self.ds, "train", window_config(self.cfg), self.cfg.batch_size,
                                      num_workers=self.cfg.num_workers, shuffle=True, rank=self.d.rank,
                                      world_size=self.d.world_size, epoch=self.epoch)
        if self.batches:
            # the sampler counts windows; skip those of the batches already trained on
            sampler.load_state_dict({"epoch": self.epoch, "position": self.batches * self.cfg.batch_size})
        self._it = iter(loader)

    def next(self) -> dict:
        for _ in range(2):
            if self._it is None:
                self._open()
            batch = next(self._it, None)
            if batch is not None:
                self.batches += 1
                return batch
            self._it, self.epoch, self.batches = None, self.epoch + 1, 0
        raise TrainingError(f"the train split of {str(self.ds.path)!r} gives no batch of "
                            f"{self.cfg.batch_size} windows of context_len={self.cfg.context_len}; "
                            "pass a smaller --batch-size or --context-len")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches}


@torch.no_grad()
def validation_losses(model, ds, cfg: TrainConfig, device: torch.device, d: Dist) -> dict:
    """`val_loss` (FIM off, all tokens), `val_bpb` (the same loss in bits per byte of text, which
    compares across tokenizers) and `val_fim_loss` (FIM on every window, middle tokens).

    The same `eval_windows` windows every time (a fixed seed and epoch 0), split over the
    ranks; losses are token-weighted means over all of them.
    """
    from mamba_nb.tokenizer import text_bytes_per_token
    from mamba_nb.windows import make_loader

    byte_counts = torch.from_numpy(text_bytes_per_token(ds.tokenizer))
    out = {}
    was_training = model.training
    model.eval()
    # creating a DataLoader iterator draws from torch's global RNG: keep validation from
    # shifting the training run's random stream (exact resume depends on it)
    with torch.random.fork_rng(devices=[]):
        for key, fim_rate in (("val_loss", 0.0), ("val_fim_loss", 1.0)):
            loader, _ = make_loader(ds, "validation", window_config(cfg, fim_rate=fim_rate), cfg.batch_size,
                                    num_workers=0, shuffle=True, rank=d.rank, world_size=d.world_size, epoch=0)
            per_rank = max(1, cfg.eval_windows // d.world_size)
            total = torch.zeros(3, dtype=torch.float64, device=device)  # (loss sum, tokens, bytes of text)
            seen = 0
            for batch in loader:
                if seen >= per_rank:
                    break
                take = min(per_rank - seen, batch["input_ids"].shape[0])
                seen += take
                x = batch["input_ids"][:take].to(device)
                y = batch["targets"][:take].to(device)
                if fim_rate > 0:
                    y = fim_loss_targets(y, batch["middle_mask"][:take].to(device))
                with _autocast(device):
                    logits = model(input_ids=x, use_cache=False).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                                       reduction="sum")
                scored = y[y != IGNORE].cpu()
                total += torch.stack([loss.double(), torch.tensor(float(len(scored)), device=device),
                                      byte_counts[scored].sum().double().to(device)])
            if d.on:
                import torch.distributed as dist

                dist.all_reduce(total)
            out[key] = float(total[0] / total[1]) if total[1] > 0 else float("nan")
            if fim_rate == 0:
                out["val_bpb"] = float(total[0] / (total[2] * math.log(2))) if total[2] > 0 else float("nan")
    model.train(was_training)
    return out


def _autocast(device: torch.device):
    # bf16 matmuls with fp32 weights and fp32 optimizer state: bf16 has fp32's range, so no
    # loss scaling is needed (fp16 is where Mamba's NaNs come from)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- logging ------------------------------------------------------------------------


class Loggers:
    """metrics.jsonl always; TensorBoard and W&B only when asked for and installed."""

    def __init__(self, cfg: TrainConfig, out: Path, main: bool, resume_step: Optional[int]):
        self.path = out / "metrics.jsonl"
        self.main = main
        self.records: list[dict] = []
        self.tb = self.wandb = None
        if not main:
            return
        if resume_step is not None and self.path.exists():
            # a run killed after its last checkpoint logged steps it will now redo: drop them (and a
            # line torn by a crash or a full disk)
            self.records = [r for r in ckpt.read_metrics_file(self.path) if r["step"] <= resume_step]
        self._write(lambda f: f.write("".join(json.dumps(r) + "\n" for r in self.records)), "w")
        if cfg.log_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                print("note: log_tensorboard is set but tensorboard is not installed (pip install tensorboard)")
        if cfg.log_wandb:
            try:
                import wandb

                self.wandb = wandb.init(project="mamba-nb", dir=str(out), config=to_dict(cfg), resume="allow")
            except ImportError:
                print("note: log_wandb is set but wandb is not installed (pip install wandb)")

    def log(self, record: dict) -> None:
        if not self.main:
            return
        self.records.append(record)
        self._write(lambda f: f.write(json.dumps(record) + "\n"), "a")
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step",)}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(f"{record['kind']}/{k}", v, record["step"])
        if self.wandb is not None:
            self.wandb.log({f"{record['kind']}/{k}": v for k, v in numbers.items()}, step=record["step"])

    def _write(self, write, mode: str) -> None:
        try:
            with self.path.open(mode) as f:
                write(f)
        except OSError as err:
            raise TrainingError(
                f"could not write {str(self.path)!r} ({err.strerror or err}); the checkpoint in "
                f"{str(self.path.parent / ckpt.LATEST)!r} (if any) is intact, and a torn last line is dropped on "
                "resume. Free disk space, then run the same command again to resume"
            ) from None

    def plot(self, out: Path) -> None:
        if not self.main:
            return
        from mamba_nb.viz.training import plot_loss

        fig = plot_loss(self.records)
        fig.savefig(out / "loss.png", dpi=100)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# --- the run --------------------------------------------------------------------------


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
            "to overwrite this one)"
        )


def train(cfg: TrainConfig, on_step: Optional[Callable] = None, on_eval: Optional[Callable] = None) -> Path:
    """Train (or resume, or fine-tune) as `cfg` says; return the checkpoint directory `<out_dir>/latest`.

    `on_step(record, model, batch)` runs after every optimizer step (`batch`: its last
    micro-batch), `on_eval(record, model)` after every validation; `record` is the dict
    written to metrics.jsonl. Both run on every rank of a DDP run (all ranks hold the same
    record). The notebook redraws its loss plot from them.
    """
    # 0 means no time limit (a flag cannot say None): `--max-steps 5000 --time-budget-s 0`
    budget_s = cfg.time_budget_s if cfg.time_budget_s else None
    if cfg.max_steps is None and budget_s is None:
        raise TrainingError("neither max_steps nor time_budget_s is set: pass --max-steps N or --time-budget-s S")
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise TrainingError(f"batch_size={cfg.batch_size} and grad_accum={cfg.grad_accum} must be >= 1")
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out-dir {str(out)!r} is a file, not a directory; pass a directory for the run")
    want_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    d = init_distributed("cuda" if want_cuda else "cpu")
    try:
        # one trainer per run directory (rank 0 writes it; the other ranks follow rank 0)
        with ckpt.RunLock(out) if d.main else contextlib.nullcontext():
            return _run(cfg, d, budget_s, on_step, on_eval)
    finally:
        if d.started_here:
            torch.distributed.destroy_process_group()


def _run(cfg: TrainConfig, d: Dist, budget_s: Optional[float], on_step, on_eval) -> Path:
    from tqdm.auto import tqdm

    from mamba_nb.dataset import open_dataset
    from mamba_nb.model import SCAN_NAMES, _install_scan, _load_pretrained, build_model

    device = pick_device(cfg.device, d)
    out = Path(cfg.out_dir)
    say = tqdm.write if d.main else (lambda *a, **k: None)

    ds = open_dataset(cfg.dataset)
    check_context_len(ds, cfg, d)
    tokenizer = ds.tokenizer

    resume_from = ckpt.find_resumable(out) if cfg.resume else None
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            aside = ckpt.start_fresh(out, start_over=not cfg.resume)
            if aside is not None:
                say(f"starting over: the earlier run in {str(out)!r} was moved to {str(aside)!r}")
    if resume_from is not None:
        state = ckpt.load_training_state(resume_from)
        _check_resumable(state, cfg, ds, d, resume_from)
        model = _load_pretrained(str(resume_from)).to(device)
        scan_path = _install_scan(model, cfg.scan)
        say(f"resuming {str(resume_from)!r} at step {state['step']} ({state['tokens_seen']:,} tokens seen); "
            f"selective scan: {SCAN_NAMES.get(scan_path, scan_path)}")
    else:
        state = None
        seed_everything(cfg.seed)  # same initial weights on every rank, and run to run
        model, scan_path = build_model(ModelConfig(**{f.name: getattr(cfg, f.name) for f in fields(ModelConfig)}),
                                       tokenizer, device=device, verbose=d.main)
    optimizer = make_optimizer(model, cfg, device)
    step, tokens_seen, elapsed_s, total_steps = 0, 0, 0.0, cfg.max_steps
    stream = DataStream(ds, cfg, d)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step, tokens_seen, elapsed_s = state["step"], state["tokens_seen"], state["elapsed_s"]
        total_steps = cfg.max_steps if cfg.max_steps is not None else state["total_steps"]
        if cfg.max_steps is None and budget_s != (state["config"]["time_budget_s"] or None) and step > 0:
            # a new time budget: stretch the schedule at the speed the run has had so far
            total_steps = estimate_total_steps(cfg, step, elapsed_s, elapsed_s / step)
        stream = DataStream(ds, cfg, d, **state["data"])
        set_rng_state(state["rng"])
    net = model
    if d.on:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    if state is not None and (step >= (total_steps or math.inf)
                              or budget_s is not None and elapsed_s >= budget_s):
        say(f"the run in {str(out)!r} is already complete (step {step}, {elapsed_s:.0f} s of training); "
            "pass a larger --max-steps or --time-budget-s to go on, or --no-resume to start over")
        return out / ckpt.LATEST
    loggers = Loggers(cfg, out, d.main, state["step"] if state else None)
    tokens_per_step = cfg.batch_size * cfg.context_len * cfg.grad_accum * d.world_size
    if d.main:
        n_params = sum(p.numel() for p in model.parameters())
        groups = optimizer.param_groups
        say(f"training on {device} x {d.world_size}: {n_params / 1e6:.2f}M parameters "
            f"({sum(p.numel() for p in groups[0]['params']) / 1e6:.2f}M with weight decay), "
            f"{tokens_per_step:,} tokens per step, "
            + (f"{total_steps} steps" if total_steps else f"time budget {budget_s:.0f} s"))

    def training_state() -> dict:
        return {"step": step, "tokens_seen": tokens_seen, "elapsed_s": elapsed_s, "total_steps": total_steps,
                "optimizer": optimizer.state_dict(), "data": stream.state_dict(), "rng": rng_state(),
                "config": to_dict(cfg), "dataset": dataset_fingerprint(ds), "world_size": d.world_size}

    def save() -> None:
        if d.main:
            ckpt.save_checkpoint(out, model, tokenizer, training_state(), to_dict(cfg))
        if d.on:
            torch.distributed.barrier()

    def validate() -> None:
        losses = validation_losses(model, ds, cfg, device, d)
        record = {"kind": "eval", "step": step, "tokens_seen": tokens_seen, **losses}
        loggers.log(record)
        if d.main:
            say(f"step {step}: val_loss {losses['val_loss']:.4f}, val_fim_loss {losses['val_fim_loss']:.4f}")
            ckpt.save_snapshot(out, model, tokenizer, {**record, "elapsed_s": elapsed_s})
            loggers.plot(out)
        if on_eval is not None:
            on_eval(record, model)

    def size_schedule(since: tuple[int, float], note: str = "") -> None:
        """Fix `total_steps` from the pace of the steps after `since` = (step, elapsed_s)."""
        nonlocal total_steps
        n = step - since[0]
        per = (elapsed_s - since[1]) / n if n > 0 else step_s  # nothing timed yet: this step's time
        estimate = estimate_total_steps(cfg, step, elapsed_s, per)
        if d.on:  # every rank must run the same schedule: the slowest one's
            t = torch.tensor([float(estimate)], device=device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
            estimate = int(t.item())
        total_steps = estimate
        bar.total = total_steps
        bar.refresh()
        say(f"time budget {budget_s:.0f} s at {per:.3f} s/step: a schedule of {total_steps} steps{note}")

    bar = tqdm(total=total_steps, initial=step, disable=not d.main, desc="train", dynamic_ncols=True)
    probe_end = max(1, min(cfg.warmup_steps, TIME_PROBE_STEPS))  # see lr_at: no length needed before it
    probe = None  # (step, elapsed_s) where timing the steps began
    # the step at which a time-budgeted schedule is sized again (end of warmup), if after the probe
    refine_at = cfg.warmup_steps if cfg.warmup_steps > probe_end + 1 else None
    last_saved = step if state is not None else None
    model.train()
    try:
        with StopRequest() as stop:
            while total_steps is None or step < total_steps:
                t_step = time.perf_counter()
                lr = lr_at(step, cfg, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                wait_s = 0.0
                at_step_start = stream.state_dict()
                for micro in range(cfg.grad_accum):
                    t_wait = time.perf_counter()
                    try:
                        batch = stream.next()
                    except Exception:
                        # Ctrl-C in a terminal reaches the DataLoader workers too, and a worker
                        # that quits fails the batch being fetched. Nothing of this step has
                        # touched the weights yet: save the state as of its start and stop.
                        if stop.reason is None or d.on:
                            raise
                        optimizer.zero_grad(set_to_none=True)
                        stream = DataStream(ds, cfg, d, **at_step_start)
                        save()
                        say(f"stopped at step {step} ({stop.reason}); checkpoint saved in "
                            f"{str(out / ckpt.LATEST)!r}. Run the same command again to resume.")
                        return out / ckpt.LATEST
                    wait_s += time.perf_counter() - t_wait
                    x = batch["input_ids"].to(device, non_blocking=True)
                    y = batch["targets"].to(device, non_blocking=True)
                    # DDP: all-reduce the gradients once per optimizer step, not per micro-batch
                    sync = net.no_sync() if d.on and micro < cfg.grad_accum - 1 else contextlib.nullcontext()
                    with sync:
                        with _autocast(device):
                            logits = net(input_ids=x, use_cache=False).logits  # (B, L, V)
                        loss = training_loss(logits, y, batch["middle_mask"].to(device), cfg.middle_loss_weight)
                        (loss / cfg.grad_accum).backward()
                    loss_sum += loss.detach()
                mean_loss = float(_mean_over_ranks(loss_sum / cfg.grad_accum, d))
                if not math.isfinite(mean_loss):
                    good = ckpt.find_resumable(out)
                    raise TrainingError(
                        f"the loss is {mean_loss} at step {step + 1}; stopping without saving. The last good "
                        f"checkpoint is {str(good) + ' (step ' + str(last_saved) + ')' if good else 'none (nothing saved yet)'}. "
                        f"Lower --lr (now {cfg.lr}) or --grad-clip (now {cfg.grad_clip}), then resume or rerun"
                    )
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += tokens_per_step
                if device.type == "cuda":
                    torch.cuda.synchronize()
                step_s = time.perf_counter() - t_step
                elapsed_s += step_s
                record = {"kind": "train", "step": step, "tokens_seen": tokens_seen, "loss": mean_loss, "lr": lr,
                          "tokens_per_s": tokens_per_step / step_s, "step_s": step_s, "data_wait_s": wait_s,
                          "elapsed_s": elapsed_s}
                loggers.log(record)
                bar.update(1)
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}")
                if on_step is not None:
                    on_step(record, model, batch)

                # A time budget sizes the schedule from timed steps (the first step is not timed:
                # it pays for start-up, such as DataLoader workers). A first estimate after a few
                # steps gives the progress bar its length; the early steps are slow (allocator and
                # caches warming up), so the estimate is made again, from the steadier steps since,
                # when warmup ends: the cosine needs the length only after that.
                if budget_s is not None and cfg.max_steps is None:
                    if total_steps is None:
                        if probe is None:
                            probe = (step, elapsed_s)
                        if step >= probe_end:
                            size_schedule(probe)
                            probe = (step, elapsed_s)  # the refinement times the steps after this one
                    elif step == refine_at and probe is not None and step > probe[0]:
                        size_schedule(probe, " (timed again after warmup)")

                last = total_steps is not None and step >= total_steps
                out_of_time = budget_s is not None and elapsed_s >= budget_s
                stopping = _any_rank(stop.reason is not None or out_of_time, d, device)
                if step % cfg.eval_every == 0 or last or stopping and out_of_time:
                    try:
                        validate()
                    except Exception as err:
                        # keep what this run trained before reporting (a damaged validation split, ...)
                        save()
                        raise TrainingError(
                            f"the validation at step {step} failed ({type(err).__name__}: {err}); the run was saved "
                            f"first, at step {step}, in {str(out / ckpt.LATEST)!r}. Fix the cause (a damaged dataset: "
                            "rebuild it with --overwrite), then run the same command again to resume"
                        ) from err
                if step % cfg.save_every == 0 or last or stopping:
                    save()
                    last_saved = step
                if stopping:
                    why = stop.reason or f"time budget of {budget_s:.0f} s used"
                    say(f"stopped at step {step} ({why}); checkpoint saved in {str(out / ckpt.LATEST)!r}. "
                        "Run the same command again to resume.")
                    break
    finally:
        bar.close()
        loggers.close()
    if d.main:
        if loggers.records and loggers.records[-1]["kind"] == "train":
            loggers.plot(out)  # (a validation just drew it otherwise)
        waits = sum(r["data_wait_s"] for r in loggers.records if r["kind"] == "train")
        spent = sum(r["step_s"] for r in loggers.records if r["kind"] == "train")
        if spent > 0:
            say(f"done: {step} steps, {tokens_seen:,} tokens; waiting for data took {100 * waits / spent:.1f}% "
                "of the step time")
    return out / ckpt.LATEST
