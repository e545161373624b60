"""A Mamba language model: embeddings, residual blocks of RMSNorm + mixer, final norm, head.

    h = embeddings(ids)                                    (b, L, H)
    for each layer:  h = h + mixer(RMSNorm(h))             the residual kept in float32 if asked
    logits = lm_head(RMSNorm(h))                           (b, L, V), lm_head tied to the embeddings or not

The same stack serves Mamba-1 (`mamba1.MambaMixer`) and Mamba-2 (`mamba2.Mamba2Mixer`), picked by
the config's `model_type`. The config is HF's `MambaConfig` / `Mamba2Config` (plain fields only:
names as in a checkpoint's config.json), and the module tree gives HF's parameter names
(`backbone.embeddings.weight`, `backbone.layers.{i}.norm.weight`, `backbone.layers.{i}.mixer.*`,
`backbone.norm_f.weight`, `lm_head.weight`): `hf_format.py` saves and loads it as HF does.

`forward` reads whole sequences (training, scoring; `gradient_checkpointing` recomputes each block
in the backward pass); `init_weights` is HF's initialisation for a from-scratch model; `step` is one
generated token (`generate.py` holds the prefill, the loop and the state); `save_pretrained` writes
the HF-format directory. What this module does not do: load a checkpoint (`hf_format.py`), sampling
(`generate.py`), the mixers' insides (`mamba1.py`, `mamba2.py`).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mamba_nb.scan import decode_step

from . import scan
from .mamba1 import MambaMixer
from .mamba2 import Mamba2Mixer

MIXERS = {"mamba": MambaMixer, "mamba2": Mamba2Mixer}
ARCHITECTURES = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}  # HF's class of each, in config.json


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (HF's `MambaRMSNorm`)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Block(nn.Module):
    """h + mixer(norm(h)): pre-norm residual block."""

    def __init__(self, config):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mixer = MIXERS[config.model_type](config)
        # the sum of many small updates loses bits in bf16: the public checkpoints keep it in fp32
        self.residual_in_fp32 = config.residual_in_fp32

    def forward(self, h, **mixer_inputs):
        residual = h.float() if self.residual_in_fp32 else h
        return residual + self.mixer(self.norm(h.to(self.norm.weight.dtype)), **mixer_inputs)

    def step(self, h, state):
        fused = decode_step.block_step(self, h, state)  # the whole block in the C kernel, where it runs
        if fused is not None:
            return fused
        residual = h.float() if self.residual_in_fp32 else h
        return residual + self.mixer.step(self.norm(h.to(self.norm.weight.dtype)), state)


class Backbone(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)


class MambaLM(nn.Module):
    """Our Mamba-1 / Mamba-2 language model (module docstring); `config` an HF Mamba(2)Config."""

    # which weight is tied to which (when config.tie_word_embeddings), in the form HF's classes declare it:
    # peft reads it of a model that is not HF's to keep a tied head in step with trained embedding rows
    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}

    def __init__(self, config):
        super().__init__()
        if config.model_type not in MIXERS:
            raise ValueError(f"model_type={config.model_type!r} is not a Mamba; this model is one of {sorted(MIXERS)}")
        self.config = config
        self.backbone = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight  # one matrix: reading and writing tokens
        # True: each block's activations are recomputed in the backward pass instead of kept (training only)
        self.gradient_checkpointing = False
        self.name_or_path = ""  # the directory or hub id it was loaded from (`hf_format.load`), as HF models say
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """A from-scratch model, initialised as HF's classes initialise one (the same distributions, not the
        same random draws): Linear and Embedding weights normal(0, initializer_range), biases 0, norms 1,
        then each mixer's own parameters (`init_weights` of the mixer); with `rescale_prenorm_residual`,
        out_proj / sqrt(layers) (GPT-2's scheme). From torch's global RNG: seed it first."""
        std = getattr(self.config, "initializer_range", 0.1)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
        for block in self.backbone.layers:
            block.mixer.init_weights(self.config)
            if getattr(self.config, "rescale_prenorm_residual", False):
                block.mixer.out_proj.weight /= math.sqrt(self.config.num_hidden_layers)

    # the names HF models answer to, so code written for both (`load.resize_embeddings`) works on ours
    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.embeddings

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self.backbone.embeddings = embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def save_pretrained(self, directory, state_dict: Optional[dict] = None) -> Path:
        """Write the model as an HF-format directory: config.json + model.safetensors, which HF's
        `from_pretrained` and `hf_format.load` read (HF's method name, so a run saves ours and the Llama
        peer alike). `state_dict`: the weights to write instead of the model's own (an FSDP rank's model
        holds shards; rank 0 gathers the whole ones). Returns the directory."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self.config)
        config.architectures = [ARCHITECTURES[config.model_type]]
        config.vocab_size = self.get_input_embeddings().num_embeddings
        config.dtype = str(self.lm_head.weight.dtype).removeprefix("torch.")  # what the weights are stored in
        config.save_pretrained(str(directory))
        weights = self.state_dict() if state_dict is None else state_dict
        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        if config.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)  # the same matrix as the embeddings; safetensors stores no aliases
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (training)."""
        self.gradient_checkpointing = True

    @property
    def scan_path(self) -> str:
        return self.backbone.layers[0].mixer.scan_path

    def set_scan_path(self, path: str) -> "MambaLM":
        """Which scan every mixer runs ("auto", "kernels", "fast", "reference": `scan.py`)."""
        scan.check_path(path)
        for block in self.backbone.layers:
            block.mixer.scan_path = path
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                doc_starts: Optional[torch.Tensor] = None, states=None) -> torch.Tensor:
        """input_ids (b, L) → logits (b, L, V), float32. attention_mask (b, L): 1 for tokens, 0 for padding
        (as HF's); doc_starts (b, L) bool: each document of a row read on its own; states: a
        `generate.DecodeState` to fill with each layer's final conv window and scan state."""
        h = self.hidden_states(input_ids, attention_mask, doc_starts, states)
        return self.lm_head(h.to(self.lm_head.weight.dtype)).float()

    def hidden_states(self, input_ids, attention_mask=None, doc_starts=None, states=None) -> torch.Tensor:
        """The final-normed hidden states (b, L, H): `forward` without the head."""
        self._check_inputs(input_ids, attention_mask, doc_starts)
        h = self.backbone.embeddings(input_ids)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and states is None
        for i, block in enumerate(self.backbone.layers):
            inputs = dict(attention_mask=attention_mask, doc_starts=doc_starts,
                          state=None if states is None else states.layers[i])
            # non-reentrant: the recomputation builds the same graph (our scan's autograd Function included)
            h = checkpoint(block, h, use_reentrant=False, **inputs) if recompute else block(h, **inputs)
        return self.backbone.norm_f(h)

    def step(self, token_ids: torch.Tensor, states) -> torch.Tensor:
        """One token per row: token_ids (b,) → logits (b, V), float32; `states` advanced in place."""
        h = self.backbone.embeddings(token_ids)  # (b, H)
        for block, state in zip(self.backbone.layers, states.layers):
            h = block.step(h, state)
        h = self.backbone.norm_f(h)
        return self.lm_head(h.to(self.lm_head.weight.dtype)).float()

    def _check_inputs(self, input_ids, attention_mask, doc_starts):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; pass (batch, length) token ids")
        for name, t in (("attention_mask", attention_mask), ("doc_starts", doc_starts)):
            if t is not None and tuple(t.shape) != tuple(input_ids.shape):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, input_ids {tuple(input_ids.shape)}: "
                                 "pass one value per token")


def ours(model) -> Optional[MambaLM]:
    """Our `MambaLM` inside `model` (itself, or inside DDP's `.module` or a peft wrapper), else None
    (the Llama peer, an HF model). FSDP leaves the class a subclass of ours: `model` itself."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):  # peft: the adapters sit inside the base model's own modules
        inner = inner.get_base_model()
    return inner if isinstance(inner, MambaLM) else None
