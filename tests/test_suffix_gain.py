"""suffix_gain: teacher-forced middle losses equal a plain forward pass (sentinels masked as in
generation); the interval; the prompts fit; the controls (a derangement, a suffix-blind model's
content gain of 0, the best prompt's loss)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb.doc_reset import model_logits
from mamba_nb.holes import Hole
from mamba_nb.infill import encode_prompts, split_near
from mamba_nb.suffix_gain import bootstrap_interval, derangement, middle_losses, paired_difference, suffix_gain
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
    """-log p of sequence[t] at each t, from one unpadded forward pass of the whole sequence, over
    the tokenizer's ids (not the embedding's padding rows) but the sentinels a middle never holds."""
    fim = FimTokens.from_tokenizer(tokenizer)
    with torch.no_grad():
        logits = model_logits(model, torch.tensor([sequence]))[0, :, : len(tokenizer)].float()
    logits[:, [fim.prefix, fim.middle, fim.suffix, fim.pad]] = -math.inf
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


def test_per_hole_sums_pool_to_the_reported_losses(model, tok):
    report = suffix_gain(model, tok, holes(), modes=("spm",), context_len=64, per_hole=True)
    per_hole = report["per_hole"]
    assert per_hole["counts"].sum() == report["tokens"]
    assert per_hole["lm"].sum() / report["tokens"] == pytest.approx(report["prefix_only_loss"])
    assert per_hole["spm"].sum() / report["tokens"] == pytest.approx(report["spm"]["loss"])
    # paired: the prefix-only prompt against SPM on the same holes is the suffix gain, same interval
    diff, interval = paired_difference(per_hole["lm"], per_hole["spm"], per_hole["counts"])
    assert diff == pytest.approx(report["spm"]["gain"]) and interval == pytest.approx(report["spm"]["interval"])
    assert "per_hole" not in suffix_gain(model, tok, holes(), modes=("spm",), context_len=64)


@given(a=st.lists(st.floats(0, 9), min_size=2, max_size=30), shift=st.floats(-2, 2), count=st.integers(1, 5))
@settings(max_examples=50, deadline=None)
def test_paired_difference_of_a_shifted_model_is_the_shift(a, shift, count):
    """Model b = model a plus a constant per token: the difference is that constant, with no spread."""
    sums_a, counts = np.array(a) * count, np.full(len(a), count)
    diff, (lo, hi) = paired_difference(sums_a + shift * count, sums_a, counts)
    assert diff == pytest.approx(shift, abs=1e-9) and lo == pytest.approx(shift, abs=1e-9) == pytest.approx(hi, abs=1e-9)


def test_paired_difference_refuses_other_holes():
    with pytest.raises(ValueError, match="same holes"):
        paired_difference(np.ones(3), np.ones(4), np.ones(3))


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


def test_a_middle_that_spells_a_sentinel_still_has_a_finite_loss(model, tok):
    hole = Hole("SEP = ", '"<fim_middle>"', "\n", "spells")
    assert FimTokens.from_tokenizer(tok).middle in tok(hole.middle, add_special_tokens=False)["input_ids"]
    for mode in ("lm", "spm"):
        sums, _, _ = middle_losses(model, tok, [hole.prefix], [hole.middle], [hole.suffix], mode, context_len=64)
        assert np.isfinite(sums).all()


# --- the controls ---------------------------------------------------------------------------


@given(n=st.integers(2, 300), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_derangement_moves_every_hole_and_is_reproducible(n, seed):
    perm = derangement(n, seed)
    assert sorted(perm.tolist()) == list(range(n))  # a permutation: every suffix is used once
    assert (perm != np.arange(n)).all()  # no hole keeps its own suffix
    assert (derangement(n, seed) == perm).all()


@pytest.mark.parametrize("n", [1, -1, 2.0, True])
def test_derangement_of_fewer_than_two_is_a_clear_error(n):
    with pytest.raises(ValueError, match=f"n={n!r}.*2 holes or more"):
        derangement(n)
    assert len(derangement(0)) == 0


class SuffixBlind(torch.nn.Module):
    """A FIM model that never reads a suffix: `inner` run on each sequence with the tokens between
    <fim_suffix> and <fim_middle> (the suffix, in both layouts) taken out. It still reads the prefix
    and the sentinels, so its FIM prompts differ from prefix only: a layout without content."""

    def __init__(self, inner, fim: FimTokens):
        super().__init__()
        self.inner, self.fim = inner, fim

    @property
    def base_model(self):  # what `suffix_gain` calls, as on an HF model
        return self

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, use_cache=False):
        import types

        rows = []
        for row in input_ids:
            ids = row.tolist()
            keep = list(range(len(ids)))
            if self.fim.suffix in ids and self.fim.middle in ids:
                s, m = ids.index(self.fim.suffix), ids.index(self.fim.middle)
                keep = [t for t in keep if not s < t < m]
            hidden = self.inner.base_model(input_ids=row[keep][None], use_cache=False).last_hidden_state[0]
            out = torch.zeros(len(ids), hidden.shape[-1])  # the suffix's own positions are never scored
            out[keep] = hidden
            rows.append(out)
        return types.SimpleNamespace(last_hidden_state=torch.stack(rows))


@pytest.mark.parametrize("near_lines", [None, (1, 2)])
def test_a_model_blind_to_the_suffix_has_no_content_gain_but_a_gain(model, tok, near_lines):
    tasks = holes()
    blind = SuffixBlind(model, FimTokens.from_tokenizer(tok))
    report = suffix_gain(blind, tok, tasks, modes=("spm", "psm"), context_len=None, near_lines=near_lines)
    seeing = suffix_gain(model, tok, tasks, modes=("psm",), context_len=None, near_lines=near_lines)
    for mode in ("spm", "psm"):
        r = report[mode]
        assert r["content_gain"] == pytest.approx(0, abs=1e-5)
        assert r["shuffled_loss"] == pytest.approx(r["loss"], abs=1e-5)
        assert r["content_interval"][0] == pytest.approx(0, abs=1e-5) == r["content_interval"][1]
        # ... while the suffix gain, measured against prefix only, is not 0: the layout alone moves it.
        # How far depends on the untrained network and the corpus (the interpreter's own stdlib: 3.12's
        # gave 5e-5 where 3.11's gave over 1e-3), so "not 0" is judged against the control's own
        # float noise: many times what the content gain shows, and above float32's rounding.
        noise = abs(r["content_gain"]) + 1e-6
        assert abs(r["gain"]) > 10 * noise
    # The same network reading the suffix: the control sees its content (PSM, where the suffix sits
    # right before the middle: an untrained network forgets the tokens before the prefix in SPM).
    assert abs(seeing["psm"]["content_gain"]) > 10 * (abs(report["psm"]["content_gain"]) + 1e-6)


def test_the_controls_are_the_differences_and_the_best_is_the_lowest_loss(model, tok):
    report = suffix_gain(model, tok, holes(), modes=("spm", "psm"), context_len=64, seed=3)
    losses = {"lm": report["prefix_only_loss"], "spm": report["spm"]["loss"], "psm": report["psm"]["loss"]}
    best = report["best"]
    assert best["loss"] == min(losses.values()) and losses[best["prompt"]] == best["loss"]
    assert best["interval"] == (report["prefix_only_interval"] if best["prompt"] == "lm"
                                else report[best["prompt"]]["loss_interval"])
    assert best["interval"][0] <= best["loss"] <= best["interval"][1]
    lo, hi = report["prefix_only_interval"]
    assert lo <= report["prefix_only_loss"] <= hi
    for mode in ("spm", "psm"):
        r = report[mode]
        assert r["content_gain"] == pytest.approx(r["shuffled_loss"] - r["loss"], abs=1e-9)
        for value, (lo, hi) in ((r["content_gain"], r["content_interval"]), (r["loss"], r["loss_interval"])):
            assert lo <= value <= hi
    # the same seed gives the same figures (the derangement and the bootstrap are seeded)
    assert suffix_gain(model, tok, holes(), modes=("spm",), context_len=64, seed=3)["spm"] == report["spm"]


def test_one_hole_has_a_gain_but_no_content_control(model, tok):
    report = suffix_gain(model, tok, holes()[:1], modes=("spm",), context_len=64)
    assert math.isfinite(report["spm"]["gain"])
    assert math.isnan(report["spm"]["content_gain"]) and math.isnan(report["spm"]["shuffled_loss"])
