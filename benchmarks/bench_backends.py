#!/usr/bin/env python3
"""Log backends side by side on this machine (a script, not a timed test).

Prints, for the embedded file log and the PostgreSQL log in the same run:
  * appends/s: 1, 4 and 16 writer processes, each saving 4 KiB files one after
    another (fsync / synchronous_commit on), counted from a common start signal;
  * catch-up latency: process A saves, process B (already open, polling its
    ledger with ``list()``) notes when it first sees each artifact; median and p99
    of B's time minus A's acknowledgement time (one machine, one clock).

  * with ``--worker-open N``: a worker's open plus first save on an N-artifact
    PostgreSQL ledger (wall time, peak RSS of that process), from the shared
    checkpoint and by full replay, and best()/search() latency there; then the
    same on a ledger directory holding the same events, from its checkpoint.

Usage: ``python benchmarks/bench_backends.py [--seconds S] [--samples N] [--pg URL] [--worker-open N]``
(default URL: the loopback test server, database ``test``; a fresh schema is made and dropped).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio

from artifact_ledger import open_ledger
from bench_facade import cpu_model

SPAWN = multiprocessing.get_context("spawn")
R = {"graph_id": "g", "node_id": "n"}


def _target(kind: str, base: str, work: Path) -> tuple[str, dict]:
    """(root, options) of the ledger a process opens for backend ``kind``."""
    if kind == "file":
        return str(work / "ledger"), {}
    cache = work / f"cache-{os.getpid()}"
    return base, {"cache_dir": str(cache)}


def writer(kind: str, base: str, work: str, seconds: float, start, ready, out) -> None:
    """Save 4 KiB files one at a time from the start signal for ``seconds``; report the count."""

    async def main() -> None:
        root, kw = _target(kind, base, Path(work))
        async with open_ledger(root, **kw) as led:
            fac = led.artifacts(run_id=f"w{os.getpid()}", **R)
            src = Path(work) / f"src-{os.getpid()}.bin"
            ready.put(1)
            await anyio.to_thread.run_sync(start.wait)
            n = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                src.write_bytes(os.urandom(4096))
                await fac.save(str(src), kind="bench")
                n += 1
            out.put(n)

    anyio.run(main)


def appends_per_second(kind: str, base: str, work: Path, procs: int, seconds: float) -> float:
    """Total saves/s of ``procs`` writer processes started together."""
    start = SPAWN.Event()
    ready, out = SPAWN.Queue(), SPAWN.Queue()
    ps = [SPAWN.Process(target=writer, args=(kind, base, str(work), seconds, start, ready, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    for _ in ps:
        ready.get(timeout=120)
    t0 = time.monotonic()
    start.set()
    total = sum(out.get(timeout=seconds + 120) for _ in ps)
    wall = time.monotonic() - t0
    for p in ps:
        p.join(60)
    return total / wall


def follower(kind: str, base: str, work: str, samples: int, ready, out) -> None:
    """Poll the ledger until ``samples`` artifacts were seen; report (artifact id, time first seen)."""

    async def main() -> None:
        root, kw = _target(kind, base, Path(work))
        async with open_ledger(root, **kw) as led:
            fac = led.artifacts(run_id="lat", **R)
            seen: dict[str, float] = {}
            ready.put(1)
            while len(seen) < samples:
                for a in await fac.list():
                    if a.artifact_id not in seen:
                        seen[a.artifact_id] = time.time()
                await anyio.sleep(0)
            out.put(seen)

    anyio.run(main)


def catch_up_latency(kind: str, base: str, work: Path, samples: int) -> tuple[float, float]:
    """(median, p99) seconds from A's acknowledgement to B's first sight of the artifact."""
    ready, out = SPAWN.Queue(), SPAWN.Queue()
    b = SPAWN.Process(target=follower, args=(kind, base, str(work), samples, ready, out))
    b.start()
    ready.get(timeout=120)
    acked: dict[str, float] = {}

    async def main() -> None:
        root, kw = _target(kind, base, work)
        async with open_ledger(root, **kw) as led:
            fac = led.artifacts(run_id="lat", **R)
            src = work / "lat.bin"
            for _ in range(samples):
                src.write_bytes(os.urandom(4096))
                art = await fac.save(str(src), kind="bench")
                acked[art.artifact_id] = time.time()
                await anyio.sleep(0.005)

    anyio.run(main)
    seen = out.get(timeout=120)
    b.join(60)
    lat = sorted(max(0.0, seen[a] - t) for a, t in acked.items())
    return statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def build_big(url: str, n: int, work: Path) -> None:
    """An n-artifact ledger of synthetic events (appended in batches of 5,000), then a shared checkpoint."""
    import random

    from artifact_ledger.ledger.events import ArtifactRecorded, encode_event

    rng = random.Random(5)

    async def fill() -> None:
        async with open_ledger(url, cache_dir=str(work / "builder"), fsync=False, checkpoint_every=10**12) as led:
            for start in range(0, n, 5000):
                evs = [encode_event(ArtifactRecorded(
                    artifact_id=f"{rng.getrandbits(128):032x}", origin="save", kind=("model", "plot")[i % 2],
                    sha256=f"{i:064x}", size=4096, mime="application/octet-stream",
                    labels={"split": ("train", "val", "test")[i % 3], "tag": f"t{i % 1000}"},
                    metrics={"loss": rng.random()}, run_id=f"run{i % 100:03d}", graph_id=f"g{i % 5}",
                    node_id=f"n{i % 20}", project_id="bench", name=f"a{i}.bin"))
                    for i in range(start, min(n, start + 5000))]
                # Straight into the log (nothing else runs on this ledger): the builder's own catalogue
                # stays empty; the checkpoint below is taken by a fresh open that replays it all.
                await anyio.to_thread.run_sync(led._log.append_batch, evs, lambda r: None)

    async def snapshot() -> None:
        async with open_ledger(url, cache_dir=str(work / "builder")) as led:
            await led.checkpoint()

    anyio.run(fill)
    anyio.run(snapshot)


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that over fork and exec, so a spawned
    child would report its parent's peak (here, the builder's) whenever that was higher."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker_open(url: str, cache: str, out) -> None:
    """Open, save one 4 KiB file, time best()/search(); report (open+save s, peak RSS MiB, best s, search s)."""
    async def run() -> None:
        t0 = time.perf_counter()
        async with open_ledger(url, cache_dir=cache) as led:
            src = Path(cache) / "one.bin"
            src.write_bytes(os.urandom(4096))
            fac = led.artifacts(run_id="run007", graph_id="g2", node_id="n7", project_id="bench")
            await fac.save(str(src), kind="model")
            opened = time.perf_counter() - t0
            bests, searches = [], []
            for _ in range(20):
                t = time.perf_counter()
                await fac.best(kind="model", metric="loss", mode="min", scope="run")
                bests.append(time.perf_counter() - t)
                t = time.perf_counter()
                await fac.search(labels={"tag": "t7"}, scope="project")
                searches.append(time.perf_counter() - t)
            rss = peak_rss_mib()
            out.put((opened, rss, statistics.median(bests), statistics.median(searches)))

    anyio.run(run)


def worker_figures(url: str, work: Path) -> tuple[float, float, float, float]:
    """worker_open in a fresh process with a fresh cache."""
    out = SPAWN.Queue()
    cache = work / f"worker-{uuid.uuid4().hex[:6]}"
    cache.mkdir()
    p = SPAWN.Process(target=worker_open, args=(url, str(cache), out))
    p.start()
    res = out.get(timeout=1800)
    p.join(60)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each appends/s run")
    ap.add_argument("--samples", type=int, default=200, help="artifacts timed for catch-up latency")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test", help="PostgreSQL database URL")
    ap.add_argument("--worker-open", type=int, default=0, metavar="N",
                    help="also time a worker's open + first save on an N-artifact PostgreSQL ledger")
    ap.add_argument("--skip-rates", action="store_true", help="skip appends/s and catch-up latency")
    args = ap.parse_args()
    import psycopg

    cpu = cpu_model()
    print(f"machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
          f"Python {sys.version.split()[0]}")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in args.pg else "?"
    url = f"{args.pg}{sep}schema={schema}"
    try:
        if args.worker_open:
            with tempfile.TemporaryDirectory(prefix="bench-backends-") as d:
                big = f"{args.pg}{sep}schema={schema}_big"
                t0 = time.perf_counter()
                build_big(big, args.worker_open, Path(d))
                print(f"built a {args.worker_open}-artifact PostgreSQL ledger in {time.perf_counter() - t0:.1f} s")
                # The same events in a ledger directory: the embedded backend's figures, for comparison.
                local = str(Path(d) / "file-ledger")
                build_big(local, args.worker_open, Path(d))
                for how in ("shared checkpoint", "full replay", "file log, its checkpoint"):
                    if how == "full replay":
                        with psycopg.connect(args.pg, autocommit=True) as conn:
                            conn.execute(f'DELETE FROM "{schema}_big".checkpoints')
                    opened, rss, b, srch = worker_figures(local if how.startswith("file") else big, Path(d))
                    print(f"worker open + first save ({how}): {opened:.2f} s, peak RSS {rss:.0f} MiB; "
                          f"best() median {b * 1e6:.0f} us, search() median {srch * 1e6:.0f} us")
        for kind in () if args.skip_rates else ("file", "postgres"):
            for procs in (1, 4, 16):
                with tempfile.TemporaryDirectory(prefix="bench-backends-") as d:
                    base = url if kind == "file" else f"{args.pg}{sep}schema={schema}_{procs}"
                    rate = appends_per_second(kind, base, Path(d), procs, args.seconds)
                print(f"{kind:8s} appends/s, {procs:2d} writer processes (4 KiB, durable): {rate:8.0f}")
            with tempfile.TemporaryDirectory(prefix="bench-backends-") as d:
                base = url if kind == "file" else f"{args.pg}{sep}schema={schema}_lat"
                med, p99 = catch_up_latency(kind, base, Path(d), args.samples)
            print(f"{kind:8s} catch-up A->B: median {med * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms "
                  f"({args.samples} artifacts)")
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            for row in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (f"{schema}%",)):
                conn.execute(f'DROP SCHEMA "{row[0]}" CASCADE')


if __name__ == "__main__":
    main()
