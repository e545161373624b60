"""Tokenizers for the course: the special tokens, and the checked ids of the FIM tokens.

Two ways to get a tokenizer (both return a `transformers.PreTrainedTokenizerFast`):
train a byte-level BPE on the corpus (`train_bpe`), or load an existing Hugging Face
tokenizer and add whichever special tokens it lacks (`load_hf_tokenizer`).
`token_dtype` says which unsigned integer type stores a tokenizer's ids on disk.

This module does not tokenize corpora in bulk (`dataset.py` does that) and does
not resize a model's embeddings for added tokens (`model.py` does that).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable

import numpy as np

EOT = "<|endoftext|>"
FIM_PREFIX = "<fim_prefix>"
FIM_MIDDLE = "<fim_middle>"
FIM_SUFFIX = "<fim_suffix>"
FIM_PAD = "<fim_pad>"
SPECIAL_TOKENS = [EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD]

# Runs of line breaks are cut out before byte-level BPE sees the text, so a newline
# never merges with the next line's indentation. Without this the GPT-2 regex makes
# "\n    " one piece, BPE learns it as one token, and a prompt ending in a bare "\n"
# (the usual single-line hole) is a token sequence the model almost never saw.
NEWLINE_SPLIT = r"[\r\n]+"
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte, plus our special tokens


@dataclass(frozen=True)
class FimTokens:
    """The ids of the five special tokens, looked up once and checked to be distinct (two
    sentinels sharing an id would make PSM and SPM samples unreadable)."""

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


def _wrap(backend, name_or_path: str = ""):
    """A `tokenizers.Tokenizer` as the transformers class the rest of the course uses."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOT,
        pad_token=FIM_PAD,
        # decode(encode(x)) must give x back exactly; the default clean-up would
        # delete the space in "a ." and similar.
        clean_up_tokenization_spaces=False,
        name_or_path=name_or_path,
    )


def train_bpe(texts: Iterable[str], vocab_size: int = 8192, show_progress: bool = False, isolate_newlines: bool = True):
    """Train a byte-level BPE on `texts` (any iterable, read once) → `PreTrainedTokenizerFast`.

    Byte-level: every string encodes, nothing is ever unknown, and decoding gives the
    text back exactly. The five special tokens take ids 0..4; line breaks are isolated
    before BPE (see NEWLINE_SPLIT; `isolate_newlines=False` gives the plain GPT-2-style
    byte-level BPE, for comparison). The vocabulary can end up smaller than `vocab_size`
    when the corpus has fewer distinct merges to offer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least {MIN_VOCAB_SIZE} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens); pass --vocab-size {MIN_VOCAB_SIZE} or more"
        )
    token_dtype(vocab_size)  # refuse a vocabulary no on-disk dtype holds before spending time training
    backend = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(NEWLINE_SPLIT), behavior="isolated"), byte_level])
        if isolate_newlines
        else byte_level
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return _wrap(backend, name_or_path="bpe")


def load_hf_tokenizer(name_or_path: str):
    """Load a Hugging Face tokenizer (hub name or local directory) and add the special tokens it lacks.

    Each missing token gets its own new id at the end of the vocabulary; an existing
    token is never overwritten (a real token's id reused for a sentinel would change the
    meaning of the data). If the tokenizer has no padding token, `<fim_pad>` becomes it. The model
    must then grow its embedding to `len(tokenizer)` (`model.py` does that).
    """
    from tokenizers import AddedToken
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load a tokenizer from {name_or_path!r} ({err}); pass a local directory "
            "holding tokenizer files or a Hugging Face hub name (needs network), or leave "
            "--tokenizer unset to train a BPE on the corpus"
        ) from err
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise ValueError(
            f"tokenizer {name_or_path!r} loaded as {type(tok).__name__}, not a fast (Rust) tokenizer; "
            "the course needs a fast tokenizer for batched encoding: pick one with a tokenizer.json"
        )
    vocab = tok.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    if tok.pad_token is None:
        tok.pad_token = FIM_PAD
    if tok.eos_token is None:
        tok.eos_token = EOT
    FimTokens.from_tokenizer(tok)  # distinct ids, all present: checked here, not at training time
    token_dtype(max(tok.get_vocab().values()) + 1)
    return tok


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype of the on-disk token array that holds ids < vocab_size."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size={vocab_size} must be positive")
    for dtype in (np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(
        f"vocab_size={vocab_size} is too large for the token array (at most {np.iinfo(np.uint32).max + 1} ids "
        "fit in uint32); pick a smaller --vocab-size or another tokenizer"
    )


def vocab_size_of(tokenizer) -> int:
    """One more than the largest id the tokenizer can emit (added tokens included)."""
    return max(tokenizer.get_vocab().values()) + 1


def encode_texts(backend, texts: list[str]) -> list[list[int]]:
    """Token ids of each text with a `tokenizers.Tokenizer`, no special tokens added; batched, and
    without the character offsets we never use (`encode_batch_fast`, tokenizers >= 0.20)."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [enc.ids for enc in encode(texts, add_special_tokens=False)]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte ↔ printable-character map, the one byte-level BPE vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def token_bytes(backend) -> "np.ndarray | None":
    """id → the bytes the token stands for (object array), for a byte-level vocabulary; None otherwise.

    `backend`: a `tokenizers.Tokenizer`. Added (special) tokens map to their own UTF-8 text.
    """
    import json

    if (json.loads(backend.to_str()).get("decoder") or {}).get("type") != "ByteLevel":
        return None
    to_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
    vocab = backend.get_vocab(with_added_tokens=True)
    table = np.empty(max(vocab.values()) + 1, dtype=object)
    table[:] = b""
    added = {a.content for a in backend.get_added_tokens_decoder().values()}
    for piece, i in vocab.items():
        table[i] = piece.encode() if piece in added else bytes(to_byte[ch] for ch in piece)
    return table


def text_bytes_per_token(tokenizer) -> np.ndarray:
    """id → how many bytes of text the token stands for (int64); special tokens count 0.

    What bits per byte divides by: a loss in nats per token becomes bits per byte of text,
    comparable across tokenizers."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    special = set(SPECIAL_TOKENS) | set(getattr(tokenizer, "all_special_tokens", []))
    vocab = tokenizer.get_vocab()
    table = token_bytes(backend)
    out = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    for piece, i in vocab.items():
        if piece in special:
            continue
        out[i] = len(table[i]) if table is not None else len(tokenizer.decode([i]).encode())
    return out


def tokens_that_differ(base, ours) -> list[str]:
    """The tokens of tokenizer `base` that `ours` lacks or maps to another id: empty when `ours`
    reads `base`'s token ids the same (it may add tokens, e.g. the FIM ones)."""
    vocab = ours.get_vocab()
    return [t for t, i in base.get_vocab().items() if vocab.get(t) != i]


class DocumentEncoder:
    """Batched tokenization straight into the on-disk dtype, each document + EOT.

    Made from the Rust tokenizer's JSON and the EOT id (`DocumentEncoder.of(tokenizer, dtype)` from an HF
    tokenizer): plain data, so a distributed build ships it to its workers (`ray_build.py`)."""

    @classmethod
    def of(cls, tokenizer, dtype: np.dtype) -> "DocumentEncoder":
        return cls(tokenizer.backend_tokenizer.to_str(), tokenizer.convert_tokens_to_ids(EOT), dtype)

    def __init__(self, backend_json: str, eot: int, dtype: np.dtype):
        from tokenizers import Tokenizer

        # Private copies of the Rust tokenizer: no padding, no truncation, no BOS.
        self.backend = Tokenizer.from_str(backend_json)
        self.backend.no_padding()
        self.backend.no_truncation()
        # A document that spells a special token ("<|endoftext|>" in a docstring) must encode
        # it as plain text, so the only EOTs in the array are the separators we put there.
        # `encode_special_tokens` does that but slows every document down (~10%), so only the
        # rare documents that contain such a spelling go through the copy that has it set.
        self.literal = Tokenizer.from_str(self.backend.to_str())
        self.literal.encode_special_tokens = True
        self.specials = [t.content for t in self.backend.get_added_tokens_decoder().values() if t.special]
        self.eot = [eot]
        self.dtype = dtype

    def ids(self, texts: list[str]) -> list[list[int]]:
        """The token ids of each text (no EOT), special-token spellings encoded as text."""
        spelled = [i for i, t in enumerate(texts) if any(s in t for s in self.specials)]
        if not spelled:
            return encode_texts(self.backend, texts)
        ids: list = [None] * len(texts)
        plain = sorted(set(range(len(texts))) - set(spelled))
        for indices, backend in ((plain, self.backend), (spelled, self.literal)):
            for i, x in zip(indices, encode_texts(backend, [texts[i] for i in indices])):
                ids[i] = x
        return ids

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """→ (tokens (T,) dtype, lengths (n,) int64), lengths counting each document's EOT."""
        ids = self.ids(texts)
        lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        # one C-level pass from the lists into the array, EOT after each document
        flat = itertools.chain.from_iterable(itertools.chain.from_iterable(zip(ids, itertools.repeat(self.eot))))
        return np.fromiter(flat, dtype=self.dtype, count=int(lengths.sum())), lengths
