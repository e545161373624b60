"""Randomness: keyed generators for the data, and the training process's global state.

`keyed_rng(*keys)` is a fresh generator for one tuple of integers: the sampler's offsets and
orders (keyed by seed and epoch) and each window's FIM draws (keyed by seed, epoch and the
window's start) come from it, so any process, any DataLoader worker and any worker count draw
the same numbers, and nothing has to be carried between them.

The global generators (Python's `random`, NumPy's legacy one, torch's) are what model
initialisation and dropout-like code use: `seed_everything` sets them, `rng_state` /
`set_rng_state` save and restore them in a checkpoint (as tensors and plain values, so the
training state loads with `torch.load(weights_only=True)`).
"""
from __future__ import annotations

import random

import numpy as np
import torch


def keyed_rng(*keys: int) -> np.random.Generator:
    """The generator of `keys` (integers): the same numbers for the same keys, anywhere."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
