"""Where the windows of an epoch fall on the token array, in which order, and on which rank.

The token array (one split of the Lance dataset) is cut into windows of
`context_len + 1` tokens: a window starting at `s` holds tokens `s .. s+context_len`,
its inputs are the first `context_len` and its targets the last `context_len`
(shifted by one). Consecutive windows of an epoch start `context_len` apart, so
they share exactly one token: the last target of one window is the first input of
the next. That shared token is what "never overlapping" means here: **no
next-token pair (input → target) is trained twice in an epoch, and every pair
between the first and the last window is trained once.** (A grid stepped by
`context_len + 1` never trains the pair across each window edge.)

Each epoch draws a new offset for the whole grid, so window edges move and the
pairs at the head and tail of the array, and the tokens that start a window with
no context, change from epoch to epoch. Offsets are a seeded random permutation
of all the possible offsets, walked one per epoch: within `context_len` epochs
every offset has been used, so every next-token pair of the array is trained.

The number of windows per epoch is the same in every epoch:
`windows_per_epoch = num_tokens // context_len - 1`, one fewer than the naive
`num_tokens // context_len`, because the grid needs `context_len - 1` tokens of
slack for its offset to take every value (and one more for the `+1`). With
several ranks it is rounded down to a multiple of `world_size` so every rank gets
the same number of windows (DDP needs equal counts): the spare tokens widen the
offset range rather than being served twice, so no window of the epoch's grid is
repeated and none is lost; the windows are dealt round-robin over the shuffled
order.

Within an epoch the order is a permutation seeded by `(seed, epoch)`, the same
whatever the number of DataLoader workers: the sampler is iterated in the main
process and the DataLoader hands its indices out to the workers, so a map-style
dataset sees each index exactly once.

This module does not read tokens (see `windows.py`) and knows nothing of FIM.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from mamba_nb.rng import keyed_rng


def check_fits(num_tokens: int, context_len: int, windows: int = 1, where: str = "the split",
               per: str = "") -> None:
    """ValueError unless `where` (`num_tokens` tokens) holds `windows` windows of `context_len + 1`
    tokens: the one check, with the one message, of everything that cuts windows."""
    need = windows * (context_len + 1)
    if num_tokens < need:
        more = " (or --batch-size)" if windows > 1 else ""
        raise ValueError(
            f"context_len={context_len} needs {windows} window(s) of {context_len + 1} tokens{per}, but {where} "
            f"has only {num_tokens} tokens; pass a smaller --context-len{more}, or build a larger dataset "
            "(`python -m mamba_nb build-dataset` with more documents)"
        )


def _dist_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # torch is a dependency, but the sampler itself needs only numpy
        pass
    return 0, 1


class WindowSampler:
    """Window start offsets for one epoch on one rank; a drop-in `sampler=` for a DataLoader.

    Args:
        num_tokens: tokens in the split (`ds.num_tokens(split)`).
        context_len: tokens a model sees per window; each window holds `context_len + 1`.
        seed: seeds the offsets and the order; `(seed, epoch)` fixes both.
        shuffle: False gives offset 0 and windows in order every epoch (validation).
        rank, world_size: this process's shard; None takes them from torch.distributed when it
            is initialized, else a single process.
        epoch: the epoch to start at (`set_epoch` changes it).

    `len(sampler)` is this rank's windows per epoch. `state_dict()` is `{"epoch", "position"}`
    (plus the geometry, checked on load); `position` counts windows already handed out in the
    epoch, so `load_state_dict` resumes at the next one. Iterating a sampler whose epoch is
    finished starts the next epoch, so a plain `for epoch ...: for batch in loader:` loop gets new
    offsets without calling `set_epoch`.
    """

    def __init__(
        self,
        num_tokens: int,
        context_len: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        epoch: int = 0,
    ):
        num_tokens, context_len = int(num_tokens), int(context_len)
        if context_len < 1:
            raise ValueError(f"context_len={context_len} must be at least 1")
        check_fits(num_tokens, context_len)
        if (rank is None) != (world_size is None):
            raise ValueError(f"give both rank and world_size or neither (got rank={rank}, world_size={world_size})")
        if rank is None:
            rank, world_size = _dist_rank_world()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.num_tokens = num_tokens
        self.context_len = context_len
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.rank = int(rank)
        self.world_size = int(world_size)

        # Windows in the grid, the same count every epoch (see the module docstring). A split
        # shorter than two contexts still gets one window, with whatever offset range it allows.
        total = max(1, num_tokens // context_len - 1)
        total -= total % world_size
        if total == 0:
            raise ValueError(
                f"the split has {num_tokens} tokens: {max(1, num_tokens // context_len - 1)} window(s) of "
                f"context_len={context_len}, fewer than world_size={world_size} ranks; lower context_len or use "
                "fewer ranks"
            )
        self.windows_per_epoch = total  # all ranks together
        # The grid spans total * context_len + 1 tokens; the rest is the offset's range.
        self.max_offset = num_tokens - 1 - total * context_len
        if shuffle:
            # Offsets beyond context_len - 1 only matter when ranks made the grid shorter.
            self.num_offsets = self.max_offset + 1
        else:
            self.num_offsets = 1
        self.epoch = int(epoch)
        self.position = 0  # windows of this epoch already handed out (by this rank)
        # make_loader's loader counts delivered batches itself (workers prefetch ahead of the
        # training loop, so counting at yield time would overshoot on resume).
        self.counted_by_consumer = False

    # --- the epoch's geometry -------------------------------------------------

    def offset(self, epoch: Optional[int] = None) -> int:
        """Where the epoch's first window starts: a permutation of all offsets, walked one per epoch."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.num_offsets == 1:
            return 0
        cycle, i = divmod(epoch, self.num_offsets)
        return int(keyed_rng(self.seed, 0, cycle).permutation(self.num_offsets)[i])

    def epoch_starts(self, epoch: Optional[int] = None) -> np.ndarray:
        """All ranks' window starts of an epoch, in the epoch's order: (windows_per_epoch,) int64."""
        epoch = self.epoch if epoch is None else int(epoch)
        starts = self.offset(epoch) + self.context_len * np.arange(self.windows_per_epoch, dtype=np.int64)
        if self.shuffle:
            starts = starts[keyed_rng(self.seed, 1, epoch).permutation(self.windows_per_epoch)]
        return starts

    def rank_starts(self, epoch: Optional[int] = None) -> np.ndarray:
        """This rank's window starts of an epoch, in order: dealt round-robin from the epoch's order."""
        return self.epoch_starts(epoch)[self.rank :: self.world_size]

    # --- the Sampler protocol -------------------------------------------------

    def __len__(self) -> int:
        return self.windows_per_epoch // self.world_size

    def __iter__(self) -> Iterator[int]:
        if self.position >= len(self):
            # The last epoch ran out: go on with the next one rather than yield nothing.
            self.epoch, self.position = self.epoch + 1, 0
        start_position = self.position
        starts = self.rank_starts()
        for i in range(start_position, len(starts)):
            if not self.counted_by_consumer:
                self.position = i + 1
            yield int(starts[i])

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first window (as `DistributedSampler.set_epoch`)."""
        if int(epoch) != self.epoch or self.position >= len(self):
            self.position = 0
        self.epoch = int(epoch)

    def mark_delivered(self, num_windows: int) -> None:
        """Count windows the training loop received (used by `windows.WindowLoader`)."""
        self.position = min(len(self), self.position + int(num_windows))

    # --- exact resume -----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_tokens": self.num_tokens,
            "context_len": self.context_len,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state`'s epoch and position; the geometry must be the one it was saved with."""
        for key in ("seed", "num_tokens", "context_len", "world_size", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume: the saved sampler had {key}={state[key]!r} but this one has "
                    f"{key}={getattr(self, key)!r}; resume with the same dataset and settings, or start a new run "
                    "(--no-resume)"
                )
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ValueError(f"saved position={position} is outside [0, {len(self)}] windows of this rank")
        self.epoch = int(state["epoch"])
        self.position = position

    def __repr__(self) -> str:
        return (
            f"WindowSampler(num_tokens={self.num_tokens}, context_len={self.context_len}, seed={self.seed}, "
            f"shuffle={self.shuffle}, rank={self.rank}, world_size={self.world_size}, epoch={self.epoch}, "
            f"position={self.position}, windows_per_epoch={self.windows_per_epoch})"
        )
