"""LoRA fine-tuning of a pretrained Mamba through `peft` (optional: `pip install -e '.[lora]'`).

Which modules. On a GPU with `mamba-ssm`, HF's `MambaMixer` trains through the fused
`mamba_inner_fn`, which reads the *weights* of `x_proj`, `dt_proj`, `out_proj` and `conv1d`
directly (transformers 5.24, `MambaMixer.cuda_kernels_forward`; Mamba-2's fused path reads
`out_proj` and `conv1d` the same way), so an adapter wrapped around those modules changes
nothing there (huggingface/peft #2274, #2556). `in_proj` is called as a module on every path:
it is the default target, and the bypassed modules are refused with that reason.

The FIM tokens a pretrained tokenizer gains (new embedding rows, `model.resize_embeddings`) must
learn: they stay trainable as peft's trainable tokens, saved with the adapter. A checkpoint of a
LoRA run is the adapter (`adapter_config.json` names the base); `model.load_checkpoint` loads
base + adapter and merges them; `merge-lora` writes the merged model as a plain HF directory.

Not here: the loop (`train.py`) or the base model (`model.py`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

DEFAULT_TARGETS = ("in_proj",)
BYPASSED = ("x_proj", "dt_proj", "out_proj", "conv1d")  # read by the fused kernels as weights, not called
ADAPTER_CONFIG = "adapter_config.json"


def _peft():
    try:
        import peft
    except ImportError:
        raise ValueError("LoRA needs the `peft` package: pip install -e '.[lora]' (or pip install peft)") from None
    return peft


def check_targets(targets: Sequence[str]) -> list[str]:
    bypassed = [t for t in targets if t in BYPASSED]
    if bypassed:
        raise ValueError(
            f"lora_targets {bypassed}: the fused CUDA kernels read these modules' weights directly, so an adapter "
            f"there would train on the CPU and do nothing on a GPU with mamba-ssm (huggingface/peft #2274, #2556); "
            f"use --lora-targets {' '.join(DEFAULT_TARGETS)}"
        )
    return list(targets)


def apply_lora(model, rank: int, targets: Sequence[str], token_ids: Sequence[int], seed: int = 0):
    """`model` wrapped with LoRA adapters of `rank` on `targets`, the embedding rows of `token_ids`
    trainable too; everything else frozen. Returns the peft model."""
    import torch

    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=check_targets(targets),
                             trainable_token_indices={"embeddings": sorted(set(int(t) for t in token_ids))})
    with torch.random.fork_rng(devices=[]):  # the adapters' init: seeded, not drawn from the run's stream
        torch.manual_seed(seed)
        return peft.get_peft_model(model, config)


def load_adapter(base, directory, trainable: bool = False):
    """The adapter saved in `directory` put on `base` (a loaded, resized base model)."""
    return _peft().PeftModel.from_pretrained(base, str(directory), is_trainable=trainable)


def is_adapter(directory) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def adapter_base(directory) -> str:
    """The base model an adapter was trained on (a hub id or a directory)."""
    import json

    return json.loads((Path(directory) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


def trainable_counts(model) -> dict[str, int]:
    """Trainable parameters: the adapters' and the trainable token rows', and the model's total."""
    adapters = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    tokens = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens" in n)
    return {"lora": adapters, "token_rows": tokens, "total": sum(p.numel() for p in model.parameters())}
