"""Infilling benchmarks: the public sets rebuilt exactly, pass@k, holes from any code, the result file."""
from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb.benchmark import (check_program, format_results, humaneval_holes, humaneval_problems, pass_at_k,
                                run_benchmark)
from mamba_nb.config import EvalConfig
from mamba_nb.sandbox import run_many
from tiny_models import CODE, tiny_bpe, tiny_model


@pytest.fixture(scope="module")
def problems():
    return humaneval_problems()


def test_the_public_line_sets_are_rebuilt_exactly(problems):
    single, multi = humaneval_holes("single", problems), humaneval_holes("multi", problems)
    assert (len(single), len(multi)) == (1033, 5815)  # the human-eval-infilling release's counts
    assert {h.source for h, _ in single} <= {h.source for h, _ in multi}  # a line is a span of one line
    for hole, problem in single + multi:
        assert hole.prefix + hole.middle + hole.suffix == problem["prompt"] + problem["canonical_solution"]
        assert hole.prefix.startswith(problem["prompt"]) and hole.middle.strip()
        assert hole.middle.split("\n")[0].strip() and hole.middle.split("\n")[-1].strip()  # spans end on code


def test_random_spans_are_seeded_and_inside_the_solution(problems):
    spans = humaneval_holes("random-span", problems, seed=0)
    assert len(spans) == 1640 and len(humaneval_holes("random-span-light", problems)) == 164
    assert [h.middle for h, _ in spans] == [h.middle for h, _ in humaneval_holes("random-span", problems, seed=0)]
    assert [h.middle for h, _ in spans] != [h.middle for h, _ in humaneval_holes("random-span", problems, seed=1)]
    for hole, problem in spans:
        assert hole.prefix + hole.middle + hole.suffix == problem["prompt"] + problem["canonical_solution"]
        assert hole.prefix.startswith(problem["prompt"]) and hole.middle.strip()


def test_every_canonical_solution_passes_through_the_harness(problems):
    """Each task's truth spliced back is its problem's canonical program (checked for all 8,488
    tasks above), so running the 164 canonical programs covers every task of every set."""
    programs = [check_program(h, h.middle, p) for h, p in humaneval_holes("single", problems)]
    distinct = {prog: i for i, prog in enumerate(programs)}
    assert len(distinct) == 164
    results = run_many(list(distinct), timeout_s=10.0)
    assert all(r.passed for r in results), [r.stderr[-300:] for r in results if not r.passed][:3]


def test_pass_at_k_by_hand():
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 5) == 1.0
    with pytest.raises(ValueError, match="k=3 is more than the n=2"):
        pass_at_k(2, 1, 3)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 30), data=st.data())
def test_pass_at_k_is_the_combinatorial_probability(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_matches_brute_force_sampling():
    rng = random.Random(0)
    for n, c, k in ((20, 3, 5), (10, 1, 3), (8, 6, 2)):
        outcomes = [True] * c + [False] * (n - c)
        hits = sum(any(rng.sample(outcomes, k)) for _ in range(20000))
        assert pass_at_k(n, c, k) == pytest.approx(hits / 20000, abs=0.015)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = tiny_bpe()
    return tiny_model("mamba", tok), tok


def test_a_humaneval_run_writes_what_a_reader_needs(model_and_tokenizer):
    model, tok = model_and_tokenizer
    cfg = EvalConfig(benchmark="humaneval-multi", humaneval_limit=6, n_samples=3, k=[1, 2], temperature=0.8)
    result = run_benchmark(model, tok, cfg, checkpoint="somewhere", progress=False)
    assert result["benchmark"] == "humaneval-multi" and result["tasks"] == 6 and result["n_samples"] == 3
    assert set(result["pass_at_k"]) == {"1", "2"} and result["mode"] == "spm"
    assert sum(result["outcomes"].values()) == 18  # every sample ran
    assert result["pass_at_k"]["1"] <= result["pass_at_k"]["2"]
    assert json.loads(json.dumps(result)) == result
    table = format_results([result, {**result, "benchmark": "humaneval-single"}])
    assert "humaneval-multi" in table and "humaneval-single" in table and "pass@2" in table
    with pytest.raises(ValueError, match="greedy samples are identical"):
        run_benchmark(model, tok, EvalConfig(benchmark="humaneval-single", n_samples=2), progress=False)
    with pytest.raises(ValueError, match="k=5 is more than"):
        run_benchmark(model, tok, EvalConfig(benchmark="humaneval-single", k=[5]), progress=False)


def test_holes_from_any_directory(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(CODE)
    (tmp_path / "pkg" / "b.py").write_text(CODE.replace("Point", "Vector"))
    cfg = EvalConfig(benchmark="lines", tasks_from=str(tmp_path / "pkg"), num_line_tasks=8)
    first = run_benchmark(model, tok, cfg, progress=False)
    again = run_benchmark(model, tok, cfg, progress=False)
    assert first["tasks"] == 8 and first["exact_match"] == again["exact_match"]  # seeded
    assert "pass_at_k" not in first  # no tests to run: exact match and edit similarity only


def test_the_cli_runs_a_benchmark_into_a_result_file(model_and_tokenizer, tmp_path):
    from mamba_nb.cli import main

    model, tok = model_and_tokenizer
    ckpt = tmp_path / "run" / "latest"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    out = tmp_path / "single.json"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--benchmark", "humaneval-single",
                 "--humaneval-limit", "4", "--out-file", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tasks"] == 4 and result["checkpoint"].endswith("latest") and "commit" in result
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--benchmark", "humaneval-single",
                 "--out-file", str(tmp_path)]) == 2  # a directory: refused before any work
