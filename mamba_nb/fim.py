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
points between tokens instead (the original project's choice, kept to compare).

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

Randomness. Every draw of a window comes from `fim_rng(seed, epoch, start)`, four
numbers per piece drawn whatever `fim_rate` is, so a sample depends only on
(seed, epoch, window start), not on the worker that made it, and raising
`fim_rate` transforms a superset of the pieces.

This module does not read data or choose windows (see `sampler.py`, `windows.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import json

import numpy as np

from mamba_nb.tokenizer import FimTokens

FIM_LEVELS = ("char", "token")

# What each output token is, per position (FimResult.roles). The middle's closing
# <|endoftext|> counts as MIDDLE: it is the token that teaches the model to stop.
PLAIN, SENTINEL, PREFIX, SUFFIX, MIDDLE, PAD = range(6)
ROLE_NAMES = ("plain", "sentinel", "prefix", "suffix", "middle", "pad")


def fim_rng(seed: int, epoch: int, start: int) -> np.random.Generator:
    """The generator of every FIM draw of the window at `start` in `epoch`: same numbers in any worker."""
    return np.random.default_rng(np.random.SeedSequence([2, int(seed), int(epoch), int(start)]))


def check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value} is outside [0, 1]; it is a probability (e.g. --{name.replace('_', '-')} 0.5)")
    return value


def check_level(fim_level: str) -> str:
    if fim_level not in FIM_LEVELS:
        raise ValueError(f"fim_level={fim_level!r} is not one of {FIM_LEVELS}; use --fim-level char (the FIM paper's)")
    return fim_level


@dataclass
class FimResult:
    """A batch of transformed windows.

    tokens: (B, L) int64, the samples; roles: (B, L) int8, PLAIN/SENTINEL/PREFIX/SUFFIX/MIDDLE/PAD
    per token; modes[b][i]: "psm" | "spm" | "none" for piece i of window b; trimmed[b][i]: suffix
    tokens dropped from that piece to fit; spans[b][i]: [start, end) of that piece in `tokens`
    (its closing <|endoftext|> included). `num_drawn` counts pieces drawn for FIM, of which
    `num_fim` were transformed (the rest were too short to fit), out of `num_pieces` non-empty ones.
    """

    tokens: np.ndarray
    roles: np.ndarray
    modes: list[list[str]] = field(default_factory=list)
    trimmed: list[list[int]] = field(default_factory=list)
    spans: list[list[tuple[int, int]]] = field(default_factory=list)
    num_pieces: int = 0
    num_drawn: int = 0
    num_fim: int = 0

    @property
    def fim_fraction(self) -> float:
        """Transformed pieces / non-empty pieces: what `fim_rate` asks for, as measured."""
        return self.num_fim / self.num_pieces if self.num_pieces else 0.0


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
                 seed: int = 0, fim_tokens: Optional[FimTokens] = None):
        self.fim_rate = check_rate("fim_rate", fim_rate)
        self.spm_rate = check_rate("spm_rate", spm_rate)
        self.fim_level = check_level(fim_level)
        self.seed = int(seed)
        self.fim_tokens = fim_tokens or FimTokens.from_tokenizer(tokenizer)
        self._tokenizer = tokenizer
        self._codec = None  # the Rust tokenizer, copied on first use (see _backend)
        self._bytes = None  # id → bytes, for byte-level tokenizers (see _decode)

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
            if (json.loads(codec.to_str()).get("decoder") or {}).get("type") == "ByteLevel":
                # Byte-level BPE: a token is a fixed byte string, so decoding is a table lookup and
                # one bytes.decode, several times faster than `decode_batch` for short pieces.
                to_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
                vocab = codec.get_vocab(with_added_tokens=True)
                table = np.empty(max(vocab.values()) + 1, dtype=object)
                table[:] = b""
                added = {a.content for a in codec.get_added_tokens_decoder().values()}
                for piece, i in vocab.items():
                    table[i] = piece.encode() if piece in added else bytes(to_byte[ch] for ch in piece)
                self._bytes = table
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
        codec = self._backend()
        texts = self._decode(pieces)
        chunks = []
        for text, d in zip(texts, draws):
            # uniform over the len(text) + 1 places a cursor can be, in characters
            a, c = sorted(np.floor(d[2:4] * (len(text) + 1)).astype(int))
            chunks += [text[:a], text[a:c], text[c:]]
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets we do not use.
        encode = getattr(codec, "encode_batch_fast", codec.encode_batch)
        ids = [enc.ids for enc in encode(chunks, add_special_tokens=False)]
        return [(ids[k], ids[k + 1], ids[k + 2]) for k in range(0, len(ids), 3)]

    def _layout(self, key, parts, spm: bool, budget: int):
        """The transformed piece as (segments, roles, mode, trimmed), or None when it cannot fit."""
        prefix, middle, suffix = parts
        t = self.fim_tokens
        need = 3 + len(prefix) + len(middle) + len(suffix) + 1
        trim = max(0, need - budget)
        if trim > len(suffix):
            return None
        suffix = suffix[: len(suffix) - trim]
        if spm:
            segs = [[t.prefix, t.suffix], suffix, [t.middle], prefix, middle, [t.eot]]
            rols = [SENTINEL, SUFFIX, SENTINEL, PREFIX, MIDDLE, MIDDLE]
            return segs, rols, "spm", trim
        segs = [[t.prefix], prefix, [t.suffix], suffix, [t.middle], middle, [t.eot]]
        rols = [SENTINEL, PREFIX, SENTINEL, SUFFIX, SENTINEL, MIDDLE, MIDDLE]
        return segs, rols, "psm", trim


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte ↔ printable-character map, the one byte-level BPE vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def apply_fim(windows, tokenizer, fim_rate: float = 0.9, spm_rate: float = 0.5, fim_level: str = "char",
              seed: int = 0, epoch: int = 0, starts: Optional[Sequence[int]] = None) -> FimResult:
    """Transform a batch of windows (B, L) — or one window (L,) — into FIM samples of the same length.

    `starts` (one per window; default 0..B-1) and `epoch` key each window's draws with `seed`.
    Returns a `FimResult`; for one window its `tokens` and `roles` are (1, L).
    """
    windows = np.asarray(windows)
    if windows.ndim == 1:
        windows = windows[None]
    return FimTransform(tokenizer, fim_rate, spm_rate, fim_level, seed)(windows, starts, epoch)


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


def undo_fim(tokens, fim_tokens: FimTokens) -> list[UndonePiece]:
    """Read a FIM sample back into its document pieces, in document order.

    For a piece that was not trimmed, decoding `tokens` gives the piece's text exactly (token
    level: the same tokens). For a piece whose suffix lost `k` tokens to fit, what comes back is a
    **prefix** of the piece: prefix + middle + the suffix's first tokens. Its decoded text is a
    prefix of the piece's text, except that when the cut fell inside a multi-byte character its
    last character decodes as U+FFFD. Reading stops at the first `<fim_pad>`. A PSM sample with an
    empty prefix is token for token an SPM sample; it is read as SPM, which gives the same text.
    """
    tokens = np.asarray(tokens).ravel()
    t = fim_tokens
    out: list[UndonePiece] = []
    n, i = len(tokens), 0

    def until(j: int, stop: int) -> int:
        while j < n and tokens[j] != stop and tokens[j] != t.pad:
            j += 1
        return j

    while i < n and tokens[i] != t.pad:
        if tokens[i] == t.prefix:
            if i + 1 < n and tokens[i + 1] == t.suffix:  # SPM: suffix, then prefix + middle
                j = until(i + 2, t.middle)
                k = until(j + 1, t.eot)
                suffix, pm = tokens[i + 2 : j], tokens[j + 1 : k]
                out.append(UndonePiece(np.concatenate([pm, suffix]), "spm", k < n and tokens[k] == t.eot))
            else:  # PSM: prefix, suffix, middle
                j = until(i + 1, t.suffix)
                k = until(j + 1, t.middle)
                m = until(k + 1, t.eot)
                prefix, suffix, middle = tokens[i + 1 : j], tokens[j + 1 : k], tokens[k + 1 : m]
                out.append(UndonePiece(np.concatenate([prefix, middle, suffix]), "psm", m < n and tokens[m] == t.eot))
                k = m
            i = k + 1
        else:
            j = until(i, t.eot)
            out.append(UndonePiece(tokens[i:j], "none", j < n and tokens[j] == t.eot))
            i = j + 1
    return out


def make_batch(result: FimResult, starts) -> dict:
    """The training batch of a `FimResult`: the dict every loader of the course yields.

    input_ids (B, L-1) and targets (B, L-1), already shifted, -100 where the target is
    `<fim_pad>`; middle_mask (B, L-1) True where the target is part of a FIM middle (its closing
    `<|endoftext|>` included); starts (B,).
    """
    import torch

    tokens = torch.from_numpy(result.tokens)
    roles = torch.from_numpy(result.roles)
    targets = tokens[:, 1:].clone()
    targets[roles[:, 1:] == PAD] = -100
    return {
        "input_ids": tokens[:, :-1].contiguous(),
        "targets": targets,
        "middle_mask": roles[:, 1:] == MIDDLE,
        "starts": torch.as_tensor(np.asarray(starts), dtype=torch.long),
    }
