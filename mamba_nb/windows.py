"""Batches of training windows read from the Lance token array, FIM applied: `make_loader`.

One `__getitem__` serves a whole batch: the batch sampler hands the dataset an
index `(epoch, starts)`, the dataset reads every window of the batch with ONE
Lance `take` (B * (context_len + 1) row indices), applies FIM to the batch at once
(one batched encode), and returns the batch dict (see `fim.make_batch`):

    input_ids (B, L) long, targets (B, L) long (shifted, -100 on <fim_pad>),
    middle_mask (B, L) bool, doc_starts (B, L) bool, starts (B,) long       with L = context_len

(`doc_starts`: where a document of the window begins, what `reset_at_documents` resets at.)

The DataLoader runs with `batch_size=None`, so there is no collate step. The
epoch travels inside the index, so FIM draws (`fim_rng(seed, epoch, start)`)
do not depend on which worker, or how many, made a batch. The Lance dataset is
opened lazily in each process (`TokenDataset` reopens after a fork), never
shared across a fork; workers start from a fork server (see `make_loader`).

`make_loader` returns a `WindowLoader`: a DataLoader that also counts the
windows it has *delivered* to the training loop into the sampler's position, so
`sampler.state_dict()` taken between two batches resumes at the next batch even
though workers had prefetched further.

This module does not choose windows (`sampler.py`) or transform them (`fim.py`).
"""
from __future__ import annotations

import math
import os
from typing import Iterator, Optional

import numpy as np
import torch

from mamba_nb.config import WindowConfig
from mamba_nb.fim import PLAIN, FimResult, FimTransform, document_starts, make_batch
from mamba_nb.orphans import die_with_parent
from mamba_nb.sampler import WindowSampler, check_fits
from mamba_nb.tokenizer import FimTokens


def check_tokenizer(ds, tokenizer=None):
    """The tokenizer to use with `ds`: its own, or `tokenizer` after checking that it is the same one.

    Raises ValueError when the FIM tokens are missing or when `tokenizer` is not the dataset's
    (token ids would mean different strings: the model would train on garbage).
    """
    own = ds.tokenizer
    if tokenizer is None:
        tokenizer = own
    try:
        fim_tokens = FimTokens.from_tokenizer(tokenizer)
    except ValueError as err:
        raise ValueError(f"cannot make FIM samples: {err}") from None
    if tokenizer is not own:
        mine, theirs = tokenizer.get_vocab(), own.get_vocab()
        if mine != theirs:
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(
                f"the tokenizer given ({getattr(tokenizer, 'name_or_path', '?')!r}, {len(mine)} tokens) is not the one "
                f"the dataset at {str(ds.path)!r} was tokenized with ({len(theirs)} tokens; "
                f"{len(differ)} differ, e.g. {differ[:3]}); use the dataset's own (`ds.tokenizer`), or rebuild "
                "the dataset with that tokenizer: `python -m mamba_nb build-dataset --tokenizer <name> --overwrite`"
            )
    if fim_tokens != ds.fim_tokens:
        raise ValueError(
            f"the tokenizer's FIM token ids {fim_tokens} differ from the dataset's manifest {ds.fim_tokens} "
            f"({str(ds.path)!r}); rebuild the dataset (`python -m mamba_nb build-dataset --overwrite`)"
        )
    return tokenizer


class WindowDataset(torch.utils.data.Dataset):
    """Map-style dataset whose index is a whole batch: `(epoch, starts)` → the batch dict."""

    def __init__(self, ds, split: str, cfg: WindowConfig, tokenizer=None):
        if split not in ds.splits:
            raise ValueError(f"unknown split {split!r}; the splits are {ds.splits}")
        self.ds = ds
        self.split = split
        self.cfg = cfg
        tokenizer = check_tokenizer(ds, tokenizer)
        self.tokenizer = tokenizer
        # fim_rate 0: windows go out as read, no tokenizer work at all.
        self.fim = FimTransform.from_config(tokenizer, cfg, ds.fim_tokens) if cfg.fim_rate > 0 else None
        self._offsets = np.arange(cfg.context_len + 1, dtype=np.int64)

    def read_windows(self, starts: np.ndarray) -> np.ndarray:
        """(B, context_len + 1) int64 tokens of the windows at `starts`, with one Lance `take`."""
        rows = (starts[:, None] + self._offsets).ravel()  # (B * (L + 1),)
        # Lance reads ascending row ids faster (pages visited once, in order): sort, take, unsort.
        order = np.argsort(rows, kind="stable")
        values = self.ds.take(self.split, rows[order])
        out = np.empty(len(rows), dtype=np.int64)
        out[order] = values
        return out.reshape(len(starts), -1)

    def __getitem__(self, index: tuple[int, tuple[int, ...]]) -> dict:
        epoch, starts = index
        starts = np.asarray(starts, dtype=np.int64)
        windows = self.read_windows(starts)
        if self.fim is None:
            result = FimResult(windows, np.full(windows.shape, PLAIN, dtype=np.int8),
                               document_starts(windows, self.ds.fim_tokens.eot))
        else:
            result = self.fim(windows, starts, epoch)
        return make_batch(result, starts)


class WindowBatchSampler:
    """Groups a `WindowSampler`'s starts into batches `(epoch, starts)`; the last one may be short."""

    def __init__(self, sampler: WindowSampler, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        self.sampler = sampler
        self.batch_size = int(batch_size)

    def __iter__(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        batch: list[int] = []
        for start in self.sampler:  # the sampler settles its epoch on the first start
            batch.append(start)
            if len(batch) == self.batch_size:
                yield self.sampler.epoch, tuple(batch)
                batch = []
        if batch:
            yield self.sampler.epoch, tuple(batch)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


class WindowLoader(torch.utils.data.DataLoader):
    """A DataLoader that counts the windows it delivers into its sampler's position (exact resume)."""

    def __init__(self, dataset: WindowDataset, batch_sampler: WindowBatchSampler, **kwargs):
        super().__init__(dataset, sampler=batch_sampler, batch_size=None, **kwargs)
        self.window_sampler = batch_sampler.sampler
        self.window_sampler.counted_by_consumer = True

    def __iter__(self):
        iterator = super().__iter__()
        for batch in iterator:
            self.window_sampler.mark_delivered(len(batch["starts"]))
            yield batch


def _worker_init(worker_id: int) -> None:
    # One core per worker: the Rust tokenizer would otherwise spread each encode over every
    # core, and workers would fight over them.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    die_with_parent()  # a killed run leaves no worker behind (orphans.py)


def _worker_context(name: Optional[str], tokenizer_module: str):
    import multiprocessing

    if name is None:
        name = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(name)
    if name == "forkserver":
        # Imported once in the server; each worker forks from it. Not lance: it warns on every fork
        # (its handles are opened in each worker, after the fork).
        ctx.set_forkserver_preload(["mamba_nb.forkserver_preload", "torch", "mamba_nb.windows", tokenizer_module])
    return ctx


def make_loader(ds, split: str, cfg: WindowConfig, batch_size: int, num_workers: int = 0, shuffle: bool = True,
                rank: Optional[int] = None, world_size: Optional[int] = None, epoch: int = 0,
                tokenizer=None, mp_context: Optional[str] = None) -> tuple[WindowLoader, WindowSampler]:
    """A DataLoader of FIM batches over `split` of `ds`, and its `WindowSampler` (for `set_epoch`, resume).

    `tokenizer`: None uses the dataset's own; one given is checked to be the same.
    `shuffle=False` (validation) gives a fixed grid in order. `rank`/`world_size` shard across
    DDP processes (None: from torch.distributed when initialized). `mp_context`: the workers'
    start method. The default is "forkserver" where the platform has it (else "spawn"): Lance is
    not fork-safe (forked workers crashed now and then in our tests) and a fork server, started
    once with the heavy modules imported, starts workers nearly as fast as a fork.
    """
    num_tokens = ds.num_tokens(split)
    check_fits(num_tokens, cfg.context_len, where=f"the {split} split of {str(ds.path)!r}")
    dataset = WindowDataset(ds, split, cfg, tokenizer)
    sampler = WindowSampler(num_tokens, cfg.context_len, seed=cfg.seed, shuffle=shuffle, rank=rank,
                            world_size=world_size, epoch=epoch)
    kwargs = {}
    if num_workers > 0:
        # persistent: workers start once per loader, not once per epoch (the epoch is in the index)
        kwargs = dict(worker_init_fn=_worker_init, persistent_workers=True,
                      multiprocessing_context=_worker_context(mp_context, type(dataset.tokenizer).__module__))
    loader = WindowLoader(dataset, WindowBatchSampler(sampler, batch_size), num_workers=num_workers, **kwargs)
    return loader, sampler


class DataStream:
    """Endless batches of the train split that knows its place: (epoch, batches taken this epoch).

    The place is counted here, on the consuming side, not read from the sampler, because
    DataLoader workers prefetch ahead of what the loop has used. `cfg`: a `TrainConfig` (its
    window settings, batch_size, num_workers); `d`: the `runtime.Dist` of this process.
    """

    def __init__(self, ds, cfg, d, epoch: int = 0, batches: int = 0):
        self.ds, self.cfg, self.d = ds, cfg, d
        self.epoch, self.batches = epoch, batches
        self._it = None

    def _open(self):
        loader, sampler = make_loader(self.ds, "train", self.cfg, self.cfg.batch_size,
                                      num_workers=self.cfg.num_workers, shuffle=True, rank=self.d.rank,
                                      world_size=self.d.world_size, epoch=self.epoch)
        if self.batches:
            # the sampler counts windows; skip those of the batches already trained on
            sampler.load_state_dict({"epoch": self.epoch, "position": self.batches * self.cfg.batch_size})
        self._it = iter(loader)

    def next(self) -> dict:
        for _ in range(2):
            if self._it is None:
                self._open()
            batch = next(self._it, None)
            if batch is not None:
                self.batches += 1
                return batch
            self._it, self.epoch, self.batches = None, self.epoch + 1, 0
        raise ValueError(f"the train split of {str(self.ds.path)!r} gives no batch of "
                         f"{self.cfg.batch_size} windows of context_len={self.cfg.context_len}; "
                         "pass a smaller --batch-size or --context-len")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches}
