"""make_loader: batches read with one take, FIM applied, the same whatever the workers, exact resume."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mamba_nb.config import WindowConfig
from mamba_nb.fim import undo_fim
from mamba_nb.windows import WindowDataset, make_loader

CTX = 48


def cfg(**kw):
    return dataclasses.replace(WindowConfig(context_len=CTX, fim_rate=0.9, spm_rate=0.5, seed=3), **kw)


def full_windows(batch):
    """(B, CTX + 1) tokens back from a batch: the inputs plus the last target (pad where ignored)."""
    last = batch["targets"][:, -1:].clone()
    return torch.cat([batch["input_ids"], last], dim=1).numpy()


def test_without_fim_a_batch_is_the_token_array(tiny_dataset):
    loader, sampler = make_loader(tiny_dataset, "train", cfg(fim_rate=0.0), batch_size=4)
    batch = next(iter(loader))
    assert set(batch) == {"input_ids", "targets", "middle_mask", "doc_starts", "starts"}
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.long
    assert batch["middle_mask"].dtype == torch.bool and batch["input_ids"].shape == (4, CTX)
    assert batch["starts"].tolist() == list(sampler.rank_starts(0)[:4])
    for b, start in enumerate(batch["starts"].tolist()):
        window = tiny_dataset.read("train", start, CTX + 1).astype(np.int64)
        assert batch["input_ids"][b].tolist() == window[:-1].tolist()
        assert batch["targets"][b].tolist() == window[1:].tolist()  # already shifted
    assert not batch["middle_mask"].any()


def test_fim_batches_hold_the_windows_documents(tiny_dataset):
    tok, ft = tiny_dataset.tokenizer, tiny_dataset.fim_tokens
    loader, _ = make_loader(tiny_dataset, "train", cfg(fim_rate=1.0), batch_size=8)
    batch = next(iter(loader))
    assert batch["middle_mask"].any()
    # where the mask is set the target is a real token, never an ignored pad
    assert (batch["targets"][batch["middle_mask"]] != -100).all()
    assert ((batch["targets"] == -100) == (torch.cat([batch["input_ids"][:, 1:], batch["targets"][:, -1:]], 1)
                                            == ft.pad)).all()
    for b, start in enumerate(batch["starts"].tolist()):
        window = tiny_dataset.read("train", start, CTX + 1).astype(np.int64)
        sample = full_windows(batch)[b]
        sample[sample == -100] = ft.pad
        cuts = np.flatnonzero(window == ft.eot)
        pieces = [p for p in np.split(window, cuts)]
        pieces = [pieces[0]] + [p[1:] for p in pieces[1:]]
        pieces = [p for i, p in enumerate(pieces) if len(p) or i < len(pieces) - 1]
        undone = undo_fim(sample, ft)
        assert len(undone) == len(pieces)
        for piece, back in zip(pieces, undone):
            text = tok.decode(piece.tolist(), clean_up_tokenization_spaces=False)
            got = tok.decode(back.tokens.tolist(), clean_up_tokenization_spaces=False)
            assert text.startswith(got.rstrip("\ufffd"))


class _CountingTokens:
    """Wraps a LanceDataset to count `take` calls."""

    def __init__(self, inner):
        self.inner, self.takes = inner, 0

    def take(self, *args, **kwargs):
        self.takes += 1
        return self.inner.take(*args, **kwargs)


def test_one_take_per_batch(tiny_dataset, monkeypatch):
    dataset = WindowDataset(tiny_dataset, "train", cfg())
    counting = _CountingTokens(tiny_dataset.tokens("train"))
    monkeypatch.setattr(tiny_dataset, "tokens", lambda split: counting)
    batch = dataset[(0, (0, 100, 7, 300, 55))]
    assert counting.takes == 1 and batch["input_ids"].shape == (5, CTX)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_same_batches_whatever_the_number_of_workers(tiny_dataset):
    tiny_dataset.read("train", 0, 10)  # the parent has used Lance before the workers fork
    runs = {}
    for workers in (0, 2):
        loader, sampler = make_loader(tiny_dataset, "train", cfg(), batch_size=8, num_workers=workers, epoch=1)
        runs[workers] = [full_windows(b) for b in loader]
        assert sum(len(r) for r in runs[workers]) == len(sampler)
    assert len(runs[0]) == len(loader) > 1
    for workers in (2,):
        assert len(runs[workers]) == len(runs[0])
        assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[workers]))


@pytest.mark.parametrize("workers", [0, 2])
def test_state_dict_resumes_at_the_next_batch(tiny_dataset, workers):
    """Workers prefetch ahead; the position counts only batches the loop received."""
    c = cfg(fim_rate=0.0)  # (resume is about which windows; FIM's determinism is tested above)
    loader, sampler = make_loader(tiny_dataset, "train", c, batch_size=8, num_workers=workers)
    whole = [b["starts"].tolist() for b in loader]
    loader, sampler = make_loader(tiny_dataset, "train", c, batch_size=8, num_workers=workers)
    seen = []
    for i, b in enumerate(loader):
        seen.append(b["starts"].tolist())
        if i == 2:
            break
    state = sampler.state_dict()
    assert state["position"] == 24  # counted as delivered, whatever the workers prefetched
    # iterating the same loader again goes on where the loop stopped (prefetched batches dropped)
    assert [b["starts"].tolist() for b in loader] == whole[3:]
    resumed_loader, resumed = make_loader(tiny_dataset, "train", c, batch_size=8, num_workers=workers)
    resumed.load_state_dict(state)
    rest = [b["starts"].tolist() for b in resumed_loader]
    assert seen + rest == whole
    # and the next epoch follows, with other windows
    after = [b["starts"].tolist() for b in resumed_loader]
    assert resumed.epoch == 1 and after != whole


def test_validation_order_is_fixed(tiny_dataset):
    loader, _ = make_loader(tiny_dataset, "validation", cfg(), batch_size=4, shuffle=False)
    starts = torch.cat([b["starts"] for b in loader]).tolist()
    assert starts == sorted(starts) and starts[0] == 0


def test_context_len_too_long_names_both_numbers(tiny_dataset):
    n = tiny_dataset.num_tokens("validation")
    with pytest.raises(ValueError, match=rf"context_len={n + 5}.*only {n} tokens"):
        make_loader(tiny_dataset, "validation", cfg(context_len=n + 5), batch_size=2)


def test_tokenizer_without_fim_tokens_is_refused(tiny_dataset):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    plain = PreTrainedTokenizerFast(tokenizer_object=backend)
    with pytest.raises(ValueError, match="lacks the special token"):
        make_loader(tiny_dataset, "train", cfg(), batch_size=2, tokenizer=plain)


def test_other_tokenizer_is_refused(tiny_dataset):
    from mamba_nb.tokenizer import train_bpe

    other = train_bpe(["def f(x):\n    return x * 2\n"] * 10, vocab_size=300)
    with pytest.raises(ValueError, match="not the one the dataset"):
        make_loader(tiny_dataset, "train", cfg(), batch_size=2, tokenizer=other)
    # the dataset's own tokenizer, loaded again, is accepted
    from transformers import AutoTokenizer

    same = AutoTokenizer.from_pretrained(tiny_dataset.path / "tokenizer")
    make_loader(tiny_dataset, "train", cfg(), batch_size=2, tokenizer=same)


@pytest.mark.parametrize("field,value", [("fim_rate", 1.2), ("spm_rate", -1.0)])
def test_bad_rates_are_named(tiny_dataset, field, value):
    with pytest.raises(ValueError, match=f"{field}={value}"):
        make_loader(tiny_dataset, "train", cfg(**{field: value}), batch_size=2)


def test_viz_pair_coverage_and_shards():
    from mamba_nb.sampler import WindowSampler
    from mamba_nb.viz.windows import pair_coverage, plot_epoch_windows, plot_shards, shard_table

    s = WindowSampler(3_000, 50, seed=2)
    counts = pair_coverage(s, range(4))
    assert counts.max() == 1  # no pair twice in an epoch
    assert (counts.sum(axis=1) == s.windows_per_epoch * 50).all()
    table = shard_table(3_000, 50, world_size=2, num_workers=3, batch_size=4, seed=2)
    assert len(np.unique(table[:, 0])) == len(table)  # each window read by one (rank, worker)
    assert set(table[:, 1]) == {0, 1} and set(table[:, 2]) == {0, 1, 2}
    # a batch belongs to one worker
    for rank in (0, 1):
        mine = table[table[:, 1] == rank]
        assert all(len(set(mine[mine[:, 3] == b][:, 2])) == 1 for b in set(mine[:, 3]))
    spans = np.array([[0, 700], [700, 1200], [1900, 1100]])
    assert plot_epoch_windows(s, spans).axes and plot_shards(3_000, 50).axes
