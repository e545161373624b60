"""suffix_gain: teacher-forced middle losses equal a plain forward pass; the interval; the prompts fit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb.holes import Hole
from mamba_nb.infill import encode_prompts, split_near
from mamba_nb.suffix_gain import bootstrap_interval, middle_losses, suffix_gain
from mamba_nb.tokenizer import FimTokens
from tiny_models import CODE


from test_infill import model, tok  # noqa: F401,E402  (the same tiny models and tokenizer as infill's tests)


def holes(n_lines=None):
    lines = CODE.split("\n")
    out = []
    for i, line in enumerate(lines):
        if line.strip():
            prefix = "".join(x + "\n" for x in lines[:i])
            out.append(Hole(prefix, line, "\n" + "\n".join(lines[i + 1:]), f"code:{i}"))
    return out


def reference_losses(model, tokenizer, sequence: list[int], positions: list[int]) -> np.ndarray:
    """-log p of sequence[t] at each t, from one unpadded forward pass of the whole sequence."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([sequence])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return np.array([-float(logp[t - 1, sequence[t]]) for t in positions])


@pytest.mark.parametrize("mode", ["lm", "spm", "psm"])
def test_middle_losses_equal_a_plain_forward_pass(model, tok, mode):
    tasks = holes()
    cols = ([t.prefix for t in tasks], [t.middle for t in tasks], [t.suffix for t in tasks])
    sums, counts, eot = middle_losses(model, tok, *cols, mode, context_len=48, batch_size=3)
    fim = FimTokens.from_tokenizer(tok)
    middles = [tok(m, add_special_tokens=False)["input_ids"] for m in cols[1]]
    closing = mode != "lm"
    prompts, _ = encode_prompts(tok, cols[0], cols[2], mode, fim, 48, reserve=[len(m) + closing for m in middles])
    for i, (p, m) in enumerate(zip(prompts, middles)):
        seq = p + m + ([fim.eot] if closing else [])
        assert len(seq) <= 48  # the prompt left room for the middle inside the trained context
        ref = reference_losses(model, tok, seq, list(range(len(p), len(seq))))
        assert counts[i] == len(m)
        assert sums[i] == pytest.approx(ref[: len(m)].sum(), rel=1e-4, abs=1e-4)
        if closing:
            assert eot[i] == pytest.approx(ref[-1], rel=1e-4, abs=1e-4)
        else:
            assert math.isnan(eot[i])


def test_suffix_gain_is_the_difference_of_the_losses(model, tok):
    report = suffix_gain(model, tok, holes(), modes=("spm", "psm"), context_len=64)
    assert report["holes"] == len(holes()) and report["tokens"] > 0
    for mode in ("spm", "psm"):
        r = report[mode]
        assert r["gain"] == pytest.approx(report["prefix_only_loss"] - r["loss"], abs=1e-9)
        lo, hi = r["interval"]
        assert lo <= r["gain"] <= hi
        assert r["eot_loss"] > 0


@given(values=st.lists(st.floats(-3, 3), min_size=1, max_size=40), count=st.integers(1, 9))
@settings(max_examples=50, deadline=None)
def test_bootstrap_interval_brackets_the_estimate(values, count):
    diffs = np.array(values) * count
    counts = np.full(len(values), count)
    lo, hi = bootstrap_interval(diffs, counts, samples=300)
    estimate = diffs.sum() / counts.sum()
    assert lo <= estimate + 1e-9 and estimate - 1e-9 <= hi
    assert min(values) - 1e-9 <= lo <= hi <= max(values) + 1e-9


def test_bootstrap_interval_of_identical_holes_is_a_point():
    lo, hi = bootstrap_interval(np.full(30, 0.6), np.full(30, 3))
    assert lo == pytest.approx(0.2) and hi == pytest.approx(0.2)


@given(prefix=st.text(alphabet="ab \n", max_size=40), suffix=st.text(alphabet="cd \n", max_size=40),
       n_prefix=st.integers(0, 4), n_suffix=st.integers(0, 4))
def test_split_near_keeps_the_text_in_order(prefix, suffix, n_prefix, n_suffix):
    far, near_prefix, near_suffix = split_near(prefix, suffix, (n_prefix, n_suffix))
    assert far + near_prefix == prefix
    assert suffix.startswith(near_suffix)
    assert near_prefix.count("\n") == min(n_prefix, prefix.count("\n"))
    assert far == "" or far.endswith("\n")
    assert near_suffix.count("\n") == min(n_suffix + 1, suffix.count("\n"))


def test_near_prompts_put_the_far_prefix_before_the_sample(tok):
    fim = FimTokens.from_tokenizer(tok)
    prefix, suffix = "a = 1\nb = 2\nc = 3\n", "\nd = 4\ne = 5\nf = 6\n"
    prompts, cut = encode_prompts(tok, [prefix], [suffix], "spm", fim, context_len=None, near_lines=(1, 1))
    text = tok.decode(prompts[0])
    assert text == "a = 1\nb = 2\n<fim_prefix><fim_suffix>\nd = 4\n<fim_middle>c = 3\n" and not cut
    prompts, cut = encode_prompts(tok, [prefix], [suffix], "spm", fim, context_len=14, near_lines=(1, 1))
    assert len(prompts[0]) <= 14 and cut and tok.decode(prompts[0]).endswith("<fim_middle>c = 3\n")


@pytest.mark.parametrize("near_lines", [(1, 1), (10**6, 10**6)])
def test_near_prompts_never_exceed_the_context(tok, near_lines):
    """Even when the neighbourhood alone is longer than the context (huge near_lines, long lines)."""
    fim = FimTokens.from_tokenizer(tok)
    long_line = "x = " + " + ".join(f"value_{i}" for i in range(200))
    prefix = "\n".join([long_line] * 5) + "\n"
    suffix = "\n" + "\n".join([long_line] * 5) + "\n"
    prompts, cut = encode_prompts(tok, [prefix], [suffix], "spm", fim, context_len=64, reserve=10,
                                  near_lines=near_lines)
    assert len(prompts[0]) <= 64 - 10 and cut
    assert tok.decode(prompts[0]).count("<fim_middle>") == 1


def test_near_lines_come_from_the_checkpoint_only_when_asked(tmp_path):
    """Default: the layout the model's run config names. An explicit None is the plain layout (a
    fine-tune without regions of a region-trained checkpoint is measured as it now trains)."""
    import types

    import yaml

    from mamba_nb.config import WindowConfig, to_dict
    from mamba_nb.infill import FROM_CHECKPOINT, resolve_near_lines

    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump(to_dict(WindowConfig(fim_region_lines=4))))
    model = types.SimpleNamespace(name_or_path=str(tmp_path))
    assert resolve_near_lines(model, FROM_CHECKPOINT) == (1, 2)
    assert resolve_near_lines(model, None) is None
    assert resolve_near_lines(model, (3, 3)) == (3, 3)
