"""train_bpe, load_hf_tokenizer, token_dtype, FimTokens: exact round trips and checked special tokens."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import STDLIB, TINY_CORPUS_FILES, plain_tokenizer_dir
from mamba_nb.tokenizer import (
    EOT,
    FIM_PAD,
    FIM_PREFIX,
    MIN_VOCAB_SIZE,
    SPECIAL_TOKENS,
    FimTokens,
    load_hf_tokenizer,
    token_dtype,
    train_bpe,
    vocab_size_of,
)

TEXTS = [(STDLIB / rel).read_text() for rel in TINY_CORPUS_FILES]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(iter(TEXTS), vocab_size=400)


def test_train_bpe_special_tokens_and_size(bpe):
    assert isinstance(bpe, PreTrainedTokenizerFast)
    fim = FimTokens.from_tokenizer(bpe)
    assert len({fim.eot, fim.prefix, fim.middle, fim.suffix, fim.pad}) == 5
    assert bpe.eos_token == EOT and bpe.eos_token_id == fim.eot
    assert bpe.pad_token == FIM_PAD and bpe.pad_token_id == fim.pad
    assert MIN_VOCAB_SIZE < vocab_size_of(bpe) <= 400
    # byte-level: every single byte has a token, so nothing is ever unknown
    assert all(bpe.convert_tokens_to_ids(c) is not None for c in pre_tokenizers.ByteLevel.alphabet())


def test_newline_never_merges_with_indentation(bpe):
    ids = bpe.encode("a\n    b")
    pieces = [bpe.decode(ids[:k]) for k in range(len(ids) + 1)]
    assert "a\n" in pieces, f"no token boundary right after the newline: {bpe.convert_ids_to_tokens(ids)}"
    # and the training corpus is full of "\n    ": the boundary is not an accident of a rare sequence
    assert sum(t.count("\n    ") for t in TEXTS) > 100


def test_without_isolation_the_newline_merges_with_indentation():
    """The control: a plain byte-level BPE on the same texts does glue "\n" to the indentation,
    so the test above tests the pre-tokenizer, not luck."""
    plain = train_bpe(iter(TEXTS), vocab_size=400, isolate_newlines=False)
    assert any(t.startswith("\n ") for t in [plain.decode([i]) for i in plain.encode("a\n    b")])


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_decode_encode_round_trip(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)), max_size=8))
def test_no_token_mixes_a_line_break_with_other_characters(bpe, lines):
    text = "\n".join(" " * indent + body for indent, body in lines)
    for token in bpe.convert_ids_to_tokens(bpe.encode(text)):
        breaks = sum(token.count(c) for c in "Ċč")  # byte-level spellings of "\n" and "\r"
        assert breaks == 0 or breaks == len(token), f"token {token!r} mixes a line break with other text"


def test_save_pretrained_round_trip(bpe, tmp_path):
    bpe.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "def f(x) :\n\treturn x  .  y\n"
    assert again.encode(text) == bpe.encode(text)
    assert again.decode(again.encode(text)) == text
    assert FimTokens.from_tokenizer(again) == FimTokens.from_tokenizer(bpe)


def test_train_bpe_rejects_tiny_vocab():
    with pytest.raises(ValueError, match=r"vocab_size=100 .*--vocab-size"):
        train_bpe(TEXTS, vocab_size=100)


def test_load_hf_tokenizer_adds_missing_fim_tokens_with_new_ids(tmp_path):
    path = plain_tokenizer_dir(tmp_path)
    before = AutoTokenizer.from_pretrained(path).get_vocab()
    assert not set(SPECIAL_TOKENS[1:]) & set(before)
    tok = load_hf_tokenizer(path)
    after = tok.get_vocab()
    # nothing existing moved or was overwritten
    assert all(after[t] == i for t, i in before.items())
    new_ids = [after[t] for t in SPECIAL_TOKENS[1:]]
    assert sorted(new_ids) == list(range(len(before), len(before) + 4))
    fim = FimTokens.from_tokenizer(tok)
    assert fim.eot == before[EOT] and tok.pad_token == FIM_PAD
    # added as special tokens: each encodes as one id, not as its characters
    assert tok.encode("x" + FIM_PREFIX + "y", add_special_tokens=False).count(fim.prefix) == 1


def test_load_hf_tokenizer_keeps_an_existing_fim_token(tmp_path):
    path = plain_tokenizer_dir(tmp_path, (EOT, FIM_PREFIX))
    before = AutoTokenizer.from_pretrained(path).get_vocab()
    tok = load_hf_tokenizer(path)
    assert tok.get_vocab()[FIM_PREFIX] == before[FIM_PREFIX]
    assert len(tok) == len(before) + 3


def test_load_hf_tokenizer_is_a_no_op_on_a_complete_tokenizer(bpe, tmp_path):
    bpe.save_pretrained(tmp_path)
    assert load_hf_tokenizer(str(tmp_path)).get_vocab() == bpe.get_vocab()


def test_load_hf_tokenizer_names_a_bad_path(tmp_path):
    missing = str(tmp_path / "no-such-tokenizer")
    with pytest.raises(ValueError, match="no-such-tokenizer"):
        load_hf_tokenizer(missing)


def test_fim_tokens_names_the_missing_token(tmp_path):
    tok = AutoTokenizer.from_pretrained(plain_tokenizer_dir(tmp_path))
    with pytest.raises(ValueError, match="fim_prefix.*load_hf_tokenizer"):
        FimTokens.from_tokenizer(tok)


@given(st.integers(1, 2**32))
def test_token_dtype_is_the_smallest_that_holds_every_id(vocab_size):
    dtype = token_dtype(vocab_size)
    assert np.iinfo(dtype).max >= vocab_size - 1
    smaller = [d for d in (np.uint8, np.uint16, np.uint32) if np.dtype(d).itemsize < dtype.itemsize]
    # uint8 is never used: no byte-level vocabulary fits (256 bytes + special tokens)
    assert all(np.iinfo(d).max < vocab_size - 1 for d in smaller if d is not np.uint8)
    assert dtype in (np.uint16, np.uint32)


@pytest.mark.parametrize("vocab_size", [2**32 + 1, 0])
def test_token_dtype_rejects_impossible_vocab(vocab_size):
    with pytest.raises(ValueError, match=f"vocab_size={vocab_size}"):
        token_dtype(vocab_size)
