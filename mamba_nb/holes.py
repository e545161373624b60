"""Holes to fill: a prefix, the true middle, a suffix, cut from code in a seeded, repeatable way.

- `mask_line`: one line (or a run of lines) of a text as the middle;
- `line_tasks` / `block_tasks`: single-line and short-block holes drawn from documents (the
  held-out documents of a dataset, or any directory of code: `documents_from`, `package_dir`).

HumanEval's holes are in `benchmark.py`; scoring infills is `evaluate.py`'s job.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from mamba_nb.config import EvalConfig


@dataclass
class Hole:
    """One hole: `prefix + middle + suffix` is the original text."""

    prefix: str
    middle: str
    suffix: str
    source: str  # where it came from: "validation/<doc>:<line>" or a HumanEval task id


def mask_line(text: str, line_no: int, n_lines: int = 1) -> tuple[str, str, str]:
    """(prefix, middle, suffix) with lines `line_no` .. `line_no + n_lines - 1` (0-based) as the
    middle (without its last newline, which starts the suffix)."""
    lines = text.split("\n")
    end = min(line_no + n_lines, len(lines))
    prefix = "".join(line + "\n" for line in lines[:line_no])
    suffix = "\n" + "\n".join(lines[end:]) if end < len(lines) else ""
    return prefix, "\n".join(lines[line_no:end]), suffix


def line_tasks(documents: Iterable[str], n: int, seed: int = 0, tokenizer=None,
               max_line_tokens: int = EvalConfig.max_line_tokens, split: str = "validation") -> list[Hole]:
    """`n` single-line tasks drawn with `seed` from the non-blank lines of `documents`.

    The same documents and seed give the same tasks. Lines of more than `max_line_tokens`
    tokens (with `tokenizer`) are skipped. Fewer than `n` tasks come back when there are
    fewer lines.
    """
    docs = list(documents)
    candidates = [(d, i) for d, text in enumerate(docs) for i, line in enumerate(text.split("\n")) if line.strip()]
    random.Random(seed).shuffle(candidates)
    tasks = []
    for d, i in candidates:
        if len(tasks) == n:
            break
        prefix, middle, suffix = mask_line(docs[d], i)
        if tokenizer is not None and len(tokenizer.encode(middle, add_special_tokens=False)) > max_line_tokens:
            continue
        tasks.append(Hole(prefix, middle, suffix, f"{split}/{d}:{i + 1}"))
    return tasks


def block_tasks(documents: Iterable[str], n: int, seed: int = 0, tokenizer=None, max_tokens: int = 3 * EvalConfig.max_line_tokens,
                lines: Sequence[int] = (2, 3, 4), split: str = "validation") -> list[Hole]:
    """`n` short-block tasks drawn with `seed`: `lines` (one count drawn per task) consecutive lines
    starting at a non-blank line. Blocks of more than `max_tokens` tokens are skipped."""
    docs = list(documents)
    rng = random.Random(seed)
    candidates = [(d, i) for d, text in enumerate(docs) for i, line in enumerate(text.split("\n")) if line.strip()]
    rng.shuffle(candidates)
    tasks = []
    for d, i in candidates:
        if len(tasks) == n:
            break
        k = rng.choice(list(lines))
        prefix, middle, suffix = mask_line(docs[d], i, k)
        if tokenizer is not None and len(tokenizer.encode(middle, add_special_tokens=False)) > max_tokens:
            continue
        tasks.append(Hole(prefix, middle, suffix, f"{split}/{d}:{i + 1}-{i + k}"))
    return tasks


def documents_from(directory, patterns: Sequence[str] = ("**/*.py",)) -> list[str]:
    """The texts of the code files under `directory` (holes cut from code the model never saw)."""
    from mamba_nb.corpus import FileCorpus

    return [doc.text for doc in FileCorpus.glob(directory, patterns)]


def package_dir(name: str) -> Path:
    """The directory of an installed Python package (e.g. "requests"), to cut holes from."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"no installed package named {name!r}; pass another name, or a directory of code")
    return Path(list(spec.submodule_search_locations)[0])
