"""Suffix gain: does the model use the text after the hole? The course's FIM measure, and its controls.

For each hole (prefix, middle, suffix) the true middle is scored teacher-forced, token by
token, after prompts that hold the same prefix:

    prefix only      prefix → middle                     (left to right: the suffix unseen)
    FIM              the layout's prompt (`infill.build_prompt`) → middle <|endoftext|>
    shuffled suffix  the same layout with another hole's suffix → middle <|endoftext|>

suffix gain = loss after the prefix-only prompt - loss after the FIM prompt, in nats per middle
token, pooled over all holes' tokens. It compares the model with its own left-to-right mode, so it
can mislead two ways: a FIM prompt's layout alone (the sentinels, the prefix's end next to the
hole) can lower the loss without the suffix being read, and a model whose left-to-right mode is
poor (region FIM leaves a tenth of the training regions in plain order) makes any FIM prompt look
good. Two controls:

- content gain = loss with the shuffled suffix - loss with the true one: the same layout, the same
  holes, only the suffix's content wrong. Each hole borrows the suffix of hole `derangement(n,
  seed)[i]` (no hole keeps its own), so the figure is reproducible. What reading the suffix is worth.
- the absolute middle loss with the best prompt (`best`): the lowest of the prompts' losses,
  which compares across models and recipes (a gain does not: it is relative to the model's own
  prefix-only loss). The prompt is picked on the same holes, so when two prompts are within
  their intervals of each other the figure is a little optimistic.

Every figure comes with a 95 % bootstrap interval over holes (`bootstrap_interval`). Beside them,
the loss of the closing `<|endoftext|>` after the middle: does the model know where the hole ends?

The losses are of the distribution `infill` generates from: the special tokens a middle never
holds (every sentinel but `<|endoftext|>`, `infill.special_ids`) and the embedding's padding rows
are masked before the softmax, in every prompt, so prefix only is a real left-to-right baseline
rather than one that spends probability on starting a FIM sample.

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

from mamba_nb.infill import FROM_CHECKPOINT, encode_prompts, resolve_near_lines, special_ids, vocab_limit
from mamba_nb.model.lm import MambaLM
from mamba_nb.tokenizer import FimTokens

BOOTSTRAP_SAMPLES = 1000
INTERVAL = 0.95  # the confidence interval's coverage


def _encode_middles(tokenizer, middles: Sequence[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(list(middles), add_special_tokens=False)["input_ids"]]


def _hidden_states(model, ids: torch.Tensor) -> torch.Tensor:
    """The final-normed hidden states (R, W, D), before the output layer: our Mamba's
    `hidden_states`, or an HF model's base model's last hidden state."""
    if isinstance(model, MambaLM):
        return model.hidden_states(ids)
    return model.base_model(input_ids=ids, use_cache=False).last_hidden_state


@torch.no_grad()
def _target_losses(model, sequences: list[list[int]], targets: list[list[int]], pad_id: int,
                   batch_size: int, limit: int, banned: Sequence[int]) -> list[np.ndarray]:
    """Per sequence, the loss (nats) of each position listed in its `targets` (indices into the
    sequence, never 0): -log p(token at t | tokens before t) over the ids below `limit` but those
    in `banned` (the distribution generation draws from)."""
    device = next(model.parameters()).device
    if hasattr(model, "get_base_model"):  # a peft model (LoRA training): its model, adapters in place
        model = model.get_base_model()
    head = model.get_output_embeddings()
    banned_ids = torch.tensor(sorted(t for t in banned if t < limit), dtype=torch.long, device=device)
    out: list[Optional[np.ndarray]] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths: less padding
    for b in range(0, len(order), batch_size):
        rows = order[b: b + batch_size]
        width = max(len(sequences[i]) for i in rows)
        # Right padding: a causal model's outputs before the padding do not depend on it.
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(sequences[i])] = torch.tensor(sequences[i])
        hidden = _hidden_states(model, ids.to(device))  # (R, W, D)
        # The output layer only where a target is predicted: (T, D) @ (D, V), not (R, W, V).
        r_idx = torch.tensor([r for r, i in enumerate(rows) for _ in targets[i]])
        t_idx = torch.tensor([t for i in rows for t in targets[i]])
        target = ids[r_idx, t_idx].to(device)  # (T,)
        logits = head(hidden[r_idx, t_idx - 1])[:, :limit].float()  # (T, V): padding rows excluded
        own = logits.gather(1, target[:, None])  # (T, 1)
        logits[:, banned_ids] = -math.inf
        # A middle that spells a sentinel as text keeps that one logit, so its loss stays finite.
        logits.scatter_(1, target[:, None], own)
        losses = F.cross_entropy(logits, target, reduction="none").cpu().numpy()
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
    losses = _target_losses(model, sequences, targets, fim.pad, batch_size, vocab_limit(model, tokenizer),
                            special_ids(tokenizer) - {fim.eot})
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


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A permutation of range(n) that moves every index (n >= 2), the same for the same (n, seed):
    hole i borrows the suffix of hole `derangement(n, seed)[i]`. Sattolo's shuffle, which draws
    a random cycle through all n (a cycle has no fixed point)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 or n == 1:
        raise ValueError(f"n={n!r}: a derangement needs 0 or at least 2 items (one hole has no other hole's "
                         "suffix to borrow); measure the content gain on 2 holes or more")
    perm = np.arange(n)
    rng = np.random.default_rng(seed)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i, never i itself: what makes it one cycle
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def prompt_label(prompt: str) -> str:
    """How reports name a prompt: "prefix only" for "lm", the layout ("spm", "psm") otherwise."""
    return "prefix only" if prompt == "lm" else prompt


def _rate(sums: np.ndarray, counts: np.ndarray, seed: int) -> tuple[float, tuple[float, float]]:
    """sum(sums) / sum(counts) (nats per token) and its interval."""
    return float(sums.sum() / max(int(counts.sum()), 1)), bootstrap_interval(sums, counts, seed=seed)


def suffix_gain(model, tokenizer, tasks: Sequence, modes: Sequence[str] = ("spm", "psm"),
                context_len: Optional[int] = None, batch_size: int = 16, seed: int = 0,
                near_lines: Union[tuple[int, int], None, str] = FROM_CHECKPOINT, per_hole: bool = False) -> dict:
    """The suffix gain of each FIM layout in `modes` on `tasks` (objects with prefix, middle, suffix)
    and its two controls (module docstring), with the prompt layout `infill` uses (`near_lines`: as
    in `infill`). `seed` picks the derangement and the bootstrap's resamples.

    Returns {"holes", "tokens", "prefix_only_loss", "prefix_only_interval", "best", and per mode
    {"loss", "loss_interval" (after the FIM prompt), "gain", "interval" (the suffix gain's),
    "shuffled_loss", "content_gain", "content_interval", "eot_loss"}}; "best" is {"prompt" ("lm":
    prefix only, or a mode), "loss", "interval"}, the lowest middle loss of all the prompts.
    Losses in nats per middle token, intervals at 95 %; the content figures are NaN under 2 holes.
    `per_hole`: also "per_hole" {"counts": middle tokens (n,), "lm" and each mode: loss sums (n,)},
    to compare two models on the same holes pairwise (`paired_difference`).
    """
    near_lines = resolve_near_lines(model, near_lines)
    tasks = [t for t in tasks if t.middle]  # an empty middle has no token to score
    prefixes, middles, suffixes = [t.prefix for t in tasks], [t.middle for t in tasks], [t.suffix for t in tasks]
    swapped = [suffixes[j] for j in derangement(len(tasks), seed)] if len(tasks) >= 2 else None

    def losses(mode: str, after: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return middle_losses(model, tokenizer, prefixes, middles, after, mode, context_len, batch_size,
                             near_lines if mode != "lm" else None)

    lm_sums, counts, _ = losses("lm", suffixes)
    lm_loss, lm_interval = _rate(lm_sums, counts, seed)
    report = {"holes": len(tasks), "tokens": int(counts.sum()), "prefix_only_loss": lm_loss,
              "prefix_only_interval": lm_interval}
    best = {"prompt": "lm", "loss": lm_loss, "interval": lm_interval}
    holes = {"counts": counts, "lm": lm_sums}
    for mode in modes:
        sums, _, eot = losses(mode, suffixes)
        holes[mode] = sums
        r = dict(zip(("loss", "loss_interval"), _rate(sums, counts, seed)))
        r.update(zip(("gain", "interval"), _rate(lm_sums - sums, counts, seed)))
        r.update(shuffled_loss=math.nan, content_gain=math.nan, content_interval=(math.nan, math.nan))
        if swapped is not None:  # the same layout and holes, each with another hole's suffix
            wrong, _, _ = losses(mode, swapped)
            r["shuffled_loss"] = _rate(wrong, counts, seed)[0]
            r.update(zip(("content_gain", "content_interval"), _rate(wrong - sums, counts, seed)))
        r["eot_loss"] = float(np.mean(eot)) if len(eot) else math.nan
        report[mode] = r
        if r["loss"] < best["loss"]:
            best = {"prompt": mode, "loss": r["loss"], "interval": r["loss_interval"]}
    report["best"] = best
    if per_hole:
        report["per_hole"] = holes
    return report


def paired_difference(sums_a, sums_b, counts, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """(a - b) in nats per middle token, and its 95 % interval, of two sets of loss sums on the same
    holes (`suffix_gain(..., per_hole=True)` of two models with one tokenizer): resampling the holes
    once for both, which is tighter than comparing two separate intervals."""
    a, b, counts = (np.asarray(t, dtype=float) for t in (sums_a, sums_b, counts))
    if not a.shape == b.shape == counts.shape:
        raise ValueError(f"per-hole sums of shapes {a.shape} and {b.shape} with counts {counts.shape}: "
                         "compare two models on the same holes, scored with the same tokenizer")
    return _rate(a - b, counts, seed)


__all__ = ["middle_losses", "bootstrap_interval", "derangement", "paired_difference", "prompt_label", "suffix_gain"]
