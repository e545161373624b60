"""Training windows read from S3 against local disk: windows/s and requests per batch, one run.

The course dataset (data/stdlib, `make course` builds it) is copied into a local S3 server (moto's,
in its own process on 127.0.0.1), then the training loader (`windows.make_loader`, FIM off,
batch 8 x 256 tokens) reads the same batches three ways, with 1 and 2 DataLoader workers:

- local:  the dataset on this disk (the baseline, measured in the same run);
- cached: from S3 through the local copy of fragments (`mirror.py`, the default for a remote
          dataset), cold (each fragment fetched the first time a window needs it) and warm;
- direct: from S3 with no cache (`--dataset-cache none`): Lance's batched, sorted take.

It prints windows/s, the ratio to local, and the S3 requests per batch (counted in the server's
request log). On a real bucket each request pays the store's latency (tens of ms on S3), so the
direct path's requests per batch is what decides its speed there; the cached path pays it once
per fragment.

    .venv/bin/python benchmarks/bench_remote.py [--batches 300] [--dataset data/stdlib]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("moto's server did not start")


def requests_in(log: Path) -> int:
    """Requests the server has logged so far (one werkzeug line each, status colored for errors)."""
    return len(re.findall(r'HTTP/1\.1\S*" \d{3}', log.read_text(errors="ignore")))


def windows_per_s(ds, workers: int, batches: int, batch_size: int, context_len: int) -> float:
    from mamba_nb.config import WindowConfig
    from mamba_nb.windows import make_loader

    cfg = WindowConfig(context_len=context_len, fim_rate=0.0)
    loader, _ = make_loader(ds, "train", cfg, batch_size, num_workers=workers, shuffle=True)
    it = iter(loader)
    next(it)  # workers started, first batch out: what follows is the steady reading
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    del it, loader
    return batches * batch_size / elapsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=str(ROOT / "data" / "stdlib"))
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context-len", type=int, default=256)
    args = p.parse_args(argv)

    import boto3

    from mamba_nb.dataset import open_dataset
    from mamba_nb.store import Store

    local = open_dataset(args.dataset)
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    log = work / "requests.log"
    server, endpoint = start_server(log)
    try:
        options = {"aws_endpoint": endpoint, "allow_http": "true", "aws_region": "us-east-1",
                   "aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                     region_name="us-east-1").create_bucket(Bucket="bench")
        uri = "s3://bench/stdlib"
        Store(uri, options).upload(local.store.path, "")
        print(f"{args.dataset} copied to {uri} (moto server at {endpoint}); batch {args.batch_size} x "
              f"{args.context_len} tokens, FIM off, {args.batches} batches each")
        rows = []
        for workers in (1, 2):
            base = windows_per_s(local, workers, args.batches, args.batch_size, args.context_len)
            rows.append((workers, "local", base, None))
            cache = work / f"cache-{workers}"
            for label, setting in (("cached, cold", str(cache)), ("cached, warm", str(cache)), ("direct", "none")):
                ds = open_dataset(uri, options, setting)
                before = requests_in(log)
                rate = windows_per_s(ds, workers, args.batches, args.batch_size, args.context_len)
                per_batch = (requests_in(log) - before) / (args.batches + 1)
                rows.append((workers, label, rate / base, per_batch))
            shutil.rmtree(cache, ignore_errors=True)
        print(f"\n{'workers':>7} {'read':<13} {'windows/s':>10} {'÷ local':>8} {'requests/batch':>15}")
        base = {}
        for workers, label, value, per_batch in rows:
            if label == "local":
                base[workers] = value
                print(f"{workers:>7} {label:<13} {value:>10.0f} {1.0:>8.2f} {'-':>15}")
            else:
                print(f"{workers:>7} {label:<13} {value * base[workers]:>10.0f} {value:>8.2f} {per_batch:>15.1f}")
        print("\n(requests/batch includes opening the dataset in each worker; cold: the fragments' fetches)")
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
