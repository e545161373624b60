"""WindowSampler: non-overlapping windows whose edges move, seeded order, shards, workers, resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb.sampler import WindowSampler

geometry = st.tuples(st.integers(2, 5000), st.integers(1, 300)).filter(lambda t: t[0] >= t[1] + 1)


def pairs_of(starts, context_len):
    """The next-token pairs (as the index of their input token) a set of windows trains."""
    return np.concatenate([np.arange(s, s + context_len) for s in starts]) if len(starts) else np.array([], int)


@settings(max_examples=200, deadline=None)
@given(geometry, st.integers(0, 2**31), st.integers(0, 50))
def test_windows_fit_and_never_share_a_pair(geom, seed, epoch):
    num_tokens, context_len = geom
    s = WindowSampler(num_tokens, context_len, seed=seed, epoch=epoch)
    starts = np.array(list(s))
    assert len(starts) == len(s) == s.windows_per_epoch
    assert starts.min() >= 0 and starts.max() + context_len + 1 <= num_tokens  # whole windows only
    ordered = np.sort(starts)
    # consecutive windows start context_len apart: they share exactly one token
    assert np.all(np.diff(ordered) == context_len)
    pairs = pairs_of(starts, context_len)
    assert len(np.unique(pairs)) == len(pairs)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 3000), st.integers(1, 40), st.integers(0, 1000))
def test_every_pair_is_trained_within_one_cycle_of_offsets(num_tokens, context_len, seed):
    if num_tokens < context_len + 1:
        return
    s = WindowSampler(num_tokens, context_len, seed=seed)
    covered = np.zeros(num_tokens - 1, bool)
    offsets = []
    for epoch in range(s.num_offsets):
        offsets.append(s.offset(epoch))
        covered[pairs_of(s.epoch_starts(epoch), context_len)] = True
    assert covered.all()
    assert sorted(offsets) == list(range(s.num_offsets))  # every offset once per cycle


def test_count_is_one_fewer_than_tokens_over_context():
    s = WindowSampler(10_000, 256)
    assert s.windows_per_epoch == 10_000 // 256 - 1
    assert s.max_offset >= 255  # every offset in [0, context_len) fits


def test_order_is_seeded_and_epoch_aware():
    a, b = WindowSampler(50_000, 64, seed=3), WindowSampler(50_000, 64, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    b.set_epoch(1)
    e1 = list(a)
    assert e1 == list(b)
    assert e1 != list(WindowSampler(50_000, 64, seed=3, epoch=0))
    assert list(WindowSampler(50_000, 64, seed=4)) != list(WindowSampler(50_000, 64, seed=3))
    # window edges move between consecutive epochs
    assert a.offset(0) != a.offset(1)


def test_iterating_again_starts_the_next_epoch():
    s = WindowSampler(5_000, 32, seed=1)
    first, second = list(s), list(s)
    assert s.epoch == 1
    assert second == list(s.rank_starts(1))
    assert first != second


def test_no_shuffle_is_a_fixed_grid_in_order():
    s = WindowSampler(1_000, 10, shuffle=False)
    for epoch in range(3):
        s.set_epoch(epoch)
        assert list(s) == list(range(0, 10 * s.windows_per_epoch, 10))


@settings(max_examples=100, deadline=None)
@given(st.integers(200, 20_000), st.integers(1, 64), st.integers(1, 8), st.integers(0, 5))
def test_ranks_split_the_epoch_without_repeat_or_loss(num_tokens, context_len, world_size, epoch):
    if num_tokens // context_len - 1 < world_size:
        return
    samplers = [WindowSampler(num_tokens, context_len, seed=7, rank=r, world_size=world_size, epoch=epoch)
                for r in range(world_size)]
    per_rank = [list(s) for s in samplers]
    assert len({len(p) for p in per_rank}) == 1  # equal counts: DDP steps in lockstep
    together = np.concatenate(per_rank)
    assert len(np.unique(together)) == len(together)
    assert sorted(together) == sorted(samplers[0].epoch_starts())  # the whole grid, no window lost
    # the grid shrank to a multiple of world_size by less than world_size windows
    single = num_tokens // context_len - 1
    assert single - world_size < len(together) <= single
    pairs = pairs_of(together, context_len)
    assert len(np.unique(pairs)) == len(pairs)


def test_rank_and_world_size_come_from_torch_distributed(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 3)
    s = WindowSampler(10_000, 16)
    assert (s.rank, s.world_size) == (1, 3)


class _Echo(torch.utils.data.Dataset):
    """A map-style dataset that returns its index, to see which indices the workers got."""

    def __len__(self):
        return 10**9

    def __getitem__(self, i):
        return i


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
def test_drop_in_dataloader_sampler_has_no_duplicates_whatever_the_workers(num_workers):
    sampler = WindowSampler(4_000, 16, seed=5)
    expected = list(sampler.rank_starts(0))
    loader = torch.utils.data.DataLoader(_Echo(), sampler=sampler, batch_size=7, num_workers=num_workers)
    got = torch.cat(list(loader)).tolist()
    assert got == expected  # same windows, same order, none twice


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 200), st.integers(1, 4), st.integers(0, 3))
def test_state_dict_resumes_exactly(cut, world_size, epoch):
    kwargs = dict(num_tokens=9_000, context_len=32, seed=11, rank=world_size - 1, world_size=world_size)
    full = WindowSampler(**kwargs, epoch=epoch)
    whole = list(full) + list(full)  # this epoch and the next
    cut = min(cut, len(whole))
    first = WindowSampler(**kwargs, epoch=epoch)
    taken = []
    it = iter(first)
    for _ in range(min(cut, len(first))):
        taken.append(next(it))
    state = first.state_dict()
    resumed = WindowSampler(**kwargs)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert taken + rest == whole[: len(taken) + len(rest)]
    assert len(taken) + len(rest) in (len(first), 2 * len(first))


def test_load_state_dict_refuses_other_geometry():
    state = WindowSampler(9_000, 32).state_dict()
    with pytest.raises(ValueError, match="context_len=32"):
        WindowSampler(9_000, 64).load_state_dict(state)


def test_context_len_longer_than_split_names_both_numbers():
    with pytest.raises(ValueError, match=r"context_len=512.*only 300 tokens"):
        WindowSampler(300, 512)


def test_short_split_still_gets_one_window_with_moving_edge():
    s = WindowSampler(40, 30)
    assert len(s) == 1
    assert s.max_offset == 9
    assert {s.offset(e) for e in range(s.num_offsets)} == set(range(10))


def test_bad_rank_is_named():
    with pytest.raises(ValueError, match="rank=3"):
        WindowSampler(1_000, 8, rank=3, world_size=2)
