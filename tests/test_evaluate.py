"""evaluate: the metrics' invariants, deterministic tasks, HumanEval programs in the sandbox, the report."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb.config import EvalConfig
from mamba_nb.benchmark import check_program, humaneval_holes, humaneval_problems
from mamba_nb.evaluate import evaluate, format_examples, format_table
from mamba_nb.scores import edit_similarity, exact_match, levenshtein
from mamba_nb.holes import line_tasks, mask_line
from mamba_nb.sandbox import run_many
from tiny_models import tiny_model

short = st.text(alphabet="ab c\n", max_size=12)


@settings(max_examples=150, deadline=None)
@given(a=short, b=short, c=short)
def test_levenshtein_is_a_metric(a, b, c):
    assert levenshtein(a, a) == 0
    assert levenshtein(a, b) == levenshtein(b, a)
    assert (levenshtein(a, b) == 0) == (a == b)
    assert levenshtein(a, c) <= levenshtein(a, b) + levenshtein(b, c)
    assert abs(len(a) - len(b)) <= levenshtein(a, b) <= max(len(a), len(b))
    assert levenshtein(a, a + b) == len(b)


def test_levenshtein_textbook_example():
    assert levenshtein("kitten", "sitting") == 3


@settings(max_examples=100, deadline=None)
@given(a=short, b=short)
def test_edit_similarity_is_one_only_for_equal_strings(a, b):
    s = edit_similarity(a, b)
    assert 0.0 <= s <= 1.0
    assert (s == 1.0) == (a == b)
    assert exact_match(" " + a + "\t", a)


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet="x \n", max_size=40), data=st.data())
def test_mask_line_puts_the_text_back_together(text, data):
    i = data.draw(st.integers(0, text.count("\n")))
    prefix, middle, suffix = mask_line(text, i)
    assert prefix + middle + suffix == text
    assert "\n" not in middle
    n = data.draw(st.integers(1, 4))
    p2, block, s2 = mask_line(text, i, n)
    assert p2 == prefix and p2 + block + s2 == text
    assert block.count("\n") == min(n, text.count("\n") + 1 - i) - 1
    assert prefix == "" or prefix.endswith("\n")
    assert suffix == "" or suffix.startswith("\n")


DOCS = ["def f(x):\n    return x + 1\n\n\nclass A:\n    pass\n", "import os\n\nprint(os.sep)\n" + "y = " + "1 + " * 80 + "1\n"]


def test_line_tasks_are_deterministic_non_blank_and_skip_long_lines(tiny_tokenizer):
    a = line_tasks(DOCS, 5, seed=1, tokenizer=tiny_tokenizer, max_line_tokens=20)
    b = line_tasks(DOCS, 5, seed=1, tokenizer=tiny_tokenizer, max_line_tokens=20)
    assert a == b
    assert len(a) == 5
    for t in a:
        assert t.middle.strip()
        assert t.prefix + t.middle + t.suffix in DOCS
        assert not t.middle.startswith("y = ")  # too many tokens
    assert len(line_tasks(DOCS, 100, seed=0)) == 7  # every non-blank line (4 + 3), no more


def test_humaneval_canonical_lines_pass_and_wrong_ones_fail():
    problems = humaneval_problems()
    assert len(problems) == 164
    tasks = humaneval_holes("single", problems, limit=6)
    assert len(tasks) == 6
    assert len({p["task_id"] for _, p in tasks}) == 6  # spread over the problems, not the first one's lines
    truth = [check_program(t, t.middle, p) for t, p in tasks]
    wrong = [check_program(t, t.middle.replace("return", "return None or") if "return" in t.middle else "", p)
             for t, p in tasks]
    results = run_many(truth + wrong, workers=2, timeout_s=5.0)
    assert all(r.passed for r in results[:6]), [r.stderr[-200:] for r in results[:6] if not r.passed]
    assert not all(r.passed for r in results[6:])
    for t, p in tasks:
        assert t.prefix.startswith(p["prompt"])  # the prompt is never the hole


def _checkpoint(tmp_path, tokenizer, context_len=64):
    import yaml

    model = tiny_model("mamba2", tokenizer)
    d = tmp_path / "run" / "latest"
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    (d / "run_config.yaml").write_text(yaml.safe_dump({"context_len": context_len, "seed": 0}))
    return tmp_path / "run"


def test_evaluate_reports_every_part_and_the_cli_writes_json(tmp_path, tiny_dataset, tiny_tokenizer, capsys):
    run = _checkpoint(tmp_path, tiny_tokenizer)
    from mamba_nb.cli import main

    rc = main(["evaluate", "--checkpoint", str(run), "--dataset", str(tiny_dataset.path), "--num-line-tasks", "4",
               "--num-loss-windows", "0", "--max-line-tokens", "8", "--humaneval-limit", "3", "--num-gain-tasks", "8"])
    assert rc == 0
    report = json.loads((run / "latest" / "eval.json").read_text())
    assert report["context_len"] == 64
    assert report["line"]["tasks"] == 4
    for key in ("exact_match", "edit_similarity", "clean_rate"):
        assert 0.0 <= report["line"]["fim"][key] <= 1.0
    assert report["humaneval"]["tasks"] == 3
    assert sum(report["humaneval"]["outcomes"].values()) == 3
    validation = list(tiny_dataset.documents("validation"))
    for ex in report["examples"]:
        assert any(ex["truth"] in doc for doc in validation)  # tasks come from held-out documents
    out = capsys.readouterr().out
    assert "pass@1" in out and "edit_similarity" in out
    assert format_table(report) in out
    for name, gain in report["suffix_gain"].items():  # the gain beside its two controls, in the table
        assert f"suffix gain spm, {name}" in out and f"content gain psm, {name}" in out
        assert f"middle loss, best prompt, {name}" in out
        assert gain["best"]["loss"] == min(gain["prefix_only_loss"], gain["spm"]["loss"], gain["psm"]["loss"])
    # the course's own tokenizer does not register the FIM sentinels as special: still never written
    assert not any("<fim_" in ex["fim"] + ex["prefix_only"] for ex in report["examples"])
    shown = format_examples(report, n=2)
    helped = sorted((ex for ex in report["examples"] if ex["suffix_helped"] > 0), key=lambda ex: -ex["suffix_helped"])
    rest = [ex for ex in report["examples"] if ex["suffix_helped"] <= 0]
    assert shown.count("\n--- ") == min(2, len(helped)) + min(2, len(rest))  # two of each group at most
    assert f"beat prefix only on {len(helped)} of 4 held-out holes" in shown
    for ex in helped[:2] + rest[:2]:
        assert f"truth        | {ex['truth']}" in shown and f"FIM infill   | {ex['fim']}" in shown
        where, line_no = ex["source"].removeprefix("validation/").split(":")
        lines = validation[int(where)].split("\n")
        assert lines[int(line_no) - 1] == ex["truth"]
        i = int(line_no) - 1
        assert ex["after"] == next((line for line in lines[i + 1:] if line), "")  # nearest non-empty line below
        assert ex["before"] == next((line for line in reversed(lines[:i]) if line), "")  # ... and above


def test_evaluate_losses(tmp_path, tiny_dataset, tiny_tokenizer):
    pytest.importorskip("mamba_nb.windows")
    run = _checkpoint(tmp_path, tiny_tokenizer, context_len=32)
    cfg = EvalConfig(num_line_tasks=1, num_loss_windows=2, humaneval=False, max_line_tokens=8)
    report = evaluate(str(run), tiny_dataset, cfg, progress=False)
    assert report["loss"]["val_loss"] > 0 and report["loss"]["val_fim_loss"] > 0


def test_snapshot_scores_spreads_over_the_run_and_keeps_the_last(tmp_path, tiny_dataset, tiny_tokenizer):
    from mamba_nb.checkpoint import save_snapshot
    from mamba_nb.evaluate import snapshot_scores

    model = tiny_model("mamba2", tiny_tokenizer)
    for step in (3, 6, 9, 12, 15):
        save_snapshot(tmp_path, model, tiny_tokenizer, {"step": step, "tokens_seen": step * 100})
    points = snapshot_scores(tmp_path, tiny_dataset, num_line_tasks=2, max_line_tokens=8, max_snapshots=3)
    assert [p["step"] for p in points] == [3, 9, 15]
    assert [p["tokens_seen"] for p in points] == [300, 900, 1500]
    for p in points:
        assert 0.0 <= p["exact_match"] <= 1.0 and 0.0 <= p["edit_similarity"] <= 1.0
    assert [p["step"] for p in snapshot_scores(tmp_path, tiny_dataset, num_line_tasks=1, max_line_tokens=8,
                                               max_snapshots=1)] == [15]
    with pytest.raises(FileNotFoundError, match="no snapshots"):
        snapshot_scores(tmp_path / "empty", tiny_dataset)
