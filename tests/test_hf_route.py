"""The Hugging Face datasets route: group_texts packs like the Lance windows, FimCollator batches alike."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamba_nb.config import WindowConfig
from mamba_nb.fim import undo_fim
from mamba_nb.hf_route import FimCollator, group_texts
from mamba_nb.tokenizer import FimTokens, train_bpe

DOCS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nprint(os.getcwd())  # caf\u00e9\n",
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(DOCS * 20, vocab_size=300)


@pytest.fixture(scope="module")
def tokenized(tok):
    texts = [d * k for k in (1, 2, 3) for d in DOCS]
    return Dataset.from_dict({"content": texts}).map(
        lambda b: tok(b["content"], add_special_tokens=False), batched=True, remove_columns=["content"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(context_len=st.integers(4, 60), batch_size=st.integers(1, 20))
def test_blocks_tile_the_documents_sharing_one_token(tok, tokenized, context_len, batch_size):
    eot = FimTokens.from_tokenizer(tok).eot
    grouped = group_texts(tokenized, context_len, eot, batch_size=batch_size)
    blocks = [np.array(b) for b in grouped["input_ids"]]
    assert all(len(b) == context_len + 1 for b in blocks)
    assert grouped["block"] == list(range(len(blocks)))
    # within each map batch, blocks are a tiling of the documents joined by EOT
    docs = [np.append(np.array(d), eot) for d in tokenized["input_ids"]]
    k = 0
    for first in range(0, len(docs), batch_size):
        stream = np.concatenate(docs[first : first + batch_size])
        n = (len(stream) - 1) // context_len
        for i in range(n):
            assert np.array_equal(blocks[k], stream[i * context_len : i * context_len + context_len + 1])
            k += 1
    assert k == len(blocks)


def test_existing_eot_is_not_doubled(tok):
    eot = FimTokens.from_tokenizer(tok).eot
    ds = Dataset.from_dict({"input_ids": [[5, 6, eot], [7, 8]]})
    grouped = group_texts(ds, 3, eot)
    assert grouped["input_ids"] == [[5, 6, eot, 7]]


def test_collator_gives_the_same_batch_dict(tok, tokenized):
    ft = FimTokens.from_tokenizer(tok)
    cfg = WindowConfig(context_len=32, fim_rate=1.0, spm_rate=0.5, seed=1)
    grouped = group_texts(tokenized, cfg.context_len, ft.eot)
    collate = FimCollator(tok, cfg)
    loader = torch.utils.data.DataLoader(grouped, batch_size=4, shuffle=False, collate_fn=collate)
    batch = next(iter(loader))
    assert set(batch) == {"input_ids", "targets", "middle_mask", "doc_starts", "starts"}
    assert batch["input_ids"].shape == batch["targets"].shape == (4, 32)
    assert batch["starts"].tolist() == [0, 1, 2, 3]
    assert batch["middle_mask"].any()
    for b in range(4):
        full = torch.cat([batch["input_ids"][b], batch["targets"][b, -1:]]).numpy()
        full[full == -100] = ft.pad
        original = np.array(grouped[b]["input_ids"])
        pieces = np.split(original, np.flatnonzero(original == ft.eot))
        pieces = [pieces[0]] + [p[1:] for p in pieces[1:]]
        if len(pieces[-1]) == 0:
            pieces.pop()
        undone = undo_fim(full, ft)
        assert len(undone) == len(pieces)
        for piece, back in zip(pieces, undone):
            text, got = tok.decode(piece.tolist()), tok.decode(back.tokens.tolist())
            assert text.startswith(got.removesuffix("\ufffd"))  # a prefix: the suffix's end gave room
    # draws follow the epoch, not the call
    again = next(iter(loader))
    assert torch.equal(again["input_ids"], batch["input_ids"])
    collate.set_epoch(1)
    assert not torch.equal(next(iter(loader))["input_ids"], batch["input_ids"])


def test_unpacked_rows_are_refused(tok, tokenized):
    collate = FimCollator(tok, WindowConfig(context_len=32))
    with pytest.raises(ValueError, match="group_texts"):
        collate([tokenized[0], tokenized[1]])


def test_missing_input_ids_is_named():
    with pytest.raises(ValueError, match="no 'input_ids'"):
        group_texts(Dataset.from_dict({"content": ["x"]}), 8, 0)


def test_context_too_long_for_the_data(tok, tokenized):
    with pytest.raises(ValueError, match="context_len \\+ 1 = 100001"):
        group_texts(tokenized, 100_000, 0)
