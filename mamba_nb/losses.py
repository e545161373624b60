"""The losses a run trains on and the validation losses it reports.

- `training_loss`: cross-entropy over every target except `<fim_pad>` (`fim.IGNORE_INDEX`),
  FIM-middle targets optionally weighted (`middle_loss_weight`);
- `validation_losses`: on the same held-out windows every time, `val_loss` (FIM off, every
  token), `val_bpb` (that loss in bits per byte of text: comparable across tokenizers) and
  `val_fim_loss` (FIM on every window, middle tokens only), the windows read as training reads
  them (`reset_at_documents`, `doc_reset.model_logits`);
- `autocast`: bf16 matmuls on CUDA with fp32 weights (bf16 has fp32's range, so no loss scaling;
  fp16 is where Mamba's NaNs come from); full fp32 elsewhere.

Not here: the optimizer and the schedule (`schedule.py`), the loop (`train.py`).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from mamba_nb.doc_reset import model_logits
from mamba_nb.fim import IGNORE_INDEX


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_loss(logits: torch.Tensor, targets: torch.Tensor, middle_mask: torch.Tensor,
                  middle_weight: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy over the targets (B, L) that count, FIM-middle targets weighted
    `middle_weight` times the others (1: the plain token mean, as the FIM paper trains)."""
    flat = logits.float().flatten(0, 1)  # (B * L, V)
    if middle_weight == 1.0:
        return F.cross_entropy(flat, targets.flatten(), ignore_index=IGNORE_INDEX)
    per_token = F.cross_entropy(flat, targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    weights = torch.where(middle_mask.flatten(), middle_weight, 1.0) * (targets.flatten() != IGNORE_INDEX)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)


def fim_loss_targets(targets: torch.Tensor, middle_mask: torch.Tensor) -> torch.Tensor:
    """Targets (B, L) with every token outside a FIM middle ignored."""
    return targets.masked_fill(~middle_mask, IGNORE_INDEX)


@torch.no_grad()
def validation_losses(model, ds, window, batch_size: int, eval_windows: int, device: torch.device, d) -> dict:
    """`val_loss`, `val_bpb` and `val_fim_loss` (module docstring) over `eval_windows` windows of
    the validation split, laid out and read as `window` (a `WindowConfig`: context_len, FIM settings,
    seed, reset_at_documents) says.

    The same windows every time (a fixed seed and epoch 0): the first `eval_windows` of the whole
    split's order, whatever the number of ranks, dealt over the ranks of `d` (a `runtime.Dist`) by
    `validation_totals`; losses are token-weighted means over all of them.
    """
    out = {}
    was_training = model.training
    model.eval()
    # creating a DataLoader iterator draws from torch's global RNG: keep validation from
    # shifting the training run's random stream (exact resume depends on it)
    with torch.random.fork_rng(devices=[]):
        for key, fim_rate in (("val_loss", 0.0), ("val_fim_loss", 1.0)):
            total = validation_totals(model, ds, window, fim_rate, batch_size, eval_windows, device,
                                      d.rank, d.world_size)
            if d.on:
                import torch.distributed as dist

                dist.all_reduce(total)
            out[key] = float(total[0] / total[1]) if total[1] > 0 else float("nan")
            if fim_rate == 0:
                out["val_bpb"] = float(total[0] / (total[2] * math.log(2))) if total[2] > 0 else float("nan")
    model.train(was_training)
    return out


def validation_totals(model, ds, window, fim_rate: float, batch_size: int, eval_windows: int,
                      device: torch.device, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of the validation sums: (loss sum, tokens scored, bytes of their text), float64.

    Summed over the ranks they are one process's sums: the first `eval_windows` windows of the
    split's one order (read as rank 0 of 1), dealt round-robin, batch by batch. (Sharding the split
    itself would round it down to a multiple of the ranks: other windows than one process reads.)
    Every rank runs the same number of forwards, as FSDP's collectives need: a rank left without a
    window in the last batch scores one with weight 0.
    """
    from dataclasses import replace

    from mamba_nb.tokenizer import text_bytes_per_token
    from mamba_nb.windows import make_loader

    byte_counts = torch.from_numpy(text_bytes_per_token(ds.tokenizer))
    loader, _ = make_loader(ds, "validation", replace(window, fim_rate=fim_rate), batch_size * world_size,
                            num_workers=0, shuffle=True, rank=0, world_size=1, epoch=0)
    total = torch.zeros(3, dtype=torch.float64, device=device)
    seen = 0
    for batch in loader:
        if seen >= eval_windows:
            break
        take = min(eval_windows - seen, batch["input_ids"].shape[0])
        seen += take
        mine, weight = torch.arange(rank, max(rank, take), world_size), 1.0
        if len(mine) == 0:
            mine, weight = torch.tensor([0]), 0.0
        x, y = batch["input_ids"][mine].to(device), batch["targets"][mine].to(device)
        if fim_rate > 0:
            y = fim_loss_targets(y, batch["middle_mask"][mine].to(device))
        doc_starts = batch["doc_starts"][mine].to(device) if window.reset_at_documents else None
        with autocast(device):
            logits = model_logits(model, x, doc_starts)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        scored = y[y != IGNORE_INDEX].cpu()
        total += weight * torch.stack([loss.double(), torch.tensor(float(len(scored)), device=device),
                                       byte_counts[scored].sum().double().to(device)])
    return total
