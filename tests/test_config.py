"""config.py's mapping of dataclass fields to YAML settings and `--flags`, and the
`build-dataset` command end to end."""
from __future__ import annotations

import argparse
import os
import dataclasses
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb import cli
from mamba_nb.config import (
    DataConfig,
    TrainConfig,
    add_arguments,
    course_data_config,
    course_train_config,
    from_sources,
    to_dict,
)


def parse(cls, argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    return parser.parse_args(argv)


def test_every_field_has_its_flag():
    for cls in (DataConfig, TrainConfig):
        parser = argparse.ArgumentParser()
        add_arguments(parser, cls)
        flags = {a.dest: a.option_strings for a in parser._actions}
        for f in dataclasses.fields(cls):
            assert flags[f.name][0] == "--" + f.name.replace("_", "-")


def test_flags_map_to_fields():
    args = parse(
        DataConfig,
        ["--source", "dir", "--path", "src", "--patterns", "**/*.py", "**/*.pyi", "--validation-fraction", "0.1",
         "--max-documents", "5", "--overwrite", "--vocab-size", "300"],
    )
    cfg = from_sources(DataConfig, args)
    assert cfg == DataConfig(source="dir", path="src", patterns=["**/*.py", "**/*.pyi"], validation_fraction=0.1,
                             max_documents=5, overwrite=True, vocab_size=300)
    assert from_sources(DataConfig, parse(DataConfig, ["--no-overwrite"])).overwrite is False
    # omitted flags keep the defaults
    assert from_sources(DataConfig, parse(DataConfig, [])) == DataConfig()


def test_inherited_fields_keep_their_names():
    cfg = from_sources(TrainConfig, parse(TrainConfig, ["--context-len", "64", "--fim-rate", "0.5", "--arch", "mamba2"]))
    assert (cfg.context_len, cfg.fim_rate, cfg.arch) == (64, 0.5, "mamba2")


def test_yaml_then_flags_then_overrides(tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"vocab_size": 1000, "seed": 7, "source": "dir"}))
    args = parse(DataConfig, ["--config", str(path), "--seed", "8"])
    cfg = from_sources(DataConfig, args, source="hf")
    assert (cfg.vocab_size, cfg.seed, cfg.source) == (1000, 8, "hf")


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"vocab": 10}))
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['vocab'\].*vocab_size"):
        from_sources(DataConfig, parse(DataConfig, ["--config", str(bad)]))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        from_sources(DataConfig, parse(DataConfig, ["--config", str(tmp_path / "missing.yaml")]))
    with pytest.raises(ValueError, match="unknown setting"):
        from_sources(DataConfig, None, vocab=3)


data_configs = st.builds(
    DataConfig,
    source=st.sampled_from(["stdlib", "dir", "hf"]),
    path=st.none() | st.text("abc/_.", min_size=1, max_size=10),
    patterns=st.lists(st.text("*./py", min_size=1, max_size=6), min_size=1, max_size=3),
    max_documents=st.none() | st.integers(1, 10**6),
    vocab_size=st.integers(261, 70000),
    validation_fraction=st.floats(0.001, 0.999),
    seed=st.integers(0, 2**31),
    overwrite=st.booleans(),
    hf_streaming=st.booleans(),
)


@settings(max_examples=40, deadline=None)
@given(data_configs)
def test_yaml_round_trip(tmp_path_factory, cfg):
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert from_sources(DataConfig, argparse.Namespace(config=str(path))) == cfg


@settings(max_examples=40, deadline=None)
@given(data_configs)
def test_flag_round_trip(cfg):
    argv = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, *value]
        elif value is not None:
            argv += [flag, str(value)]
    assert from_sources(DataConfig, parse(DataConfig, argv)) == cfg


def test_course_configs_agree():
    for smoke in (True, False):
        data, train = course_data_config(smoke, root=".."), course_train_config(smoke, root="..")
        assert train.dataset == data.out_dir and data.out_dir.startswith("../")


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_build_dataset_prints_the_summary(tiny_corpus_dir, tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["build-dataset", "--source", "dir", "--path", str(tiny_corpus_dir), "--out-dir", str(out),
            "--vocab-size", "300", "--validation-fraction", "0.2", "--seed", "1"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    from mamba_nb.dataset import open_dataset

    ds = open_dataset(out)
    assert ds.meta["settings"]["seed"] == 1 and ds.meta["vocab_size"] <= 300
    assert str(out) in text and f"{ds.num_tokens('train'):,}" in text and "not UTF-8" in text
    # a second run reuses it (no --overwrite needed) and prints the same summary
    assert cli.main(argv) == 0 and capsys.readouterr().out == text


def test_cli_subprocess_help_and_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mamba_nb", "build-dataset", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--validation-fraction" in proc.stdout and "--out-dir" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "mamba_nb", "build-dataset", "--source", "dir", "--path", str(tmp_path), "--out-dir", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and str(tmp_path) in proc.stderr and "**/*.py" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")


def test_heavy_commands_print_the_allocator_and_use_tcmalloc_where_installed(tmp_path):
    from mamba_nb.allocator import find_tcmalloc

    cmd = [sys.executable, "-m", "mamba_nb", "build-dataset", "--source", "dir", "--path", str(tmp_path / "nothing")]
    env = {k: v for k, v in os.environ.items() if k not in ("MAMBA_NB_ALLOCATOR", "LD_PRELOAD")}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and "error:" in run.stderr  # the bad path, as one line
    expected = "tcmalloc" if find_tcmalloc() else "system (glibc malloc)"
    assert f"memory allocator: {expected}" in run.stdout
    run = subprocess.run(cmd, capture_output=True, text=True, env={**env, "MAMBA_NB_ALLOCATOR": "system"}, timeout=120)
    assert "memory allocator: system (glibc malloc)" in run.stdout
