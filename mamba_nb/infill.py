"""Fill holes in code with a trained Mamba: FIM prompts, batched generation, stopping, best-of-n.

`infill(model, tokenizer, prefix, suffix)` returns the middle the model writes between a
prefix and a suffix, using the prompt layouts the model was trained on (see `fim.py`):

    psm:  <fim_prefix> prefix <fim_suffix> suffix <fim_middle> → middle <|endoftext|>
    spm:  <fim_prefix><fim_suffix> suffix <fim_middle> prefix  → middle <|endoftext|>
    lm:   prefix → continuation            (plain left-to-right; the suffix is ignored)

SPM is the default (`config.INFILL_MODE`): the prefix's end sits right before the hole, where
a recurrent model remembers it best.

Each piece is encoded on its own, exactly as the FIM transform encodes them in training.

Batching. `prefix`/`suffix` may be lists: prompts are sorted by length, cut into batches,
left-padded, and run with an attention mask. Mamba has no attention, but its mixers (ours, and
HF's) zero the hidden states of masked positions before the convolution and before the scan, so
a padded position leaves the state at its zero start: a left-padded row computes exactly what it
computes alone (tests check batched greedy == unbatched greedy). Generation is our own
token-by-token loop, so each row can stop on its own stop strings: on our Mamba (`model.lm`) the
prompt goes once through the parallel scan and each token is one O(1) recurrent step
(`model.generate`: `prefill`, `step`, `DecodeState.keep`); an HF model (the Llama peer, the
comparison) runs its own forward with its cache.

Token healing. Byte-level BPE merges a newline with the next line's indentation, so a
prompt that ends in whitespace ends in a token the model rarely saw at that place (for
left-to-right prompts). With `heal`, the prefix's trailing whitespace is taken off the
prompt and the first generated tokens are constrained to spell it out again; the returned
text starts after it. FIM prompts encode the prefix on its own in training too, so healing
is on by default only for `mode="lm"`.

Sentinels are never code. Whatever the prompt, generation never emits a special token other
than the one that ends the middle (`<|endoftext|>`): left to right, a model trained with FIM
regions would otherwise start a FIM sample after the prefix (`<fim_prefix><fim_suffix>...`)
instead of writing the line; in a FIM prompt, a second `<fim_middle>` is no middle either.
`special_ids` says which ids those are, for `suffix_gain` too.

What it does not do: load checkpoints (see `model.load_checkpoint`),
score infills (see `evaluate.py`), or batch prompts from different calls.
"""
from __future__ import annotations

import codecs
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from mamba_nb.checkpoint import run_config_of, trained_context_len
from mamba_nb.config import INFILL_MODE
from mamba_nb.model import generate
from mamba_nb.model.lm import MambaLM
from mamba_nb.tokenizer import EOT, SPECIAL_TOKENS, FimTokens

MODES = ("psm", "spm", "lm")


class PromptTruncated(UserWarning):
    """Some prompts were longer than the trained context and lost their far ends; `count` of them."""

    def __init__(self, message: str, count: int):
        super().__init__(message)
        self.count = count


@dataclass
class InfillResult:
    """One filled hole: the middle text, and whether the model ended it with <|endoftext|>
    (rather than being cut by `max_new_tokens` or a stop string)."""

    text: str
    clean: bool


# --- prompts ----------------------------------------------------------------------


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


HOLES_PER_CALL = 32  # holes per `infill` call in `infill_holes` (its progress bar's unit)
WINDOW_MARGIN_TOKENS = 8  # tokens of slack at a text window's cut (its first tokens may split differently)
WINDOW_CHARS_PER_TOKEN = 4  # the first window's guess; code averages about 3.3 characters a token


def _encode_near(tokenizer, texts: list[str], budget: int, at_end: bool) -> list[list[int]]:
    """Tokens of each text, or of enough of its end (`at_end`, a prefix) or start (a suffix)
    that cutting them to `budget` tokens gives what cutting the whole text's tokens would.

    Why: a hole in a long file would otherwise tokenize the whole file for a few hundred tokens.
    A window is accepted once it holds `budget` + WINDOW_MARGIN_TOKENS tokens: only the first
    pre-token after the cut can split differently from the whole text, and the margin is dropped
    by the cut to `budget` anyway. A window that falls short grows fourfold and is encoded again."""
    need = budget + WINDOW_MARGIN_TOKENS
    out: list[Optional[list[int]]] = [None] * len(texts)
    chars = need * WINDOW_CHARS_PER_TOKEN
    todo = list(range(len(texts)))
    while todo:
        pieces = [texts[i][max(0, len(texts[i]) - chars):] if at_end else texts[i][:chars] for i in todo]
        encoded = _encode(tokenizer, pieces)
        still = []
        for i, piece, ids in zip(todo, pieces, encoded):
            if len(ids) >= need or len(piece) == len(texts[i]):
                out[i] = ids
            else:
                still.append(i)
        todo, chars = still, chars * 4
    return out


def _split_heal(prefix: str) -> tuple[str, str]:
    """(prefix without its trailing whitespace, that whitespace)."""
    stripped = prefix.rstrip()
    return stripped, prefix[len(stripped):]


def build_prompt(prefix_ids: list[int], suffix_ids: list[int], mode: str, fim: Optional[FimTokens]) -> list[int]:
    """The token ids of one prompt (see the module docstring for the layouts)."""
    if mode == "psm":
        return [fim.prefix, *prefix_ids, fim.suffix, *suffix_ids, fim.middle]
    if mode == "spm":
        return [fim.prefix, fim.suffix, *suffix_ids, fim.middle, *prefix_ids]
    if mode == "lm":
        return list(prefix_ids)
    raise ValueError(f"mode={mode!r} is not a prompt layout; use one of {MODES}")


def _truncate(prefix_ids: list[int], suffix_ids: list[int], budget: int) -> tuple[list[int], list[int], int]:
    """Fit `budget` tokens: cut the prefix's far (left) end first, but not below half the budget
    (the suffix's start matters too), then the suffix's far (right) end."""
    over = len(prefix_ids) + len(suffix_ids) - budget
    if over <= 0:
        return prefix_ids, suffix_ids, 0
    keep_prefix = max(len(prefix_ids) - over, min(len(prefix_ids), budget // 2))
    keep_suffix = budget - keep_prefix
    return prefix_ids[len(prefix_ids) - keep_prefix:], suffix_ids[:keep_suffix], over


PROMPT_OVERHEAD = {"psm": 3, "spm": 3, "lm": 0}  # sentinel tokens each layout adds


def split_near(prefix: str, suffix: str, near_lines: tuple[int, int]) -> tuple[str, str, str]:
    """(far prefix, near prefix, near suffix): the hole's neighbourhood as a region-trained model saw it.

    near prefix = the prefix's last `near_lines[0]` whole lines and the start of the hole's line;
    near suffix = the rest of the hole's line and the next `near_lines[1]` lines. The far prefix
    goes before the FIM sample as plain text; the suffix beyond the near part is left out.
    """
    n_prefix, n_suffix = near_lines
    lines = prefix.split("\n")  # the last item is the start of the hole's line ("" after a newline)
    near = "\n".join(lines[max(0, len(lines) - 1 - n_prefix):])
    cut = -1
    for _ in range(n_suffix + 1):
        cut = suffix.find("\n", cut + 1)
        if cut < 0:
            break
    near_suffix = suffix if cut < 0 else suffix[: cut + 1]
    return prefix[: len(prefix) - len(near)], near, near_suffix


def encode_prompts(tokenizer, prefixes: Sequence[str], suffixes: Sequence[str], mode: str, fim: Optional[FimTokens],
                   context_len: Optional[int], reserve: Union[int, Sequence[int]] = 0,
                   near_lines: Optional[tuple[int, int]] = None) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """The token ids of each hole's prompt, cut to fit `context_len`, and the holes that were cut.

    Each prompt's text tokens get `context_len` - the layout's sentinels - `reserve` (per hole,
    or one number for all: room kept for tokens that follow the prompt, such as a known middle).
    Returns (prompts, [(hole index, characters cut), ...]). With `context_len` None nothing is cut.
    An empty left-to-right prompt becomes `[<|endoftext|>]` (a document boundary).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a prompt layout; use one of {MODES}")
    if mode == "lm":
        suffixes = [""] * len(prefixes)
    elif near_lines is not None:
        return _encode_near_prompts(tokenizer, prefixes, suffixes, mode, fim, context_len, reserve, near_lines)
    reserves = [reserve] * len(prefixes) if isinstance(reserve, int) else list(reserve)
    budgets = [None] * len(prefixes)
    if context_len is not None:
        budgets = [max(context_len - PROMPT_OVERHEAD[mode] - r, 1) for r in reserves]
        widest = max(budgets, default=1)
        prefix_ids = _encode_near(tokenizer, list(prefixes), widest, at_end=True)
        suffix_ids = _encode_near(tokenizer, list(suffixes), widest, at_end=False)
    else:
        prefix_ids, suffix_ids = _encode(tokenizer, list(prefixes)), _encode(tokenizer, list(suffixes))
    eot = tokenizer.get_vocab().get(EOT, tokenizer.eos_token_id)
    prompts, truncated = [], []
    for i, (p, s, budget) in enumerate(zip(prefix_ids, suffix_ids, budgets)):
        if budget is not None:
            p, s, over = _truncate(p, s, budget)
            if over:  # (windows hold more than `budget` tokens whenever they cut, so this catches them)
                kept = len(tokenizer.decode(p)) + len(tokenizer.decode(s))
                truncated.append((i, len(prefixes[i]) + len(suffixes[i]) - kept))
        prompt = build_prompt(p, s, mode, fim)
        prompts.append(prompt if prompt else [eot])
    return prompts, truncated


def _encode_near_prompts(tokenizer, prefixes, suffixes, mode, fim, context_len, reserve, near_lines):
    """`encode_prompts` for a region-trained model: far prefix (plain), then the FIM sample of the
    hole's neighbourhood (`split_near`). The far prefix is cut first, from its far end."""
    parts = [split_near(p, s, near_lines) for p, s in zip(prefixes, suffixes)]
    near_p = _encode(tokenizer, [p[1] for p in parts])
    near_s = _encode(tokenizer, [p[2] for p in parts])
    reserves = [reserve] * len(prefixes) if isinstance(reserve, int) else list(reserve)
    room = [None if context_len is None else max(context_len - PROMPT_OVERHEAD[mode] - r - len(a) - len(b), 0)
            for r, a, b in zip(reserves, near_p, near_s)]
    widest = max((r for r in room if r is not None), default=None)
    far = (_encode_near(tokenizer, [p[0] for p in parts], widest, at_end=True) if widest is not None
           else _encode(tokenizer, [p[0] for p in parts]))
    prompts, truncated = [], []
    for i, (f, a, b, r) in enumerate(zip(far, near_p, near_s, room)):
        if r is not None and len(f) > r:
            cut_chars = len(parts[i][0]) - len(tokenizer.decode(f[len(f) - r:])) if r else len(parts[i][0])
            f = f[len(f) - r:] if r else []
            truncated.append((i, cut_chars))
        if r == 0:  # the neighbourhood alone is over budget: cut it as a whole prompt is cut
            budget = max(context_len - PROMPT_OVERHEAD[mode] - reserves[i], 1)
            a, b, over = _truncate(a, b, budget)
            if over:
                truncated.append((i, len(parts[i][1]) + len(parts[i][2]) - len(tokenizer.decode(a + b))))
        prompts.append(list(f) + build_prompt(a, b, mode, fim))
    return prompts, truncated


def near_lines_for(region_lines: int) -> Optional[tuple[int, int]]:
    """The hole's neighbourhood a FIM prompt holds for a model trained with `fim_region_lines`
    regions: (whole prefix lines, suffix lines) filling one region around a one-line hole, the
    prefix's share rounded down. None for the FIM paper's whole-document samples."""
    if not region_lines:
        return None
    n_prefix = (region_lines - 1) // 2
    return n_prefix, region_lines - 1 - n_prefix


def trained_near_lines(checkpoint: Union[str, Path, None]) -> Optional[tuple[int, int]]:
    """`near_lines_for` the checkpoint's `fim_region_lines` (None when unknown or 0)."""
    return near_lines_for(int(run_config_of(checkpoint).get("fim_region_lines") or 0))


FROM_CHECKPOINT = "checkpoint"  # `near_lines` default: the layout the model's run config says it was trained with


def model_source(model) -> str:
    """Where the model was loaded from (its checkpoint directory, or "" for a model built here)."""
    return getattr(model, "name_or_path", None) or ""  # ours and HF's models both say it under this public name


def resolve_near_lines(model, near_lines) -> Optional[tuple[int, int]]:
    """`near_lines` as given (None: the FIM paper's plain layout), or, for `FROM_CHECKPOINT`, read
    from the model's checkpoint."""
    return trained_near_lines(model_source(model)) if near_lines == FROM_CHECKPOINT else near_lines


# --- constrained first tokens (healing) -------------------------------------------------


class _VocabStrings:
    """The text of each token id, to constrain the first tokens to spell the healed text."""

    def __init__(self, tokenizer, vocab_limit: int, special: set[int]):
        self.strings = [tokenizer.decode([i]) if i not in special else None for i in range(vocab_limit)]
        self._cache: dict[str, torch.Tensor] = {}

    def allowed(self, remaining: str) -> torch.Tensor:
        """Bool (V,): tokens that continue `remaining` (are a prefix of it, or start with it)."""
        if remaining not in self._cache:
            ok = [s is not None and s != "" and (remaining.startswith(s) or s.startswith(remaining))
                  for s in self.strings]
            self._cache[remaining] = torch.tensor(ok, dtype=torch.bool)
        return self._cache[remaining]


# --- sampling ------------------------------------------------------------------------


def _first_stop(text: str, stop: Sequence[str]) -> Optional[int]:
    hits = [text.find(s) for s in stop if s]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None


@dataclass
class _Row:
    prompt: list[int]
    heal: str  # text the first tokens must spell out (the healed whitespace)
    source: int  # which hole this row fills
    generated: list[int]
    remaining: str = ""  # the part of `heal` not yet spelled
    done: bool = False
    clean: bool = False
    text: str = ""
    logprob: float = 0.0


@dataclass
class Generation:
    """How the tokens of a middle are chosen and when a row stops: what every batch shares."""

    max_new_tokens: int
    temperature: float  # 0: greedy
    top_p: float
    stop: Sequence[str]  # strings that end a middle
    eot: int  # the token that ends a middle cleanly
    banned: torch.Tensor  # ids never emitted (the other special tokens)
    pad_id: int
    vocab_limit: int  # ids the tokenizer knows (the embedding may have padding rows)
    vocab_strings: Optional[_VocabStrings]  # for healing; None when no row heals
    gen: Optional[torch.Generator]  # sampling's random stream


def _is_ours(model) -> bool:
    return isinstance(model, MambaLM)


def _start(model, ids: torch.Tensor, mask: torch.Tensor):
    """(logits (R, V) after each row's prompt, the recurrent state to continue from).

    Our Mamba: the prompt through the parallel scan, then a fixed-size state per layer
    (`model/generate.py`). An HF model (the Llama peer, or an HF Mamba passed in by hand): its
    forward with its own cache."""
    if _is_ours(model):
        return generate.prefill(model, ids, mask)
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], _cache_of(out)


def _advance(model, state, nxt: torch.Tensor):
    """Feed one token per row: nxt (R,) → (the next logits (R, V), the state after it). Ours
    advances its state in place; HF's forward hands back its cache."""
    if _is_ours(model):
        return generate.step(model, state, nxt), state
    out = model(input_ids=nxt[:, None], cache=state, use_cache=True)
    return out.logits[:, -1], _cache_of(out)


def _cache_of(out):
    return out.cache if hasattr(out, "cache") else out.cache_params


def _keep(model, state, idx: torch.Tensor) -> None:
    """Keep only rows `idx` of the state (finished rows leave the batch)."""
    if _is_ours(model):
        state.keep(idx)
    else:
        state.reorder_cache(idx)


@torch.no_grad()
def _generate_batch(model, tokenizer, rows: list[_Row], g: Generation) -> None:
    device = next(model.parameters()).device
    width = max(len(r.prompt) for r in rows)
    # Left padding: every row's last prompt token sits in the last column, so one step
    # continues all rows. The mask keeps padded positions out of the state (module docstring).
    ids = torch.full((len(rows), width), g.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r.prompt):] = torch.tensor(r.prompt, dtype=torch.long)
        mask[i, width - len(r.prompt):] = 1
        r.remaining = r.heal
    logits, state = _start(model, ids.to(device), mask.to(device))
    live = list(range(len(rows)))  # rows[live[k]] is row k of `logits` and of the state
    # (R, V): padding rows of the embedding excluded; a copy, as it is edited in place below
    logits = logits[:, :g.vocab_limit].float().clone()
    for step in range(g.max_new_tokens):
        logits[:, g.banned] = -math.inf
        for k, i in enumerate(live):
            r = rows[i]
            if r.remaining and g.vocab_strings is not None:
                ok = g.vocab_strings.allowed(r.remaining).to(logits.device)
                if ok.any():
                    logits[k].masked_fill_(~ok, -math.inf)
                else:  # no token spells it (not a byte-level vocabulary): stop healing this row
                    r.heal, r.remaining = r.heal[: len(r.heal) - len(r.remaining)], ""
        nxt = generate.pick_next(logits, g.temperature, g.top_p, g.gen)  # greedy at 0, else nucleus
        logp = torch.log_softmax(logits, dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
        for k, i in enumerate(live):
            r = rows[i]
            t = int(nxt[k])
            r.logprob += float(logp[k])
            if t == g.eot:
                r.done, r.clean = True, True
                continue
            r.generated.append(t)
            text = tokenizer.decode(r.generated)
            if r.remaining:
                # still spelling the healed whitespace: consume what this token covered
                covered = text[len(r.heal) - len(r.remaining):]
                r.remaining = r.remaining[len(covered):] if r.remaining.startswith(covered) else ""
                if r.remaining:
                    continue
            middle = text[len(r.heal):]
            cut = _first_stop(middle, g.stop)
            if cut is not None:
                r.text, r.done = middle[:cut], True
            else:
                r.text = middle
        keep = [k for k, i in enumerate(live) if not rows[i].done]
        if not keep or step == g.max_new_tokens - 1:
            break
        if len(keep) < len(live):
            # Drop finished rows from the batch and from the recurrent state: each row's
            # state is its own (no attention across rows), so the others are unaffected.
            idx = torch.tensor(keep, dtype=torch.long)
            _keep(model, state, idx.to(device))
            nxt, live = nxt[idx], [live[k] for k in keep]
        logits, state = _advance(model, state, nxt.to(device))
        logits = logits[:, :g.vocab_limit].float().clone()


def vocab_limit(model, tokenizer) -> int:
    """Ids the model may emit: those the tokenizer knows (the embedding may be padded)."""
    return min(len(tokenizer), model.get_output_embeddings().weight.shape[0])


def special_ids(tokenizer) -> set[int]:
    """The id of every special token: those the tokenizer registers as special, and the course's
    five (`tokenizer.SPECIAL_TOKENS`) whether registered or not. Why both: the course's own BPE
    registers only `<|endoftext|>` and `<fim_pad>` with transformers, so `all_special_tokens`
    alone leaves `<fim_prefix>`, `<fim_suffix>` and `<fim_middle>` free to be generated as text."""
    vocab = tokenizer.get_vocab()
    return {vocab[t] for t in (*tokenizer.all_special_tokens, *SPECIAL_TOKENS) if t in vocab}


def _as_holes(prefix, suffix) -> tuple[bool, list[str], list[str]]:
    """(one hole?, prefixes, suffixes), checked: text only, lists of equal length."""
    single = isinstance(prefix, (str, bytes, bytearray))  # (bytes: one hole, refused below)
    prefixes = [prefix] if single else list(prefix)
    if isinstance(suffix, (str, bytes, bytearray)):
        suffixes = [suffix] * len(prefixes)
    else:
        suffixes = list(suffix)
        if single or len(suffixes) != len(prefixes):
            raise ValueError(f"got {len(prefixes)} prefix(es) and {len(suffixes)} suffixes; pass lists of equal length")
    for name, texts in (("prefix", prefixes), ("suffix", suffixes)):
        for k, text in enumerate(texts):
            where = name if single else f"{name}[{k}]"
            if not isinstance(text, str):
                hint = " (decode it first: data.decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else ""
                raise ValueError(f"{where} is {type(text).__name__}, not text{hint}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(f"{where} holds {text[err.start]!r} at character {err.start}, a lone surrogate that "
                                 "is not text (it cannot be encoded); remove it") from None
    return single, prefixes, suffixes


def _check_settings(mode: str, max_new_tokens, temperature, top_p, best_of, batch_size) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a prompt layout; use one of {MODES}")
    for name, value in (("best_of", best_of), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a whole number >= 1")
    generate.check_sampling(max_new_tokens, temperature, top_p)
    if best_of > 1 and temperature == 0:
        raise ValueError(f"best_of={best_of} with temperature=0 gives {best_of} identical greedy samples; "
                         "set temperature > 0 (e.g. 0.8) or best_of=1")


def _special_ids(model, tokenizer, mode: str) -> tuple[Optional[FimTokens], int, set[int], int]:
    """(FIM tokens or None for "lm", the ending token, every special id, the ids the model may emit)."""
    vocab = tokenizer.get_vocab()
    if mode == "lm":
        fim, eot = None, vocab.get(EOT, tokenizer.eos_token_id)
    else:
        try:
            fim = FimTokens.from_tokenizer(tokenizer)
        except ValueError as e:
            raise ValueError(f"mode={mode!r} needs FIM tokens and this checkpoint has none: {e}. "
                             "Use mode='lm' for left-to-right completion, or fine-tune with FIM first "
                             "(`python -m mamba_nb train --pretrained ...`).") from None
        eot = fim.eot
    limit = vocab_limit(model, tokenizer)
    special = special_ids(tokenizer) | ({eot} if eot is not None else set())  # every sentinel, in every mode
    if fim is not None:
        too_big = [t for t in (fim.prefix, fim.suffix, fim.middle) if t >= limit]
        if too_big:
            raise ValueError(f"the model's embedding has {limit} rows but the FIM token ids {too_big} are beyond "
                             "it: this checkpoint was not trained with FIM tokens; resize it with "
                             "mamba_nb.model.resize_embeddings and fine-tune with FIM first")
    return fim, eot, special, limit


def _best(rows: list[_Row], n_holes: int) -> list[InfillResult]:
    """Per hole, its best sample: one that ended with <|endoftext|> first, then the highest mean
    log-probability."""
    results = []
    for i in range(n_holes):
        cands = [r for r in rows if r.source == i]
        best = max(cands, key=lambda r: (r.clean, r.logprob / max(len(r.generated) + r.clean, 1)))
        results.append(InfillResult(best.text, best.clean))
    return results


def infill(
    model,
    tokenizer,
    prefix: Union[str, Sequence[str]],
    suffix: Union[str, Sequence[str]] = "",
    *,
    mode: str = INFILL_MODE,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    best_of: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    context_len: Optional[int] = None,
    near_lines: Union[tuple[int, int], None, str] = FROM_CHECKPOINT,
    heal: Optional[bool] = None,
) -> Union[InfillResult, list[InfillResult]]:
    """Fill the hole(s) between `prefix` and `suffix`; one `InfillResult`, or a list for list input.

    `temperature=0` is greedy; otherwise nucleus sampling with `top_p`, seeded by `seed`.
    `stop`: strings that end the middle (e.g. ["\\n"] for one line; the middle is cut before it).
    `best_of=n`: n samples per hole; those that ended with <|endoftext|> are preferred, then
    the highest mean log-probability. `context_len`: the trained context (default: read from the
    checkpoint's run config); a longer prompt loses its prefix's far end (then, past half the
    context, the suffix's far end), with a warning.
    `near_lines`: for a model trained with FIM regions, the (prefix lines, suffix lines) around the
    hole that go inside the FIM sample, the rest of the prefix before it; None: the whole prefix and
    suffix in the sample (default: read from the checkpoint's run config, see `near_lines_for`).
    `heal`: token healing of the prefix's trailing whitespace (default: only for mode="lm").
    """
    single, prefixes, suffixes = _as_holes(prefix, suffix)
    _check_settings(mode, max_new_tokens, temperature, top_p, best_of, batch_size)
    stop = [stop] if isinstance(stop, str) else list(stop)
    fim, eot, special, limit = _special_ids(model, tokenizer, mode)
    context_len = trained_context_len(model_source(model)) if context_len is None else context_len
    near_lines = resolve_near_lines(model, near_lines)
    heals = [""] * len(prefixes)
    if heal if heal is not None else mode == "lm":
        split = [_split_heal(p) for p in prefixes]
        prefixes, heals = [s[0] for s in split], [s[1] for s in split]

    prompts, truncated = encode_prompts(tokenizer, prefixes, suffixes, mode, fim, context_len, near_lines=near_lines)
    rows = [_Row(prompt, heals[i], i, []) for i, prompt in enumerate(prompts) for _ in range(best_of)]
    if truncated:
        warnings.warn(PromptTruncated(
            f"{len(truncated)} prompt(s) were longer than the trained context_len={context_len} tokens; "
            f"the far end of the prefix (then of the suffix) was cut (hole {truncated[0][0]}: {truncated[0][1]:,} characters cut). "
            "Shorten the prefix, or pass a larger context_len= to keep more (the model was not trained on longer).",
            len(truncated)), stacklevel=2)
    g = Generation(max_new_tokens, float(temperature), float(top_p), stop, eot,
                   # a middle is text ended by EOT, in every mode (ids past the embedding cannot come out anyway)
                   torch.tensor(sorted(t for t in special - {eot} if t < limit), dtype=torch.long),
                   fim.pad if fim is not None else (eot if eot is not None else 0), limit,
                   _VocabStrings(tokenizer, limit, special) if any(heals) else None,
                   torch.Generator().manual_seed(seed) if temperature > 0 else None)
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(rows)), key=lambda k: len(rows[k].prompt))  # similar lengths: less padding
        for b in range(0, len(order), batch_size):
            _generate_batch(model, tokenizer, [rows[k] for k in order[b: b + batch_size]], g)
    finally:
        model.train(was_training)
    results = _best(rows, len(prefixes))
    return results[0] if single else results


def infill_holes(model, tokenizer, holes: Sequence, mode: str, context_len: Optional[int], desc: str,
                 progress: bool, max_new_tokens: int, stop: Sequence[str] = ("\n",),
                 truncated: Optional[list] = None, **sampling) -> list:
    """`infill` every hole, `HOLES_PER_CALL` at a time, with a progress bar. Prompts longer than the
    trained context are cut (see `infill`); how many is added to `truncated[0]` when given.
    `sampling`: temperature, top_p, seed."""
    from tqdm.auto import tqdm

    results = []
    bar = tqdm(total=len(holes), desc=desc, disable=not progress, leave=False)
    for b in range(0, len(holes), HOLES_PER_CALL):
        chunk = holes[b: b + HOLES_PER_CALL]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptTruncated)
            results += infill(model, tokenizer, [t.prefix for t in chunk], [t.suffix for t in chunk], mode=mode,
                              max_new_tokens=max_new_tokens, stop=list(stop), context_len=context_len, **sampling)
        for w in caught:
            if isinstance(w.message, PromptTruncated):
                if truncated is not None:
                    truncated[0] += w.message.count
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        bar.update(len(chunk))
    bar.close()
    return results


# --- loading and the command line -----------------------------------------------------------


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{path!r} is a directory; pass a text file (or '-' for stdin)")
    if not p.is_file():
        raise FileNotFoundError(f"{path!r} does not exist; pass a text file (or '-' for stdin)")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path!r} is not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r}); "
                         "convert it to UTF-8") from None


def infill_cli(cfg, prefix_file: str, suffix_file: str) -> InfillResult:
    """`python -m mamba_nb infill`: print the middle for the prefix and suffix files."""
    from mamba_nb.checkpoint import resolve_checkpoint_dir
    from mamba_nb.model import load_checkpoint

    prefix, suffix = _read(prefix_file), _read(suffix_file)
    # `--stop '\n'` arrives as backslash + n from most shells: read escapes as Python would
    stop = [codecs.decode(s, "unicode_escape") if "\\" in s else s for s in cfg.stop]
    model, tokenizer = load_checkpoint(cfg.checkpoint)
    result = infill(model, tokenizer, prefix, suffix, mode=cfg.mode, max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature, top_p=cfg.top_p, stop=stop, best_of=cfg.best_of,
                    seed=cfg.seed, context_len=trained_context_len(resolve_checkpoint_dir(cfg.checkpoint)))
    sys.stdout.write(result.text)
    if not result.text.endswith("\n"):
        sys.stdout.write("\n")
    if not result.clean:
        print("(the model did not end the middle with <|endoftext|>: it was cut by max_new_tokens or a stop string)",
              file=sys.stderr)
    return result
