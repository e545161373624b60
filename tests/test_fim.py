"""FIM: the transform keeps the window's length, its structure, and every document's text."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamba_nb.fim import MIDDLE, PAD, PLAIN, PREFIX, SUFFIX, FimTransform, apply_fim, fim_rng, make_batch, undo_fim
from mamba_nb.tokenizer import FimTokens, train_bpe

SAMPLE_CODE = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\n\nfor name in os.listdir('.'):\n    print(name.upper())  # caf\u00e9 \u00fcber \u2603\n",
    "x = [i * i for i in range(10) if i % 2]\nprint(sum(x))\n",
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(SAMPLE_CODE * 20, vocab_size=300)


@pytest.fixture(scope="module")
def ft(tok):
    return FimTokens.from_tokenizer(tok)


_LITERAL = {}


def encode(tok, text):
    """Text as a dataset stores it: a string that spells a special token stays ordinary tokens."""
    if id(tok) not in _LITERAL:
        from tokenizers import Tokenizer

        _LITERAL[id(tok)] = Tokenizer.from_str(tok.backend_tokenizer.to_str())
        _LITERAL[id(tok)].encode_special_tokens = True
    return _LITERAL[id(tok)].encode(text, add_special_tokens=False).ids


def decode(tok, ids):
    return tok.decode(list(map(int, ids)), skip_special_tokens=False)


def stream_of(tok, ft, docs):
    """Documents as the dataset stores them: each followed by <|endoftext|>."""
    ids = []
    for d in docs:
        ids += encode(tok, d) + [ft.eot]
    return np.array(ids, dtype=np.int64)


def pieces_of(window, eot):
    """The window's document pieces (tokens between <|endoftext|>), a final empty one dropped."""
    cuts = np.flatnonzero(window == eot)
    out = np.split(window, cuts)
    pieces = [out[0]] + [p[1:] for p in out[1:]]
    if len(pieces[-1]) == 0 and len(window) and window[-1] == eot:
        pieces.pop()
    return pieces, [i < len(cuts) for i in range(len(pieces))]


def assert_prefix_text(recovered: str, original: str):
    """`recovered` is a prefix of `original`; its last char may be U+FFFD (a cut multi-byte char)."""
    if original.startswith(recovered):
        return
    assert recovered.endswith("\ufffd") and original.startswith(recovered[:-1]), (recovered, original)


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
code_like = st.sampled_from(SAMPLE_CODE + ["", "\n", "a", "\u00e9\u00e9\u00e9", "\u2603 snow"])
docs_strategy = st.lists(st.one_of(texts, code_like), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    docs=docs_strategy,
    level=st.sampled_from(["char", "token"]),
    spm_rate=st.sampled_from([0.0, 1.0, 0.5]),
    fim_rate=st.sampled_from([1.0, 0.5]),
    length=st.integers(1, 120),
    offset=st.integers(0, 50),
    seed=st.integers(0, 1000),
)
def test_undo_gives_back_every_piece(tok, ft, docs, level, spm_rate, fim_rate, length, offset, seed):
    stream = stream_of(tok, ft, docs)
    offset = min(offset, max(0, len(stream) - 1))
    window = stream[offset : offset + length]
    res = apply_fim(window, tok, fim_rate=fim_rate, spm_rate=spm_rate, fim_level=level, seed=seed)
    out = res.tokens[0]
    assert out.shape == window.shape  # exactly the window's length
    pieces, ended = pieces_of(window, ft.eot)
    undone = undo_fim(out, ft)
    assert len(undone) == len(pieces) == len(res.modes[0])
    draws = fim_rng(seed, 0, 0).random((len(pieces), 4))
    back_seen = []
    for piece, had_eot, back, mode, trim in zip(pieces, ended, undone, res.modes[0], res.trimmed[0]):
        # a PSM sample with an empty prefix is token for token an SPM one: undo reads it as SPM
        assert back.mode == mode or (mode, back.mode) == ("psm", "spm")
        if mode == "none":
            assert np.array_equal(back.tokens, piece) and back.ended == had_eot and trim == 0
            back_seen.append(piece)
            continue
        assert back.ended  # every transformed middle closes with <|endoftext|>, cut or not
        if level == "token":
            expected = piece[: len(piece) - trim]  # what survives is a prefix of the tokens
            assert np.array_equal(back.tokens, expected)
        else:
            original, recovered = decode(tok, piece), decode(tok, back.tokens)
            if trim == 0:
                assert recovered == original
            else:
                assert_prefix_text(recovered, original)
                # exactly: the text before the second split point, then the suffix's first tokens
                # (split points uniform over the len + 1 cursor positions, from the window's draws)
                d = draws[len(back_seen)]
                cut = int(sorted(np.floor(d[2:4] * (len(original) + 1)).astype(int))[1])
                suffix_ids = encode(tok, original[cut:])
                assert recovered == original[:cut] + decode(tok, suffix_ids[: len(suffix_ids) - trim])
        back_seen.append(piece)
    # pads only after the last piece, and their targets are ignored
    roles = res.roles[0]
    if (roles == PAD).any():
        first = np.argmax(roles == PAD)
        assert (roles[first:] == PAD).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=docs_strategy, seed=st.integers(0, 100), level=st.sampled_from(["char", "token"]))
def test_roles_describe_the_layout(tok, ft, docs, seed, level):
    window = stream_of(tok, ft, docs)[:200]
    res = apply_fim(window, tok, fim_rate=1.0, spm_rate=0.5, fim_level=level, seed=seed)
    out, roles = res.tokens[0], res.roles[0]
    # sentinels sit where the roles say, and each middle closes on <|endoftext|>
    sentinels = np.isin(out, [ft.prefix, ft.middle, ft.suffix])
    assert np.array_equal(sentinels, roles == 1)
    ends = np.flatnonzero((roles[:-1] == MIDDLE) & (roles[1:] != MIDDLE))
    if len(roles) and roles[-1] == MIDDLE:
        ends = np.append(ends, len(roles) - 1)
    assert all(out[e] == ft.eot for e in ends)
    assert res.num_fim == sum(m != "none" for m in res.modes[0])
    assert not ((roles == PLAIN) & np.isin(out, [ft.prefix, ft.middle, ft.suffix, ft.pad])).any()


def test_psm_and_spm_layouts(tok, ft):
    doc = SAMPLE_CODE[1]
    window = stream_of(tok, ft, [doc])
    for spm_rate, mode in ((0.0, "psm"), (1.0, "spm")):
        res = apply_fim(window, tok, fim_rate=1.0, spm_rate=spm_rate, seed=3)
        out, roles = res.tokens[0], res.roles[0]
        assert res.modes[0] == [mode]
        pre, suf, mid = (decode(tok, out[roles == r]) for r in (PREFIX, SUFFIX, MIDDLE))
        assert mid.endswith("<|endoftext|>")
        # the window was exactly this document, so the sentinels' room came off the suffix's end
        assert res.trimmed[0][0] >= 3
        recovered = pre + mid[: -len("<|endoftext|>")] + suf
        assert doc.startswith(recovered) and len(recovered) >= len(doc) - len(suf) - 40
        if mode == "psm":
            assert out[0] == ft.prefix and list(out).index(ft.suffix) < list(out).index(ft.middle)
        else:
            assert list(out[:2]) == [ft.prefix, ft.suffix]
            assert np.flatnonzero(roles == SUFFIX).max() < np.flatnonzero(roles == PREFIX).min()


def test_char_level_splits_inside_tokens(tok, ft):
    """At character level some holes start inside what was one token (the point of the paper)."""
    doc = SAMPLE_CODE[1] * 3
    window = stream_of(tok, ft, [doc])
    # where the original tokens end, in characters
    bounds = set(np.cumsum([len(decode(tok, [i])) for i in window[:-1]]).tolist()) | {0}
    inside = 0
    for seed in range(40):
        res = apply_fim(window, tok, fim_rate=1.0, spm_rate=0.0, seed=seed)
        prefix = decode(tok, res.tokens[0][res.roles[0] == PREFIX])
        assert doc.startswith(prefix)
        inside += len(prefix) not in bounds
    assert inside > 0


def test_same_draws_whatever_the_batch(tok, ft):
    stream = stream_of(tok, ft, SAMPLE_CODE * 4)
    starts = np.array([0, 30, 60, 90])
    windows = np.stack([stream[s : s + 50] for s in starts])
    together = apply_fim(windows, tok, seed=5, epoch=2, starts=starts).tokens
    alone = np.concatenate([apply_fim(windows[i], tok, seed=5, epoch=2, starts=[s]).tokens
                            for i, s in enumerate(starts)])
    assert np.array_equal(together, alone)
    other_epoch = apply_fim(windows, tok, seed=5, epoch=3, starts=starts).tokens
    assert not np.array_equal(together, other_epoch)


def test_raising_fim_rate_transforms_a_superset(tok, ft):
    stream = stream_of(tok, ft, SAMPLE_CODE * 30)
    windows = np.stack([stream[s : s + 64] for s in range(0, 64 * 20, 64)])
    low = apply_fim(windows, tok, fim_rate=0.3, seed=1)
    high = apply_fim(windows, tok, fim_rate=0.8, seed=1)
    for lo, hi in zip(low.modes, high.modes):
        for a, b in zip(lo, hi):
            assert a == "none" or a == b
    assert high.num_fim > low.num_fim


def test_fim_rate_zero_is_identity(tok, ft):
    stream = stream_of(tok, ft, SAMPLE_CODE * 3)[:100]
    res = apply_fim(stream, tok, fim_rate=0.0)
    assert np.array_equal(res.tokens[0], stream) and (res.roles == PLAIN).all()


def test_measured_fraction_follows_the_rate(tok, ft):
    stream = stream_of(tok, ft, SAMPLE_CODE * 200)
    windows = np.stack([stream[s : s + 129] for s in range(0, 128 * 100, 128)])
    for rate in (0.2, 0.9):
        res = apply_fim(windows, tok, fim_rate=rate, seed=0)
        drawn = res.num_drawn / res.num_pieces
        assert abs(drawn - rate) < 0.1
        assert res.num_fim <= res.num_drawn


@pytest.mark.parametrize("name,kwargs", [("fim_rate", dict(fim_rate=1.5)), ("spm_rate", dict(spm_rate=-0.1))])
def test_rates_outside_unit_interval_are_named(tok, name, kwargs):
    with pytest.raises(ValueError, match=f"{name}=.*outside"):
        apply_fim(np.zeros(10, dtype=np.int64), tok, **kwargs)


def test_unknown_level_is_named(tok):
    with pytest.raises(ValueError, match="fim_level='word'"):
        FimTransform(tok, fim_level="word")


def test_text_spelling_a_sentinel_is_not_a_sentinel(tok, ft):
    doc = "s = '<fim_middle>' + '<|endoftext|>'\n"
    window = stream_of(tok, ft, [doc])
    assert not np.isin(window[:-1], [ft.eot, ft.middle]).any()
    res = apply_fim(window, tok, fim_rate=1.0, seed=0)
    assert (res.tokens[0] == ft.middle).sum() == 1 and (res.tokens[0] == ft.eot).sum() == 1
    back = decode(tok, undo_fim(res.tokens[0], ft)[0].tokens)
    assert doc.startswith(back) and "<fim_middle>" in back  # (the suffix's end gave room to the sentinels)


def test_make_batch_shifts_and_masks(tok, ft):
    stream = stream_of(tok, ft, SAMPLE_CODE * 5)
    windows = np.stack([stream[s : s + 33] for s in (0, 40, 80)])
    res = apply_fim(windows, tok, fim_rate=1.0, seed=2, starts=[0, 40, 80])
    batch = make_batch(res, [0, 40, 80])
    assert batch["input_ids"].shape == batch["targets"].shape == batch["middle_mask"].shape == (3, 32)
    tokens = res.tokens
    keep = res.roles[:, 1:] != PAD
    assert np.array_equal(batch["targets"].numpy()[keep], tokens[:, 1:][keep])
    assert (batch["targets"].numpy()[~keep] == -100).all()
    assert np.array_equal(batch["input_ids"].numpy(), tokens[:, :-1])
    assert np.array_equal(batch["middle_mask"].numpy(), res.roles[:, 1:] == MIDDLE)
    assert batch["starts"].tolist() == [0, 40, 80]


def test_fim_rng_depends_on_all_three_keys():
    base = fim_rng(0, 0, 0).random(4)
    assert np.array_equal(base, fim_rng(0, 0, 0).random(4))
    for other in (fim_rng(1, 0, 0), fim_rng(0, 1, 0), fim_rng(0, 0, 1)):
        assert not np.array_equal(base, other.random(4))


def test_show_fim_html_is_machine_checkable(tok, ft):
    import re

    from mamba_nb.viz.fim import show_fim

    stream = stream_of(tok, ft, SAMPLE_CODE * 40)
    windows = np.stack([stream[s : s + 65] for s in range(0, 64 * 16, 64)])
    view = show_fim(windows, tok, fim_rate=0.7, spm_rate=0.5, seed=4, num_samples=3)
    res = view.result
    rendered = re.findall(r'<div class="fim-sample" data-fim="(psm|spm|none)"', view.html)
    assert rendered == [m for row in res.modes[:3] for m in row]
    measured = re.search(r"measured FIM fraction: (\d\.\d\d)", view.html)
    assert measured and float(measured.group(1)) == round(res.fim_fraction, 2)
    assert "fim-middle" in view.html and 'class="fim-fraction-plot"' in view.html
    # the sample's text, sentinels removed, holds the window's documents (as far as they survive)
    plain = re.sub(r"<[^>]+>", "", view.html.split('class="fim-window"')[1])
    assert "return a + b" in plain or "Point" in plain or "import" in plain or "sum(x)" in plain


def test_spans_cover_each_piece(tok, ft):
    stream = stream_of(tok, ft, SAMPLE_CODE * 3)
    res = apply_fim(stream[:150], tok, fim_rate=0.6, seed=9)
    spans = res.spans[0]
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for (a, b), mode in zip(spans, res.modes[0]):
        undone = undo_fim(res.tokens[0][a:b], ft)
        assert len(undone) == 1 and undone[0].mode in (mode, "spm")


# --- regions (fim_region_lines > 0) -----------------------------------------------------------

from mamba_nb.fim import PARTIAL_LINE_SHARE, REGION_DRAWS, SENTINEL, _cut_region, _regions  # noqa: E402

lines_text = st.lists(st.one_of(st.sampled_from(["", "    ", "x = 1", "    return y", "\u00e9\u2603"]), texts.map(
    lambda s: s.replace("\n", ""))), max_size=8).map("\n".join)


@settings(max_examples=300, deadline=None)
@given(text=lines_text, draws=st.lists(st.floats(0, 0.999999), min_size=REGION_DRAWS, max_size=REGION_DRAWS),
       line_hole_rate=st.sampled_from([0.0, 0.5, 1.0]))
def test_cut_region_splits_the_text_and_line_holes_end_at_a_line_end(text, draws, line_hole_rate):
    d = np.array(draws)
    prefix, middle, suffix = _cut_region(text, d, line_hole_rate)
    assert prefix + middle + suffix == text
    if d[2] < line_hole_rate and any(line.strip() for line in text.split("\n")):
        assert middle.split("\n")[0].strip() or d[5] < PARTIAL_LINE_SHARE  # starts on a non-blank line
        assert suffix == "" or suffix.startswith("\n")  # ends at a line's end; its newline starts the suffix
        if d[5] >= PARTIAL_LINE_SHARE:
            assert prefix == "" or prefix.endswith("\n")  # whole lines
        else:
            assert "\n" not in text[len(prefix) - len(prefix.split("\n")[-1]): len(prefix)]  # one line's start


@given(text=lines_text, region_lines=st.integers(1, 5))
def test_regions_are_runs_of_whole_lines(text, region_lines):
    regions = _regions(text, region_lines)
    assert "".join(regions) == text
    assert all(r.count("\n") <= region_lines and r for r in regions)
    assert all(r.endswith("\n") and r.count("\n") == region_lines for r in regions[:-1])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=docs_strategy, region_lines=st.sampled_from([1, 2, 3, 8]), line_hole_rate=st.sampled_from([0.0, 0.5, 1.0]),
       spm_rate=st.sampled_from([0.0, 0.5, 1.0]), fim_rate=st.sampled_from([1.0, 0.5]),
       length=st.integers(1, 160), offset=st.integers(0, 50), seed=st.integers(0, 1000))
def test_regions_undo_gives_back_the_window(tok, ft, docs, region_lines, line_hole_rate, spm_rate, fim_rate,
                                           length, offset, seed):
    stream = stream_of(tok, ft, docs)
    offset = min(offset, max(0, len(stream) - 1))
    window = stream[offset: offset + length]
    res = apply_fim(window, tok, fim_rate=fim_rate, spm_rate=spm_rate, seed=seed, fim_region_lines=region_lines,
                    line_hole_rate=line_hole_rate)
    out, roles = res.tokens[0], res.roles[0]
    assert out.shape == window.shape
    undone = undo_fim(out, ft, fim_region_lines=region_lines)

    def text_of(pieces):
        return "".join(decode(tok, p.tokens) + ("<|endoftext|>" if p.ended else "") for p in pieces)

    original = decode(tok, window)
    if (roles == PAD).any():  # everything fit: the whole window comes back
        assert text_of(undone) == original
    else:  # the window's edge cut the last piece; all before it come back exactly
        assert original.startswith(text_of(undone[:-1]))
    # sentinels sit where the roles say; each middle the edge did not cut closes on <|endoftext|>
    assert np.array_equal(np.isin(out, [ft.prefix, ft.middle, ft.suffix]), roles == SENTINEL)
    ends = np.flatnonzero((roles[:-1] == MIDDLE) & (roles[1:] != MIDDLE))
    assert all(out[e] == ft.eot for e in ends)
    assert res.num_fim == sum(m != "none" for m in res.modes[0])


def test_regions_transform_several_holes_per_document(tok, ft):
    doc = "\n".join(f"value_{i} = compute({i})" for i in range(24)) + "\n"
    window = stream_of(tok, ft, [doc])
    res = apply_fim(window, tok, fim_rate=1.0, spm_rate=1.0, seed=0, fim_region_lines=4, line_hole_rate=1.0)
    assert res.modes[0] == ["spm"] * 6  # 24 lines in regions of 4, each one a FIM sample
    out, roles = res.tokens[0], res.roles[0]
    starts = np.flatnonzero(out == ft.prefix)
    assert len(starts) == 6
    for s in starts:  # each sample: <fim_prefix><fim_suffix> suffix <fim_middle> prefix middle <|endoftext|>
        assert out[s + 1] == ft.suffix
        middle_end = s + np.argmax(out[s:] == ft.eot)
        middle = decode(tok, out[s: middle_end][roles[s: middle_end] == MIDDLE])
        assert middle + "\n" in doc  # a line hole ends where a line ends (it may be empty: a cursor at the end)


def test_regions_raise_fim_rate_transforms_a_superset(tok, ft):
    window = stream_of(tok, ft, SAMPLE_CODE * 3)
    low = apply_fim(window, tok, fim_rate=0.3, seed=1, fim_region_lines=2)
    high = apply_fim(window, tok, fim_rate=0.8, seed=1, fim_region_lines=2)
    # (more samples push more regions past the window's end: compare the regions both hold)
    assert all(h != "none" for lo, h in zip(low.modes[0], high.modes[0]) if lo != "none")
    assert high.num_fim > low.num_fim


@pytest.mark.parametrize("kwargs, match", [
    (dict(fim_region_lines=-1), "fim_region_lines=-1"),
    (dict(fim_region_lines=2.5), "whole number"),
    (dict(fim_region_lines=4, fim_level="token"), "fim_level='char'"),
    (dict(line_hole_rate=1.5), "line_hole_rate=1.5"),
    (dict(region_share=0.5), "--fim-region-lines"),
    (dict(fim_region_lines=4, region_share=2.0), "region_share=2.0"),
])
def test_region_settings_are_checked(tok, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FimTransform(tok, **kwargs)


# --- a mix: some windows in regions, the rest whole-document FIM (region_share) ---------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=docs_strategy, share=st.sampled_from([0.0, 0.3, 0.7]), seed=st.integers(0, 1000),
       length=st.integers(1, 120), epoch=st.integers(0, 3))
def test_mix_rows_are_each_transforms_rows(tok, ft, docs, share, seed, length, epoch):
    stream = stream_of(tok, ft, docs * 4)
    starts = np.arange(0, max(1, len(stream) - length), 7)[:6]
    windows = np.stack([np.resize(stream[s: s + length], length) for s in starts])
    kw = dict(fim_rate=0.9, spm_rate=0.5, seed=seed)
    mixed = FimTransform(tok, fim_region_lines=3, line_hole_rate=0.5, region_share=share, **kw)(windows, starts, epoch)
    regions = FimTransform(tok, fim_region_lines=3, line_hole_rate=0.5, **kw)(windows, starts, epoch)
    documents = FimTransform(tok, **kw)(windows, starts, epoch)
    assert mixed.regions.shape == (len(windows),)
    for b, r in enumerate(mixed.regions):
        # a window's layout is one transform's, drawn apart from its FIM draws: the same sample
        same = regions if r else documents
        assert np.array_equal(mixed.tokens[b], same.tokens[b]) and np.array_equal(mixed.roles[b], same.roles[b])
        assert np.array_equal(mixed.doc_starts[b], same.doc_starts[b])
        assert mixed.modes[b] == same.modes[b] and mixed.spans[b] == same.spans[b]
        back = undo_fim(mixed.tokens[b], ft, fim_region_lines=3 if r else 0)
        assert len(back) >= 1
    assert mixed.num_fim == sum(m != "none" for row in mixed.modes for m in row)
    if share == 0.0:
        assert not mixed.regions.any()


def test_region_share_sets_the_share_of_windows(tok, ft):
    window = stream_of(tok, ft, SAMPLE_CODE)[:40]
    starts = np.arange(400)
    res = FimTransform(tok, fim_region_lines=4, region_share=0.3)(np.tile(window, (400, 1)), starts)
    assert 0.22 < res.regions.mean() < 0.38  # 400 draws: 0.3 within 3.5 standard deviations
    # the draw depends on the window, not its batch: one window alone gets the same layout
    alone = FimTransform(tok, fim_region_lines=4, region_share=0.3)(window[None], starts[17:18])
    assert alone.regions[0] == res.regions[17]
