"""Each document of a packed window read on its own: the forward pass of `reset_at_documents`.

A training window is `context_len` tokens cut from the token array, so it usually holds the end of
one file, `<|endoftext|>`, the next file, and so on. Read as one stream, the recurrent state (and
the convolution) of one file flows into the next. With `reset_at_documents` every document starts
afresh at its first token, as the model starts at inference (a prompt is one document):

- our Mamba (`model.lm.MambaLM`, Mamba-1 and Mamba-2): the starts go into its forward (`doc_starts`):
  the scan's decay is zeroed at each start and the convolution's taps are cut there, on every scan path.
- the Llama peer: position ids that restart at 0 at each start. HF's mask code reads a restart as a
  packed sequence and builds a block-diagonal causal mask, and the rotary positions count from each
  document's start: the same numbers as running the document alone.

The starts are the window's own document boundaries, carried through FIM as `batch["doc_starts"]`
(`fim.FimResult.doc_starts`), never the `<|endoftext|>` that closes each FIM middle.

What this module does not do: find the starts (`fim.py`), reset the scan (`model/scan.py`), or anything
at generation (a prompt is one document, nothing to reset).
"""
from __future__ import annotations

from typing import Optional

import torch

from mamba_nb.model.lm import ours
from mamba_nb.scan.conv import positions_in_document


def model_logits(model, input_ids: torch.Tensor, doc_starts: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`model(input_ids)`'s logits (B, L, V), no cache; with `doc_starts` ((B, L) bool, on the model's
    device) each document of a row read on its own (module docstring). What a run's step and its
    validation losses call, so both read windows the same way. `model` may be wrapped (DDP, FSDP, peft)."""
    if ours(model) is not None:  # the starts go into its forward
        return model(input_ids, doc_starts=doc_starts)
    if doc_starts is None:
        return model(input_ids=input_ids, use_cache=False).logits
    inner = getattr(model, "module", model)
    if inner.config.model_type != "llama":
        raise ValueError(f"reset_at_documents: a {inner.config.model_type!r} model of HF's class cannot read documents "
                         "on their own here; load a Mamba as ours (mamba_nb.model.load_model), or leave "
                         "reset_at_documents off")
    return model(input_ids=input_ids, position_ids=positions_in_document(doc_starts), use_cache=False).logits
