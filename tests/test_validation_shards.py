"""Validation over several ranks reads the windows one process reads: the ranks' sums add up to
one process's sums for any number of windows, ranks and batch size, and every rank runs the
same number of forwards (FSDP's collectives need it). Found on Python 3.13, whose stdlib gave
the tests' tiny corpus an odd number of validation windows: sharding the split rounded it down
to a multiple of the ranks, so a 2-rank run validated on one window fewer."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb.config import ModelConfig
from mamba_nb.losses import validation_totals
from mamba_nb.model import build_model
from mamba_nb.windows import make_loader
from test_train import small


@pytest.fixture(scope="module")
def counted_model(tiny_dataset):
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(preset="micro"), tiny_dataset.tokenizer, verbose=False)
    model.eval()
    model.forwards = 0

    def count(*_):
        model.forwards += 1

    model.register_forward_hook(count)
    return model


def long_windows(tiny_dataset):
    """Windows so long that the split holds about ten: asking for all of them stays quick."""
    return small(tiny_dataset, "unused", context_len=2048)


@pytest.fixture(scope="module")
def split_windows(tiny_dataset):
    return len(make_loader(tiny_dataset, "validation", long_windows(tiny_dataset), 1, shuffle=True, epoch=0)[1])


@settings(max_examples=12)
@given(world_size=st.integers(2, 3), batch_size=st.integers(1, 3), extra=st.integers(-6, 3),
       fim_rate=st.sampled_from([0.0, 1.0]))
def test_the_ranks_sums_are_one_processs_sums(tiny_dataset, counted_model, split_windows, world_size, batch_size,
                                              extra, fim_rate):
    cfg = long_windows(tiny_dataset)
    eval_windows = max(1, split_windows + extra)  # fewer windows than the split has, all of them, or more asked
    cpu = torch.device("cpu")
    with torch.no_grad():
        one = validation_totals(counted_model, tiny_dataset, cfg, fim_rate, batch_size, eval_windows, cpu, 0, 1)
        ranks, forwards = [], []
        for rank in range(world_size):
            counted_model.forwards = 0
            ranks.append(validation_totals(counted_model, tiny_dataset, cfg, fim_rate, batch_size, eval_windows,
                                           cpu, rank, world_size))
            forwards.append(counted_model.forwards)
    together = torch.stack(ranks).sum(0)
    assert together[1] == one[1] > 0  # the same tokens scored
    assert together[2] == one[2]  # of the same text
    assert float(together[0]) == pytest.approx(float(one[0]), rel=1e-5)  # batches of other sizes: float order only
    assert len(set(forwards)) == 1 and forwards[0] >= 1
