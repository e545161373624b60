"""Fill-in-the-Middle: turn a window of tokens into FIM training samples, and back.

As the FIM paper recommends (Bavarian et al. 2022), at **context level**: a window
(`context_len + 1` tokens, possibly several documents joined by `<|endoftext|>`)
is split on `<|endoftext|>`, and each document piece is transformed on its own,
with probability `fim_rate`:

    PSM  <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle <|endoftext|>
    SPM  <fim_prefix><fim_suffix> suffix <fim_middle> prefix middle <|endoftext|>

PSM or SPM is drawn per piece (`spm_rate` is the SPM share). At **character level**
(`fim_level="char"`, the default) the two split points are uniform over the
piece's *decoded text* and the three pieces are re-encoded separately, so a hole
can start or end inside what was one token; `fim_level="token"` draws the split
points between tokens instead (kept to compare: a token-level hole never starts inside a token).

Every transformed middle ends with `<|endoftext|>`, also when the piece was cut
by the window's edge (the document went on): otherwise the model never sees a
middle end and never learns to stop.

Length. The output has exactly the window's length. A transformed piece needs
3 sentinel tokens, maybe an `<|endoftext|>` the piece did not have, and
re-encoding may add a token at each split point. Each piece gets the tokens it
had in the window plus whatever the pieces before it left unused; a piece that
comes out longer drops tokens **from the end of its suffix** (the text farthest
from the hole in PSM), so every piece keeps its structure: sentinels, prefix,
middle and closing `<|endoftext|>` intact, the next document where it was. If
even an empty suffix does not make it fit (a piece of a few tokens), the piece
stays as it was, untransformed: the measured FIM fraction is then a little below
`fim_rate` (`FimResult.fim_fraction` says by how much). Tokens left unused at the
end are `<fim_pad>`, whose targets the loss ignores. So `undo_fim` gives back
each piece's text exactly, except a piece whose suffix was cut, of which it gives
back a prefix (see `undo_fim`).

Document starts. `FimResult.doc_starts` marks, per output position, the first token of each
document of the window (and position 0): where the model starts afresh when a run trains with
`reset_at_documents` (`doc_reset.py`). They are the window's own boundaries, the positions after
each `<|endoftext|>` that separated two files in the token array, followed through the layout;
not the `<|endoftext|>` that closes every FIM middle (in whole-document FIM that token also closes
the document; in regions it is followed by the document's own, and only that one counts).

Regions. With `fim_region_lines = R`, each piece is cut into runs of R lines and each run is its
own FIM sample (with probability `fim_rate`), so a hole's prefix and suffix lie within R - 1
lines of it: what a small model can read. `line_hole_rate` shapes that share of the middles like
the holes people leave (a line, a block, a line's end). The middle's `<|endoftext|>` closes the
hole; the document's own follows the piece's last region. With `region_share` < 1 only that
share of the windows is laid out in regions and the rest get whole-document FIM (a mix: near
holes teach reading the suffix, whole documents keep the far prefix next to the middle);
`FimResult.regions` says which windows were.

Randomness. Every draw of a window comes from `fim_rng(seed, epoch, start)`, four
numbers per piece drawn whatever `fim_rate` is, so a sample depends only on
(seed, epoch, window start), not on the worker that made it, and raising
`fim_rate` transforms a superset of the pieces. Whether a window is laid out in regions is drawn
from its own generator (`region_rng`), so changing `region_share` leaves every other draw alone.

This module does not read data or choose windows (see `sampler.py`, `windows.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from mamba_nb.config import WindowConfig
from mamba_nb.rng import keyed_rng
from mamba_nb.tokenizer import FimTokens, encode_texts, token_bytes

# What each output token is, per position (FimResult.roles). The middle's closing
# <|endoftext|> counts as MIDDLE: it is the token that teaches the model to stop.
PLAIN, SENTINEL, PREFIX, SUFFIX, MIDDLE, PAD = range(6)
ROLE_NAMES = ("plain", "sentinel", "prefix", "suffix", "middle", "pad")


IGNORE_INDEX = -100  # a target the loss skips: <fim_pad> here; tokens outside middles in the FIM-middle loss
FIM_STREAM = 2  # the first key of every FIM draw (the sampler's streams are 0 and 1 after the seed)
REGION_STREAM = 3  # the first key of the regions-or-whole-document draw of a window (region_share)


def fim_rng(seed: int, epoch: int, start: int) -> np.random.Generator:
    """The generator of every FIM draw of the window at `start` in `epoch`: same numbers in any worker."""
    return keyed_rng(FIM_STREAM, seed, epoch, start)


def region_rng(seed: int, epoch: int, start: int) -> np.random.Generator:
    """The generator of whether the window at `start` in `epoch` is laid out in regions (region_share)."""
    return keyed_rng(REGION_STREAM, seed, epoch, start)


@dataclass
class FimResult:
    """A batch of transformed windows.

    tokens: (B, L) int64, the samples; roles: (B, L) int8, PLAIN/SENTINEL/PREFIX/SUFFIX/MIDDLE/PAD
    per token; doc_starts: (B, L) bool, True at position 0 and at the first token of each document
    (module docstring, "Document starts"; `document_starts` for untransformed windows);
    modes[b][i]: "psm" | "spm" | "none" for piece i of window b; trimmed[b][i]: suffix
    tokens dropped from that piece to fit; spans[b][i]: [start, end) of that piece in `tokens`
    (its closing <|endoftext|> included). `num_drawn` counts pieces drawn for FIM, of which
    `num_fim` were transformed (the rest were too short to fit), out of `num_pieces` non-empty ones.
    regions: (B,) bool, True for the windows laid out in regions (read them back with
    `undo_fim(..., fim_region_lines)`, the others with 0).
    """

    tokens: np.ndarray
    roles: np.ndarray
    doc_starts: Optional[np.ndarray] = None
    modes: list[list[str]] = field(default_factory=list)
    trimmed: list[list[int]] = field(default_factory=list)
    spans: list[list[tuple[int, int]]] = field(default_factory=list)
    num_pieces: int = 0
    num_drawn: int = 0
    num_fim: int = 0
    regions: Optional[np.ndarray] = None

    @property
    def fim_fraction(self) -> float:
        """Transformed pieces / non-empty pieces: what `fim_rate` asks for, as measured."""
        return self.num_fim / self.num_pieces if self.num_pieces else 0.0


def document_starts(tokens: np.ndarray, eot: int) -> np.ndarray:
    """`FimResult.doc_starts` of untransformed windows (B, L): position 0 and every position after an `eot`."""
    starts = np.zeros(tokens.shape, dtype=bool)
    starts[:, 0] = True
    starts[:, 1:] = tokens[:, :-1] == eot
    return starts


def _piece_starts(spans: list[list[tuple[int, int]]], shape: tuple[int, int]) -> np.ndarray:
    """Whole-document FIM's `doc_starts`: each piece is one document's part of the window, so each
    piece's first output position starts a document."""
    starts = np.zeros(shape, dtype=bool)
    for b, row in enumerate(spans):
        for first, _ in row:
            if first < shape[1]:
                starts[b, first] = True
    return starts


def _pieces(window: np.ndarray, eot: int) -> list[tuple[int, int, bool]]:
    """(start, end, followed_by_eot) of each document piece of a window; a final empty piece is left out."""
    eots = np.flatnonzero(window == eot)
    begins = np.concatenate([[0], eots + 1])
    ends = np.concatenate([eots, [len(window)]])
    out = [(int(b), int(e), i < len(eots)) for i, (b, e) in enumerate(zip(begins, ends))]
    if out and out[-1][0] == len(window):
        out.pop()
    return out


class FimTransform:
    """`apply_fim` with its settings and tokenizer prepared once (what the data loaders hold)."""

    def __init__(self, tokenizer, fim_rate: float = 0.9, spm_rate: float = 0.5, fim_level: str = "char",
                 seed: int = 0, fim_tokens: Optional[FimTokens] = None, fim_region_lines: int = 0,
                 line_hole_rate: float = 0.0, region_share: float = 1.0):
        # the settings are checked where every setting is: in the config dataclass
        WindowConfig(fim_rate=fim_rate, spm_rate=spm_rate, fim_level=fim_level, seed=seed,
                     fim_region_lines=fim_region_lines, line_hole_rate=line_hole_rate, region_share=region_share)
        self.fim_rate, self.spm_rate, self.fim_level = float(fim_rate), float(spm_rate), fim_level
        self.fim_region_lines, self.line_hole_rate, self.seed = int(fim_region_lines), float(line_hole_rate), int(seed)
        self.region_share = float(region_share)
        self.fim_tokens = fim_tokens or FimTokens.from_tokenizer(tokenizer)
        self._tokenizer = tokenizer
        self._codec = None  # the Rust tokenizer, copied on first use (see _backend)
        self._bytes = None  # id → bytes, for byte-level tokenizers (see _decode)

    @classmethod
    def from_config(cls, tokenizer, cfg, fim_tokens: Optional[FimTokens] = None) -> "FimTransform":
        """The transform a `WindowConfig` describes."""
        return cls(tokenizer, cfg.fim_rate, cfg.spm_rate, cfg.fim_level, cfg.seed, fim_tokens,
                   fim_region_lines=cfg.fim_region_lines, line_hole_rate=cfg.line_hole_rate,
                   region_share=cfg.region_share)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_codec"] = state["_bytes"] = None
        return state

    def _backend(self):
        if self._codec is None:
            from tokenizers import Tokenizer

            tok = self._tokenizer
            backend = getattr(tok, "backend_tokenizer", tok)
            # A copy, so the flag below does not change the caller's tokenizer: text that spells
            # "<fim_prefix>" must encode as ordinary tokens, never as the sentinel itself.
            codec = Tokenizer.from_str(backend.to_str())
            codec.encode_special_tokens = True
            self._codec = codec
            # Byte-level BPE: a token is a fixed byte string, so decoding is a table lookup and
            # one bytes.decode, several times faster than `decode_batch` for short pieces.
            self._bytes = token_bytes(codec)
        return self._codec

    def _decode(self, pieces: list[np.ndarray]) -> list[str]:
        codec = self._backend()
        if self._bytes is None:
            return codec.decode_batch([p.tolist() for p in pieces], skip_special_tokens=False)
        # errors="replace": a piece cut inside a multi-byte character decodes as U+FFFD, as the
        # Rust decoder does.
        return [b"".join(self._bytes[p]).decode("utf-8", errors="replace") for p in pieces]

    def __call__(self, windows: np.ndarray, starts: Optional[Sequence[int]] = None, epoch: int = 0) -> FimResult:
        windows = np.asarray(windows)
        if windows.ndim != 2:
            raise ValueError(f"windows must be (B, L) token ids, got shape {windows.shape}")
        B, L = windows.shape
        starts = np.arange(B) if starts is None else np.asarray(starts)
        if not self.fim_region_lines:
            return self._call_documents(windows, starts, epoch)
        if self.region_share >= 1:
            return self._call_regions(windows, starts, epoch)
        in_regions = np.array([region_rng(self.seed, epoch, s).random() < self.region_share for s in starts], dtype=bool)
        return _merge(in_regions, self._call_regions(windows[in_regions], starts[in_regions], epoch),
                      self._call_documents(windows[~in_regions], starts[~in_regions], epoch))

    def _call_documents(self, windows: np.ndarray, starts: np.ndarray, epoch: int) -> FimResult:
        """FIM per whole document piece (the paper's; module docstring)."""
        B, L = windows.shape
        t = self.fim_tokens
        others = np.array([t.prefix, t.middle, t.suffix, t.pad])

        # 1. Split each window on <|endoftext|> and draw, per piece: FIM?, SPM?, two split points.
        plan = []  # per window: list of (start, end, has_eot, draws or None)
        todo = []  # (b, i) of pieces to transform
        num_pieces = 0
        for b in range(B):
            pieces = _pieces(windows[b], t.eot)
            draws = fim_rng(self.seed, epoch, starts[b]).random((len(pieces), 4))
            # A window that already holds FIM tokens (never from our datasets) is left alone.
            clean = not np.isin(windows[b], others).any()
            row = []
            for i, (s, e, has_eot) in enumerate(pieces):
                num_pieces += e > s
                fim = clean and e > s and draws[i, 0] < self.fim_rate
                row.append((s, e, has_eot, draws[i] if fim else None))
                if fim:
                    todo.append((b, i))
            plan.append(row)

        # 2. Cut the chosen pieces into prefix / middle / suffix (all pieces of the batch at once).
        parts = self._split([windows[b, plan[b][i][0] : plan[b][i][1]] for b, i in todo],
                            [plan[b][i][3] for b, i in todo])
        cut = dict(zip(todo, parts))

        # 3. Lay each window out again within its length budget.
        out = np.full((B, L), t.pad, dtype=np.int64)
        roles = np.full((B, L), PAD, dtype=np.int8)
        result = FimResult(out, roles, num_pieces=num_pieces, num_drawn=len(todo))
        for b in range(B):
            toks, rols, modes, trims, spans = [], [], [], [], []
            at = 0  # output tokens laid so far
            slack = 0  # tokens left unused by the pieces before this one
            for i, (s, e, has_eot, d) in enumerate(plan[b]):
                footprint = e - s + has_eot
                budget = footprint + slack
                laid = None
                if d is not None:
                    laid = self._layout((b, i), cut[(b, i)], d[1] < self.spm_rate, budget)
                if laid is None:  # not drawn, or too short to fit once transformed
                    seg = windows[b, s : e + has_eot]
                    laid = ([seg], [PLAIN], "none", 0)
                else:
                    result.num_fim += 1
                segs, seg_roles, mode, trim = laid
                n = 0
                for seg, r in zip(segs, seg_roles):
                    toks.append(np.asarray(seg, dtype=np.int64))
                    rols.append(np.full(len(seg), r, dtype=np.int8))
                    n += len(seg)
                slack = budget - n
                spans.append((at, at + n))
                at += n
                modes.append(mode)
                trims.append(trim)
            if toks:
                row = np.concatenate(toks)
                out[b, : len(row)] = row
                roles[b, : len(row)] = np.concatenate(rols)
            result.modes.append(modes)
            result.trimmed.append(trims)
            result.spans.append(spans)
        result.doc_starts = _piece_starts(result.spans, (B, L))
        result.regions = np.zeros(B, dtype=bool)
        return result

    def _split(self, pieces: list[np.ndarray], draws: list[np.ndarray]) -> list[tuple[list, list, list]]:
        """(prefix, middle, suffix) token lists of each piece, split where its draws say."""
        if not pieces:
            return []
        if self.fim_level == "token":
            out = []
            for p, d in zip(pieces, draws):
                a, c = sorted(np.floor(d[2:4] * (len(p) + 1)).astype(int))
                out.append((p[:a], p[a:c], p[c:]))
            return out
        texts = self._decode(pieces)
        chunks = []
        for text, d in zip(texts, draws):
            # uniform over the len(text) + 1 places a cursor can be, in characters
            a, c = sorted(np.floor(d[2:4] * (len(text) + 1)).astype(int))
            chunks += [text[:a], text[a:c], text[c:]]
        ids = self._encode(chunks)
        return [(ids[k], ids[k + 1], ids[k + 2]) for k in range(0, len(ids), 3)]

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return encode_texts(self._backend(), texts)

    def _layout(self, key, parts, spm: bool, budget: int):
        """The transformed piece as (segments, roles, mode, trimmed), or None when it cannot fit."""
        prefix, middle, suffix = parts
        need = 3 + len(prefix) + len(middle) + len(suffix) + 1
        trim = max(0, need - budget)
        if trim > len(suffix):
            return None
        suffix = suffix[: len(suffix) - trim]
        return (*self._segments(prefix, middle, suffix, spm), "spm" if spm else "psm", trim)

    def _segments(self, prefix, middle, suffix, spm: bool) -> tuple[list, list]:
        """(segments, roles) of one FIM sample in SPM or PSM order, its middle closed by <|endoftext|>."""
        t = self.fim_tokens
        if spm:
            return ([[t.prefix, t.suffix], suffix, [t.middle], prefix, middle, [t.eot]],
                    [SENTINEL, SUFFIX, SENTINEL, PREFIX, MIDDLE, MIDDLE])
        return ([[t.prefix], prefix, [t.suffix], suffix, [t.middle], middle, [t.eot]],
                [SENTINEL, PREFIX, SENTINEL, SUFFIX, SENTINEL, MIDDLE, MIDDLE])

    # --- regions: several short FIM samples per document piece ----------------------------

    def _call_regions(self, windows: np.ndarray, starts: np.ndarray, epoch: int) -> FimResult:
        """FIM per region of `fim_region_lines` lines (module docstring, "Regions")."""
        B, L = windows.shape
        t = self.fim_tokens
        others = np.array([t.prefix, t.middle, t.suffix, t.pad])
        pieces = [_pieces(windows[b], t.eot) for b in range(B)]
        keys = [(b, i) for b in range(B) for i, (s, e, _) in enumerate(pieces[b]) if e > s]
        texts = dict(zip(keys, self._decode([windows[b, pieces[b][i][0]: pieces[b][i][1]] for b, i in keys])))

        # 1. Per window: each piece's regions, in order, each kept plain or cut (six draws per region).
        chunks: list[str] = []  # every text to encode, in order
        items: list[list[tuple[str, int]]] = []  # per window: (mode | "none" | "eot", first chunk)
        result = FimResult(np.full((B, L), t.pad, dtype=np.int64), np.full((B, L), PAD, dtype=np.int8),
                           np.zeros((B, L), dtype=bool))
        result.doc_starts[:, 0] = True
        for b in range(B):
            rng = fim_rng(self.seed, epoch, starts[b])
            clean = not np.isin(windows[b], others).any()  # as above: FIM tokens in the data stay alone
            row = []
            for i, (_, _, has_eot) in enumerate(pieces[b]):
                for region in _regions(texts.get((b, i), ""), self.fim_region_lines):
                    d = rng.random(REGION_DRAWS)
                    if clean and d[0] < self.fim_rate:
                        row.append(("spm" if d[1] < self.spm_rate else "psm", len(chunks)))
                        chunks += _cut_region(region, d, self.line_hole_rate)
                    else:
                        row.append(("none", len(chunks)))
                        chunks.append(region)
                if has_eot:
                    row.append(("eot", -1))
            items.append(row)
        ids = self._encode(chunks)

        # 2. Lay each window out in order; what runs past its length is cut, like any window edge.
        for b in range(B):
            toks, rols, at = [], [], 0
            modes, spans = [], []
            for mode, k in items[b]:
                if mode == "eot":
                    segs, seg_roles = [[t.eot]], [PLAIN]
                elif mode == "none":
                    segs, seg_roles = [ids[k]], [PLAIN]
                else:
                    segs, seg_roles = self._segments(ids[k], ids[k + 1], ids[k + 2], mode == "spm")
                n = 0
                for seg, r in zip(segs, seg_roles):
                    toks.append(np.asarray(seg, dtype=np.int64))
                    rols.append(np.full(len(seg), r, dtype=np.int8))
                    n += len(seg)
                if mode == "eot" and at + n < L:  # the document's own <|endoftext|>: the next one starts after it
                    result.doc_starts[b, at + n] = True
                if mode != "eot" and at < L:  # regions pushed past the window's end are not counted
                    modes.append(mode)
                    spans.append((at, min(at + n, L)))
                    result.num_pieces += 1
                    result.num_fim += mode != "none"
                at += n
            if toks:
                row_tokens, row_roles = np.concatenate(toks)[:L], np.concatenate(rols)[:L]
                result.tokens[b, : len(row_tokens)] = row_tokens
                result.roles[b, : len(row_roles)] = row_roles
            result.modes.append(modes)
            result.spans.append(spans)
            result.trimmed.append([0] * len(modes))
        result.num_drawn = result.num_fim
        result.regions = np.ones(B, dtype=bool)
        return result


def _merge(in_regions: np.ndarray, regions: FimResult, documents: FimResult) -> FimResult:
    """One batch from the windows laid out in regions and the rest, back in the windows' order."""
    B, L = len(in_regions), regions.tokens.shape[1]
    out = FimResult(np.empty((B, L), dtype=np.int64), np.empty((B, L), dtype=np.int8), np.empty((B, L), dtype=bool),
                    num_pieces=regions.num_pieces + documents.num_pieces,
                    num_drawn=regions.num_drawn + documents.num_drawn, num_fim=regions.num_fim + documents.num_fim,
                    regions=in_regions.copy())
    for name in ("tokens", "roles", "doc_starts"):
        getattr(out, name)[in_regions] = getattr(regions, name)
        getattr(out, name)[~in_regions] = getattr(documents, name)
    rows = {True: iter(zip(regions.modes, regions.trimmed, regions.spans)),
            False: iter(zip(documents.modes, documents.trimmed, documents.spans))}
    out.modes, out.trimmed, out.spans = (list(c) for c in zip(*(next(rows[r]) for r in in_regions.tolist())))
    return out


# --- regions -------------------------------------------------------------------------------

REGION_DRAWS = 6  # numbers drawn per region, whatever fim_rate is: FIM?, SPM?, line hole?, and three for the cut
PARTIAL_LINE_SHARE = 0.25  # of line holes, this share starts at a random character of the first line


def _lines(text: str) -> list[str]:
    """`text` cut after each newline (every line keeps its "\n"; the last may have none)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _regions(text: str, region_lines: int) -> list[str]:
    """`text` as consecutive runs of `region_lines` lines (the last may be shorter)."""
    lines = _lines(text)
    return ["".join(lines[k: k + region_lines]) for k in range(0, len(lines), region_lines)]


def _cut_region(text: str, d: np.ndarray, line_hole_rate: float) -> list[str]:
    """[prefix, middle, suffix] of a region, from its draws `d` (REGION_DRAWS numbers in [0, 1)).

    With probability `line_hole_rate` a hole shaped like the ones people leave: whole lines (one
    half the time, two a quarter, ...) starting at a non-blank line, without the last line's
    newline (which starts the suffix, as in `evaluate.mask_line`); PARTIAL_LINE_SHARE of them
    start at a random character of their first line (a cursor inside a line). Otherwise the FIM
    paper's span: two split points uniform over the len + 1 cursor positions.
    """
    lines = _lines(text)
    nonblank = [k for k, line in enumerate(lines) if line.strip()]
    if d[2] < line_hole_rate and nonblank:
        offsets = np.concatenate([[0], np.cumsum([len(line) for line in lines])])
        first = nonblank[int(d[3] * len(nonblank))]
        last = min(first + 1 + int(-np.log2(1.0 - d[4])), len(lines))  # exclusive
        a = int(offsets[first])
        c = int(offsets[last]) - lines[last - 1].endswith("\n")
        if d[5] < PARTIAL_LINE_SHARE:
            first_line = lines[first].rstrip("\n")
            a += int(d[5] / PARTIAL_LINE_SHARE * (len(first_line) + 1))
            a = min(a, c)
        return [text[:a], text[a:c], text[c:]]
    a, c = sorted(np.floor(d[3:5] * (len(text) + 1)).astype(int))
    return [text[:a], text[a:c], text[c:]]


def apply_fim(windows, tokenizer, fim_rate: float = 0.9, spm_rate: float = 0.5, fim_level: str = "char",
              seed: int = 0, epoch: int = 0, starts: Optional[Sequence[int]] = None, fim_region_lines: int = 0,
              line_hole_rate: float = 0.0, region_share: float = 1.0) -> FimResult:
    """Transform a batch of windows (B, L) — or one window (L,) — into FIM samples of the same length.

    `starts` (one per window; default 0..B-1) and `epoch` key each window's draws with `seed`.
    Returns a `FimResult`; for one window its `tokens` and `roles` are (1, L).
    """
    windows = np.asarray(windows)
    if windows.ndim == 1:
        windows = windows[None]
    return FimTransform(tokenizer, fim_rate, spm_rate, fim_level, seed, fim_region_lines=fim_region_lines,
                        line_hole_rate=line_hole_rate, region_share=region_share)(windows, starts, epoch)


@dataclass
class UndonePiece:
    """One document piece of a FIM sample put back in document order.

    tokens: the piece's tokens as prefix + middle + suffix (at character level these decode to
    the piece's text; at token level they are the piece's tokens); mode: "psm" | "spm" | "none";
    ended: the piece closed with <|endoftext|> (always, for a transformed one).
    """

    tokens: np.ndarray
    mode: str
    ended: bool


def undo_fim(tokens, fim_tokens: FimTokens, fim_region_lines: int = 0) -> list[UndonePiece]:
    """Read a FIM sample back into its document pieces, in document order.

    For a piece that was not trimmed, decoding `tokens` gives the piece's text exactly (token
    level: the same tokens). For a piece whose suffix lost `k` tokens to fit, what comes back is a
    **prefix** of the piece: prefix + middle + the suffix's first tokens. Its decoded text is a
    prefix of the piece's text, except that when the cut fell inside a multi-byte character its
    last character decodes as U+FFFD. Reading stops at the first `<fim_pad>`. A PSM sample with an
    empty prefix is token for token an SPM sample; it is read as SPM, which gives the same text.

    With `fim_region_lines` > 0 (samples made with regions), a piece is one region, or a run of
    plain regions read as one: their texts joined in order give back the window's text, and
    `ended` marks the piece the document's own <|endoftext|> follows. The window's last piece
    may have been cut by the window's edge, like any window.
    """
    tokens = np.asarray(tokens).ravel()
    t = fim_tokens
    out: list[UndonePiece] = []
    n, i = len(tokens), 0

    def until(j: int, *stops: int) -> int:
        while j < n and tokens[j] not in stops and tokens[j] != t.pad:
            j += 1
        return j

    def at(j: int, token: int) -> bool:
        return j < n and tokens[j] == token

    while i < n and tokens[i] != t.pad:
        if tokens[i] == t.prefix:
            if at(i + 1, t.suffix):  # SPM: suffix, then prefix + middle
                j = until(i + 2, t.middle)
                k = until(j + 1, t.eot)
                suffix, pm = tokens[i + 2 : j], tokens[j + 1 : k]
                piece = UndonePiece(np.concatenate([pm, suffix]), "spm", at(k, t.eot))
            else:  # PSM: prefix, suffix, middle
                j = until(i + 1, t.suffix)
                k = until(j + 1, t.middle)
                m = until(k + 1, t.eot)
                prefix, suffix, middle = tokens[i + 1 : j], tokens[j + 1 : k], tokens[k + 1 : m]
                piece = UndonePiece(np.concatenate([prefix, middle, suffix]), "psm", at(m, t.eot))
                k = m
            i = k + 1
            if fim_region_lines:  # the middle's <|endoftext|> closes the hole; the document's own follows
                piece.ended = at(i, t.eot)
                i += piece.ended
        else:
            # a plain run: up to the document's end (or, with regions, the next FIM sample)
            j = until(i, t.eot, t.prefix) if fim_region_lines else until(i, t.eot)
            piece = UndonePiece(tokens[i:j], "none", at(j, t.eot))
            i = j + piece.ended if fim_region_lines else j + 1
        out.append(piece)
    return out


def make_batch(result: FimResult, starts) -> dict:
    """The training batch of a `FimResult`: the dict every loader of the course yields.

    input_ids (B, L-1) and targets (B, L-1), already shifted, IGNORE_INDEX (-100) where the target is
    `<fim_pad>`; middle_mask (B, L-1) True where the target is part of a FIM middle (its closing
    `<|endoftext|>` included); doc_starts (B, L-1) True where an input token starts a document
    (`FimResult.doc_starts`: the window's documents, not the FIM middles' closing tokens); starts (B,).
    """
    import torch

    if result.doc_starts is None:
        raise ValueError("the FimResult has no doc_starts; FimTransform sets them, and untransformed windows get "
                         "theirs from fim.document_starts(tokens, eot): FimResult(tokens, roles, document_starts(...))")
    tokens = torch.from_numpy(result.tokens)
    roles = torch.from_numpy(result.roles)
    targets = tokens[:, 1:].clone()
    targets[roles[:, 1:] == PAD] = IGNORE_INDEX
    return {
        "input_ids": tokens[:, :-1].contiguous(),
        "targets": targets,
        "middle_mask": roles[:, 1:] == MIDDLE,
        "doc_starts": torch.from_numpy(np.ascontiguousarray(result.doc_starts[:, :-1])),
        "starts": torch.as_tensor(np.asarray(starts), dtype=torch.long),
    }
