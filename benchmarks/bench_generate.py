"""Greedy generation speed: our Mamba's recurrent step against HF's MambaForCausalLM and the Llama peer.

The course's `tiny` preset (8k vocabulary, random weights: speed does not depend on them), batch 1,
a `--prompt-len` (256) token prompt, then `--new-tokens` (64) greedy tokens, in one process:

- ours: `mamba_nb.model.generate.generate` on `mamba_nb.model` (prefill through the parallel scan,
  then one O(1) step per token, each block's in the C kernel where it builds), the same weights as
- HF Mamba: `MambaForCausalLM.generate` as HF ships it (its PyTorch path on CPU), the same weights;
- Llama: HF's `LlamaForCausalLM.generate` (SDPA, KV cache), the same-size `--arch llama` peer.

Each is timed `--repeats` times, interleaved, and the median is kept (with the min-max spread);
tokens/s counts the new tokens over the whole call (prefill included). Printed as tokens/s and as
ratios to HF Mamba and to the Llama measured in the same run. The same greedy tokens from ours and
HF's Mamba are checked. `ours_all_threads` is ours with its decoding steps on every torch thread
(`generate.ONE_THREAD_ROWS` = 0), the one-thread rule's effect measured in the same run. Then ours'
prefill and one step, timed on their own, and the bound for a step: it reads every weight but the
embedding once (15.4 MB in fp32, half of it the 8k-row head) at the memory bandwidth measured here
and now (a 256 MB tensor copy).

    .venv/bin/python benchmarks/bench_generate.py [--prompt-len 256] [--new-tokens 64] [--repeats 5] [--threads N]

Measured with the C decoding step (`scan/decode_step.py`: a whole block per call; 2 shared cores,
torch's 2 threads, 7 repeats): ours 939 tokens/s, HF Mamba 176 (x5.34), Llama 237 (x3.95); ours'
prefill 19 ms, a step 0.73 ms against a bound of 0.28 ms at that moment's copy rate (39 %; the 8k-row
head's matrix-vector product is a third of the step). After a 4,096-token prompt (3 repeats): ours
203, HF Mamba 35 (x5.8), Llama 74 (x2.74; ours on every thread x3.04); there the prefill is 218 ms
of ours' ~300 ms, and a step 0.71 ms. Before the C step, in PyTorch ops (~550 aten calls a step):
ours 868 tokens/s, x2.29 the Llama, a step 1.2 ms. With other jobs on the cores, PyTorch steps on
every thread fell apart (seen: 34 against 266 tokens/s): each tiny op waits for the slower thread.
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

    torch.manual_seed(0)
    fields = {**_ARCH_DEFAULTS["mamba"], **PRESETS["tiny"]["mamba"]}
    hf = MambaForCausalLM(MambaConfig(**fields, vocab_size=VOCAB, intermediate_size=2 * fields["hidden_size"])).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = hf_format.load(d).eval()
    llama = LlamaForCausalLM(LlamaConfig(**{**_ARCH_DEFAULTS["llama"], **PRESETS["tiny"]["llama"]},
                                         vocab_size=VOCAB)).eval()
    return ours, hf, llama


def runners(ours, hf, llama, new: int):
    from mamba_nb.model import generate as gen

    def hf_generate(model):
        return lambda ids: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                          min_new_tokens=new, do_sample=False, pad_token_id=0)[:, ids.shape[1]:]

    def all_threads(ids):  # ours with its steps on every torch thread (the one-thread rule off): that lever alone
        rows, gen.ONE_THREAD_ROWS = gen.ONE_THREAD_ROWS, 0
        try:
            return gen.generate(ours, ids, max_new_tokens=new)
        finally:
            gen.ONE_THREAD_ROWS = rows

    return {"ours": lambda ids: gen.generate(ours, ids, max_new_tokens=new), "ours_all_threads": all_threads,
            "hf_mamba": hf_generate(hf), "llama": hf_generate(llama)}


def bandwidth_gbs(reps: int = 5) -> float:
    """This machine's memory bandwidth now: a 256 MB tensor copied (read + write), median of `reps`."""
    src = torch.ones(64 << 20)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / statistics.median(times) / 1e9


def step_bytes(model) -> int:
    """Bytes of weights one decoding step reads: every parameter but the embedding (one row of it)."""
    embedding = model.backbone.embeddings.weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not embedding
               or model.config.tie_word_embeddings)


def prefill_and_step(ours, ids, new: int, repeats: int) -> tuple[float, float]:
    """Median seconds of ours' prefill of `ids`, and of one decoding step (timed over `new` steps after it)."""
    from mamba_nb.model import generate as gen

    prefills, steps = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        logits, state = gen.prefill(ours, ids)
        prefills.append(time.perf_counter() - start)
        token = logits.argmax(-1)
        start = time.perf_counter()
        for _ in range(new):
            token = gen.step(ours, state, token).argmax(-1)
        steps.append((time.perf_counter() - start) / new)
    return statistics.median(prefills), statistics.median(steps)


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
    gbs = bandwidth_gbs()
    bound = gbs * 1e9 / step_bytes(ours)
    prefill_s, step_s = prefill_and_step(ours, ids, args.new_tokens, args.repeats)
    print(f"greedy, batch 1, {args.prompt_len}-token prompt + {args.new_tokens} new, tiny preset, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}; ours and HF's Mamba give the same tokens: {same}")
    for name, r in rate.items():
        print(f"  {name:16s} {r:8.1f} tokens/s   x{r / rate['hf_mamba']:.2f} HF Mamba   x{r / rate['llama']:.2f} Llama"
              f"   (min-max {args.new_tokens / max(times[name]):.1f}-{args.new_tokens / min(times[name]):.1f})")
    print(f"ours: the prefill {prefill_s * 1e3:.0f} ms, a step {step_s * 1e3:.2f} ms ({1 / step_s:.0f} steps/s; "
          f"timed on their own)")
    print(f"bound: {step_bytes(ours) / 1e6:.1f} MB of weights a step at {gbs:.1f} GB/s (a 256 MB copy, now) = "
          f"{bound:.0f} steps/s; ours' steps reach {100 / step_s / bound:.0f}% of it")

if __name__ == "__main__":
    main()
