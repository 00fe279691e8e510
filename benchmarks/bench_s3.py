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

With ``--verify N`` it instead saves N small artifacts and times ``verify()`` over them, one read at a
time (``read_concurrency=1``, the previous walk) against the store's default, alternating.

Usage: ``python benchmarks/bench_s3.py [--mib 256] [--runs 5] [--external] [--verify N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bench_facade import cpu_model  # noqa: E402


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
    ap.add_argument("--verify", type=int, default=0, metavar="N",
                    help="time verify() over N small artifacts instead of a large save")
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
            if args.verify:
                bench_verify(work, args.bucket, args.verify, args.runs)
                return
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


def bench_verify(work: Path, bucket: str, n: int, runs: int) -> None:
    """verify() over ``n`` small S3 blobs: one read at a time against the store's read_concurrency."""
    from artifact_ledger.facade import open_ledger

    url = f"s3://{bucket}/verify-{os.getpid()}"
    times: dict[int, list[float]] = {}

    async def main() -> None:
        async with open_ledger(work / "V", blobs=url, cache_dir=work / "vcache") as led:
            fa = led.artifacts(run_id="bench", graph_id="g", node_id="n")
            for _ in range(n):
                src = work / "small.bin"
                src.write_bytes(os.urandom(4096))
                await fa.save(str(src), kind="bin")
            store = led.store
            default = store.read_concurrency
            for r in range(runs):
                for width in ((1, default) if r % 2 == 0 else (default, 1)):
                    store.read_concurrency = width
                    t0 = time.perf_counter()
                    res = await led.verify()
                    times.setdefault(width, []).append(time.perf_counter() - t0)
                    assert res.ok and res.blobs == n, res.problems
            store.read_concurrency = default

    anyio.run(main)
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; load {os.getloadavg()[0]:.1f}; {n} blobs of 4 KiB, "
          f"{runs} runs each")
    one, many = (statistics.median(times[w]) for w in sorted(times))
    for w in sorted(times):
        print(f"verify, read_concurrency={w:<3}: median {statistics.median(times[w]):.2f} s  "
              f"({n / statistics.median(times[w]):.0f} blobs/s)  runs {[round(x, 2) for x in times[w]]}")
    print(f"speed-up: {one / many:.1f}x")


if __name__ == "__main__":
    main()
