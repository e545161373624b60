"""Generation with our Mamba: the prompt through the parallel scan, then one O(1) step per token.

A Mamba's whole memory of the past is, per layer, a conv window (b, channels, K) and a scan state
(b, D, N) (Mamba-2: (b, heads, head_dim, N)): a fixed size, however long the prompt. So:

- `prefill(model, input_ids, attention_mask)` runs the prompt once through the parallel scan and
  returns the last position's logits (b, V) and a `DecodeState` holding every layer's window and
  state (allocated once, here).
- `step(model, state, token_ids)` feeds one token per row and returns the next logits (b, V): a
  few matrix-vector products per layer and the state updated in place. No cache object, nothing
  grows with the length.
- `generate(...)` loops the two with greedy or nucleus sampling (`pick_next`, the same rule as
  `infill.py`) and stops each row at an end token; rows that are done emit `pad_token_id`, and the
  loop ends when every row is done (like HF's `generate`).

Prompts of different lengths: pad on the left and pass `attention_mask` (0 on the padding), as
with HF; then every row's last prompt token sits in the last column. `DecodeState.keep(rows)`
drops finished rows (each row's state is its own). The steps run under `torch.inference_mode`; the
prefill under `torch.no_grad` (an inference tensor must not reach the fast scan's buffer pool, which
a later training step would write into).

What this module does not do: prompts, stop strings, healing or best-of-n (`infill.py`), or
anything for the HF model classes (they have their own `generate`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from mamba_nb.threads import one_thread


@dataclass
class LayerState:
    conv: torch.Tensor  # (b, channels, K): the last K inputs of the layer's convolution
    ssm: torch.Tensor  # (b, D, N) or (b, heads, head_dim, N): the scan state, float32
    weights: Optional[tuple] = None  # the block's weights for the C step, looked up once (`scan.decode_step`)


@dataclass
class DecodeState:
    layers: list[LayerState]

    @classmethod
    def empty(cls, model, batch: int) -> "DecodeState":
        """Zeroed states for `batch` rows, on the model's device (conv in its dtype, scan state in float32)."""
        weight = model.lm_head.weight
        layers = []
        for block in model.backbone.layers:
            conv_shape, ssm_shape = block.mixer.state_shapes(batch)
            layers.append(LayerState(torch.zeros(conv_shape, device=weight.device, dtype=weight.dtype),
                                     torch.zeros(ssm_shape, device=weight.device, dtype=torch.float32)))
        return cls(layers)

    @property
    def batch(self) -> int:
        return self.layers[0].conv.shape[0]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (long indices), in that order: finished rows leave the batch."""
        for layer in self.layers:
            layer.conv, layer.ssm = layer.conv.index_select(0, rows), layer.ssm.index_select(0, rows)


@torch.no_grad()  # not inference_mode: the fast scan's reused buffers (scan/workspace.py) must stay normal tensors
def prefill(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None):
    """`(logits, state)`: the next-token logits after each row's prompt (b, V) and the `DecodeState`."""
    state = DecodeState.empty(model, input_ids.shape[0])
    h = model.hidden_states(input_ids, attention_mask, states=state)[:, -1]  # only the last position's logits
    return model.lm_head(h.to(model.lm_head.weight.dtype)).float(), state


# Up to this many rows a decoding step runs on one CPU thread (`decode_threads`).
ONE_THREAD_ROWS = 8


def decode_threads(rows: int, device: torch.device):
    """One torch thread within, for a step of at most ONE_THREAD_ROWS rows on CPU (`mamba_nb.threads`:
    a step is a few dozen matrix-vector products of a few hundred rows)."""
    return one_thread(device, when=rows <= ONE_THREAD_ROWS)


@torch.inference_mode()
def step(model, state: DecodeState, token_ids: torch.Tensor) -> torch.Tensor:
    """Feed token_ids (b,) → the next logits (b, V); `state` advanced in place."""
    with decode_threads(token_ids.shape[0], token_ids.device):
        return model.step(token_ids, state)


def pick_next(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Next token per row: logits (b, V) → ids (b,). Greedy at temperature 0, else nucleus sampling."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the smallest set reaching top_p, at least the top token
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_sampling(max_new_tokens, temperature, top_p) -> None:
    """One clear error for a sampling setting out of range (`generate`, and infill's own settings)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a whole number >= 1")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0 is greedy)")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r} must be in (0, 1]")


def generate(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
             max_new_tokens: int = 32, eos_token_id: Union[int, Sequence[int], None] = None,
             pad_token_id: Optional[int] = None, temperature: float = 0.0, top_p: float = 1.0,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The new tokens (b, n), n <= max_new_tokens: after a row's end token, `pad_token_id` (default:
    the first end token). input_ids (b, L), left-padded with `attention_mask` when lengths differ."""
    check_sampling(max_new_tokens, temperature, top_p)
    ends = torch.tensor([] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int)
                        else list(eos_token_id), dtype=torch.long, device=input_ids.device)
    pad = pad_token_id if pad_token_id is not None else (int(ends[0]) if len(ends) else 0)
    logits, state = prefill(model, input_ids, attention_mask)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    out = []
    with torch.inference_mode(), decode_threads(input_ids.shape[0], input_ids.device):
        for i in range(max_new_tokens):
            nxt = pick_next(logits, temperature, top_p, generator).masked_fill(done, pad)
            out.append(nxt)
            done = done | torch.isin(nxt, ends)
            if i == max_new_tokens - 1 or bool(done.all()):
                break
            logits = model.step(nxt, state)
    return torch.stack(out, dim=1)
