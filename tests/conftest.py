"""Shared fixtures: a tiny real corpus, a tokenizer trained on it, and a dataset built from it.

Each is built once per test session (session scope) into pytest's temporary directory,
so every test file can use real data without paying for a build of its own.
Tests must treat them as read-only; a test that changes data builds its own copy.
"""
from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

import pytest

# No hub is reachable in tests: fail fast instead of retrying the network. Must be set
# before huggingface_hub is first imported, which is why it lives at the top of conftest.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Hypothesis's per-example deadline is a timing assertion: on a busy 2-core machine one slow
# example fails a correct test. The example counts still bound each test's time.
from hypothesis import settings  # noqa: E402

settings.register_profile("mamba_nb", deadline=None)
settings.load_profile("mamba_nb")

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Small, ordinary modules that every CPython 3.11+ ships (real code, not test data).
TINY_CORPUS_FILES = [
    "abc.py", "antigravity.py", "bisect.py", "colorsys.py", "this.py", "keyword.py", "nturl2path.py",
    "opcode.py", "token.py", "struct.py", "stat.py", "sched.py", "reprlib.py", "numbers.py",
    "fnmatch.py", "genericpath.py", "glob.py", "graphlib.py", "hmac.py", "linecache.py",
    "operator.py", "queue.py", "shlex.py", "textwrap.py", "copy.py", "heapq.py", "_markupbase.py",
    "json/__init__.py", "json/decoder.py", "json/scanner.py", "json/tool.py", "collections/abc.py",
]
TINY_VOCAB_SIZE = 512
TINY_VALIDATION_FRACTION = 0.2
BINARY_NAME = "blob.py"  # matches the *.py pattern on purpose: it must be skipped as binary
LATIN1_NAME = "latin1.py"  # valid latin-1, invalid UTF-8: must be skipped as not UTF-8
# A document that spells our special tokens as text: they must stay text, never become separators.
SPECIAL_TEXT_NAME = "spells_special_tokens.py"
SPECIAL_TEXT = 'SEP = "<|endoftext|>"\nFIM = ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>")\n'


def plain_tokenizer_dir(path: Path, special: tuple[str, ...] = ("<|endoftext|>",)) -> str:
    """A tiny byte-level BPE (vocab 300) saved like a hub tokenizer, knowing only `special`
    (so not our FIM tokens): what `load_hf_tokenizer` meets in the wild."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [(STDLIB / rel).read_text() for rel in TINY_CORPUS_FILES[:5]]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(special), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer)
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=special[0]).save_pretrained(path)
    return str(path)


def make_tiny_corpus(root: Path) -> Path:
    for rel in TINY_CORPUS_FILES:
        dest = root / "pkg" / rel if "/" in rel else root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(STDLIB / rel, dest)
    (root / BINARY_NAME).write_bytes(bytes(range(256)) * 4)
    (root / LATIN1_NAME).write_bytes("# caf\u00e9 = 'na\u00efve'\nx = 1\n".encode("latin-1"))
    (root / SPECIAL_TEXT_NAME).write_text(SPECIAL_TEXT)
    (root / "README.txt").write_text("not matched by **/*.py\n")
    return root


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory) -> Path:
    """~30 small stdlib modules (some in sub-directories), one file spelling the special tokens,
    one binary file and one latin-1 file (both named *.py), and a README.txt."""
    return make_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


@pytest.fixture(scope="session")
def tiny_data_config(tiny_corpus_dir, tmp_path_factory):
    """The DataConfig `tiny_dataset` was built with (a fresh out_dir for each session)."""
    from mamba_nb.config import DataConfig

    return DataConfig(
        source="dir",
        path=str(tiny_corpus_dir),
        vocab_size=TINY_VOCAB_SIZE,
        validation_fraction=TINY_VALIDATION_FRACTION,
        seed=0,
        out_dir=str(tmp_path_factory.mktemp("tiny_dataset") / "ds"),
    )


@pytest.fixture(scope="session")
def tiny_dataset(tiny_data_config):
    """A `TokenDataset` built once from `tiny_corpus_dir` (vocab 512, validation ≥ 3 documents)."""
    from mamba_nb.dataset import build_dataset

    ds = build_dataset(tiny_data_config, progress=False)
    assert ds.meta["splits"]["validation"]["documents"] >= 3
    return ds


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dataset):
    """The BPE tokenizer trained for `tiny_dataset` (vocab 512, the five special tokens)."""
    return tiny_dataset.tokenizer


def assert_same_tokens(a, b) -> None:
    """Two `TokenDataset`s hold the same documents: every token, document span and source of both
    splits (however the Lance files are cut)."""
    import numpy as np

    for split in ("train", "validation"):
        n = a.num_tokens(split)
        assert b.num_tokens(split) == n
        assert np.array_equal(a.read(split, 0, n), b.read(split, 0, n))
        assert np.array_equal(a.doc_spans(split), b.doc_spans(split))
        assert a.sources(split) == b.sources(split)


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """A test that needs model-written code run, on a machine with no sandbox (macOS, a kernel
    without Landlock), skips with the sandbox's own one-line reason instead of failing; CI sets
    MAMBA_NB_REQUIRE_SANDBOX=1, where it fails."""
    outcome = yield
    from mamba_nb.sandbox import SandboxUnavailable

    error = outcome.excinfo[1] if outcome.excinfo else None
    if isinstance(error, SandboxUnavailable) and os.environ.get("MAMBA_NB_REQUIRE_SANDBOX", "0") in ("", "0"):
        outcome.force_exception(pytest.skip.Exception(f"no sandbox here: {error}", _use_item_location=True))
