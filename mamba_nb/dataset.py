"""Build and open the Lance token dataset: corpus → tokenizer → one token array per split.

On disk (`out_dir/`, a directory or an object-store prefix such as s3://bucket/corpus):
    manifest.json         written last; its presence means the dataset is complete
    tokenizer/            the tokenizer (`save_pretrained`)
    train.lance           column "token" (uint16, or uint32 for vocabularies over 65,536):
    validation.lance        one token per row, each document followed by <|endoftext|>
    train_docs.lance      one row per document: start, length (tokens incl. its EOT), source
    validation_docs.lance

`build_dataset(cfg)` streams: documents are read, assigned to a split, tokenized in
batches and written as they come, so memory stays flat whatever the corpus size. It is
deterministic (same corpus + seed → same split and tokens), idempotent (a complete dataset
with the same settings is reused; if its corpus changed since, a line and the summary say so,
with --overwrite to rebuild) and atomic: locally it builds in a hidden sibling directory
and renames it into place; in object storage (no rename there) it writes in place and the
manifest last, in one PUT. Either way an interrupted build never opens as a dataset.
`open_dataset(path)` opens a built dataset as a `TokenDataset`; a remote one reads through a
local copy of its fragments (`mirror.py`).

This module does not cut windows, shuffle, or apply FIM (`sampler.py`, `windows.py`, `fim.py`).
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa

from mamba_nb.config import DataConfig, to_dict
from mamba_nb.corpus import Corpus, Document, changed_since, corpus_from_config
from mamba_nb.mirror import Mirror, cache_dir
from mamba_nb.split import SPLITS, is_validation
from mamba_nb.store import Store, StoreError, resolve_options
from mamba_nb.tokenizer import DocumentEncoder, FimTokens, load_hf_tokenizer, token_dtype, train_bpe, vocab_size_of

FORMAT = "mamba-nb-token-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCHEMA_METADATA_KEY = b"mamba_nb"  # the manifest, also stored in each token array's Lance schema
# One encode_batch call gets documents up to this many characters (or DOCS_PER_BATCH documents):
# large enough that the Rust tokenizer keeps every core busy, small enough to bound memory.
CHARS_PER_BATCH = 4_000_000
DOCS_PER_BATCH = 1024
TAKE_MAX_ROWS = 1 << 16  # `read` uses `take` up to this many tokens, a scan beyond
QUEUE_DEPTH = 4  # batches in flight between the reader, the tokenizer and each writer
DOCS_SCHEMA = pa.schema([("start", pa.int64()), ("length", pa.int64()), ("source", pa.string())])
# Settings that do not change what gets built (so a dataset is reused whatever their value).
NOT_CONTENT_SETTINGS = ("out_dir", "overwrite", "storage_options", "build_engine", "build_workers")


class DatasetError(RuntimeError):
    """A dataset that is missing, incomplete, corrupt, or cannot be built as asked."""


def _build_command(path: Path | str) -> str:
    return f"python -m mamba_nb build-dataset --out-dir {path}"


def _store(uri, options=None) -> Store:
    """The `Store` of a dataset URI; bad storage options or an unknown scheme → DatasetError."""
    try:
        return Store(uri, resolve_options(options))
    except StoreError as err:
        raise DatasetError(str(err)) from None


# --- streaming writes ----------------------------------------------------------------


class _LanceWriter:
    """Writes the record batches put into it to one Lance dataset, on its own thread.

    `lance.write_dataset` pulls from a RecordBatchReader; feeding it from a bounded queue
    lets one pass over the corpus fill four datasets at once while tokenization goes on.
    """

    _DONE = object()

    def __init__(self, uri: str, schema: pa.Schema, options: Optional[dict] = None):
        self.uri, self.schema, self.options = uri, schema, options
        self.queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self.error: Optional[BaseException] = None
        self.rows = 0
        self.thread = threading.Thread(target=self._run, name=f"lance-writer-{uri.rsplit('/', 1)[-1]}", daemon=True)
        self.thread.start()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while (batch := self.queue.get()) is not self._DONE:
            yield batch

    def _run(self) -> None:
        import lance

        try:
            reader = pa.RecordBatchReader.from_batches(self.schema, self._batches())
            # The default 1,024 rows per group would cut a one-token-per-row array into
            # tiny pages; a larger group keeps the file compact and fast to read.
            lance.write_dataset(reader, self.uri, schema=self.schema, max_rows_per_group=64 * 1024,
                                storage_options=self.options)
        except BaseException as err:  # reported to the building thread by put()/close()
            self.error = err
            while self.queue.get() is not self._DONE:  # drain so the producer never blocks forever
                pass

    def put(self, batch: pa.RecordBatch) -> None:
        if self.error is not None:
            raise DatasetError(f"writing {self.uri} failed: {self.error}") from self.error
        self.rows += batch.num_rows
        self.queue.put(batch)

    def close(self) -> None:
        self.queue.put(self._DONE)
        self.thread.join()
        if self.error is not None:
            raise DatasetError(f"writing {self.uri} failed: {self.error}") from self.error


def _background(items: Iterable, depth: int = QUEUE_DEPTH) -> Iterator:
    """Iterate `items` on a helper thread, `depth` items ahead (file reading overlaps tokenizing)."""
    q: queue.Queue = queue.Queue(depth)
    done, stop = object(), threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as err:
            failure.append(err)
        q.put(done)

    thread = threading.Thread(target=run, name="corpus-reader", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()  # the consumer stopped early (error, interrupt): let the reader end
        thread.join()


def _chunks(docs: Iterable[tuple[str, Document]]) -> Iterator[tuple[str, list[Document]]]:
    """Group (split, document) pairs into per-split batches of ~CHARS_PER_BATCH characters."""
    pending: dict[str, list[Document]] = {s: [] for s in SPLITS}
    chars = dict.fromkeys(SPLITS, 0)
    for split, doc in docs:
        pending[split].append(doc)
        chars[split] += len(doc.text)
        if chars[split] >= CHARS_PER_BATCH or len(pending[split]) >= DOCS_PER_BATCH:
            yield split, pending[split]
            pending[split], chars[split] = [], 0
    for split in SPLITS:
        if pending[split]:
            yield split, pending[split]


def _split_documents(corpus: Corpus, cfg: DataConfig) -> Iterator[tuple[str, Document]]:
    for index, doc in enumerate(corpus):
        yield ("validation" if is_validation(index, cfg.validation_fraction, cfg.seed) else "train"), doc


# --- the build -------------------------------------------------------------------------


def _content_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in NOT_CONTENT_SETTINGS}


def _known_length(corpus: Corpus) -> Optional[int]:
    try:
        return len(corpus)
    except TypeError:  # a streamed corpus does not know its length
        return None


def train_bpe_on(corpus: Corpus, cfg: DataConfig, progress: bool = False):
    """The BPE `build_dataset` trains: one streaming pass over the train split of `corpus` only
    (validation documents stay unseen by the tokenizer too)."""
    from tqdm.auto import tqdm

    texts = (doc.text for split, doc in _split_documents(corpus, cfg) if split == "train")
    total = _known_length(corpus)
    bar = tqdm(texts, total=total, desc="training BPE (train split)", unit="doc", disable=not progress)
    return train_bpe(bar, cfg.vocab_size)


def _tokenize_and_write(corpus: Corpus, cfg: DataConfig, tokenizer, dtype: np.dtype, staging: Store, progress: bool):
    """One streaming pass: read, split, encode in batches, write four Lance datasets. → per-split stats."""
    from tqdm.auto import tqdm

    token_schema = pa.schema([("token", pa.from_numpy_dtype(dtype))])
    opts = staging.lance_options()
    writers = {split: (_LanceWriter(staging.lance_uri(f"{split}.lance"), token_schema, opts),
                       _LanceWriter(staging.lance_uri(f"{split}_docs.lance"), DOCS_SCHEMA, opts))
               for split in SPLITS}
    stats = {split: {"documents": 0, "tokens": 0, "bytes": 0, "characters": 0} for split in SPLITS}
    encode = DocumentEncoder.of(tokenizer, dtype)
    bar = tqdm(total=_known_length(corpus), desc="tokenizing → Lance", unit="doc", disable=not progress)
    try:
        for split, docs in _background(_chunks(_split_documents(corpus, cfg))):
            texts = [d.text for d in docs]
            tokens, lengths = encode(texts)
            s = stats[split]
            starts = s["tokens"] + np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
            tokens_out, docs_out = writers[split]
            tokens_out.put(pa.record_batch([pa.array(tokens)], schema=token_schema))
            docs_out.put(
                pa.record_batch([pa.array(starts), pa.array(lengths), pa.array([d.source for d in docs])], schema=DOCS_SCHEMA)
            )
            s["documents"] += len(docs)
            s["tokens"] += int(lengths.sum())
            s["characters"] += sum(len(t) for t in texts)
            s["bytes"] += sum(len(t.encode("utf-8")) for t in texts)
            bar.update(len(docs))
    finally:
        bar.close()
        for tokens_out, docs_out in writers.values():
            tokens_out.close()
            docs_out.close()
    return stats


def _commit_fragments(staging: Store, dtype: np.dtype, parts: dict) -> dict:
    """A distributed build's end: each token table committed once from the fragments its workers
    wrote (in corpus order: one Lance `Overwrite`, whole or not at all), the document tables
    written from their lengths and sources. `parts`: per split, as `ray_build` returns them. → stats."""
    import lance

    token_schema = pa.schema([("token", pa.from_numpy_dtype(np.dtype(dtype)))])
    opts = staging.lance_options()
    stats = {}
    for split in SPLITS:
        part = parts[split]
        lance.LanceDataset.commit(staging.lance_uri(f"{split}.lance"),
                                  lance.LanceOperation.Overwrite(token_schema, part["fragments"]), storage_options=opts)
        lengths = np.asarray(part["lengths"], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64) if len(lengths) else lengths
        docs = pa.table([pa.array(starts, pa.int64()), pa.array(lengths, pa.int64()),
                         pa.array(part["sources"], pa.string())], schema=DOCS_SCHEMA)
        lance.write_dataset(docs, staging.lance_uri(f"{split}_docs.lance"), schema=DOCS_SCHEMA, storage_options=opts)
        stats[split] = {"documents": len(lengths), "tokens": int(lengths.sum()), "bytes": part["bytes"],
                        "characters": part["characters"]}
    return stats


def _write_manifest(staging: Store, manifest: dict[str, Any]) -> None:
    import lance

    text = json.dumps(manifest, indent=2, sort_keys=True)
    for split in SPLITS:  # the same metadata travels inside the Lance data itself
        table = lance.dataset(staging.lance_uri(f"{split}.lance"), storage_options=staging.lance_options())
        table.update_schema_metadata({SCHEMA_METADATA_KEY.decode(): text})
    staging.write_text(MANIFEST, text)  # last: its presence means the dataset is complete


def _is_ours(store: Store) -> bool:
    """A directory this module made, complete or damaged: its manifest names our format, or (the
    manifest lost or cut) it holds our layout, so `--overwrite` can replace it."""
    try:
        if json.loads(store.read_text(MANIFEST)).get("format") == FORMAT:
            return True
    except (StoreError, ValueError, AttributeError):
        pass
    ours = {"tokenizer", *(f"{s}.lance" for s in SPLITS), *(f"{s}_docs.lance" for s in SPLITS), MANIFEST}
    entries = store.entries()
    return len(entries & ours) >= 3 and entries <= ours | {MANIFEST + ".part"}


def _tables() -> list[str]:
    return [table for split in SPLITS for table in (f"{split}.lance", f"{split}_docs.lance")]


def data_files(store: Store | Path) -> dict[str, int]:
    """{relative path: bytes} of every Lance data file of a dataset (the fragments, which a build
    writes once and never changes): the cheap integrity record the manifest keeps."""
    store = store if isinstance(store, Store) else Store(store)
    return {f"{table}/data/{name}": size for table in _tables()
            for name, size in sorted(store.listing(f"{table}/data").items())}


def check_data_files(store: Store, meta: dict) -> None:
    """Every data file the build recorded is there with its size, or DatasetError saying which is not."""
    expected = meta.get("files")
    if not expected:  # (built before the record existed)
        return
    found = data_files(store)
    for rel, size in expected.items():
        problem = ("is missing" if rel not in found else
                   f"has {found[rel]:,} bytes where the build wrote {size:,}" if found[rel] != size else None)
        if problem:
            raise DatasetError(f"the dataset at {store.uri!r} is damaged: {rel} {problem}; rebuild it with "
                               f"`{_build_command(store.uri)} --overwrite`")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_builds(out: Path) -> None:
    """Delete the temporary directories that killed builds of `out` left behind."""
    for tmp in [*out.parent.glob(f".{out.name}.building-*"), *out.parent.glob(f".{out.name}.old-*")]:
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _reuse(out: Store, cfg: DataConfig, corpus: Optional[Corpus]) -> Optional["TokenDataset"]:
    """The dataset already at `out` when it can be reused; None when there is nothing there (or
    `cfg.overwrite`). A directory that is not ours, damaged, or built with other settings raises.
    (A remote prefix holding our layout without a manifest is a build that did not finish: it is
    replaced, as a local build's hidden leftovers are.)"""
    if not out.exists():
        return None
    empty = not out.entries()
    if (not out.remote and not out.is_dir()) or (not empty and not _is_ours(out)):
        raise DatasetError(
            f"{out.uri!r} exists and is not a mamba-nb dataset (no {MANIFEST} of ours); refusing to "
            "overwrite it: pass another --out-dir, or delete it yourself if it is yours to delete"
        )
    if cfg.overwrite or empty or (out.remote and not out.is_file(MANIFEST)):
        return None
    ds = open_dataset(out.uri, out.options)  # raises DatasetError (with the --overwrite hint) if damaged
    # a setting the dataset predates was at its default then
    old = _content_settings({**to_dict(DataConfig()), **ds.meta["settings"]})
    asked = _content_settings(to_dict(cfg))
    if corpus is None and old != asked:
        diff = {k: (old.get(k), v) for k, v in asked.items() if old.get(k) != v}
        raise DatasetError(
            f"the dataset at {out.uri!r} was built with other settings ({{name: (built, asked)}}: {diff}); "
            f"pass --overwrite to rebuild it, or another --out-dir"
        )
    ds.corpus_change = changed_since(ds.meta["source"], cfg, corpus)
    if ds.corpus_change is not None:
        print(f"note: the corpus changed since the dataset at {out.uri!r} was built ({ds.corpus_change}); it is "
              "reused as it was built: pass --overwrite to rebuild it from the corpus as it is now")
    return ds


def _tokenizer_for(corpus: Corpus, cfg: DataConfig, progress: bool) -> tuple[Any, dict]:
    """(tokenizer, what the manifest says of it): a BPE trained on the train split, or an HF one."""
    if cfg.tokenizer is None:
        info = {"kind": "bpe", "trained_on": "train split", "requested_vocab_size": cfg.vocab_size}
        tokenizer = train_bpe_on(corpus, cfg, progress)
    else:
        info = {"kind": "hf", "name_or_path": cfg.tokenizer}
        tokenizer = load_hf_tokenizer(cfg.tokenizer)
    return tokenizer, {**info, "class": type(tokenizer).__name__}


def _check_splits(stats: dict, corpus: Corpus, cfg: DataConfig) -> None:
    """DatasetError when nothing was built, or one split is empty (what to change, said)."""
    where = corpus.describe().get("path", corpus.kind)
    total = stats["train"]["documents"] + stats["validation"]["documents"]
    if total == 0:
        sk = corpus.skipped
        raise DatasetError(
            f"no document to build from in {where!r}: every candidate was skipped ({sk.binary} binary, "
            f"{sk.not_utf8} not UTF-8, {sk.empty} empty, {sk.too_large} over --max-document-bytes; "
            f"e.g. {sk.examples[:3]}); check --path and --patterns (or --hf-text-column)"
        )
    for split in SPLITS:
        if stats[split]["documents"] == 0:
            raise DatasetError(
                f"the {split} split of {where!r} is empty: {total} document(s) in all with "
                f"validation_fraction={cfg.validation_fraction}; use more documents (--max-documents) "
                "or change --validation-fraction"
            )


def build_dataset(cfg: DataConfig, corpus: Optional[Corpus] = None, progress: bool = True) -> "TokenDataset":
    """Build the token dataset `cfg` describes in `cfg.out_dir` (or reuse it), → `TokenDataset`.

    `corpus` overrides the one `cfg` names (the benchmark passes a repeated stdlib).
    Reuse: a complete dataset built with the same settings is opened, not rebuilt (a corpus
    that changed since is said, `corpus.changed_since`); one with other settings is an error
    unless `cfg.overwrite`. A directory that is not a
    dataset of ours is never deleted. The build happens in a hidden sibling directory that
    is renamed into place once its manifest is written.
    """
    out = _store(cfg.out_dir, cfg.storage_options)
    ds = _reuse(out, cfg, corpus)
    if ds is not None:
        return ds
    if cfg.tokenizer is None and cfg.vocab_size is not None:
        token_dtype(cfg.vocab_size)  # fail before reading anything
    corpus = corpus if corpus is not None else corpus_from_config(cfg)
    if cfg.build_engine == "ray":
        from mamba_nb.ray_build import files_of

        files_of(corpus)  # a corpus it cannot shard is refused before any work
    staging = _staging(out)
    started = time.time()
    try:
        tokenizer, tokenizer_info = _tokenizer_for(corpus, cfg, progress)
        fim = FimTokens.from_tokenizer(tokenizer)
        dtype = token_dtype(vocab_size_of(tokenizer))
        _save_tokenizer(tokenizer, staging)
        tokenize_started = time.time()
        if cfg.build_engine == "ray":
            from mamba_nb.ray_build import tokenize_and_write

            parts, engine = tokenize_and_write(corpus, cfg, tokenizer, dtype, staging, cfg.build_workers)
            stats = _commit_fragments(staging, dtype, parts)
        else:
            stats, engine = _tokenize_and_write(corpus, cfg, tokenizer, dtype, staging, progress), {"engine": "local"}
        _check_splits(stats, corpus, cfg)
        _write_manifest(staging, {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": corpus.describe(),
            "tokenizer": tokenizer_info,
            "vocab_size": vocab_size_of(tokenizer),
            "dtype": dtype.name,
            "fim_tokens": {"eot": fim.eot, "prefix": fim.prefix, "middle": fim.middle, "suffix": fim.suffix, "pad": fim.pad},
            "splits": stats,
            "skipped": corpus.skipped.to_dict(),
            "files": data_files(staging),
            "settings": to_dict(cfg),
            "build_seconds": {"tokenizer": round(tokenize_started - started, 3),
                              "tokenize_and_write": round(time.time() - tokenize_started, 3)},
            "build_engine": engine,
        })
        if not out.remote:
            _move_into_place(Path(staging.uri), Path(out.uri), replace=cfg.overwrite)
    except BaseException:
        _discard(staging)
        raise
    return open_dataset(out.uri, out.options)


def _staging(out: Store) -> Store:
    """Where a build writes: locally a hidden sibling renamed into place at the end; in object
    storage the prefix itself, emptied first (manifest first, so it stops opening at once)."""
    if out.remote:
        if out.is_file(MANIFEST):
            out.delete(MANIFEST)
        out.delete()
        return out
    path = Path(out.uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(path)
    tmp = path.parent / f".{path.name}.building-{os.getpid()}"
    tmp.mkdir()
    return Store(tmp)


def _discard(staging: Store) -> None:
    """Remove a failed build's files (best effort: without a manifest they never open anyway)."""
    try:
        staging.delete()
    except (StoreError, OSError):
        pass


def _save_tokenizer(tokenizer, staging: Store) -> None:
    if not staging.remote:
        tokenizer.save_pretrained(Path(staging.uri) / "tokenizer")
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        staging.upload(Path(tmp), "tokenizer")


def _move_into_place(tmp: Path, out: Path, replace: bool) -> None:
    """Rename the finished build onto `out`; an old dataset of ours there is replaced."""
    if not replace and (out / MANIFEST).is_file():
        # another process finished the same build while we worked: keep theirs (it may be open)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old) if any(out.iterdir()) else out.rmdir()
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# --- opening ---------------------------------------------------------------------------


def open_dataset(path: str | Path, storage_options=None, dataset_cache: Optional[str] = None) -> "TokenDataset":
    """Open a dataset `build_dataset` made. Missing, incomplete or damaged → `DatasetError`.

    `path`: a directory or an object-store URI; `storage_options`: key=value items, YAML files or a
    dict (store.py); `dataset_cache`: where a remote dataset's fragments are copied (mirror.py).
    """
    store = _store(path, storage_options)
    try:
        meta = _read_manifest(store)
        check_data_files(store, meta)
    except StoreError as err:
        raise DatasetError(str(err)) from None
    return TokenDataset(store, meta, dataset_cache)


def _read_manifest(store: Store) -> dict:
    path, build = store.uri, _build_command(store.uri)
    manifest = f"{path}/{MANIFEST}"
    if not store.is_dir():
        raise DatasetError(f"no dataset at {path!r}; build it with `{build}`")
    if not store.is_file(MANIFEST):
        raise DatasetError(
            f"{path!r} is not a complete dataset (no {MANIFEST}: the build did not finish, or it is "
            f"another directory); rebuild it with `{build} --overwrite`"
        )
    try:
        meta = json.loads(store.read_text(MANIFEST))
    except ValueError as err:
        raise DatasetError(f"{manifest!r} is not valid JSON ({err}); rebuild with `{build} --overwrite`") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DatasetError(f"{manifest!r} is not a mamba-nb dataset manifest; rebuild with `{build} --overwrite`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"the dataset at {path!r} has format version {meta.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}; rebuild with `{build} --overwrite`"
        )
    needed = ["tokenizer", *(f"{s}.lance" for s in SPLITS), *(f"{s}_docs.lance" for s in SPLITS)]
    entries = store.entries()
    missing = [n for n in needed if n not in entries]
    if missing:
        raise DatasetError(f"the dataset at {path!r} lacks {missing}; rebuild with `{build} --overwrite`")
    return meta


class TokenDataset:
    """A built dataset: its manifest (`meta`), tokenizer, and the token arrays of both splits.

    Lance handles are opened lazily and per process (Lance is not fork-safe), and a
    `TokenDataset` pickles as just its location, so DataLoader workers reopen it themselves.
    A remote dataset's tables are read through a local copy that fills as reads need it
    (`mirror.py`; `dataset_cache="none"` reads the store directly), its tokenizer from that cache.
    """

    splits = SPLITS

    def __init__(self, store: Store | Path | str, meta: dict[str, Any], dataset_cache: Optional[str] = None):
        self.store = store if isinstance(store, Store) else Store(store)
        self.path = self.store.path  # a Path, or the URI of a remote dataset
        self.meta = meta
        self.dataset_cache = dataset_cache
        self.fim_tokens = FimTokens(**meta["fim_tokens"])
        self.dtype = np.dtype(meta["dtype"])
        self._tokenizer = None
        self._handles: dict[str, Any] = {}
        self._handles_pid: Optional[int] = None
        self._spans: dict[str, np.ndarray] = {}
        self.corpus_change: Optional[str] = None  # how the corpus changed since the build, when reused (`_reuse`)

    def __reduce__(self):
        return open_dataset, (self.store.uri, self.store.options, self.dataset_cache)

    def __repr__(self) -> str:
        n = {s: self.num_tokens(s) for s in SPLITS}
        return f"TokenDataset({self.store.uri!r}, tokens={n}, vocab_size={self.meta['vocab_size']})"

    def _cache(self) -> Optional[Path]:
        """This dataset's local copy (remote datasets only; None: read the store directly)."""
        root = cache_dir(self.dataset_cache) if self.store.remote else None
        if root is None:
            return None
        files = json.dumps(self.meta.get("files", {}), sort_keys=True)
        return root / hashlib.sha256(f"{self.store.uri}\n{files}".encode()).hexdigest()[:16]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            if self.store.remote:
                import tempfile

                local = self._cache() or Path(tempfile.mkdtemp(prefix="mamba-nb-tokenizer-"))
                path = self._remote_call(self.store.download, "tokenizer", local / "tokenizer")
            else:
                path = self.path / "tokenizer"
            self._tokenizer = AutoTokenizer.from_pretrained(path)
        return self._tokenizer

    def _remote_call(self, fn, *args):
        try:
            return fn(*args)
        except StoreError as err:
            raise DatasetError(str(err)) from None

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; the splits are {SPLITS}")

    def _open(self, name: str):
        import lance

        if self._handles_pid != os.getpid():  # a forked child must not reuse the parent's handles
            self._handles, self._handles_pid = {}, os.getpid()
        if name not in self._handles:
            table, cache = f"{name}.lance", self._cache()
            try:
                if cache is not None:
                    prefix = f"{table}/data/"
                    sizes = {k[len(prefix):]: v for k, v in self.meta.get("files", {}).items() if k.startswith(prefix)}
                    self._handles[name] = Mirror(self.store, table, cache, sizes)
                else:
                    self._handles[name] = lance.dataset(self.store.lance_uri(table),
                                                        storage_options=self.store.lance_options())
            except (OSError, ValueError, StoreError) as err:
                raise DatasetError(
                    f"cannot open {table} of {self.store.uri!r} ({err}); check that it is reachable, or rebuild with "
                    f"`{_build_command(self.store.uri)} --overwrite`"
                ) from err
        return self._handles[name]

    def take(self, split: str, rows: np.ndarray) -> np.ndarray:
        """The tokens at row offsets `rows` of `split` (ascending reads fastest), one Lance take.
        A store that fails mid-read (after Lance's own retries) → DatasetError naming it."""
        try:
            return self.tokens(split).take(rows, columns=["token"]).column("token").to_numpy()
        except (OSError, RuntimeError, StoreError) as err:
            raise DatasetError(f"reading {split} tokens of {self.store.uri!r} failed ({err}); "
                               "check that the store is reachable, then run again (a run resumes)") from err

    def tokens(self, split: str):
        """The split's token array as a `lance.LanceDataset` (column "token", one token per row)."""
        self._check_split(split)
        return self._open(split)

    def num_tokens(self, split: str) -> int:
        self._check_split(split)
        return int(self.meta["splits"][split]["tokens"])

    def num_documents(self, split: str) -> int:
        self._check_split(split)
        return int(self.meta["splits"][split]["documents"])

    def read(self, split: str, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of `split` as a numpy array of the stored dtype."""
        n = self.num_tokens(split)
        if start < 0 or length < 0 or start + length > n:
            raise IndexError(f"tokens [{start}, {start + length}) are outside {split}'s {n} tokens")
        if length == 0:
            return np.empty(0, dtype=self.dtype)
        if length <= TAKE_MAX_ROWS:  # a window: row lookups beat a scan
            return self.take(split, np.arange(start, start + length))
        # a long stretch: a scan with offset/limit is ~50x faster than 1M row lookups
        return self.tokens(split).to_table(columns=["token"], offset=start, limit=length).column("token").to_numpy()

    def doc_spans(self, split: str) -> np.ndarray:
        """(n, 2) int64: each document's [start, length] in the token array (length includes its EOT)."""
        self._check_split(split)
        if split not in self._spans:
            table = self._open(f"{split}_docs").to_table(columns=["start", "length"])
            spans = np.stack([table.column("start").to_numpy(), table.column("length").to_numpy()], axis=1)
            self._spans[split] = spans.astype(np.int64, copy=False)
        return self._spans[split]

    def sources(self, split: str) -> list[str]:
        """Each document's source (path or id), in the order of `doc_spans`."""
        self._check_split(split)
        return self._open(f"{split}_docs").to_table(columns=["source"]).column("source").to_pylist()

    def documents(self, split: str, batch_tokens: int = 1 << 20) -> Iterator[str]:
        """The decoded text of each document of `split`, without its EOT, in order."""
        spans = self.doc_spans(split)
        i = 0
        while i < len(spans):
            # read whole documents, about batch_tokens at a time
            j = i + 1
            while j < len(spans) and spans[j, 0] + spans[j, 1] - spans[i, 0] <= batch_tokens:
                j += 1
            base = int(spans[i, 0])
            block = self.read(split, base, int(spans[j - 1, 0] + spans[j - 1, 1]) - base)
            for start, length in spans[i:j]:
                ids = block[start - base : start - base + length - 1]
                yield self.tokenizer.decode(ids.tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
            i = j

    def summary(self) -> str:
        """What was built from what, split by split, and where it lives."""
        m = self.meta
        src = m["source"]
        where = src.get("path") or ""
        extra = f" ({', '.join(src['patterns'])}, {src['files']} files)" if "patterns" in src else ""
        tok = m["tokenizer"]
        tok_desc = "byte-level BPE trained on the train split" if tok["kind"] == "bpe" else f"{tok['name_or_path']}"
        lines = [
            f"Lance token dataset at {self.path}",
            f"  source:    {src['kind']} {where}{extra}" + (f", first {src['max_documents']} documents" if src.get("max_documents") else ""),
            *([f"  changed:   the corpus since this build ({self.corpus_change}); --overwrite rebuilds"]
              if self.corpus_change else []),
            f"  tokenizer: {tok_desc}, vocab {m['vocab_size']:,}, stored as {m['dtype']}",
            f"  {'split':<11}{'documents':>11}{'tokens':>14}{'bytes':>15}{'bytes/token':>13}",
        ]
        for split in SPLITS:
            s = m["splits"][split]
            ratio = s["bytes"] / s["tokens"] if s["tokens"] else float("nan")
            lines.append(f"  {split:<11}{s['documents']:>11,}{s['tokens']:>14,}{s['bytes']:>15,}{ratio:>13.2f}")
        sk = m["skipped"]
        too_large = sk.get("too_large", 0)
        lines.append(
            f"  skipped:   {sk['binary'] + sk['not_utf8'] + sk['empty'] + too_large} file(s): {sk['binary']} binary, "
            f"{sk['not_utf8']} not UTF-8, {sk['empty']} empty, {too_large} too large"
            + (f" (e.g. {', '.join(sk['examples'][:3])})" if sk["examples"] else "")
        )
        lines.append(f"  open it:   mamba_nb.dataset.open_dataset({self.store.uri!r})")
        return "\n".join(lines)


def schema_metadata(lance_dataset) -> dict[str, Any]:
    """The manifest stored in a token array's Lance schema (the same dict as `manifest.json`)."""
    raw = lance_dataset.schema.metadata or {}
    if SCHEMA_METADATA_KEY not in raw:
        raise DatasetError(f"{lance_dataset.uri} carries no mamba-nb metadata in its schema")
    return json.loads(raw[SCHEMA_METADATA_KEY])
