"""Memory of a training step: what gradient checkpointing saves, measured on the CPU, and the
bytes a full fine-tune, a LoRA fine-tune or FSDP would need at the public sizes, computed.

1. Measured (each case in its own process): the course model (tiny preset, batch 8 x 256, fp32),
   one training step after a warm-up step; activation memory = the step's peak resident memory
   (VmHWM, reset before the step) minus the memory held before it (weights, gradients, optimizer
   state). With and without `--gradient-checkpointing`; the ratio is what the flag buys.
2. Computed from the configs: parameters, gradients, AdamW state (fp32 weights, two fp32
   moments) and activations at 8 x 2048 for the 130m / 370m / 1.4b / 2.8b presets, full
   fine-tune against LoRA (rank 8 on in_proj, the default target) against gradient checkpointing and FSDP
   over N GPUs. Activations: the per-layer tensors HF's PyTorch path keeps for the backward
   (see `activation_bytes`), an estimate; the measured tiny numbers above check its order.

    .venv/bin/python benchmarks/bench_memory.py [--gpus 8]
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, CONTEXT = 8, 256


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(checkpointing: bool, preset: str) -> None:
    import torch

    from mamba_nb.config import ModelConfig
    from mamba_nb.losses import training_loss
    from mamba_nb.doc_reset import model_logits
    from mamba_nb.model import build_model, enable_checkpointing
    from mamba_nb.schedule import make_optimizer
    from mamba_nb.tokenizer import train_bpe

    torch.set_num_threads(2)
    tok = train_bpe(["def f(x):\n    return x\n" * 50], vocab_size=8192)
    cfg = ModelConfig(preset=preset)
    torch.manual_seed(0)
    model, _ = build_model(cfg, tok, verbose=False)
    model.train()
    if checkpointing:
        enable_checkpointing(model)
    vocab = model.get_input_embeddings().weight.shape[0]

    class Cfg:
        lr, weight_decay = 1e-3, 0.1

    opt = make_optimizer(model, Cfg, torch.device("cpu"))
    x = torch.randint(0, vocab, (BATCH, CONTEXT + 1))
    mask = torch.zeros(BATCH, CONTEXT, dtype=torch.bool)

    def step():
        logits = model_logits(model, x[:, :-1])
        training_loss(logits, x[:, 1:], mask).backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # gradients stay allocated: they count in the "before"

    step()  # warm-up: optimizer state, gradients, allocator pools
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step()
    peak = _rss_kib("VmHWM")
    print(json.dumps({"before_mib": before / 1024, "peak_mib": peak / 1024, "activations_mib": (peak - before) / 1024}))


def measure(checkpointing: bool, preset: str = "tiny") -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", "1" if checkpointing else "0", "--preset", preset],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"MAMBA_NB_ALLOCATOR": "system", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- computed: bytes of a fine-tune at the public sizes ------------------------------------------------


def activation_bytes(hidden: int, layers: int, state: int, vocab: int, tokens: int, checkpointing: bool) -> int:
    """fp32 bytes HF's PyTorch Mamba-1 path keeps for the backward, per step. Per layer and token:
    the block input and norm (2 x hidden), in_proj output (2 x inner), conv and activation (2 x
    inner), x_proj / dt (about inner), the scan's states and decays (2 x inner x state), the gate
    (inner); plus the logits (vocab). With checkpointing, each layer keeps only its input and one
    layer's worth is alive at a time during the recomputation."""
    inner = 2 * hidden
    per_layer = 2 * hidden + 6 * inner + 2 * inner * state
    kept = layers * 2 * hidden + per_layer if checkpointing else layers * per_layer
    return 4 * tokens * (kept + vocab)


def table(gpus: int) -> list[dict]:
    from mamba_nb.model import PRESETS, _ARCH_DEFAULTS

    rows = []
    vocab, tokens = 50280, 8 * 2048
    for preset in ("130m", "370m", "1.4b", "2.8b"):
        spec = {**_ARCH_DEFAULTS["mamba"], **PRESETS[preset]["mamba"]}
        h, n_layers, state = spec["hidden_size"], spec["num_hidden_layers"], spec["state_size"]
        inner, rank = 2 * h, math.ceil(h / 16)
        per_layer = h * 2 * inner + inner * 4 + inner * (rank + 2 * state) + rank * inner + inner * state + inner + inner * h + h
        params = n_layers * per_layer + vocab * h + h
        lora = n_layers * 8 * (h + 2 * inner)  # rank 8 on in_proj (h -> 2 inner): A is 8 x h, B is 2 inner x 8
        full = dict(weights=4 * params, grads=4 * params, adam=8 * params)
        act = activation_bytes(h, n_layers, state, vocab, tokens, False)
        act_ckpt = activation_bytes(h, n_layers, state, vocab, tokens, True)
        gib = 2 ** 30
        rows.append({
            "preset": preset, "params_m": params / 1e6,
            "full": (sum(full.values()) + act) / gib,
            "full + checkpointing": (sum(full.values()) + act_ckpt) / gib,
            "lora (rank 8)": (4 * params + 16 * lora + act) / gib,
            f"fsdp x{gpus} + checkpointing": (sum(full.values()) / gpus + act_ckpt) / gib,
        })
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="tiny", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        child(args.child == "1", args.preset)
        return 0
    plain, ckpt = measure(False), measure(True)
    print(f"course model, batch {BATCH} x {CONTEXT}, one training step on the CPU (fp32):")
    for name, r in (("no checkpointing", plain), ("gradient checkpointing", ckpt)):
        print(f"  {name:<24} held before the step {r['before_mib']:7.0f} MiB, step peak {r['peak_mib']:7.0f} MiB, "
              f"activations {r['activations_mib']:6.0f} MiB")
    print(f"activations with ÷ without checkpointing: {ckpt['activations_mib'] / plain['activations_mib']:.2f}")
    print(f"  (estimate for this model: {activation_bytes(256, 4, 16, 8192, BATCH * CONTEXT, False) / 2**20:.0f} MiB "
          f"without, {activation_bytes(256, 4, 16, 8192, BATCH * CONTEXT, True) / 2**20:.0f} MiB with)")
    print(f"\nfine-tuning at 8 x 2048 tokens, GiB per GPU (fp32 weights, AdamW):")
    rows = table(args.gpus)
    cols = [k for k in rows[0] if k not in ("preset", "params_m")]
    print(f"  {'preset':<6} {'params':>8} " + " ".join(f"{c:>26}" for c in cols))
    for r in rows:
        print(f"  {r['preset']:<6} {r['params_m']:7.0f}M " + " ".join(f"{r[c]:26.1f}" for c in cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
