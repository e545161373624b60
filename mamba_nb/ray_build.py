"""The dataset build's tokenize-and-write pass on a Ray cluster (`--build-engine ray`).

Why Ray Data: it schedules Python tasks over the cores of one machine or the nodes of a cluster
(`RAY_ADDRESS`), streams blocks with backpressure, and the tokenizer is Python + Rust, so tasks
that each own a slice of the corpus parallelize it with no shared state. (Daft would run the
same plan, but its multi-machine runner is Ray anyway.) Only this pass is distributed: the
tokenizer is trained (or loaded) first, as in the single-process build, so both produce the
same token ids, and the manifest, the document tables and the commit stay with the driver.

The corpus is a list of files (`stdlib` or `dir`), cut into shards of `FILES_PER_TASK` files:
1. count: each task reads its shard and says which files it keeps as documents (binary, not
   UTF-8, empty and too-large files are skipped as in `corpus.py`). The split of a document depends
   on its index in the whole corpus (`split.is_validation`), so the driver turns the counts
   into each shard's first index.
2. write: each task reads its shard again, splits, tokenizes (the same `DocumentEncoder` as the
   single-process build) and writes its tokens as Lance fragments of each split's table
   (`lance.fragment.write_fragments`), returning their metadata and each document's length.
The driver (`dataset.py`) then commits each token table once, its fragments in shard order (one
Lance `Overwrite`: the table appears whole or not at all), and writes the small document tables. The
result is token for token and document for document the single-process build's; the Lance
files are cut differently (a fragment per shard).

A worker holds one shard at a time, so its memory does not grow with the corpus. On several
machines the workers write straight to `--out-dir`, which must then be reachable from all of
them: a bucket (s3://...) or a shared filesystem.

Not here: the rest of the build (tokenizer, manifest, atomic placement: `dataset.py`).
"""
from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from mamba_nb.corpus import SkipCounts
from mamba_nb.split import SPLITS, is_validation
from mamba_nb.tokenizer import EOT, DocumentEncoder

SKIP_REASONS = ("binary", "not_utf8", "empty", "too_large")  # `SkipCounts`' fields
FILES_PER_TASK = 128  # a shard: enough work to amortize a task, little enough memory (~10 MB of text)
# A worker process is replaced after this many tasks (None: never). What tasks leave behind
# (allocator fragmentation, Arrow and Lance buffers) otherwise adds up: a worker's peak RSS grew
# 1.35x from 1x to 4x the stdlib; replaced every 8 tasks, 1.04x (benchmarks/bench_build_ray.py).
TASKS_PER_WORKER: Optional[int] = 8


class RayBuildError(ValueError):
    """The distributed build cannot run as asked; the message says what to change."""


def files_of(corpus) -> list[Path]:
    files = getattr(corpus, "files", None)
    if files is None:
        raise RayBuildError(f"--build-engine ray reads a corpus of files (source stdlib or dir), not {corpus.kind!r}; "
                            "build this one with --build-engine local")
    return list(files)


def _start(workers: Optional[int]):
    """Ray, joined (RAY_ADDRESS, or a cluster already started here) or started locally with `workers` CPUs."""
    import logging
    import os

    import ray
    import ray.data

    if not ray.is_initialized():
        local = not os.environ.get("RAY_ADDRESS")
        ray.init(num_cpus=workers if local else None, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ray


def _map(fn, specs: list[dict], workers: Optional[int]) -> list[dict]:
    """`fn` over `specs`, one Ray Data task per spec, results in spec order."""
    import ray.data

    rows = ray.data.from_items(specs, override_num_blocks=len(specs)).map(
        fn, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=workers), max_calls=TASKS_PER_WORKER)
    return sorted(rows.take_all(), key=lambda r: r["shard"])


def _shard_corpus(root: str, files: list[str], max_document_bytes: int):
    from mamba_nb.corpus import FileCorpus

    corpus = FileCorpus(root, [Path(f) for f in files])
    corpus.max_document_bytes = max_document_bytes
    return corpus


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _count(spec: dict) -> dict:
    """Each file's fate, in order: null when kept as a document, else [reason, source] of its skip."""
    fates = []
    for path in spec["files"]:
        one = _shard_corpus(spec["root"], [path], spec["max_document_bytes"])
        kept = any(True for _ in one)
        fates.append(None if kept else [next(r for r in SKIP_REASONS if getattr(one.skipped, r)),
                                        one.skipped.examples[0].rsplit(" (", 1)[0]])
    return {"shard": spec["shard"], "fates": json.dumps(fates)}


def _first_indices(counts: list[dict], cap: float) -> tuple[list[int], list[int], SkipCounts]:
    """Each shard's first document index and how many documents it keeps, and what was skipped,
    as the single-process build sees them: it stops reading at the `cap`-th document
    (`max_documents`), so skips after that one are not counted."""
    firsts, limits, skipped, kept = [], [], SkipCounts(), 0
    for row in counts:
        firsts.append(kept)
        for fate in json.loads(row["fates"]):
            if kept >= cap:
                break
            if fate is None:
                kept += 1
            else:
                skipped.add(*fate)
        limits.append(kept - firsts[-1])
    return firsts, limits, skipped


def _write(spec: dict) -> dict:
    """Tokenize a shard's documents from corpus index `first`, keep at most `limit`, write fragments."""
    import itertools

    from lance.fragment import write_fragments


    corpus = _shard_corpus(spec["root"], spec["files"], spec["max_document_bytes"])
    docs = list(itertools.islice(corpus, spec["limit"]))
    fraction, seed = spec["validation_fraction"], spec["seed"]
    encode = DocumentEncoder(spec["tokenizer"], spec["eot"], np.dtype(spec["dtype"]))
    schema = pa.schema([("token", pa.from_numpy_dtype(np.dtype(spec["dtype"])))])
    out: dict[str, Any] = {"shard": spec["shard"]}
    for split in SPLITS:
        mine = [d for i, d in enumerate(docs)
                if (split == "validation") == is_validation(spec["first"] + i, fraction, seed)]
        fragments, lengths = [], np.zeros(0, dtype=np.int64)
        if mine:
            tokens, lengths = encode([d.text for d in mine])
            table = pa.table([pa.array(tokens)], schema=schema)
            fragments = write_fragments(table, json.loads(spec["uris"])[split], schema=schema,
                                        max_rows_per_group=64 * 1024, storage_options=json.loads(spec["options"]) or None)
        out[split] = json.dumps({
            "fragments": [f.to_json() for f in fragments], "lengths": lengths.tolist(),
            "sources": [d.source for d in mine], "characters": sum(len(d.text) for d in mine),
            "bytes": sum(len(d.text.encode("utf-8")) for d in mine)})
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def tokenize_and_write(corpus, cfg, tokenizer, dtype: np.dtype, staging, workers: Optional[int] = None
                       ) -> tuple[dict, dict]:
    """The distributed twin of `dataset._tokenize_and_write`, up to the commit: → (per split: the
    fragments written, in corpus order, and each document's length and source; what the build was:
    engine, tasks, workers, the largest worker peak RSS). Sets `corpus.skipped`."""
    from lance.fragment import FragmentMetadata

    files = [str(f) for f in files_of(corpus)]
    _start(workers)
    base = {"root": str(corpus.root), "max_document_bytes": corpus.max_document_bytes}
    specs = [{**base, "shard": i, "files": files[lo:lo + FILES_PER_TASK]}
             for i, lo in enumerate(range(0, len(files), FILES_PER_TASK))]
    cap = corpus.max_documents if corpus.max_documents is not None else float("inf")
    firsts, limits, corpus.skipped = _first_indices(_map(_count, specs, workers), cap)
    # (rows of plain data: Ray Data keeps them as Arrow)
    same = {"validation_fraction": cfg.validation_fraction, "seed": cfg.seed, "dtype": np.dtype(dtype).name,
            "uris": json.dumps({split: staging.lance_uri(f"{split}.lance") for split in SPLITS}),
            "options": json.dumps(staging.lance_options() or {}),
            "tokenizer": tokenizer.backend_tokenizer.to_str(), "eot": tokenizer.convert_tokens_to_ids(EOT)}
    for spec, first, limit in zip(specs, firsts, limits):
        spec.update(same, first=first, limit=limit)
    written = _map(_write, [s for s in specs if s["limit"] > 0], workers)
    parts = {}
    for split in SPLITS:
        pieces = [json.loads(r[split]) for r in written]
        parts[split] = {"fragments": [FragmentMetadata.from_json(json.dumps(f)) for p in pieces for f in p["fragments"]],
                        "lengths": [n for p in pieces for n in p["lengths"]],
                        "sources": [x for p in pieces for x in p["sources"]],
                        "characters": sum(p["characters"] for p in pieces), "bytes": sum(p["bytes"] for p in pieces)}
    return parts, {"engine": "ray", "tasks": len(specs), "workers": workers,
                   "worker_peak_rss_mib": round(max((r["peak_rss_mib"] for r in written), default=0.0), 1)}
