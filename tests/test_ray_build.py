"""The distributed build (`--build-engine ray`) on a local 2-worker Ray cluster: the same dataset,
token for token and document for document, as the single-process build of the same corpus and seed."""
from __future__ import annotations

import dataclasses

import pytest
from conftest import assert_same_tokens

pytest.importorskip("ray.data")

from mamba_nb import ray_build  # noqa: E402
from mamba_nb.dataset import build_dataset  # noqa: E402

SETTINGS_OF_THE_BUILD = ("files", "created", "build_seconds", "build_engine", "settings")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 worker CPUs for this module."""
    import ray

    ray_build._start(2)
    yield
    ray.shutdown()


def same_dataset(a, b) -> None:
    assert_same_tokens(a, b)
    keep = lambda meta: {k: v for k, v in meta.items() if k not in SETTINGS_OF_THE_BUILD}  # noqa: E731
    assert keep(a.meta) == keep(b.meta)  # splits' counts, skipped files, tokenizer, vocabulary, source


@pytest.mark.parametrize("files_per_task", [3, 1000])
def test_the_distributed_build_equals_the_single_process_one(cluster, tiny_dataset, tiny_data_config, tmp_path,
                                                             monkeypatch, files_per_task):
    monkeypatch.setattr(ray_build, "FILES_PER_TASK", files_per_task)  # many shards, or one
    cfg = dataclasses.replace(tiny_data_config, out_dir=str(tmp_path / "ray"), build_engine="ray", build_workers=2)
    ds = build_dataset(cfg, progress=False)
    same_dataset(tiny_dataset, ds)
    report, files = ds.meta["build_engine"], ds.meta["source"]["files"]
    assert report["engine"] == "ray" and report["tasks"] == -(-files // files_per_task)
    assert report["worker_peak_rss_mib"] > 0


def test_max_documents_keeps_the_same_documents(cluster, tiny_data_config, tmp_path, monkeypatch):
    monkeypatch.setattr(ray_build, "FILES_PER_TASK", 4)
    cfg = dataclasses.replace(tiny_data_config, max_documents=13)
    local = build_dataset(dataclasses.replace(cfg, out_dir=str(tmp_path / "local")), progress=False)
    distributed = build_dataset(dataclasses.replace(cfg, out_dir=str(tmp_path / "ray"), build_engine="ray",
                                                    build_workers=2), progress=False)
    assert local.num_documents("train") + local.num_documents("validation") == 13
    same_dataset(local, distributed)


def test_a_corpus_that_is_not_files_is_refused(tmp_path):
    from mamba_nb.config import DataConfig

    data = tmp_path / "rows.jsonl"
    data.write_text('{"content": "x = 1\\n"}\n' * 30)
    cfg = DataConfig(source="hf", path=str(data), out_dir=str(tmp_path / "ds"), vocab_size=300, build_engine="ray")
    with pytest.raises(ray_build.RayBuildError, match="source stdlib or dir"):
        build_dataset(cfg, progress=False)
    assert not (tmp_path / "ds").exists()


def test_the_engine_is_not_part_of_what_was_built(cluster, tiny_dataset, tiny_data_config):
    """A dataset built by one engine is reused when asked for with the other (same content)."""
    again = build_dataset(dataclasses.replace(tiny_data_config, build_engine="ray", build_workers=2), progress=False)
    assert again.meta["created"] == tiny_dataset.meta["created"]


def test_a_bad_engine_is_refused():
    from mamba_nb.config import DataConfig

    with pytest.raises(ValueError, match="build_engine='spark' must be one of local, ray"):
        DataConfig(build_engine="spark")
    assert issubclass(ray_build.RayBuildError, ValueError)  # bad input: the CLI's one-line error
