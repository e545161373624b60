"""`--help` that teaches: every setting explained once (its field's `help`), and that one text in
`--help`, the README's settings reference and the notebooks' quoted comments."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from mamba_nb import cli, reference
from mamba_nb import config as C

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [C.DataConfig, C.WindowConfig, C.ModelConfig, C.TrainConfig, C.InfillConfig, C.EvalConfig]


def help_of(command: str, capsys) -> str:
    """What `python -m mamba_nb <command> --help` prints (no command: the top level's)."""
    with pytest.raises(SystemExit) as done:
        cli.parser().parse_args([command, "--help"] if command else ["--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def flat(text: str) -> str:
    # argparse wraps at spaces and after hyphens: join the words back
    return re.sub(r"-\s+", "-", " ".join(text.split()))


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_setting_is_explained_under_a_known_heading(cls):
    unexplained = [f.name for f in dataclasses.fields(cls) if len(C.help_of(f).split()) < 3]
    assert not unexplained, f"{cls.__name__}: give each `setting(default, 'what it does')`: {unexplained}"
    assert set(C.grouped_fields(cls)) <= set(C.GROUP_ORDER)


@pytest.mark.parametrize("command", list(reference.CONFIGS))
def test_every_flag_shows_what_it_does_its_default_and_its_choices(command, capsys):
    cls = reference.CONFIGS[command]
    text = help_of(command, capsys)
    words = flat(text)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        assert flat(C.flag_help(f).replace("%%", "%")) in words, f"{flag}'s explanation and default"
        choices = C.choices_of(f.name)
        if choices:
            assert f"{flag} {{{','.join(choices)}}}" in text  # beside the flag, as argparse writes choices
    headings = [h for h in C.GROUP_ORDER if re.search(rf"^{h}:$", text, flags=re.M)]
    assert headings == list(C.grouped_fields(cls))  # grouped as the config is, in its order
    assert f"example: python -m mamba_nb {command}" in text


def test_the_flags_with_a_fixed_set_of_values_list_it(capsys):
    from mamba_nb.benchmark import BENCHMARKS
    from mamba_nb.model import ARCHS, PEER_ARCHS, PRESETS
    from mamba_nb.model.scan import PATHS

    # the choices --help shows are the ones the code accepts
    assert C.choices_of("preset") == tuple(PRESETS) and C.choices_of("arch") == ARCHS + PEER_ARCHS
    assert C.choices_of("scan") == PATHS and C.choices_of("benchmark") == BENCHMARKS
    train = help_of("train", capsys)
    for flag in ("--arch {mamba,mamba2,llama}", "--scan {auto,kernels,fast,reference}", "--fim-level {char,token}",
                 "--preset {micro,tiny,"):
        assert flag in train
    assert "auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:N or mps" in flat(train)  # --device
    assert "--benchmark {humaneval-single," in help_of("evaluate", capsys)
    with pytest.raises(ValueError, match=r"preset='huge' must be one of micro, tiny.*\(--preset\)"):
        C.TrainConfig(preset="huge")


def test_the_top_level_help_says_what_to_run_first_with_an_example_each(capsys):
    text = help_of("", capsys)
    start = text[text.index("Start here"):]
    order = [start.index(f"python -m mamba_nb {c}") for c in ("build-dataset", "train", "infill", "evaluate")]
    assert order == sorted(order)
    assert "python -m mamba_nb course" in start and "--help" in start
    # each example runs as the course's chain: train reads what build-dataset wrote, infill what train wrote
    assert C.TrainConfig().dataset == C.DataConfig().out_dir
    assert start.count("--checkpoint runs/mine") == 2 and "--out-dir runs/mine" in start


def test_the_readme_reference_is_the_generated_one():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert reference.readme_section(text) == reference.settings_reference().strip("\n"), (
        "the README's settings reference is stale: run `python -m mamba_nb reference --write`")
    assert reference.with_reference(text) == text


def test_a_reference_without_its_markers_is_named():
    with pytest.raises(ValueError, match="reference --write"):
        reference.readme_section("# a README\n")


@pytest.mark.parametrize("cls", list(reference.CONFIGS.values()), ids=lambda c: c.__name__)
def test_the_yaml_reference_is_a_config_file_of_the_defaults(cls, tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(reference.yaml_reference(cls))
    assert C.from_sources(cls, argparse.Namespace(config=str(path))) == cls()
    assert set(yaml.safe_load(path.read_text())) == {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("name", list(reference.QUOTES))
def test_the_notebooks_quote_the_settings_words(name):
    path = REPO / "notebooks" / name
    assert reference.requoted_notebook(path) == path.read_text(encoding="utf-8"), (
        f"{name}'s config comments no longer quote config.py: run `python -m mamba_nb reference --write`")
    cells = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    for obj, (cls, names) in reference.QUOTES[name].items():
        assert set(names) <= reference.quoted_fields(cells, obj)  # every quote still has its line


def test_requote_changes_only_the_quoting_comments():
    source = ("CONTEXT_LEN = TRAIN.context_len  # smoke 64, full 256\n"
              "FIM_RATE = TRAIN.fim_rate  # an old explanation\n"
              "SEED = TRAIN.seed\n")
    quotes = {"TRAIN": (C.TrainConfig, ("fim_rate",))}
    fim_rate = next(f for f in dataclasses.fields(C.TrainConfig) if f.name == "fim_rate")
    new = reference.requote(source, quotes).split("\n")
    assert new[0] == "CONTEXT_LEN = TRAIN.context_len  # smoke 64, full 256"
    assert new[1] == f"FIM_RATE = TRAIN.fim_rate  # {C.help_of(fim_rate)}"
    assert new[2] == "SEED = TRAIN.seed" and reference.requote("\n".join(new), quotes) == "\n".join(new)


def test_the_reference_command_prints_what_the_readme_holds(capsys):
    assert cli.main(["reference"]) == 0
    assert capsys.readouterr().out == reference.settings_reference()
