"""Nothing of `transformers` is replaced or wrapped at run time: HF's modeling modules, and every class
in them, hold the same objects after building, training (LoRA included) and infilling as before."""
from __future__ import annotations

import importlib
import sys

import pytest

MODULES = ("transformers.models.mamba.modeling_mamba", "transformers.models.mamba2.modeling_mamba2",
           "transformers.models.llama.modeling_llama")


def snapshot() -> dict:
    """name -> id of every attribute of each modeling module and of each class defined there."""
    seen = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            seen[f"{name}.{attr}"] = id(value)
            if isinstance(value, type) and value.__module__ == name:
                for member, inner in vars(value).items():
                    seen[f"{name}.{attr}.{member}"] = id(inner)
    return seen


def test_hf_s_modeling_modules_are_unchanged_by_a_run(tiny_dataset, tmp_path):
    pytest.importorskip("peft")
    from mamba_nb.config import TrainConfig
    from mamba_nb.infill import infill
    from mamba_nb.model import load_checkpoint
    from mamba_nb.train import train

    before = snapshot()
    common = dict(dataset=str(tiny_dataset.path), preset="micro", context_len=32, batch_size=2, max_steps=2,
                  time_budget_s=None, warmup_steps=1, eval_every=2, eval_windows=2, gain_holes=0, save_every=2,
                  num_workers=0)
    train(TrainConfig(**common, out_dir=str(tmp_path / "run"), reset_at_documents=True, gradient_checkpointing=True))
    train(TrainConfig(**common, out_dir=str(tmp_path / "lora"), pretrained=str(tmp_path / "run" / "latest"),
                      lora_rank=2))
    model, tokenizer = load_checkpoint(tmp_path / "lora")
    infill(model, tokenizer, "def add(a, b):\n    return ", "\n", max_new_tokens=4)
    after = snapshot()
    changed = sorted(k for k in before if after.get(k) != before[k]) + sorted(set(after) - set(before))
    assert not changed, f"replaced in transformers: {changed[:5]}"
    assert all(name in sys.modules for name in MODULES)
