"""Tokenizers for the course: the special tokens, and the checked ids of the FIM tokens.

Two ways to get a tokenizer (both return a `transformers.PreTrainedTokenizerFast`):
train a byte-level BPE on the corpus, or load an existing Hugging Face tokenizer
and add whichever FIM tokens it lacks. This module does not tokenize corpora in
bulk; `dataset.py` does that.
"""
from __future__ import annotations

from dataclasses import dataclass

EOT = "<|endoftext|>"
FIM_PREFIX = "<fim_prefix>"
FIM_MIDDLE = "<fim_middle>"
FIM_SUFFIX = "<fim_suffix>"
FIM_PAD = "<fim_pad>"
SPECIAL_TOKENS = [EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD]


@dataclass(frozen=True)
class FimTokens:
    """The ids of the five special tokens, looked up once and checked to be distinct.

    (The original project gave `<fim_suffix>` and `<fim_middle>` the same id; this is
    where such a mistake is caught.)
    """

    eot: int
    prefix: int
    middle: int
    suffix: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "FimTokens":
        vocab = tokenizer.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} lacks the special token(s) {missing}; "
                "load it with mamba_nb.tokenizer.load_hf_tokenizer(...) (which adds them) "
                "or rebuild the dataset with `python -m mamba_nb build-dataset`"
            )
        ids = [vocab[t] for t in SPECIAL_TOKENS]
        if len(set(ids)) != len(ids):
            raise ValueError(f"special tokens share ids: {dict(zip(SPECIAL_TOKENS, ids))}; each needs its own id")
        return cls(*ids)
