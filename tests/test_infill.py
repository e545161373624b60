"""infill: prompt layouts, batched == unbatched, stopping, best-of-n, healing, truncation, no sentinel
written as text, errors, CLI."""
from __future__ import annotations

import inspect
import json
import os
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb.infill import InfillResult, _encode_near, _truncate, _VocabStrings, build_prompt, infill, special_ids
from mamba_nb.tokenizer import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, FimTokens, train_bpe
from tiny_models import CODE, tiny_bpe, tiny_model


@pytest.fixture(scope="module")
def tok():
    return tiny_bpe()


@pytest.fixture(scope="module", params=["mamba", "mamba2"])
def model(request, tok):
    return tiny_model(request.param, tok)


HOLES = [
    ("def add(a, b):\n    return ", "\n\n\nclass Point:\n"),
    ("", ""),  # empty prefix and suffix is a valid hole
    ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n", "\n\n    def norm(self):\n"),
    ("x", " + 1\n"),
]


def test_prompt_layouts_match_training(tok):
    fim = FimTokens.from_tokenizer(tok)
    pre, suf = tok.encode("a = 1\n", add_special_tokens=False), tok.encode("b = 2\n", add_special_tokens=False)
    psm = tok.decode(build_prompt(pre, suf, "psm", fim))
    spm = tok.decode(build_prompt(pre, suf, "spm", fim))
    assert psm == f"{FIM_PREFIX}a = 1\n{FIM_SUFFIX}b = 2\n{FIM_MIDDLE}"
    assert spm == f"{FIM_PREFIX}{FIM_SUFFIX}b = 2\n{FIM_MIDDLE}a = 1\n"
    assert build_prompt(pre, suf, "lm", fim) == pre
    with pytest.raises(ValueError, match="psm"):
        build_prompt(pre, suf, "pms", fim)


@pytest.mark.parametrize("mode", ["psm", "spm", "lm"])
def test_batched_equals_one_at_a_time(model, tok, mode):
    prefixes, suffixes = [h[0] for h in HOLES], [h[1] for h in HOLES]
    batched = infill(model, tok, prefixes, suffixes, mode=mode, max_new_tokens=8, batch_size=3)
    alone = [infill(model, tok, p, s, mode=mode, max_new_tokens=8) for p, s in HOLES]
    assert batched == alone
    # stop strings end rows at different steps: finished rows leave the batch, the rest go on
    stop = ["e", " ", "("]
    batched = infill(model, tok, prefixes, suffixes, mode=mode, max_new_tokens=8, stop=stop)
    assert batched == [infill(model, tok, p, s, mode=mode, max_new_tokens=8, stop=stop) for p, s in HOLES]
    assert all(isinstance(r, InfillResult) for r in batched)


def test_stop_string_cuts_the_greedy_middle(model, tok):
    full = infill(model, tok, HOLES[0][0], HOLES[0][1], max_new_tokens=16)
    assert not full.clean or full.text == ""
    assert len(full.text) >= 2, "a random model should not stop this early"
    stop = full.text[len(full.text) // 2]
    stopped = infill(model, tok, HOLES[0][0], HOLES[0][1], max_new_tokens=16, stop=[stop])
    assert stopped.text == full.text[: full.text.index(stop)]
    assert not stopped.clean


def test_sampling_is_seeded_and_tiny_top_p_is_greedy(model, tok):
    kw = dict(max_new_tokens=8, temperature=1.0)
    a = infill(model, tok, [h[0] for h in HOLES], [h[1] for h in HOLES], seed=3, **kw)
    b = infill(model, tok, [h[0] for h in HOLES], [h[1] for h in HOLES], seed=3, **kw)
    assert a == b
    greedy = infill(model, tok, HOLES[0][0], HOLES[0][1], max_new_tokens=8)
    assert infill(model, tok, HOLES[0][0], HOLES[0][1], top_p=1e-9, seed=5, **kw) == greedy


def test_best_of_prefers_samples_that_end_with_eot(tok):
    model = tiny_model("mamba", tok)
    eot = tok.convert_tokens_to_ids(EOT)
    bias = torch.zeros(model.config.vocab_size)
    bias[eot] = 4.6  # P(EOT) ≈ 0.2 per step: some samples end cleanly within 4 tokens, some do not
    handle = model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias)
    try:
        singles = [infill(model, tok, "a = ", "\n", max_new_tokens=4, temperature=1.0, seed=s) for s in range(12)]
        bests = [infill(model, tok, "a = ", "\n", max_new_tokens=4, temperature=1.0, best_of=8, seed=s)
                 for s in range(12)]
    finally:
        handle.remove()
    assert not all(r.clean for r in singles)
    assert all(r.clean for r in bests)


@pytest.fixture(scope="module")
def course_bpe():
    """The course's own kind of tokenizer (`train_bpe`): transformers knows only <|endoftext|> and
    <fim_pad> as special, the FIM sentinels are plain added tokens to it."""
    return train_bpe([CODE, inspect.getsource(json)], vocab_size=400)


def test_special_ids_are_the_five_sentinels_registered_or_not(course_bpe):
    assert FIM_PREFIX not in course_bpe.all_special_tokens  # what makes `all_special_tokens` alone not enough
    fim = FimTokens.from_tokenizer(course_bpe)
    assert special_ids(course_bpe) == {fim.eot, fim.prefix, fim.middle, fim.suffix, fim.pad}


@pytest.mark.parametrize("mode", ["lm", "spm", "psm"])
def test_generation_never_writes_a_sentinel_as_text(course_bpe, mode):
    """A model that rates every sentinel far above any code token still writes code, left to right
    (the baseline a learner compares FIM with) and in a FIM prompt; <|endoftext|> alone may end it."""
    model = tiny_model("mamba", course_bpe)
    fim = FimTokens.from_tokenizer(course_bpe)
    bias = torch.zeros(model.config.vocab_size)
    bias[[fim.prefix, fim.middle, fim.suffix, fim.pad]] = 50.0  # each the greedy pick, were it allowed
    handle = model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias)
    seen: list[torch.Tensor] = []
    feed = model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["input_ids"]),
                                           with_kwargs=True)
    written = [h for h in HOLES if h[0]]  # (left to right, an empty prefix is no prompt to continue)
    prefixes, suffixes = [h[0] for h in written], [h[1] for h in written]
    try:
        results = infill(model, course_bpe, prefixes, suffixes, mode=mode, max_new_tokens=6, batch_size=2)
        fed_back = {int(t) for ids in seen if ids.shape[1] == 1 for t in ids.flatten()}  # the generated tokens
        assert not fed_back & {fim.prefix, fim.middle, fim.suffix, fim.pad}
        assert all(r.text and "<fim_" not in r.text and not r.clean for r in results)
        bias[fim.eot] = 60.0  # the one special token a middle may end with
        ended = infill(model, course_bpe, prefixes, suffixes, mode=mode, max_new_tokens=6)
        assert all(r.clean for r in ended)  # (left to right, healing may spell a token or so first)
        assert mode == "lm" or all(r.text == "" for r in ended)
    finally:
        handle.remove()
        feed.remove()


def test_healing_moves_trailing_whitespace_into_the_generation(tok):
    # The tiny BPE merges a newline with the indentation after it, which is what healing is for.
    assert len(tok.encode("\n    ", add_special_tokens=False)) == 1
    model = tiny_model("mamba", tok)
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["input_ids"]),
                                             with_kwargs=True)
    prefix = "def add(a, b):\n    "
    try:
        result = infill(model, tok, prefix, "", mode="lm", max_new_tokens=6)
    finally:
        handle.remove()
    prompt = seen[0][0].tolist()
    assert tok.decode(prompt) == prefix.rstrip()
    fed_back = [int(t[0, 0]) for t in seen[1:]]  # each generated token but the last is fed back in turn
    generated = tok.decode(fed_back)
    assert generated.startswith("\n    ")
    # the returned middle is what the model wrote after spelling the healed whitespace
    assert ("\n    " + result.text).startswith(generated)


@settings(max_examples=40, deadline=None)
@given(heal=st.text(alphabet=" \n\t", min_size=1, max_size=12), data=st.data())
def test_any_token_path_the_constraint_allows_spells_the_healed_text(heal, data):
    tok = _TOK
    vs = _VS
    text, remaining = "", heal
    while remaining:
        ok = vs.allowed(remaining).nonzero().flatten().tolist()
        assert ok, f"no token continues {remaining!r}"
        t = data.draw(st.sampled_from(ok))
        s = vs.strings[t]
        text += s
        remaining = remaining[len(s):] if remaining.startswith(s) else ""
    assert text.startswith(heal)


_TOK = tiny_bpe()
_VS = _VocabStrings(_TOK, len(_TOK), {_TOK.convert_tokens_to_ids(t) for t in _TOK.all_special_tokens})


@settings(max_examples=200, deadline=None)
@given(p=st.lists(st.integers(0, 9), max_size=30), s=st.lists(st.integers(0, 9), max_size=30),
       budget=st.integers(1, 70))
def test_truncation_cuts_the_far_ends_prefix_first(p, s, budget):
    p2, s2, over = _truncate(p, s, budget)
    assert len(p2) >= min(len(p), budget // 2)  # the prefix keeps at least half the context
    assert len(p2) + len(s2) == min(len(p) + len(s), budget)
    assert over == max(0, len(p) + len(s) - budget)
    assert p2 == p[len(p) - len(p2):]  # kept the prefix's near (right) end
    assert s2 == s[: len(s2)]  # kept the suffix's near (left) end
    if s2 != s:
        assert len(p2) == min(len(p), budget // 2) or len(p2) == len(p)  # prefix cut first, to its share


_SOURCE = inspect.getsource(json) + inspect.getsource(os) + "caf\u00e9 = '\u2603' * 3\n" + " " * 40 + "x\n"


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(0, len(_SOURCE)), budget=st.integers(1, 300), suffix_len=st.integers(0, 5000))
def test_encoding_near_the_hole_keeps_exactly_the_tokens_of_the_whole_text(cut, budget, suffix_len):
    # Tokenizing only windows near the hole must give the prompt that tokenizing the whole
    # file would: the same kept prefix and suffix tokens.
    prefix, suffix = _SOURCE[:cut], _SOURCE[cut: cut + suffix_len]
    whole = (_TOK(prefix, add_special_tokens=False)["input_ids"], _TOK(suffix, add_special_tokens=False)["input_ids"])
    near = (_encode_near(_TOK, [prefix], budget, at_end=True)[0], _encode_near(_TOK, [suffix], budget, at_end=False)[0])
    assert _truncate(*near, budget)[:2] == _truncate(*whole, budget)[:2]  # (the count cut differs: windows cut less)


def test_long_prompt_warns_and_still_infills(model, tok):
    prefix = CODE * 4
    with pytest.warns(UserWarning, match="context_len=32"):
        r = infill(model, tok, prefix, "\n", max_new_tokens=4, context_len=32)
    assert isinstance(r.text, str)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        infill(model, tok, "a = 1\n", "\n", max_new_tokens=2, context_len=32)


def test_checkpoint_without_fim_tokens_is_a_clear_error():
    plain = tiny_bpe(special=False)
    model = tiny_model("mamba", plain)
    with pytest.raises(ValueError, match="mode='lm'"):
        infill(model, plain, "a = ", "\n", mode="psm", max_new_tokens=2)
    assert isinstance(infill(model, plain, "a = ", "", mode="lm", max_new_tokens=2).text, str)


@pytest.mark.parametrize(
    "kw, match",
    [(dict(mode="fim"), "mode"), (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"),
     (dict(best_of=4), "temperature > 0"), (dict(max_new_tokens=0), "max_new_tokens")],
)
def test_bad_arguments_are_named(tok, kw, match):
    model = tiny_model("mamba", tok)
    with pytest.raises(ValueError, match=match):
        infill(model, tok, "a", "b", **kw)
    with pytest.raises(ValueError, match="equal length"):
        infill(model, tok, ["a", "b"], ["c"])


def test_cli_prints_the_middle(tmp_path, tok, capsys):
    from mamba_nb.cli import main

    model = tiny_model("mamba", tok)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    (tmp_path / "pre.py").write_text(HOLES[0][0])
    (tmp_path / "suf.py").write_text(HOLES[0][1])
    expected = infill(model, tok, HOLES[0][0], HOLES[0][1], max_new_tokens=5).text
    rc = main(["infill", "--checkpoint", str(ckpt), "--prefix-file", str(tmp_path / "pre.py"),
               "--suffix-file", str(tmp_path / "suf.py"), "--max-new-tokens", "5"])
    assert rc == 0
    assert capsys.readouterr().out.startswith(expected)
    one_line = infill(model, tok, HOLES[0][0], HOLES[0][1], max_new_tokens=5, stop=["\n", "e"]).text
    main(["infill", "--checkpoint", str(ckpt), "--prefix-file", str(tmp_path / "pre.py"),
          "--suffix-file", str(tmp_path / "suf.py"), "--max-new-tokens", "5", "--stop", "\\n", "e"])
    assert capsys.readouterr().out == one_line + "\n"
    # a missing file is bad input: one line naming it, exit status 2, no traceback
    rc = main(["infill", "--checkpoint", str(ckpt), "--prefix-file", str(tmp_path / "nope.py"),
               "--suffix-file", str(tmp_path / "suf.py")])
    assert rc == 2 and "nope.py" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, match", [
    (dict(prefix=b"def f():\n"), r"prefix is bytes, not text \(decode it first"),
    (dict(prefix="x = '\ud800'\n"), r"prefix holds '\\ud800' at character 5, a lone surrogate"),
    (dict(suffix=["a", 3], prefix=["b", "c"]), r"suffix\[1\] is int, not text"),
    (dict(temperature=float("nan")), r"temperature=nan must be a finite number"),
    (dict(temperature=float("inf")), r"temperature=inf must be a finite number"),
    (dict(max_new_tokens=2.5), r"max_new_tokens=2.5 must be a whole number"),
])
def test_bad_infill_input_is_one_clear_error(model, tok, kwargs, match):
    args = {"prefix": "def f():\n", "suffix": "\n", **kwargs}
    with pytest.raises(ValueError, match=match):
        infill(model, tok, args.pop("prefix"), args.pop("suffix"), **args)
