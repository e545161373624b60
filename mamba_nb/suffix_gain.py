"""Suffix gain: does the model use the text after the hole? The course's FIM measure.

For each hole (prefix, middle, suffix) the true middle is scored teacher-forced, token by
token, after two prompts that hold the same prefix:

    prefix only   prefix → middle                       (left to right: the suffix unseen)
    FIM           the layout's prompt (`infill.build_prompt`) → middle <|endoftext|>

suffix gain = (loss of the middle's tokens after the prefix-only prompt - their loss after the
FIM prompt), in nats per token, pooled over all holes' tokens. Above 0: the model reads the
suffix and uses it. A bootstrap over holes gives its confidence interval. Beside it, the loss of
the closing `<|endoftext|>` after the middle: does the model know where the hole ends?

Why a loss and not exact match: early in training a 10-token line is almost never right token
for token, so exact match reads 0 for every prompt; a loss moves from the first steps on.

Each prompt gets the whole trained context (`context_len`) minus the middle: the FIM prompt
shares it between prefix and suffix as `infill` does, so the gain is what a user would get.
Nothing here generates text (see `infill.py`) or chooses holes (see `evaluate.py`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from mamba_nb.infill import FROM_CHECKPOINT, encode_prompts, resolve_near_lines
from mamba_nb.tokenizer import FimTokens

BOOTSTRAP_SAMPLES = 1000
INTERVAL = 0.95  # the confidence interval's coverage


def _encode_middles(tokenizer, middles: Sequence[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(list(middles), add_special_tokens=False)["input_ids"]]


@torch.no_grad()
def _target_losses(model, sequences: list[list[int]], targets: list[list[int]], pad_id: int,
                   batch_size: int) -> list[np.ndarray]:
    """Per sequence, the loss (nats) of each position listed in its `targets` (indices into the
    sequence, never 0): -log p(token at t | tokens before t)."""
    device = next(model.parameters()).device
    if hasattr(model, "get_base_model"):  # a peft model (LoRA training): its HF model, adapters in place
        model = model.get_base_model()
    head = model.get_output_embeddings()
    out: list[Optional[np.ndarray]] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths: less padding
    for b in range(0, len(order), batch_size):
        rows = order[b: b + batch_size]
        width = max(len(sequences[i]) for i in rows)
        # Right padding: a causal model's outputs before the padding do not depend on it.
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(sequences[i])] = torch.tensor(sequences[i])
        hidden = model.base_model(input_ids=ids.to(device), use_cache=False).last_hidden_state  # (R, W, D)
        # The output layer only where a target is predicted: (T, D) @ (D, V), not (R, W, V).
        r_idx = torch.tensor([r for r, i in enumerate(rows) for _ in targets[i]])
        t_idx = torch.tensor([t for i in rows for t in targets[i]])
        logits = head(hidden[r_idx, t_idx - 1]).float()  # (T, V)
        losses = F.cross_entropy(logits, ids[r_idx, t_idx].to(device), reduction="none").cpu().numpy()
        at = 0
        for i in rows:
            out[i] = losses[at: at + len(targets[i])]
            at += len(targets[i])
    return out


def middle_losses(model, tokenizer, prefixes: Sequence[str], middles: Sequence[str], suffixes: Sequence[str],
                  mode: str, context_len: Optional[int], batch_size: int = 16,
                  near_lines: Optional[tuple[int, int]] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher-forced losses of each hole's true middle after the `mode` prompt (`near_lines`: see
    `infill.split_near`, for models trained with FIM regions).

    Returns (loss sum over the middle's tokens (n,), number of those tokens (n,), loss of the
    closing <|endoftext|> (n,); NaN for mode "lm", which has no closing token).
    """
    fim = FimTokens.from_tokenizer(tokenizer)
    middle_ids = _encode_middles(tokenizer, middles)
    closing = mode != "lm"
    reserve = [len(m) + closing for m in middle_ids]
    prompts, _ = encode_prompts(tokenizer, prefixes, suffixes, mode, fim, context_len, reserve=reserve,
                                near_lines=near_lines)
    sequences = [p + m + ([fim.eot] if closing else []) for p, m in zip(prompts, middle_ids)]
    targets = [list(range(len(p), len(s))) for p, s in zip(prompts, sequences)]
    losses = _target_losses(model, sequences, targets, fim.pad, batch_size)
    n_mid = np.array([len(m) for m in middle_ids])
    sums = np.array([float(l[: n].sum()) for l, n in zip(losses, n_mid)])
    eot = np.array([float(l[-1]) if closing else math.nan for l in losses])
    return sums, n_mid, eot


def bootstrap_interval(diff_sums: np.ndarray, counts: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0, coverage: float = INTERVAL) -> tuple[float, float]:
    """Percentile interval of sum(diff_sums) / sum(counts) over holes resampled with replacement."""
    n = len(counts)
    if n == 0:
        return (math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    stats = diff_sums[idx].sum(1) / np.maximum(counts[idx].sum(1), 1)
    tail = (1 - coverage) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def suffix_gain(model, tokenizer, tasks: Sequence, modes: Sequence[str] = ("spm", "psm"),
                context_len: Optional[int] = None, batch_size: int = 16, seed: int = 0,
                near_lines: Union[tuple[int, int], None, str] = FROM_CHECKPOINT) -> dict:
    """The suffix gain of each FIM layout in `modes` on `tasks` (objects with prefix, middle, suffix),
    with the prompt layout `infill` uses (`near_lines`: as in `infill`).

    Returns {"holes", "tokens", "prefix_only_loss", and per mode {"loss", "gain", "interval",
    "eot_loss"}}; losses in nats per middle token, the interval at 95 %.
    """
    near_lines = resolve_near_lines(model, near_lines)
    tasks = [t for t in tasks if t.middle]  # an empty middle has no token to score
    cols = ([t.prefix for t in tasks], [t.middle for t in tasks], [t.suffix for t in tasks])
    lm_sums, counts, _ = middle_losses(model, tokenizer, *cols, "lm", context_len, batch_size)
    total = max(int(counts.sum()), 1)
    report = {"holes": len(tasks), "tokens": int(counts.sum()), "prefix_only_loss": float(lm_sums.sum() / total)}
    for mode in modes:
        sums, _, eot = middle_losses(model, tokenizer, *cols, mode, context_len, batch_size, near_lines)
        report[mode] = {
            "loss": float(sums.sum() / total),
            "gain": float((lm_sums - sums).sum() / total),
            "interval": bootstrap_interval(lm_sums - sums, counts, seed=seed),
            "eot_loss": float(np.mean(eot)) if len(eot) else math.nan,
        }
    return report


__all__ = ["middle_losses", "bootstrap_interval", "suffix_gain"]
