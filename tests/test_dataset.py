"""build_dataset / open_dataset / TokenDataset: the on-disk contract, exact round trips, the split,
reuse, atomic builds and the errors a person can act on."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lance
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mamba_nb.dataset as D
from conftest import BINARY_NAME, LATIN1_NAME, SPECIAL_TEXT_NAME, TINY_VALIDATION_FRACTION, plain_tokenizer_dir
from mamba_nb.corpus import FileCorpus
from mamba_nb.dataset import DatasetError, build_dataset, open_dataset, schema_metadata
from mamba_nb.split import split_documents
from mamba_nb.tokenizer import SPECIAL_TOKENS


def corpus_texts(corpus_dir: Path) -> dict[str, str]:
    """What the corpus holds, read independently of corpus.py: source → text."""
    texts = {}
    for path in sorted(corpus_dir.rglob("*.py")):
        data = path.read_bytes()
        try:
            if b"\0" not in data and data:
                texts[path.relative_to(corpus_dir).as_posix()] = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return texts


# --- the on-disk contract -------------------------------------------------------------


def test_layout_and_manifest(tiny_dataset):
    ds = tiny_dataset
    names = {p.name for p in ds.path.iterdir()}
    assert names == {"manifest.json", "tokenizer", "train.lance", "validation.lance", "train_docs.lance", "validation_docs.lance"}
    assert ds.splits == ("train", "validation")
    assert ds.meta == json.loads((ds.path / "manifest.json").read_text())
    assert ds.meta["dtype"] == "uint16" and ds.dtype == np.uint16
    for split in ds.splits:
        table = ds.tokens(split)
        assert table.schema.field("token").type == "uint16"
        assert table.count_rows() == ds.num_tokens(split) == ds.meta["splits"][split]["tokens"]
        # the Lance schema carries the same metadata as manifest.json
        assert schema_metadata(table) == ds.meta
    assert ds.meta["skipped"]["binary"] == 1 and ds.meta["skipped"]["not_utf8"] == 1
    assert any(BINARY_NAME in e for e in ds.meta["skipped"]["examples"])


def test_every_document_ends_in_exactly_one_eot(tiny_dataset):
    ds = tiny_dataset
    eot = ds.fim_tokens.eot
    for split in ds.splits:
        tokens = ds.read(split, 0, ds.num_tokens(split))
        spans = ds.doc_spans(split)
        assert spans.dtype == np.int64 and spans.shape == (ds.num_documents(split), 2)
        # documents tile the array back to back
        assert spans[0, 0] == 0 and np.all(spans[1:, 0] == spans[:-1, 0] + spans[:-1, 1])
        assert spans[:, 1].sum() == len(tokens)
        # EOTs sit exactly at the end of each document, nowhere else (not even in the file that
        # spells "<|endoftext|>" as text)
        assert np.array_equal(np.flatnonzero(tokens == eot), spans[:, 0] + spans[:, 1] - 1)


def test_documents_decode_back_to_the_files(tiny_dataset, tiny_corpus_dir):
    ds = tiny_dataset
    files = corpus_texts(tiny_corpus_dir)
    seen = {}
    for split in ds.splits:
        sources = ds.sources(split)
        assert sources == sorted(sources)  # corpus order
        for source, text in zip(sources, ds.documents(split), strict=True):
            assert text == files[source], source
            seen[source] = split
    # the split is a partition of every readable document
    assert sorted(seen) == sorted(files) and LATIN1_NAME not in seen and SPECIAL_TEXT_NAME in seen


def test_split_is_the_documented_one(tiny_dataset, tiny_corpus_dir):
    ds = tiny_dataset
    order = sorted(corpus_texts(tiny_corpus_dir))
    expected = split_documents(len(order), TINY_VALIDATION_FRACTION, seed=0)
    assert ds.sources("validation") == [s for s, v in zip(order, expected) if v]
    assert ds.meta["splits"]["validation"]["documents"] >= 3


def test_stats_count_bytes_and_documents(tiny_dataset, tiny_corpus_dir):
    files = corpus_texts(tiny_corpus_dir)
    for split in tiny_dataset.splits:
        s = tiny_dataset.meta["splits"][split]
        sources = tiny_dataset.sources(split)
        assert s["documents"] == len(sources)
        assert s["bytes"] == sum(len(files[x].encode()) for x in sources)


def test_tokenizer_saved_with_the_dataset(tiny_dataset):
    tok = tiny_dataset.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(dataclasses.astuple(tiny_dataset.fim_tokens))
    assert len(tok) <= tiny_dataset.meta["vocab_size"] <= 512


def test_tokenizer_never_saw_validation(tiny_dataset, tiny_data_config, monkeypatch):
    """The BPE is trained on train documents only: feed train_bpe a recorder and compare."""
    seen = []
    real = D.train_bpe

    def recording(texts, vocab_size):
        texts = list(texts)
        seen.extend(texts)
        return real(texts, vocab_size)

    monkeypatch.setattr(D, "train_bpe", recording)
    D.train_bpe_on(FileCorpus.glob(tiny_data_config.path), tiny_data_config)
    assert sorted(seen) == sorted(tiny_dataset.documents("train"))


# --- reading ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_read_is_a_slice_of_the_whole_array(tiny_dataset, data):
    n = tiny_dataset.num_tokens("train")
    assert n > D.TAKE_MAX_ROWS  # so both ways of reading (take, scan) are exercised
    whole = tiny_dataset.tokens("train").to_table().column("token").to_numpy()
    start = data.draw(st.integers(0, n))
    length = data.draw(st.integers(0, n - start) | st.integers(0, min(300, n - start)))
    got = tiny_dataset.read("train", start, length)
    assert got.dtype == np.uint16 and np.array_equal(got, whole[start : start + length])


@pytest.mark.parametrize("start,length", [(-1, 2), (0, 10**9), (5, -1)])
def test_read_out_of_range(tiny_dataset, start, length):
    with pytest.raises(IndexError, match="outside validation"):
        tiny_dataset.read("validation", start, length)


def test_unknown_split(tiny_dataset):
    with pytest.raises(ValueError, match="'test'"):
        tiny_dataset.num_tokens("test")


def test_pickles_as_its_path(tiny_dataset):
    tiny_dataset.tokens("train")  # open handles: they must not travel
    blob = pickle.dumps(tiny_dataset)
    assert len(blob) < 500
    again = pickle.loads(blob)
    assert again.path == tiny_dataset.path and again.meta == tiny_dataset.meta
    assert np.array_equal(again.read("train", 10, 50), tiny_dataset.read("train", 10, 50))


@pytest.mark.filterwarnings("ignore:lance is not fork-safe")
def test_handles_are_reopened_in_a_forked_child(tiny_dataset):
    tiny_dataset.tokens("train")
    expected = tiny_dataset.read("train", 0, 20).tolist()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must open its own handle, and read the same tokens
        try:
            ok = tiny_dataset.read("train", 0, 20).tolist() == expected and tiny_dataset._handles_pid == os.getpid()
        except BaseException:
            ok = False
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"


def test_summary_names_counts_and_place(tiny_dataset):
    text = tiny_dataset.summary()
    assert str(tiny_dataset.path) in text
    for split in tiny_dataset.splits:
        s = tiny_dataset.meta["splits"][split]
        for key in ("documents", "tokens", "bytes"):
            assert f"{s[key]:,}" in text
    assert "1 binary" in text and "1 not UTF-8" in text


def test_schema_metadata_requires_ours(tmp_path):
    import pyarrow as pa

    lance.write_dataset(pa.table({"value": [1, 2]}), tmp_path / "x.lance")
    with pytest.raises(DatasetError, match="no mamba-nb metadata"):
        schema_metadata(lance.dataset(tmp_path / "x.lance"))


# --- the split -------------------------------------------------------------------------


@given(st.integers(0, 400), st.floats(0.01, 0.99), st.integers(0, 2**32))
def test_split_is_a_deterministic_partition(n, fraction, seed):
    split = split_documents(n, fraction, seed)
    assert np.array_equal(split, split_documents(n, fraction, seed))
    # prefix-stable: fewer documents (max_documents) keep the same split for those kept
    assert np.array_equal(split[: n // 2], split_documents(n // 2, fraction, seed))
    assert split.sum() <= np.floor(n * fraction) + 1
    if n * fraction >= 1:
        assert split.sum() >= 1


@settings(max_examples=25, deadline=None)
@given(st.floats(0.02, 0.5), st.integers(0, 2**16))
def test_split_fraction_is_close(fraction, seed):
    n = 2000
    assert abs(split_documents(n, fraction, seed).mean() - fraction) < 0.6 * fraction


def test_seed_changes_the_split():
    splits = {tuple(np.flatnonzero(split_documents(200, 0.1, seed))) for seed in range(5)}
    assert len(splits) == 5


# --- building: reuse, overwrite, atomicity, errors -----------------------------------------


def small_config(tiny_corpus_dir, out_dir, **kw):
    """A quick build: the tiny corpus, a 300-token vocabulary."""
    from mamba_nb.config import DataConfig

    settings = {"vocab_size": 300, "validation_fraction": 0.2, **kw}
    return DataConfig(source="dir", path=str(tiny_corpus_dir), out_dir=str(out_dir), **settings)


def test_complete_dataset_is_reused(tiny_dataset, tiny_data_config, monkeypatch):
    monkeypatch.setattr(D, "train_bpe", lambda *a, **k: pytest.fail("rebuilt a complete dataset"))
    again = build_dataset(tiny_data_config)
    assert again.meta == tiny_dataset.meta


def test_other_settings_are_refused_without_overwrite(tiny_data_config):
    changed = dataclasses.replace(tiny_data_config, seed=1)
    with pytest.raises(DatasetError, match=r"other settings.*seed.*--overwrite"):
        build_dataset(changed)


def test_overwrite_rebuilds_deterministically(tiny_corpus_dir, tmp_path):
    cfg = small_config(tiny_corpus_dir, tmp_path / "ds")
    first = build_dataset(cfg, progress=False)
    tokens = first.read("train", 0, first.num_tokens("train"))
    validation = first.sources("validation")
    other = build_dataset(dataclasses.replace(cfg, seed=3, overwrite=True), progress=False)
    assert other.meta["settings"]["seed"] == 3 and other.sources("validation") != validation
    same = build_dataset(dataclasses.replace(cfg, overwrite=True), progress=False)
    assert np.array_equal(same.read("train", 0, same.num_tokens("train")), tokens)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary leftovers


def test_a_changed_source_directory_is_noticed_on_reuse(tiny_corpus_dir, tmp_path, capsys):
    corpus = shutil.copytree(tiny_corpus_dir, tmp_path / "corpus")
    cfg = small_config(corpus, tmp_path / "ds")
    built = build_dataset(cfg, progress=False)
    files = built.meta["source"]["files"]
    assert build_dataset(cfg, progress=False).corpus_change is None  # unchanged: reused without a word
    assert "note:" not in capsys.readouterr().out

    (corpus / "added.py").write_text("def added():\n    return 1\n")
    again = build_dataset(cfg, progress=False)
    said = capsys.readouterr().out
    assert f"{files} files" in said and f"{files + 1} of" in said and "files added or removed" in said
    assert "--overwrite" in said and said.count("\n") == 1  # one line
    assert again.meta == built.meta  # reused as it was built, and its summary says the corpus changed
    assert "changed:   the corpus since this build" in again.summary()

    rebuilt = build_dataset(dataclasses.replace(cfg, overwrite=True), progress=False)
    assert rebuilt.meta["source"]["files"] == files + 1 and "changed:" not in rebuilt.summary()
    assert "added.py" in rebuilt.sources("train") + rebuilt.sources("validation")


def test_a_file_edited_in_place_changes_the_fingerprint(tiny_corpus_dir, tmp_path):
    from mamba_nb.corpus import changed_since

    corpus = shutil.copytree(tiny_corpus_dir, tmp_path / "corpus")
    cfg = small_config(corpus, tmp_path / "ds")
    built = FileCorpus.glob(corpus, cfg.patterns).describe()
    assert changed_since(built, cfg) is None
    victim = sorted(corpus.rglob("*.py"))[0]
    text = victim.read_bytes()
    victim.write_bytes(text[::-1])  # the same size, other bytes, a later modification time
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    assert "files modified (the same count and size)" in changed_since(built, cfg)
    victim.write_bytes(text + b"\n")
    assert "files changed in size" in changed_since(built, cfg)


def test_the_stdlib_is_compared_by_its_interpreter_without_a_glob(monkeypatch):
    import platform

    from mamba_nb import corpus as corpus_module
    from mamba_nb.config import DataConfig
    from mamba_nb.corpus import changed_since

    monkeypatch.setattr(corpus_module, "corpus_from_config", lambda cfg: pytest.fail("globbed the stdlib again"))
    now = platform.python_version()
    built = {"kind": "stdlib", "fingerprint": {"files": 1, "bytes": 1, "hash": "0"}, "python": now}
    assert changed_since(built, DataConfig()) is None
    said = changed_since({**built, "python": "3.0.1"}, DataConfig())
    assert said == f"Python 3.0.1's standard library then, {now}'s now"
    assert changed_since({"kind": "stdlib", "files": 1}, DataConfig()) is None  # a dataset from before fingerprints


def test_uint32_when_the_vocabulary_needs_it(tiny_corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(D, "token_dtype", lambda vocab_size: np.dtype(np.uint32))
    ds = build_dataset(small_config(tiny_corpus_dir, tmp_path / "ds"), progress=False)
    assert ds.meta["dtype"] == "uint32" and ds.tokens("train").schema.field("token").type == "uint32"
    assert ds.read("validation", 0, 5).dtype == np.uint32
    assert next(ds.documents("validation")) == (tiny_corpus_dir / ds.sources("validation")[0]).read_text()


def test_interrupted_build_never_opens_and_a_rerun_finishes(tiny_corpus_dir, tmp_path, monkeypatch):
    cfg = small_config(tiny_corpus_dir, tmp_path / "ds")
    real_call = D.DocumentEncoder.__call__
    calls = []

    def failing(self, texts):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interrupt mid-build")
        return real_call(self, texts)

    monkeypatch.setattr(D, "CHARS_PER_BATCH", 20_000)  # several batches, so we stop in the middle
    monkeypatch.setattr(D.DocumentEncoder, "__call__", failing)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(cfg, progress=False)
    with pytest.raises(DatasetError, match="build-dataset --out-dir"):
        open_dataset(cfg.out_dir)
    monkeypatch.setattr(D.DocumentEncoder, "__call__", real_call)
    ds = build_dataset(cfg, progress=False)
    assert ds.num_documents("train") + ds.num_documents("validation") == len(corpus_texts(tiny_corpus_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_killed_build_leaves_nothing_that_opens(tiny_corpus_dir, tmp_path):
    """A build killed outright (no Python clean-up runs) leaves only a hidden temporary directory;
    open refuses, and the next build removes it and finishes."""
    out = tmp_path / "ds"
    script = textwrap.dedent(
        f"""
        import os, mamba_nb.dataset as D
        from mamba_nb.config import DataConfig
        real = D.DocumentEncoder.__call__
        def die(self, texts):
            real(self, texts)
            os._exit(3)   # like SIGKILL: no finally, no atexit
        D.DocumentEncoder.__call__ = die
        D.build_dataset(DataConfig(source="dir", path={str(tiny_corpus_dir)!r}, vocab_size=300,
                                   validation_fraction=0.2, out_dir={str(out)!r}), progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ds.building-")
    with pytest.raises(DatasetError, match="no dataset at"):
        open_dataset(out)
    build_dataset(small_config(tiny_corpus_dir, out), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_refuses_a_directory_that_is_not_ours(tiny_corpus_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(DatasetError, match="not a mamba-nb dataset.*refusing"):
            build_dataset(small_config(tiny_corpus_dir, out, overwrite=overwrite), progress=False)
    assert (out / "precious.txt").read_text() == "keep me"


def test_an_empty_existing_directory_is_used(tiny_corpus_dir, tmp_path):
    (tmp_path / "ds").mkdir()
    assert build_dataset(small_config(tiny_corpus_dir, tmp_path / "ds"), progress=False).num_tokens("train") > 0


def test_open_missing_names_the_command(tmp_path):
    with pytest.raises(DatasetError) as err:
        open_dataset(tmp_path / "nowhere")
    assert f"python -m mamba_nb build-dataset --out-dir {tmp_path / 'nowhere'}" in str(err.value)


@pytest.mark.parametrize("damage", ["manifest_not_json", "manifest_foreign", "lance_missing", "no_manifest"])
def test_open_damaged(tiny_dataset, tiny_corpus_dir, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset.path, copy)
    manifest = copy / "manifest.json"
    if damage == "manifest_not_json":
        manifest.write_text("{ half")
    elif damage == "manifest_foreign":
        manifest.write_text(json.dumps({"format": "something else"}))
    elif damage == "lance_missing":
        shutil.rmtree(copy / "validation_docs.lance")
    else:
        manifest.unlink()
    with pytest.raises(DatasetError, match=r"build-dataset --out-dir .*copy.* --overwrite"):
        open_dataset(copy)
    # a build without --overwrite refuses too, rather than reuse or delete what is there
    with pytest.raises(DatasetError):
        build_dataset(small_config(tiny_corpus_dir, copy), progress=False)
    if damage == "lance_missing":  # ours (its manifest says so): --overwrite replaces it
        ds = build_dataset(small_config(tiny_corpus_dir, copy, overwrite=True), progress=False)
        assert ds.num_documents("validation") > 0


def test_vocab_too_large_for_any_dtype(tiny_corpus_dir, tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size=8589934592 is too large"):
        build_dataset(small_config(tiny_corpus_dir, tmp_path / "ds", vocab_size=2**33), progress=False)
    assert not (tmp_path / "ds").exists()


def test_validation_fraction_out_of_range(tiny_corpus_dir, tmp_path):
    with pytest.raises(ValueError, match=r"validation_fraction=0.0 must be between 0 and 1.*--validation-fraction"):
        small_config(tiny_corpus_dir, tmp_path / "ds", validation_fraction=0)  # refused by the config itself


def test_too_few_documents_for_a_validation_split(tiny_corpus_dir, tmp_path):
    cfg = small_config(tiny_corpus_dir, tmp_path / "ds", max_documents=2, validation_fraction=0.05)
    with pytest.raises(DatasetError, match="validation split .* is empty.*--validation-fraction"):
        build_dataset(cfg, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_corpus_of_only_skipped_files(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.py").write_bytes(b"a\0b")
    from mamba_nb.config import DataConfig

    cfg = DataConfig(source="dir", path=str(tmp_path / "c"), out_dir=str(tmp_path / "ds"))
    with pytest.raises(DatasetError, match=r"no document to build from .*1 binary.*--patterns"):
        build_dataset(cfg, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_build_with_a_loaded_tokenizer(tiny_corpus_dir, tmp_path):
    """An HF tokenizer lacking our FIM tokens: they are added, the dataset stores them distinct."""
    tok_dir = plain_tokenizer_dir(tmp_path / "tok")
    ds = build_dataset(small_config(tiny_corpus_dir, tmp_path / "ds", tokenizer=tok_dir), progress=False)
    assert ds.meta["tokenizer"]["kind"] == "hf"
    fim = dataclasses.astuple(ds.fim_tokens)
    assert len(set(fim)) == 5 and min(fim[1:]) >= 300
    tokens = ds.read("validation", 0, ds.num_tokens("validation"))
    assert (tokens == ds.fim_tokens.eot).sum() == ds.num_documents("validation")
    files = corpus_texts(tiny_corpus_dir)
    assert list(ds.documents("validation")) == [files[s] for s in ds.sources("validation")]
