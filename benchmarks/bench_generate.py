"""Greedy generation speed: our Mamba's recurrent step against HF's MambaForCausalLM and the Llama peer.

The course's `tiny` preset (8k vocabulary, random weights: speed does not depend on them), batch 1,
a `--prompt-len` (256) token prompt, then `--new-tokens` (64) greedy tokens, in one process:

- ours: `mamba_nb.model.generate.generate` on `mamba_nb.model` (prefill through the parallel scan,
  then one O(1) step per token), the same weights as
- HF Mamba: `MambaForCausalLM.generate` with today's scan path (`apply_scan_path(model, "fast")`);
- Llama: HF's `LlamaForCausalLM.generate` (SDPA, KV cache), the same-size `--arch llama` peer.

Each is timed `--repeats` times, interleaved, and the median is kept; tokens/s counts the new
tokens over the whole call (prefill included). Printed as tokens/s and as ratios to HF Mamba and to
the Llama measured in the same run. The same greedy tokens from ours and HF's Mamba are checked.

    .venv/bin/python benchmarks/bench_generate.py [--prompt-len 256] [--new-tokens 64] [--repeats 5] [--threads N]

On shared cores pass `--threads 1`: a decoding step is ~20 small matmuls, and with 2 threads on 2
busy cores every one of them waits for the slower thread (seen: 2.1 ms a step on 1 thread, 14 ms on
2, while other jobs ran). The bound for a step: it reads every weight but the embedding once, about
3.9M parameters (16 MB in fp32, half of it the 8k-row head), so bytes / memory bandwidth.
First run (2 busy cores, --threads 1, 3 repeats): ours 683 tokens/s, HF Mamba 416 (x1.64), Llama
387 (x1.77); the 256-token prefill is ~55 ms of ours' ~94 ms, a step ~0.6 ms.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mamba_nb.model import _ARCH_DEFAULTS, PRESETS  # noqa: E402

VOCAB = 8192


def models():
    from transformers import LlamaConfig, LlamaForCausalLM, MambaConfig, MambaForCausalLM

    from mamba_nb.model import hf_format
    from mamba_nb.scan import apply_scan_path

    torch.manual_seed(0)
    fields = {**_ARCH_DEFAULTS["mamba"], **PRESETS["tiny"]["mamba"]}
    hf = MambaForCausalLM(MambaConfig(**fields, vocab_size=VOCAB, intermediate_size=2 * fields["hidden_size"])).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = hf_format.load(d).eval()
    apply_scan_path(hf, "fast")
    llama = LlamaForCausalLM(LlamaConfig(**{**_ARCH_DEFAULTS["llama"], **PRESETS["tiny"]["llama"]},
                                         vocab_size=VOCAB)).eval()
    return ours, hf, llama


def runners(ours, hf, llama, new: int):
    from mamba_nb.model import generate as gen

    def hf_generate(model):
        return lambda ids: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                          min_new_tokens=new, do_sample=False, pad_token_id=0)[:, ids.shape[1]:]

    return {"ours": lambda ids: gen.generate(ours, ids, max_new_tokens=new),
            "hf_mamba": hf_generate(hf), "llama": hf_generate(llama)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for all three (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ours, hf, llama = models()
    run = runners(ours, hf, llama, args.new_tokens)
    ids = torch.randint(0, VOCAB, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
    same = torch.equal(run["ours"](ids), run["hf_mamba"](ids))  # also the warm-up
    run["llama"](ids)
    times = {name: [] for name in run}
    for _ in range(args.repeats):
        for name, fn in run.items():
            start = time.perf_counter()
            fn(ids)
            times[name].append(time.perf_counter() - start)
    rate = {name: args.new_tokens / statistics.median(t) for name, t in times.items()}
    print(f"greedy, batch 1, {args.prompt_len}-token prompt + {args.new_tokens} new, tiny preset, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}; ours and HF's Mamba give the same tokens: {same}")
    for name, r in rate.items():
        print(f"  {name:9s} {r:8.1f} tokens/s   x{r / rate['hf_mamba']:.2f} HF Mamba   x{r / rate['llama']:.2f} Llama")


if __name__ == "__main__":
    main()
