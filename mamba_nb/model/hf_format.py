"""Our Mamba in the Hugging Face format: `load` any HF Mamba (writing one: `MambaLM.save_pretrained`).

The format is a directory with `config.json` (HF's field names, `model_type` "mamba" or "mamba2",
`architectures`) and the weights under HF's parameter names (`lm.py` has the same module tree, so
the names match one to one). `MambaLM.save_pretrained` writes `model.safetensors` (one file, via
`safetensors`; a tied `lm_head.weight` is left out, as HF does); `MambaForCausalLM.from_pretrained`
reads it.

`load` reads a local directory or, given a hub id such as `state-spaces/mamba-130m-hf`, downloads
the config and weights through `huggingface_hub.snapshot_download` (needs network: the GPU route).
It accepts what the public checkpoints hold:

- weights as `model.safetensors`, sharded safetensors (an index), or `pytorch_model.bin`;
- the state-spaces key `backbone.embedding.weight` (HF renames it to `embeddings`), keys saved
  from a bare backbone (no `backbone.` prefix);
- an HF config.json (`MambaConfig` / `Mamba2Config`: `residual_in_fp32`, `tie_word_embeddings`,
  `use_bias`, `use_conv_bias`, `time_step_rank`, `layer_norm_epsilon`, `n_groups`, ...), or the
  state-spaces one (`d_model`, `n_layer`, `ssm_cfg`, `rms_norm`, `pad_vocab_size_multiple`);
- an embedding padded past the config's vocabulary to a multiple of 8 (50,277 → 50,280): the
  model takes the checkpoint's row count.

Anything else (missing or unknown weights, another architecture, LayerNorm instead of RMSNorm)
is one error naming it. What this module does not do: tokenizers, LoRA adapters or the run
directory of training (`checkpoint.py`); it never imports transformers' modeling code.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Union

import torch

from .lm import MIXERS, MambaLM

WEIGHT_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json"]


def load(path: Union[str, Path], device=None, dtype: torch.dtype = torch.float32, scan_path: str = "auto") -> MambaLM:
    """Our `MambaLM` with the weights of the HF-format Mamba at `path` (a directory or a hub id)."""
    directory = local_directory(path)
    config = read_config(directory / "config.json")
    weights = normalized(read_weights(directory))
    rows = weights["backbone.embeddings.weight"].shape[0] if "backbone.embeddings.weight" in weights else None
    config.vocab_size = _vocab_rows(config, rows, directory)
    model = from_weights(config, weights, directory)
    model.name_or_path = str(path)  # where it came from, as HF models say (infill reads the run's settings there)
    return model.to(device=device, dtype=dtype).set_scan_path(scan_path)


def from_weights(config, weights: dict[str, torch.Tensor], where) -> MambaLM:
    """Our `MambaLM` for an HF `config` holding `weights` (HF's parameter names: a checkpoint's
    tensors, or an HF model's `state_dict()`); `where` names their source in errors."""
    with torch.device("meta"):
        model = MambaLM(config)  # shapes only: every value comes from the weights
    weights = dict(weights)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    _check_keys(model, weights, Path(str(where)))
    model.load_state_dict(weights, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.backbone.embeddings.weight  # `assign` replaced the tied Parameter
    return model


def local_directory(path: Union[str, Path]) -> Path:
    """`path` itself when it is a directory, else a hub id's snapshot (config and weights only)."""
    local = Path(path)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ValueError(f"{str(local)!r} has no config.json; pass a directory saved by save_pretrained "
                             "(ours or HF's), or a hub id such as state-spaces/mamba-130m-hf")
        return local
    from huggingface_hub import snapshot_download

    try:
        got = Path(snapshot_download(repo_id=str(path), allow_patterns=WEIGHT_PATTERNS))
        if not list(got.glob("*.safetensors")):
            got = Path(snapshot_download(repo_id=str(path), allow_patterns=["config.json", "pytorch_model*.bin*"]))
    except Exception as err:
        raise ValueError(f"{str(path)!r} is not a local directory and could not be downloaded from the hub "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); pass a local "
                         "directory saved with save_pretrained or a hub id such as state-spaces/mamba-130m-hf "
                         "(needs network)") from None
    return got


def read_config(path: Path):
    """HF's `MambaConfig` / `Mamba2Config` from a config.json (HF's, or state-spaces' converted)."""
    from transformers import Mamba2Config, MambaConfig

    fields = json.loads(path.read_text())
    state_spaces = "model_type" not in fields and "d_model" in fields
    if state_spaces:
        fields = _from_state_spaces(fields, path)
    kind = fields.get("model_type")
    if kind not in MIXERS:
        raise ValueError(f"{str(path)!r} describes a {kind!r} model; this loads Mamba models only: {sorted(MIXERS)}")
    cls = MambaConfig if kind == "mamba" else Mamba2Config
    if state_spaces:
        return cls.from_dict({k: v for k, v in fields.items() if k != "model_type"})
    return cls.from_json_file(str(path))  # HF's own reader: it decodes what it encodes (an infinite time_step_limit)


def _from_state_spaces(fields: dict, where) -> dict:
    """The state-spaces `MambaLMHeadModel` config (d_model, n_layer, ssm_cfg, ...) in HF's names."""
    ssm = dict(fields.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    if not fields.get("rms_norm", True):
        raise ValueError(f"{str(where)!r}: rms_norm=false (LayerNorm blocks) is not supported; every public "
                         "Mamba checkpoint uses RMSNorm")
    if fields.get("d_intermediate", 0) or fields.get("attn_layer_idx"):
        raise ValueError(f"{str(where)!r} has MLP or attention layers (d_intermediate, attn_layer_idx): a hybrid, "
                         "not a pure Mamba; this loads pure Mamba-1 / Mamba-2 checkpoints only")
    multiple = fields.get("pad_vocab_size_multiple", 8)
    hf = dict(hidden_size=fields["d_model"], num_hidden_layers=fields["n_layer"],
              vocab_size=math.ceil(fields["vocab_size"] / multiple) * multiple,
              residual_in_fp32=fields.get("residual_in_fp32", True),
              tie_word_embeddings=fields.get("tie_embeddings", True),
              layer_norm_epsilon=fields.get("norm_epsilon", 1e-5),
              expand=ssm.get("expand", 2), conv_kernel=ssm.get("d_conv", 4),
              use_bias=ssm.get("bias", False), use_conv_bias=ssm.get("conv_bias", True))
    if layer == "Mamba2":
        head_dim = ssm.get("headdim", 64)
        return dict(hf, model_type="mamba2", state_size=ssm.get("d_state", 128), head_dim=head_dim,
                    num_heads=hf["expand"] * hf["hidden_size"] // head_dim, n_groups=ssm.get("ngroups", 1),
                    chunk_size=ssm.get("chunk_size", 256))
    return dict(hf, model_type="mamba", state_size=ssm.get("d_state", 16), time_step_rank=ssm.get("dt_rank", "auto"))


def damaged_weights(directory, err: Exception) -> ValueError:
    """The error for a safetensors file that does not read (a copy interrupted, a full disk)."""
    return ValueError(f"the weights (*.safetensors) in {str(directory)!r} are damaged ({err}); restore the "
                      "directory, or use a snapshot of the run (its snapshots/ folder)")


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in `directory`: safetensors (one file or sharded) or pytorch_model.bin."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if files:
        weights = {}
        for f in files:
            try:
                weights.update(load_file(str(f)))
            except SafetensorError as err:
                raise damaged_weights(directory, err) from None
        return weights
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if bins:
        weights = {}
        for f in bins:
            weights.update(torch.load(str(f), map_location="cpu", weights_only=True))
        return weights
    raise ValueError(f"{str(directory)!r} has no weights (*.safetensors or pytorch_model.bin); copy them there, or "
                     "load the directory the model was saved to")


def normalized(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF's key names: `backbone.` in front (a bare backbone's keys), `embedding.` → `embeddings.` (state-spaces)."""
    if not any(k.startswith("backbone.") for k in weights):
        weights = {(k if k.startswith("lm_head.") else f"backbone.{k}"): v for k, v in weights.items()}
    return {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in weights.items()}


def _vocab_rows(config, rows: Optional[int], directory: Path) -> int:
    """The embedding's row count: the config's vocabulary, or that padded to a multiple of 8 / 16."""
    vocab = config.vocab_size
    if rows is None or rows == vocab:
        return vocab
    if rows > vocab and any(rows == math.ceil(vocab / m) * m for m in (8, 16, 32, 64, 128)):
        return rows  # the public checkpoints: 50,277 ids in 50,280 rows
    raise ValueError(f"{str(directory)!r}: the embedding has {rows} rows but config.json says vocab_size={vocab}; "
                     "fix vocab_size in config.json to the embedding's row count")


def _check_keys(model: MambaLM, weights: dict, directory: Path) -> None:
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    expected = set(shapes)
    if model.config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing, unknown = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unknown:
        raise ValueError(f"{str(directory)!r} does not hold this {model.config.model_type} model's weights: "
                         f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, unknown {unknown[:4]}"
                         f"{' ...' if len(unknown) > 4 else ''}; is config.json the one saved with these weights?")
    for key, value in weights.items():
        want = shapes[key]
        if value.shape != want:
            raise ValueError(f"{str(directory)!r}: {key} has shape {tuple(value.shape)}, config.json implies "
                             f"{tuple(want)}; is config.json the one saved with these weights?")
