"""The model package: our own Mamba-1 / Mamba-2, in Hugging Face's format, and how runs build and load it.

- `load.py`: the presets (and the Llama peer, HF's class), `build_model`, `load_model`,
  `load_checkpoint`, `model_from_config`, the FIM-token resize and the scan path's name.
  Re-exported here, so `from mamba_nb.model import build_model` works.
- The model: `mamba1.py` (the Mamba-1 mixer in the paper's order), `mamba2.py` (Mamba-2, SSD),
  `lm.py` (the residual stack and head both share), `scan.py` (the one place a scan path is chosen:
  CUDA kernels, our fast CPU scan, or the readable reference), `kernels.py` (probing `mamba_ssm` /
  `causal_conv1d`), `hf_format.py` (`save` / `load` of HF-format directories), `generate.py` (the
  prompt through the parallel scan, then one O(1) recurrent step per token).

Not here: the training loop (`train.py`), checkpoint files of a run (`checkpoint.py`), the scan
math itself (`mamba_nb/scan/`).
"""
from .load import (ARCHS, PEER_ARCHS, PRESETS, SCAN_NAMES, VOCAB_MULTIPLE, build_model, enable_checkpointing,
                   load_checkpoint, load_model, model_config, model_from_config, new_model, padded_vocab_size,
                   resize_embeddings, scan_name)
from .load import _ARCH_DEFAULTS  # noqa: F401  (benchmarks/bench_memory.py reads it)

__all__ = [
    "ARCHS", "PEER_ARCHS", "PRESETS", "SCAN_NAMES", "VOCAB_MULTIPLE", "build_model", "enable_checkpointing",
    "load_checkpoint", "load_model", "model_config", "model_from_config", "new_model", "padded_vocab_size",
    "resize_embeddings", "scan_name",
]
