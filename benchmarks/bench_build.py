"""How fast and how small is `build_dataset`, against baselines measured in the same run.

On the full standard library (or its first files with --quick), with ONE tokenizer trained
once up front (BPE training time is reported on its own line):
  (i)   end-to-end build tokens/s  ÷  the tokenizer's own `encode_batch` tokens/s on the
        same texts held in memory (the ceiling: ≥ 0.8 means the build adds little);
  (ii)  end-to-end build tokens/s  ÷  the recipe of Lance's LLM-dataset guide on the same
        corpus: one record batch per document, each encoded alone with `tokenizer.encode`,
        stored as int64, one token per row (target ≥ 1.4);
  (iii) bytes on disk of our dataset  ÷  bytes of that recipe's dataset (target ≤ 0.3);
  (iv)  peak RSS of a default build (BPE training included) of 1× and 4× the stdlib
        (the file list repeated), each in its own subprocess: streaming keeps it flat.

    .venv/bin/python benchmarks/bench_build.py [--quick] [--vocab-size 8192] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lance
import pyarrow as pa

from mamba_nb.config import DataConfig
from mamba_nb.corpus import FileCorpus, stdlib_corpus
from mamba_nb.dataset import build_dataset, train_bpe_on


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def corpus_of(files: int | None, repeat: int = 1) -> FileCorpus:
    base = stdlib_corpus()
    chosen = base.files[:files] if files else base.files
    corpus = FileCorpus(base.root, chosen * repeat, base.patterns)
    corpus.kind = "stdlib"
    return corpus


def lance_recipe(tokenizer, texts: list[str], uri: Path) -> int:
    """The Lance guide's way: per document `tokenizer.encode`, one int64 batch per document."""
    schema = pa.schema([pa.field("input_ids", pa.int64())])
    count = 0

    def batches():
        nonlocal count
        for text in texts:
            ids = tokenizer.encode(text, add_special_tokens=False)
            count += len(ids)
            yield pa.RecordBatch.from_arrays([pa.array(ids, type=pa.int64())], names=["input_ids"])

    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), str(uri), schema=schema)
    return count


def child_build(args) -> None:
    """Run in a subprocess: one default build; print its own peak RSS as JSON."""
    cfg = DataConfig(source="stdlib", vocab_size=args.vocab_size, out_dir=args.out, overwrite=True)
    ds = build_dataset(cfg, corpus=corpus_of(args.files, args.repeat), progress=False)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = ds.num_tokens("train") + ds.num_tokens("validation")
    print(json.dumps({"tokens": tokens, "rss_self_mib": rss_mib}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the first 300 stdlib files instead of all")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--keep", action="store_true", help="keep the built datasets (printed path)")
    p.add_argument("--child-build", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--files", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_build:
        return child_build(args)
    files = 300 if args.quick else None
    work = Path(tempfile.mkdtemp(prefix="bench_build_"))
    try:
        corpus = corpus_of(files)
        texts = [d.text for d in corpus]
        chars = sum(map(len, texts))
        print(f"corpus: {len(corpus.files)} stdlib files, {len(texts)} documents, {chars:,} characters; "
              f"{os.cpu_count()} CPUs visible")

        cfg = DataConfig(source="stdlib", vocab_size=args.vocab_size)
        t = time.perf_counter()
        tokenizer = train_bpe_on(corpus, cfg)
        train_s = time.perf_counter() - t
        tok_dir = work / "tokenizer"
        tokenizer.save_pretrained(tok_dir)
        print(f"BPE training (train split, vocab {args.vocab_size}): {train_s:.1f} s — not counted below")

        # the ceiling: the Rust tokenizer alone on texts already in memory
        backend = tokenizer.backend_tokenizer
        t = time.perf_counter()
        n_encode = sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False))
        encode_s = time.perf_counter() - t

        # ours, end to end: read files, split, encode, write Lance (+ load/save the tokenizer)
        out = work / "ours"
        t = time.perf_counter()
        ds = build_dataset(DataConfig(source="stdlib", tokenizer=str(tok_dir), out_dir=str(out)), corpus=corpus, progress=False)
        build_s = time.perf_counter() - t
        n_build = ds.num_tokens("train") + ds.num_tokens("validation")  # includes one EOT per document
        n_docs = ds.num_documents("train") + ds.num_documents("validation")

        t = time.perf_counter()
        n_recipe = lance_recipe(tokenizer, texts, work / "recipe.lance")
        recipe_s = time.perf_counter() - t

        ours_tps, encode_tps, recipe_tps = n_build / build_s, n_encode / encode_s, n_recipe / recipe_s
        print(f"encode_batch alone : {n_encode:>11,} tokens in {encode_s:6.2f} s = {encode_tps:>11,.0f} tokens/s")
        print(f"build_dataset      : {n_build:>11,} tokens in {build_s:6.2f} s = {ours_tps:>11,.0f} tokens/s "
              f"({n_build - n_docs:,} + {n_docs:,} EOT)")
        print(f"Lance guide recipe : {n_recipe:>11,} tokens in {recipe_s:6.2f} s = {recipe_tps:>11,.0f} tokens/s")
        ours_bytes, recipe_bytes = dir_bytes(out), dir_bytes(work / "recipe.lance")
        print(f"on disk: ours {ours_bytes / 2**20:.1f} MiB (all of it: tokens, document tables, tokenizer, manifest), "
              f"recipe {recipe_bytes / 2**20:.1f} MiB")
        print(f"(i)   build ÷ encode_batch throughput : {ours_tps / encode_tps:5.2f}   (target ≥ 0.8)")
        print(f"(ii)  build ÷ Lance recipe throughput : {ours_tps / recipe_tps:5.2f}   (target ≥ 1.4)")
        print(f"(iii) build ÷ Lance recipe on disk    : {ours_bytes / recipe_bytes:5.2f}   (target ≤ 0.3)")

        peaks, selfs = {}, {}
        for repeat in (1, 4):
            cmd = [sys.executable, __file__, "--child-build", "--repeat", str(repeat), "--vocab-size", str(args.vocab_size),
                   "--out", str(work / f"rss{repeat}")] + (["--files", str(files)] if files else [])
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"child build failed:\n{proc.stderr}")
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            # RUSAGE_CHILDREN is the max over the children waited for so far; 1× runs first
            peaks[repeat] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            selfs[repeat] = child["rss_self_mib"]
            print(f"peak RSS, default build of {repeat}× ({child['tokens']:,} tokens, {time.perf_counter() - t:.0f} s): "
                  f"{child['rss_self_mib']:.0f} MiB (RUSAGE_CHILDREN so far: {peaks[repeat]:.0f} MiB)")
        print(f"(iv)  peak RSS 4× ÷ 1×                : {selfs[4] / selfs[1]:5.2f}   (flat ≈ 1.0; each child's own peak)")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
