"""Where the text comes from: each source is an iterator of `Document(text, source)`.

Three sources behind one interface (`Corpus`):
- `stdlib_corpus()`: every `.py` file of the running interpreter's standard library, in
  sorted order. `site-packages` is excluded; the stdlib's own tests (`test/`, `*/tests/`,
  `idle_test/`) are kept: they are real Python and make up about half of the code.
- `FileCorpus(root, patterns)`: the files under any directory that match glob patterns
  (any language), in sorted order of their path relative to `root`.
- `HFCorpus(name_or_files, text_column, ...)`: a Hugging Face dataset through
  `datasets.load_dataset`, by hub name or local data files (json/jsonl, parquet, csv, txt).

A file that is binary (holds a NUL byte) or not valid UTF-8 is skipped, and so is an
empty document; each pass counts them in `corpus.skipped`, which reaches the dataset's
summary. Every iteration is a fresh pass (the dataset build makes two).

A `FileCorpus` describes itself with a `fingerprint` of its files (count, bytes, and a hash of
each path, size and modification time: a stat per file, nothing read), and the stdlib also
with the interpreter's version, so the dataset build notices a corpus that changed since.

This module does not tokenize, split into train/validation, or store anything.
"""
from __future__ import annotations

import hashlib
import itertools
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

# How many skipped sources each pass remembers by name (the counts are always complete).
MAX_SKIP_EXAMPLES = 10
# Documents larger than this are skipped (counted as "too_large"): a 50 MB generated file would
# otherwise take gigabytes to train the BPE on and to encode (measured: 9.9 GB peak), for one
# document no window would read twice. The standard library's largest file is 757 KB.
DEFAULT_MAX_DOCUMENT_BYTES = 1_000_000
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


class CorpusError(ValueError):
    """A corpus that cannot be read as asked (nothing matched, a missing column, ...)."""


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # a path relative to the corpus root, or "<dataset>:<split>:<row>"


@dataclass
class SkipCounts:
    """What one pass over a corpus left out, and why."""

    binary: int = 0
    not_utf8: int = 0
    empty: int = 0
    too_large: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str, source: str) -> None:
        setattr(self, reason, getattr(self, reason) + 1)
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append(f"{source} ({reason})")

    @property
    def total(self) -> int:
        return self.binary + self.not_utf8 + self.empty + self.too_large

    def to_dict(self) -> dict[str, Any]:
        return {"binary": self.binary, "not_utf8": self.not_utf8, "empty": self.empty, "too_large": self.too_large,
                "examples": list(self.examples)}


class Corpus:
    """An iterable of `Document`s. Subclasses implement `_documents()`; iteration applies
    `max_documents` and resets `skipped` at the start of each pass."""

    kind: str = "corpus"

    def __init__(self, max_documents: Optional[int] = None):
        if max_documents is not None and max_documents <= 0:
            raise CorpusError(f"max_documents={max_documents} must be positive (or None for all documents)")
        self.max_documents = max_documents
        self.max_document_bytes = DEFAULT_MAX_DOCUMENT_BYTES
        self.skipped = SkipCounts()

    def __iter__(self) -> Iterator[Document]:
        self.skipped = SkipCounts()
        return itertools.islice(self._within_size(self._documents()), self.max_documents)

    def _within_size(self, docs: Iterator[Document]) -> Iterator[Document]:
        cap = self.max_document_bytes
        for doc in docs:
            # (a character is 1-4 bytes: encode only when the length alone cannot decide)
            if len(doc.text) > cap or (len(doc.text) * 4 > cap and len(doc.text.encode()) > cap):
                self.skipped.add("too_large", doc.source)
                continue
            yield doc

    def _documents(self) -> Iterator[Document]:
        raise NotImplementedError

    def __len__(self) -> int:
        """The number of candidate documents (before skips); only where it is known up front."""
        raise TypeError(f"{type(self).__name__} does not know its length before a pass")

    def describe(self) -> dict[str, Any]:
        """Where the documents come from, as plain data (for the dataset's manifest)."""
        return {"kind": self.kind, "max_documents": self.max_documents}


def decode_file(data: bytes) -> tuple[Optional[str], Optional[str]]:
    """(text, None) for a UTF-8 text file; (None, reason) for one to skip."""
    if b"\x00" in data:
        return None, "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not_utf8"
    if not text:
        return None, "empty"
    return text, None


class FileCorpus(Corpus):
    """Files read from disk. `files` are given explicitly or found by `FileCorpus.glob`."""

    kind = "dir"

    def __init__(self, root: str | Path, files: Sequence[Path], patterns: Sequence[str] = (), max_documents=None):
        super().__init__(max_documents)
        self.root = Path(root)
        self.files = list(files)
        self.patterns = list(patterns)

    @classmethod
    def glob(cls, root: str | Path, patterns: Sequence[str] = ("**/*.py",), exclude: Sequence[str] = (), max_documents=None):
        """Every file under `root` matching any of `patterns` (and no `exclude` directory name), sorted."""
        root = Path(root).expanduser()
        if isinstance(patterns, str):
            patterns = [patterns]
        if not root.is_dir():
            raise CorpusError(f"corpus directory {str(root)!r} does not exist or is not a directory; pass --path DIR")
        if not patterns:
            raise CorpusError(f"no glob patterns given for {str(root)!r}; pass e.g. --patterns '**/*.py'")
        excluded = set(exclude)
        absolute = [p for p in patterns if Path(p).is_absolute()]
        if absolute:
            raise CorpusError(f"--patterns {absolute} are absolute; they are globs relative to --path "
                              f"{str(root)!r} (e.g. '**/*.py'); to read another directory, pass it as --path")
        try:
            found = {
                p
                for pattern in patterns
                for p in root.glob(pattern)
                if p.is_file() and not excluded.intersection(p.relative_to(root).parts[:-1])
            }
        except (ValueError, NotImplementedError, OSError) as err:
            raise CorpusError(f"cannot glob {list(patterns)} under {str(root)!r}: {err}") from None
        if not found:
            raise CorpusError(
                f"no file under {str(root)!r} matches the patterns {list(patterns)}; "
                "check --path and --patterns (globs relative to the directory, e.g. '**/*.py')"
            )
        files = sorted(found, key=lambda p: p.relative_to(root).as_posix())
        return cls(root, files, patterns, max_documents)

    def __len__(self) -> int:
        return len(self.files) if self.max_documents is None else min(len(self.files), self.max_documents)

    def _documents(self) -> Iterator[Document]:
        for path in self.files:
            source = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)
            try:
                if path.stat().st_size > self.max_document_bytes:  # never read it whole
                    self.skipped.add("too_large", source)
                    continue
                data = path.read_bytes()
            except OSError as err:
                raise CorpusError(f"cannot read corpus file {str(path)!r} ({err.strerror or err}); fix its permissions "
                                  "or leave it out (--patterns)") from None
            text, reason = decode_file(data)
            if text is None:
                self.skipped.add(reason, source)
                continue
            yield Document(text, source)

    def fingerprint(self) -> dict[str, Any]:
        """The files as they are now, cheaply: how many, their bytes, and a hash of each one's path,
        size and modification time (a stat per file; nothing is read)."""
        digest, total = hashlib.sha256(), 0
        for path in self.files:
            try:
                st = path.stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:  # gone since the glob: a change like any other
                size, mtime = -1, -1
            total += max(size, 0)
            name = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)
            digest.update(f"{name}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
        return {"files": len(self.files), "bytes": total, "hash": digest.hexdigest()[:16]}

    def describe(self) -> dict[str, Any]:
        found = {"path": str(self.root), "patterns": self.patterns, "files": len(self.files),
                 "fingerprint": self.fingerprint()}
        if self.kind == "stdlib":  # what reuse checks instead of globbing the stdlib again (`changed_since`)
            found["python"] = platform.python_version()
        return {**super().describe(), **found}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_corpus(max_documents: Optional[int] = None) -> FileCorpus:
    """The `.py` files of this interpreter's standard library (tests included, site-packages not)."""
    corpus = FileCorpus.glob(stdlib_root(), ["**/*.py"], exclude=["site-packages", "dist-packages"], max_documents=max_documents)
    corpus.kind = "stdlib"
    return corpus


class HFCorpus(Corpus):
    """Rows of a Hugging Face dataset: one document per row, text from `text_column`.

    `name_or_files` is a hub name (needs network) or local data files: one path, a glob,
    or a directory of json/jsonl/parquet/csv/txt files. Streaming keeps memory flat
    whatever the dataset's size.
    """

    kind = "hf"

    def __init__(
        self,
        name_or_files: str,
        text_column: str = "content",
        split: str = "train",
        config_name: Optional[str] = None,
        streaming: bool = True,
        max_documents: Optional[int] = None,
    ):
        super().__init__(max_documents)
        if not name_or_files:
            raise CorpusError("source 'hf' needs --path: a hub dataset name or local data files")
        self.name_or_files = name_or_files
        self.text_column = text_column
        self.split = split
        self.config_name = config_name
        self.streaming = streaming

    def _load(self):
        import datasets

        path = Path(self.name_or_files).expanduser()
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        try:
            if builder is not None:  # local data files (a path or a glob such as data/*.parquet)
                if not any(path.parent.glob(path.name)):
                    raise CorpusError(
                        f"no data file matches {self.name_or_files!r}; pass --path as an existing "
                        f"file or glob ({', '.join(sorted(DATA_FILE_BUILDERS))})"
                    )
                return datasets.load_dataset(
                    builder, data_files={self.split: str(path)}, split=self.split, streaming=self.streaming
                )
            if not path.is_dir():
                _check_hub_reachable(self.name_or_files)
            return datasets.load_dataset(
                str(path) if path.is_dir() else self.name_or_files,
                self.config_name,
                split=self.split,
                streaming=self.streaming,
            )
        except CorpusError:
            raise
        except Exception as err:  # datasets raises many kinds; all mean "could not load this"
            raise CorpusError(
                f"could not load the Hugging Face dataset {self.name_or_files!r} "
                f"(config {self.config_name!r}, split {self.split!r}): {err}"
            ) from err

    def _documents(self) -> Iterator[Document]:
        ds = self._load()
        columns = getattr(ds, "column_names", None)
        if columns is not None and self.text_column not in columns:
            raise CorpusError(
                f"dataset {self.name_or_files!r} has no column {self.text_column!r}; "
                f"its columns are {columns}: pass --hf-text-column with one of them"
            )
        for row_index, row in enumerate(ds):
            source = f"{self.name_or_files}:{self.split}:{row_index}"
            if self.text_column not in row:
                raise CorpusError(
                    f"row {row_index} of {self.name_or_files!r} has no column {self.text_column!r} "
                    f"(it has {sorted(row)}); pass --hf-text-column with one of them"
                )
            text = row[self.text_column]
            if isinstance(text, bytes):
                text, reason = decode_file(text)
                if text is None:
                    self.skipped.add(reason, source)
                    continue
            if not text:
                self.skipped.add("empty", source)
                continue
            if not isinstance(text, str):
                raise CorpusError(
                    f"column {self.text_column!r} of {self.name_or_files!r} holds {type(text).__name__}, "
                    "not text; pass --hf-text-column naming a text column"
                )
            yield Document(text, source)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "path": self.name_or_files,
            "text_column": self.text_column,
            "split": self.split,
            "config": self.config_name,
            "streaming": self.streaming,
        }


def corpus_from_config(cfg) -> Corpus:
    """The corpus a `DataConfig` names (`source`, `path`, `patterns`, `hf_*`, `max_documents`,
    `max_document_bytes`)."""
    corpus = _corpus_of(cfg)
    corpus.max_document_bytes = cfg.max_document_bytes
    return corpus


def _corpus_of(cfg) -> Corpus:
    if cfg.source == "stdlib":
        return stdlib_corpus(cfg.max_documents)
    if cfg.source == "dir":
        if not cfg.path:
            raise CorpusError("source 'dir' needs --path DIR (and optionally --patterns '**/*.py' ...)")
        return FileCorpus.glob(cfg.path, cfg.patterns, max_documents=cfg.max_documents)
    if cfg.source == "hf":
        return HFCorpus(
            cfg.path, cfg.hf_text_column, cfg.hf_split, cfg.hf_config, cfg.hf_streaming, cfg.max_documents
        )
    raise AssertionError(f"source {cfg.source!r}: DataConfig allows no other")


def changed_since(built: dict[str, Any], cfg, corpus: Optional[Corpus] = None) -> Optional[str]:
    """How the corpus differs from the one a dataset was built from (`built`: its `describe()` then),
    in a phrase; None when it is the same or cannot be compared (an HF corpus, a dataset that
    predates fingerprints). `corpus`: the one the build was given, else the one `cfg` names.

    The stdlib is compared by the interpreter's version (globbing it again costs most of a second);
    a directory by its files' fingerprint."""
    if "fingerprint" not in built:
        return None
    if corpus is None and built.get("kind") == "stdlib":
        now = platform.python_version()
        then = built.get("python")
        return None if then in (None, now) else f"Python {then}'s standard library then, {now}'s now"
    if corpus is None:
        if built.get("kind") != "dir":
            return None
        try:
            corpus = corpus_from_config(cfg)
        except CorpusError as err:
            return f"it cannot be read now: {err}"
    if not isinstance(corpus, FileCorpus):
        return None
    then, now = built["fingerprint"], corpus.fingerprint()
    if now == then:
        return None
    what = ("files added or removed" if now["files"] != then["files"] else
            "files changed in size" if now["bytes"] != then["bytes"] else "files modified (the same count and size)")
    return f"{then['files']:,} files of {then['bytes']:,} bytes then, {now['files']:,} of {now['bytes']:,} now: {what}"


HUB_PROBE_S = 3.0  # how long to wait for the Hub's server to answer before saying it is unreachable


def _check_hub_reachable(name: str) -> None:
    """Fail in seconds, not after the client's retries (24 s here), when the Hub cannot be reached.
    HF_HUB_OFFLINE=1 skips the check: then `datasets` reads its local cache."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0"):
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_S).close()
    except OSError as err:
        raise CorpusError(
            f"{name!r} is not a local path, and the Hugging Face Hub ({host}:{port}) cannot be reached from here "
            f"({err.strerror or err}): pass --path as local data files or a directory, set HF_HUB_OFFLINE=1 to "
            "use a copy in the local cache, or run where the Hub is reachable"
        ) from None
