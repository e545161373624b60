"""Corpus sources: stdlib, a directory with globs, a Hugging Face dataset from local files."""
from __future__ import annotations

import errno
import json
import os
import re
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import BINARY_NAME, LATIN1_NAME
from mamba_nb.config import DataConfig
from mamba_nb.corpus import CorpusError, Document, FileCorpus, HFCorpus, corpus_from_config, decode_file, stdlib_corpus


def test_stdlib_is_the_interpreters_py_files_sorted():
    corpus = stdlib_corpus()
    root = Path(sysconfig.get_paths()["stdlib"])
    assert corpus.root == root and corpus.kind == "stdlib"
    rel = [p.relative_to(root).as_posix() for p in corpus.files]
    assert rel == sorted(rel) and len(rel) > 500
    assert all(r.endswith(".py") for r in rel)
    assert not any("site-packages" in r for r in rel)
    assert "json/decoder.py" in rel and "os.py" in rel


def test_stdlib_documents_are_the_files():
    corpus = stdlib_corpus(max_documents=15)
    docs = list(corpus)
    assert len(docs) == 15
    for doc in docs:
        assert doc.text == (corpus.root / doc.source).read_text(encoding="utf-8")


def test_directory_skips_binary_and_non_utf8_and_counts_them(tiny_corpus_dir):
    corpus = FileCorpus.glob(tiny_corpus_dir, ["**/*.py"])
    docs = list(corpus)
    sources = [d.source for d in docs]
    assert BINARY_NAME not in sources and LATIN1_NAME not in sources and "README.txt" not in sources
    assert "pkg/json/decoder.py" in sources and sources == sorted(sources)
    assert (corpus.skipped.binary, corpus.skipped.not_utf8) == (1, 1)
    # a second pass counts afresh (not twice)
    assert len(list(corpus)) == len(docs) and corpus.skipped.total == 2


def test_directory_any_language_and_several_patterns(tiny_corpus_dir):
    assert [d.source for d in FileCorpus.glob(tiny_corpus_dir, ["*.txt"])] == ["README.txt"]
    both = FileCorpus.glob(tiny_corpus_dir, ["**/*.py", "*.txt", "*.py"])  # overlapping: no duplicates
    assert len(both.files) == len(set(both.files)) == len(FileCorpus.glob(tiny_corpus_dir).files) + 1


def test_no_match_names_path_and_patterns(tmp_path):
    with pytest.raises(CorpusError, match=rf"{tmp_path}.*\*\*/\*\.rs"):
        FileCorpus.glob(tmp_path, ["**/*.rs"])
    with pytest.raises(CorpusError, match="does not exist"):
        FileCorpus.glob(tmp_path / "nope")


def test_max_documents(tiny_corpus_dir):
    assert len(list(FileCorpus.glob(tiny_corpus_dir, max_documents=3))) == 3
    with pytest.raises(CorpusError, match="max_documents=0"):
        FileCorpus.glob(tiny_corpus_dir, max_documents=0)


@given(st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1))  # (no lone surrogates: not UTF-8)
def test_decode_file_accepts_any_utf8_text(text):
    assert decode_file(text.encode("utf-8")) == (text, None)


@given(st.binary(), st.binary())
def test_decode_file_rejects_nul_bytes(a, b):
    assert decode_file(a + b"\0" + b) == (None, "binary")


def test_decode_file_rejects_bad_utf8_and_empty():
    assert decode_file("café".encode("latin-1")) == (None, "not_utf8")
    assert decode_file(b"") == (None, "empty")


# --- Hugging Face datasets, from local files (offline) --------------------------------------

ROWS = [{"content": "print(1)\n", "lang": "py"}, {"content": "", "lang": "py"}, {"content": "x = 'é'\n", "lang": "py"}]


@pytest.fixture
def jsonl_file(tmp_path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.mark.parametrize("streaming", [True, False])
def test_hf_jsonl(jsonl_file, streaming):
    corpus = HFCorpus(str(jsonl_file), text_column="content", streaming=streaming)
    docs = list(corpus)
    assert [d.text for d in docs] == ["print(1)\n", "x = 'é'\n"]
    assert docs[0].source.endswith(":train:0") and docs[1].source.endswith(":train:2")
    assert corpus.skipped.empty == 1


def test_hf_parquet_through_the_config(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"def f{i}():\n    return {i}\n" for i in range(7)]}), tmp_path / "d.parquet")
    cfg = DataConfig(source="hf", path=str(tmp_path / "*.parquet"), hf_text_column="text", max_documents=5)
    docs = list(corpus_from_config(cfg))
    assert [d.text for d in docs] == [f"def f{i}():\n    return {i}\n" for i in range(5)]


def test_hf_missing_column_lists_the_columns(jsonl_file):
    with pytest.raises(CorpusError, match=r"no column 'text'.*content.*--hf-text-column"):
        list(HFCorpus(str(jsonl_file), text_column="text"))


def test_hf_missing_files(tmp_path):
    with pytest.raises(CorpusError, match="no data file matches"):
        list(HFCorpus(str(tmp_path / "none-*.jsonl")))


@pytest.mark.parametrize("code", [errno.EACCES, errno.EIO])
def test_an_unreadable_corpus_file_is_one_line_naming_it(tiny_corpus_dir, monkeypatch, code):
    corpus = FileCorpus.glob(tiny_corpus_dir, ["**/*.py"])
    victim = corpus.files[1]
    real = Path.read_bytes

    def read_bytes(self):  # root reads anything, so the fault is injected (chmod 000 would not do it in CI)
        if self == victim:
            raise OSError(code, os.strerror(code))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(CorpusError, match=rf"cannot read corpus file '{re.escape(str(victim))}' \({os.strerror(code)}\).*--patterns"):
        list(corpus)


def test_an_unreachable_hub_fails_at_once_with_what_to_do(monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the Hub was asked anyway"))
    with pytest.raises(CorpusError, match=rf"codeparrot/none.*127\.0\.0\.1:{port}.*cannot be reached.*HF_HUB_OFFLINE=1"):
        list(HFCorpus("codeparrot/none", max_documents=2))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline on purpose: datasets reads its cache, no probe
    with pytest.raises(BaseException, match="the Hub was asked anyway"):
        list(HFCorpus("codeparrot/none", max_documents=2))


def test_config_mapping(tiny_corpus_dir):
    assert corpus_from_config(DataConfig()).kind == "stdlib"
    corpus = corpus_from_config(DataConfig(source="dir", path=str(tiny_corpus_dir), patterns=["*.txt"]))
    assert isinstance(corpus, FileCorpus) and corpus.describe()["patterns"] == ["*.txt"]
    with pytest.raises(CorpusError, match="needs --path"):
        corpus_from_config(DataConfig(source="dir"))
    with pytest.raises(ValueError, match="source='web' must be one of stdlib, dir, hf"):
        DataConfig(source="web")


def test_document_is_plain_data():
    assert Document("a", "b") == Document("a", "b")
