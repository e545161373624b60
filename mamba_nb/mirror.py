"""A remote dataset's Lance tables read through a local copy, fetched one data file at a time.

Read straight from object storage, a batch of windows costs one ranged GET per window (Lance
fetches each window's pages; `benchmarks/bench_remote.py` counts them), each paying the store's
latency. `Mirror` copies a table's metadata (its versions, a few KB) when it opens, and each data
file (a fragment: about a million tokens, 2 MB) the first time a read needs one of its rows, into
a cache directory. Reads then go to the local copy through Lance.

A build writes each data file once and never changes it, and the manifest records its size, so
a copy of the right size is good for as long as the dataset lives; the cache key includes that
record (`TokenDataset` names the directory), so a rebuilt dataset gets a fresh copy. Files arrive whole through a temporary name,
so DataLoader workers that share the cache never see half of one.

Not here: where the objects are (`store.py`), what the tables hold (`dataset.py`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from mamba_nb.store import Store

# The cache of remote datasets' fragments (`--dataset-cache`; "none" reads the store directly).
DEFAULT_CACHE = "~/.cache/mamba_nb/datasets"


def cache_dir(setting: Optional[str]) -> Optional[Path]:
    """The cache directory a `dataset_cache` setting names; None for "none" (direct reads)."""
    if setting is None:
        setting = DEFAULT_CACHE
    if setting.lower() == "none":
        return None
    return Path(setting).expanduser()


class Mirror:
    """One Lance table of a remote dataset, read from a local copy that fills as reads need it.

    `take`, `to_table` and `count_rows` behave as the `lance.LanceDataset` methods of the same name.
    """

    def __init__(self, store: Store, table: str, cache: Path, data_sizes: dict[str, int]):
        import lance

        self.store, self.table = store, table
        self.sizes = data_sizes  # {file name in data/: bytes}, the build's record
        self.local = Path(cache) / table  # `cache`: this dataset's own directory (TokenDataset names it)
        for rel, size in store.listing(table).items():  # the metadata: versions, transactions
            dest = self.local / rel
            if not rel.startswith("data/") and not (dest.is_file() and dest.stat().st_size == size):
                self.store.fetch(f"{self.table}/{rel}", dest)
        self.ds = lance.dataset(str(self.local))
        fragments = self.ds.get_fragments()
        self.ends = np.cumsum([f.metadata.physical_rows for f in fragments])  # row after each fragment's last
        self.files = [[f"data/{d.path}" for d in f.data_files()] for f in fragments]
        self._present: set[int] = set()

    def ensure(self, first: int, last: int) -> None:
        """Fetch the data files holding rows `first`..`last` (inclusive) that are not here yet."""
        lo, hi = np.searchsorted(self.ends, [first, last], side="right")
        for i in range(int(lo), int(min(hi, len(self.files) - 1)) + 1):
            if i not in self._present:
                for rel in self.files[i]:
                    dest = self.local / rel
                    size = self.sizes.get(rel.removeprefix("data/"))
                    if not dest.is_file() or (size is not None and dest.stat().st_size != size):
                        self.store.fetch(f"{self.table}/{rel}", dest)
                self._present.add(i)

    def ensure_rows(self, rows: np.ndarray) -> None:
        """Fetch every data file that holds one of `rows` (row offsets, any order)."""
        if len(rows) == 0:
            return
        needed = np.unique(np.searchsorted(self.ends, rows, side="right"))
        for i in needed:
            start = int(self.ends[i - 1]) if i else 0
            self.ensure(start, start)

    def take(self, rows, columns=None):
        rows = np.asarray(rows)
        self.ensure_rows(rows)
        return self.ds.take(rows, columns=columns)

    def to_table(self, columns=None, offset: Optional[int] = None, limit: Optional[int] = None):
        total = int(self.ends[-1]) if len(self.ends) else 0
        first = offset or 0
        last = total - 1 if limit is None else min(total, first + limit) - 1
        if last >= first:
            self.ensure(first, last)
        return self.ds.to_table(columns=columns, offset=offset, limit=limit)

    def count_rows(self) -> int:
        return self.ds.count_rows()

    @property
    def schema(self):
        return self.ds.schema
