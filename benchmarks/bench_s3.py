#!/usr/bin/env python3
"""A large save to S3 through the ledger against the raw client's upload of the same file (a script,
not a timed test).

Starts a SeaweedFS server on loopback (``weed`` from the test extra) unless ``AWS_ENDPOINT_URL`` and
credentials point at another store (``--external``), then, alternating the two so drift hits both:
  * ledger: ``facade.save(path)`` on a ledger with ``blobs="s3://..."`` (hash, conditional multipart
    upload with SHA-256 per part, event appended with fsync);
  * raw: boto3's ``upload_file`` (its TransferManager: 8 MiB parts, 10 threads, no checksum asked),
    to a fresh key each time.
Each run uses fresh bytes, so neither side finds the object already there. Prints medians and the ratio
raw/ledger (the goal is at least 0.8: the ledger at least 80 % of the raw client's throughput).

Usage: ``python benchmarks/bench_s3.py [--mib 256] [--runs 5] [--external]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's guess)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256, help="file size in MiB (default 256)")
    ap.add_argument("--runs", type=int, default=5, help="runs of each side (default 5)")
    ap.add_argument("--external", action="store_true", help="use the store AWS_ENDPOINT_URL points at")
    ap.add_argument("--bucket", default="bench-s3", help="bucket to use (created if missing)")
    ap.add_argument("--options", default="", help="blob URL options, e.g. part_size=8388608&max_concurrency=8")
    args = ap.parse_args()

    import boto3

    from artifact_ledger.facade import open_ledger

    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        work = Path(tmp)
        server = None
        if not args.external:
            from weedserver import WeedServer

            server = WeedServer(work / "weed")
            took = server.start()
            os.environ.update(server.env())
            print(f"SeaweedFS up in {took:.1f} s at {server.endpoint}")
        try:
            client = boto3.client("s3")
            try:
                client.create_bucket(Bucket=args.bucket)
            except Exception as exc:  # already there
                if "BucketAlready" not in repr(exc):
                    raise
            size = args.mib << 20
            src = work / "big.bin"
            ledger_s: list[float] = []
            raw_s: list[float] = []
            url = f"s3://{args.bucket}/bench-{os.getpid()}" + (f"?{args.options}" if args.options else "")

            async def save_once() -> float:
                async with open_ledger(work / "L", blobs=url, cache_dir=work / "cache") as led:
                    fa = led.artifacts(run_id="bench", graph_id="g", node_id="n")
                    t0 = time.perf_counter()
                    await fa.save(str(src), kind="bin")
                    return time.perf_counter() - t0

            for i in range(args.runs):
                write_random(src, size)  # fresh bytes: no side may find them stored already
                if i % 2 == 0:
                    ledger_s.append(anyio.run(save_once))
                    t0 = time.perf_counter()
                    client.upload_file(str(src), args.bucket, f"raw/{os.getpid()}/{i}")
                    raw_s.append(time.perf_counter() - t0)
                else:
                    t0 = time.perf_counter()
                    client.upload_file(str(src), args.bucket, f"raw/{os.getpid()}/{i}")
                    raw_s.append(time.perf_counter() - t0)
                    write_random(src, size)
                    ledger_s.append(anyio.run(save_once))
            led_med, raw_med = statistics.median(ledger_s), statistics.median(raw_s)
            mib = size / (1 << 20)
            print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; {args.runs} runs of {mib:.0f} MiB each side")
            print(f"blob URL: {url}")
            for name, med, runs in (("ledger save", led_med, ledger_s), ("raw upload ", raw_med, raw_s)):
                print(f"{name} : median {med:.2f} s  ({mib / med:.0f} MiB/s)  runs {[round(x, 2) for x in runs]}")
            print(f"ratio (ledger throughput / raw): {raw_med / led_med:.2f}  (goal >= 0.8)")
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
