"""Which documents go to validation: a rule that needs nothing but a document's index.

`is_validation(index, validation_fraction, seed)` decides one document, so a build can stream
and a distributed build's tasks can decide their own documents once they know their first
index (`dataset.py`, `ray_build.py`). Not here: reading, tokenizing or storing documents.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

SPLITS = ("train", "validation")


def _uniform(seed: int, k: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, k), the same on every machine and Python."""
    digest = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def is_validation(index: int, validation_fraction: float, seed: int) -> bool:
    """Does document number `index` (0-based, in corpus order) go to validation?

    Systematic sampling with a random point in every unit interval: document i covers
    [i·f, (i+1)·f) of a line on which point k sits at k + u(seed, k); a document holding
    a point is a validation document. Every document has chance ≈ f, the validation
    documents are spread over the whole corpus (the stdlib is sorted by package), there are
    ⌊N·f⌋ or fewer (never more than ⌊N·f⌋+1) of them and at least one once N·f ≥ 1, and the
    decision needs nothing but the index: the build can stream. A smaller `max_documents`
    keeps the same split for the documents it keeps.
    """
    lo, hi = index * validation_fraction, (index + 1) * validation_fraction
    return any(lo <= k + _uniform(seed, k) < hi for k in range(math.floor(lo), math.floor(hi) + 1))


def split_documents(num_documents: int, validation_fraction: float, seed: int) -> np.ndarray:
    """The split of documents 0..n-1 as a bool array (True = validation); for tests and plots."""
    return np.array([is_validation(i, validation_fraction, seed) for i in range(num_documents)], dtype=bool)
