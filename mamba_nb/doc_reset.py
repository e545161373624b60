"""Each document of a packed window read on its own: the forward pass of `reset_at_documents`.

A training window is `context_len` tokens cut from the token array, so it usually holds the end of
one file, `<|endoftext|>`, the next file, and so on. Read as one stream, the recurrent state (and
the convolution) of one file flows into the next. With `reset_at_documents` every document starts
afresh at its first token, as the model starts at inference (a prompt is one document):

- our Mamba (`model.lm.MambaLM`, what `load_checkpoint` returns): the starts go into its forward
  (`doc_starts`), Mamba-1 and Mamba-2 alike.
- HF's Mamba-1 (training, today): `scan.reset_states_at` zeroes the scan's decay at each start and
  cuts the convolution's taps there (the fast path; on the kernels path causal-conv1d's `seq_idx`
  and our scan, see `scan/patch.py`); HF's reference path ("hf") is refused.
- the Llama peer: position ids that restart at 0 at each start. HF's mask code reads a restart as a
  packed sequence and builds a block-diagonal causal mask, and the rotary positions count from each
  document's start: the same numbers as running the document alone.
- HF's Mamba-2: refused (HF's chunked PyTorch scan has no reset; `scan/patch.py` says so at the first step).

The starts are the window's own document boundaries, carried through FIM as `batch["doc_starts"]`
(`fim.FimResult.doc_starts`), never the `<|endoftext|>` that closes each FIM middle.

What this module does not do: find the starts (`fim.py`), reset the scan (`scan/`), or anything at
generation (a prompt is one document, nothing to reset).
"""
from __future__ import annotations

from typing import Optional

import torch

from mamba_nb.model.lm import MambaLM
from mamba_nb.scan.conv import positions_in_document
from mamba_nb.scan.patch import recompute_contexts, reset_states_at


def _model_type(model) -> str:
    inner = getattr(model, "module", model)  # DDP keeps the model in .module; FSDP and peft forward .config
    return getattr(getattr(inner, "config", None), "model_type", "")


def model_logits(model, input_ids: torch.Tensor, doc_starts: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`model(input_ids).logits` (B, L, V), no cache; with `doc_starts` ((B, L) bool, on the model's
    device) each document of a row read on its own (module docstring). What a run's step and its
    validation losses call, so both read windows the same way."""
    if isinstance(getattr(model, "module", model), MambaLM):  # ours: the starts go into its forward
        return model(input_ids, doc_starts=doc_starts)
    if doc_starts is None:
        return model(input_ids=input_ids, use_cache=False).logits
    if _model_type(model) == "llama":
        return model(input_ids=input_ids, position_ids=positions_in_document(doc_starts), use_cache=False).logits
    with reset_states_at(doc_starts):
        return model(input_ids=input_ids, use_cache=False).logits


def checkpointing_kwargs() -> dict:
    """HF's `gradient_checkpointing_kwargs` for a run: non-reentrant (the recomputation sees the same
    autograd graph, our scan's Function included), and the document starts of each block's forward
    put back around its recomputation in the backward pass (`scan.patch.recompute_contexts`)."""
    return {"use_reentrant": False, "context_fn": recompute_contexts}
