"""Building and loading models: by size preset, from scratch or a pretrained checkpoint, by one loader.

A Mamba is ours (`lm.MambaLM`: Mamba-1 or Mamba-2), in Hugging Face's format: a checkpoint saved here
loads anywhere `transformers` runs (`MambaForCausalLM` / `Mamba2ForCausalLM`), and a public
`state-spaces/mamba-*-hf` checkpoint fine-tunes here. The Llama peer (the transformer the course
compares with) is HF's `LlamaForCausalLM`.

- `PRESETS`: named sizes. `micro` (tests), `tiny` (the CPU course), and the public
  checkpoint sizes `130m` ... `2.8b` (Mamba-1 numbers from `state-spaces/mamba-*-hf`;
  Mamba-2 numbers from `state-spaces/mamba2-*`, which are the 130m/370m/780m/1.3b/2.7b
  models: the nearest name is used).
- `build_model(cfg, tokenizer)`: from scratch, or from `cfg.pretrained` (a hub id or a
  local directory, one code path), grown to the tokenizer's vocabulary (`resize_embeddings`),
  with its scan path set (`scan.py`: kernels, fast, reference).
- `load_model(dir)` / `load_checkpoint(dir)`: any directory saved by this project (a run dir, its
  `latest/`, a snapshot, a LoRA run: its adapter merged, or kept trainable to resume) or any HF
  Mamba directory → the model (and its tokenizer).
- `model_from_config(dir)`: the architecture a checkpoint's config.json describes, without its
  weights (an FSDP checkpoint's weights are in its shards: `fsdp.py`).

Not here: the training loop and the optimizer (`train.py`), the run directory's files
(`checkpoint.py`), the model's code (`lm.py`, `mamba1.py`, `mamba2.py`) and format (`hf_format.py`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from mamba_nb.config import ModelConfig
from mamba_nb.tokenizer import FimTokens, tokens_that_differ

ARCHS = ("mamba", "mamba2")
PEER_ARCHS = ("llama",)  # not a Mamba: the transformer the course compares with (training and losses only)
VOCAB_MULTIPLE = 8  # the public checkpoints pad the vocabulary to a multiple of 8 (50277 -> 50280)

# Size presets: preset -> arch -> HF config fields. Everything not named here is the
# HF config's default. To try another course architecture, edit "tiny" (or pass
# `--arch mamba2`): nothing else in the code depends on these numbers.
PRESETS: dict[str, dict[str, dict]] = {
    # The tests' model: seconds to train on one core.
    "micro": {
        "mamba": dict(hidden_size=32, num_hidden_layers=2, state_size=8),
        "mamba2": dict(hidden_size=32, num_hidden_layers=2, state_size=16, head_dim=16, chunk_size=16),
        "llama": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    },
    # The course's CPU model (6M parameters with an 8k vocabulary). Untied embeddings: in the
    # course's 10 minutes they reach a lower validation loss than tied ones (about 0.15 nats, both
    # archs), for the same cost per token; Mamba-1 and Mamba-2 untied end level
    # (benchmarks/bench_course_arch.py), and Mamba-1 is the course default (ModelConfig.arch).
    "tiny": {
        "mamba": dict(hidden_size=256, num_hidden_layers=4, state_size=16, tie_word_embeddings=False),
        "mamba2": dict(hidden_size=256, num_hidden_layers=4, state_size=64, head_dim=32, chunk_size=64,
                       tie_word_embeddings=False),
        # as many parameters per token as Mamba-1 tiny (1.8M outside the embeddings)
        "llama": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384,
                      tie_word_embeddings=False),
    },
    "130m": {
        "mamba": dict(hidden_size=768, num_hidden_layers=24),
        "mamba2": dict(hidden_size=768, num_hidden_layers=24),
    },
    "370m": {
        "mamba": dict(hidden_size=1024, num_hidden_layers=48),
        "mamba2": dict(hidden_size=1024, num_hidden_layers=48),
    },
    "790m": {  # mamba2: the 780m model
        "mamba": dict(hidden_size=1536, num_hidden_layers=48),
        "mamba2": dict(hidden_size=1536, num_hidden_layers=48),
    },
    "1.4b": {  # mamba2: the 1.3b model
        "mamba": dict(hidden_size=2048, num_hidden_layers=48),
        "mamba2": dict(hidden_size=2048, num_hidden_layers=48),
    },
    "2.8b": {  # mamba2: the 2.7b model
        "mamba": dict(hidden_size=2560, num_hidden_layers=64),
        "mamba2": dict(hidden_size=2560, num_hidden_layers=64),
    },
}

# Shared by every preset of an arch (the public checkpoints' values).
_ARCH_DEFAULTS = {
    "mamba": dict(state_size=16, expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True,
                  residual_in_fp32=True, tie_word_embeddings=True),
    "mamba2": dict(state_size=128, expand=2, conv_kernel=4, head_dim=64, n_groups=1, chunk_size=256,
                   use_bias=False, use_conv_bias=True, residual_in_fp32=True, tie_word_embeddings=True),
    "llama": dict(max_position_embeddings=8192, rms_norm_eps=1e-5),
}

SCAN_NAMES = {"kernels": "fused kernels (mamba-ssm / causal-conv1d)", "fast": "fast CPU scan",
              "reference": "readable PyTorch reference scan",
              "attention": "none (a transformer: attention, SDPA)"}


def scan_name(path: str) -> str:
    """How a run names its selective-scan path; on "fast", also which recurrence runs (and why)."""
    name = SCAN_NAMES.get(path, path)
    if path == "fast":
        from mamba_nb.scan import compiled

        how = "its C kernel" if compiled.available() else f"PyTorch ops: {compiled.why_not()}"
        name = f"{name}, recurrence in {how}"
    return name


def padded_vocab_size(tokenizer) -> int:
    """Embedding rows for `tokenizer`: one per id (added tokens included), padded to VOCAB_MULTIPLE."""
    n = max(tokenizer.get_vocab().values()) + 1
    return math.ceil(n / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def model_config(cfg: ModelConfig, tokenizer):
    """The HF config (`MambaConfig` or `Mamba2Config`) of a from-scratch model for `tokenizer`."""
    from transformers import LlamaConfig, Mamba2Config, MambaConfig

    if cfg.arch not in ARCHS + PEER_ARCHS:
        raise ValueError(f"arch={cfg.arch!r} is not one of {ARCHS + PEER_ARCHS}; pass --arch mamba or --arch mamba2")
    if cfg.preset not in PRESETS:
        raise ValueError(f"preset={cfg.preset!r} is unknown; pick one of {sorted(PRESETS)} (--preset)")
    if cfg.arch not in PRESETS[cfg.preset]:
        have = sorted(p for p, archs in PRESETS.items() if cfg.arch in archs)
        raise ValueError(f"arch={cfg.arch!r} has no preset {cfg.preset!r}; its presets: {have} (--preset)")
    sizes = {k: v for k in ("hidden_size", "num_hidden_layers", "state_size")
             if (v := getattr(cfg, k, None)) is not None}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a whole number >= 1 (--{name.replace('_', '-')})")
    if "state_size" in sizes and cfg.arch not in ARCHS:
        raise ValueError(f"state_size={sizes['state_size']} applies to Mamba only; arch={cfg.arch!r} has no recurrent state")
    fields = {**_ARCH_DEFAULTS[cfg.arch], **PRESETS[cfg.preset][cfg.arch], **sizes}
    fim = FimTokens.from_tokenizer(tokenizer)
    ids = dict(vocab_size=padded_vocab_size(tokenizer), bos_token_id=fim.eot, eos_token_id=fim.eot,
               pad_token_id=fim.pad)
    if cfg.arch == "llama":
        return LlamaConfig(**fields, **ids)
    if cfg.arch == "mamba":
        # time_step_rank "auto" = ceil(hidden / 16), as in the public checkpoints
        return MambaConfig(**fields, **ids, intermediate_size=fields["expand"] * fields["hidden_size"])
    num_heads = fields["expand"] * fields["hidden_size"] // fields["head_dim"]
    return Mamba2Config(**fields, **ids, num_heads=num_heads)


def _new_rows(old: torch.Tensor, n: int, generator: torch.Generator, noise: float = 1e-3) -> torch.Tensor:
    """`n` new embedding rows drawn near the mean of the `old` rows (V, D) → (n, D).

    The mean keeps a new token's initial logit at the average of the old ones (a new
    token is not suddenly the most likely one; Hewitt 2021); a little noise shaped by the
    rows' covariance keeps the new rows distinct. When the covariance is singular (fewer
    rows than dimensions, as in tiny test models) the noise uses per-dimension std instead.
    """
    x = old.detach().double()
    mean = x.mean(0)  # (D,)
    centered = x - mean
    cov = centered.T @ centered / max(1, x.shape[0] - 1)  # (D, D)
    z = torch.randn(n, x.shape[1], generator=generator, dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:
        rows = mean + noise * z @ chol.T
    else:
        rows = mean + noise * z * centered.std(0)
    return rows.to(old.dtype)


@torch.no_grad()
def resize_embeddings(model, num_rows: int, seed: int = 0) -> int:
    """Grow the input embedding (and an untied `lm_head`) to `num_rows`; return how many rows were added.

    Existing rows are copied bit for bit; new rows come from `_new_rows`. Tied weights stay
    tied (the output layer *is* the input embedding then). Never shrinks: a checkpoint whose
    embedding is already large enough (50280 rows for 50277 ids) is left alone.
    """
    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    if num_rows <= old_rows:
        return 0
    gen = torch.Generator().manual_seed(seed)
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight

    def grown(weight: torch.Tensor) -> torch.nn.Parameter:
        new = torch.cat([weight.detach(), _new_rows(weight, num_rows - old_rows, gen).to(weight.device)])
        return torch.nn.Parameter(new, requires_grad=weight.requires_grad)

    new_emb = torch.nn.Embedding(num_rows, emb.weight.shape[1], device=emb.weight.device, dtype=emb.weight.dtype)
    new_emb.weight = grown(emb.weight)
    model.set_input_embeddings(new_emb)
    if head is not None:
        if tied:
            head.weight = new_emb.weight
        else:
            head.weight = grown(head.weight)
        head.out_features = num_rows
    model.config.vocab_size = num_rows
    return num_rows - old_rows


def _check_same_base_vocab(pretrained: str, tokenizer) -> None:
    """The dataset's tokenizer must extend the checkpoint's one, or the ids mean other tokens."""
    from transformers import AutoTokenizer

    try:
        base = AutoTokenizer.from_pretrained(pretrained)
    except (OSError, ValueError):
        print(f"note: {pretrained!r} has no tokenizer files; cannot check the dataset's tokenizer against it")
        return
    wrong = tokens_that_differ(base, tokenizer)
    if wrong:
        raise ValueError(
            f"the dataset's tokenizer is not the tokenizer of {pretrained!r} ({len(wrong)} tokens differ, "
            f"e.g. {wrong[:3]}): fine-tuning needs data tokenized with the model's tokenizer; rebuild it with "
            f"`python -m mamba_nb build-dataset --tokenizer {pretrained} --out-dir ...` and train on that"
        )


def _load_pretrained(path: str):
    """The fp32 model at `path` (a directory or a hub id): a Mamba as ours (`hf_format.load`), the Llama
    peer as HF's class."""
    from . import hf_format

    directory = hf_format.local_directory(path)  # a hub id: its downloaded snapshot
    if _holds_mamba(directory):
        model = hf_format.load(directory)
        model.name_or_path = str(path)  # a LoRA adapter names its base by it
        return model
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    except SafetensorError as err:  # the Llama peer's weights: the same error as a Mamba's (`hf_format`)
        raise hf_format.damaged_weights(path, err) from None
    except (OSError, ValueError) as err:
        raise ValueError(f"could not load a model from {path!r} ({err}); pass a directory saved with save_pretrained "
                         "or a hub id such as state-spaces/mamba-130m-hf (needs network)") from err
    if model.config.model_type not in PEER_ARCHS:
        raise ValueError(f"{path!r} holds a {model.config.model_type!r} model; this course trains {ARCHS} only")
    return model


def _install_scan(model, scan: str) -> str:
    """Set our model's scan path; → the path that runs ("kernels" | "fast" | "reference"; "attention" for the
    Llama peer, which has no scan)."""
    if model.config.model_type in PEER_ARCHS:
        return "attention"
    model.set_scan_path(scan)
    return _resolved_scan(model, scan)


def build_model(cfg: ModelConfig, tokenizer, device=None, verbose: bool = True):
    """`(model, scan_path)`: a Mamba for `tokenizer`, from scratch or fine-tuned from `cfg.pretrained`.

    A Mamba is ours (`lm.MambaLM`), the Llama peer HF's class; fp32, on `device` (default: the CPU).
    `scan_path` is "kernels", "fast" or "reference" for that device, and is printed, so every run says
    which selective scan it trains with.
    """
    if cfg.pretrained:
        model = _load_pretrained(cfg.pretrained)
        _check_same_base_vocab(cfg.pretrained, tokenizer)
        added = resize_embeddings(model, padded_vocab_size(tokenizer))
        if model.config.model_type != cfg.arch and verbose:
            print(f"note: {cfg.pretrained!r} is a {model.config.model_type} model; --arch {cfg.arch} is ignored")
        fim = FimTokens.from_tokenizer(tokenizer)
        model.config.pad_token_id = fim.pad
        source = f"fine-tuning {cfg.pretrained} ({added} new embedding rows)"
    else:
        # the initial weights come from torch's global RNG: `train` seeds it first
        model = new_model(model_config(cfg, tokenizer))
        source = f"from scratch, preset {cfg.preset!r}"
    if device is not None:
        model.to(device)  # first: the scan path ("auto", "kernels") depends on the device
    scan_path = _install_scan(model, cfg.scan)
    if getattr(cfg, "lora_rank", 0):
        model, source = _with_lora(model, cfg, tokenizer, source)
    if verbose:
        n = sum(p.numel() for p in model.parameters())
        print(f"model: {model.config.model_type}, {n / 1e6:.2f}M parameters, {source}; "
              f"selective scan: {scan_name(scan_path)}")
    return model, scan_path


def _with_lora(model, cfg, tokenizer, source: str):
    from mamba_nb.lora import apply_lora, trainable_counts

    if not cfg.pretrained:
        raise ValueError(f"lora_rank={cfg.lora_rank} fine-tunes a pretrained model: pass --pretrained "
                         "(a hub id or a saved model), or --lora-rank 0 to train from scratch")
    fim = FimTokens.from_tokenizer(tokenizer)
    model = apply_lora(model, cfg.lora_rank, cfg.lora_targets, [fim.prefix, fim.middle, fim.suffix, fim.pad], cfg.seed)
    n = trainable_counts(model)
    return model, (f"{source}; LoRA rank {cfg.lora_rank} on {cfg.lora_targets}: {n['lora']:,} adapter and "
                   f"{n['token_rows']:,} FIM-row parameters trainable of {n['total']:,}")


def load_model(path, scan: str = "auto", device=None, trainable: bool = False):
    """`(model, scan_path)`: the model saved in directory `path`, on `device` (what resuming a run and
    `load_checkpoint` both use). A Mamba is ours (`lm.MambaLM`, read by `hf_format.load`: directories
    written by HF's `save_pretrained` too), the Llama peer HF's class. A LoRA checkpoint (an adapter)
    is put on its base: merged into it, or (`trainable`) as a peft model."""
    from mamba_nb import lora
    from mamba_nb.checkpoint import check_weights_present

    check_weights_present(path)
    adapter = lora.is_adapter(path)
    model = _load_pretrained(lora.adapter_base(path) if adapter else str(path))
    if adapter:  # the base grows the FIM rows the adapter was trained with (same seed, same rows)
        from transformers import AutoTokenizer

        resize_embeddings(model, padded_vocab_size(AutoTokenizer.from_pretrained(str(path))))
    if device is not None:
        model.to(device)  # first: the scan path ("auto", "kernels") depends on the device
    scan_path = _install_scan(model, scan)
    if adapter:
        model = lora.load_adapter(model, path, trainable=trainable)
        if not trainable:
            model = model.merge_and_unload()
    return model, scan_path


def _holds_mamba(path) -> bool:
    """Whether config.json in `path` describes a Mamba (HF's, or state-spaces' without a model_type)."""
    import json
    from pathlib import Path

    try:
        fields = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):  # unreadable: HF's loader below says what is wrong with it
        return False
    return isinstance(fields, dict) and (fields.get("model_type") in ARCHS or
                                         ("model_type" not in fields and "d_model" in fields))


def _resolved_scan(model, scan: str) -> str:
    """The path our model's "auto" resolves to on its device ("kernels" or "fast"); others as given."""
    from . import scan as scans

    if scan != "auto":
        return scan
    return "kernels" if scans.kernels_for("auto", model.lm_head.weight) is not None else "fast"


def new_model(config):
    """A from-scratch model for an HF config: ours for a Mamba, HF's class for the Llama peer; fp32,
    initialised from torch's global RNG."""
    if config.model_type in ARCHS:
        from .lm import MambaLM

        return MambaLM(config)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def enable_checkpointing(model) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them: our Mamba
    (inside a peft wrapper too) its own way; HF's Llama peer through HF's switch, non-reentrant (the
    recomputation builds the same graph)."""
    from .lm import ours

    mamba = ours(model)
    if mamba is not None:
        mamba.gradient_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def model_from_config(path, scan: str = "auto", device=None):
    """`(model, scan_path)`: the model the config.json in directory `path` describes, freshly
    initialised (its weights come next, from an FSDP checkpoint's shards: `fsdp.load_shards`,
    `fsdp.convert_shards`), on `device`, with its scan path set."""
    from transformers import AutoConfig

    from . import hf_format

    config = (hf_format.read_config(Path(path) / "config.json") if _holds_mamba(path)
              else AutoConfig.from_pretrained(str(path)))
    if config.model_type not in ARCHS + PEER_ARCHS:
        raise ValueError(f"{str(path)!r} describes a {config.model_type!r} model; this course trains {ARCHS} only")
    model = new_model(config)
    if device is not None:
        model.to(device)  # first: the scan path ("auto", "kernels") depends on the device
    return model, _install_scan(model, scan)


def load_checkpoint(path, scan: str = "auto", device: Optional[str] = None):
    """`(model, tokenizer)` from a run dir, `latest/`, a snapshot, or any HF Mamba directory, in eval mode.
    A Mamba comes back as our `lm.MambaLM` (`model(ids)` is the logits); the Llama peer as HF's class."""
    from transformers import AutoTokenizer

    from mamba_nb.checkpoint import resolve_checkpoint_dir

    directory = resolve_checkpoint_dir(path)
    model, _ = load_model(directory, scan, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise ValueError(f"the tokenizer files in {str(directory)!r} are missing or damaged ({str(err).splitlines()[0]}); copy them "
                         "from the dataset's tokenizer/ folder (they are the same files)") from None
    model.eval()
    return model, tokenizer
