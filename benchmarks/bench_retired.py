#!/usr/bin/env python3
"""What a few retirements cost the reads: best/count/search on a 20,000-artifact ledger (a script, not a test).

A retired artifact is hidden from best, count and search. Prints the median latency of each query on the
same ledger before and after retiring a few artifacts (those that lead the rankings, so each answer changes).

With ``--bulk N`` the N newest artifacts are retired as well, as a large purge would leave them.

Usage: ``python benchmarks/bench_retired.py [--runs 20] [--per-run 1000] [--retire 5] [--reps 30] [--bulk N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import anyio
from bench_facade import cpu_model

from artifact_ledger import open_ledger
from artifact_ledger.ledger.events import ArtifactRecorded

KINDS = ("model", "image", "table", "checkpoint")


def event(i: int, run: int, rng: random.Random) -> ArtifactRecorded:
    metrics = {"loss": round(rng.random(), 6)}
    if i % 2 == 0:
        metrics["acc"] = round(rng.random(), 6)
    return ArtifactRecorded(
        artifact_id=f"{rng.getrandbits(128):032x}", origin="save", kind=KINDS[i % len(KINDS)],
        sha256=hashlib.sha256(i.to_bytes(8, "little")).hexdigest(), size=4096, mime="application/octet-stream",
        labels={"split": ("train", "val", "test")[i % 3], "seed": i % 7}, metrics=metrics,
        run_id=f"run{run:03d}", graph_id="g", node_id=f"n{i % 20}", project_id="bench", name=f"a{i}.bin")


QUERIES = {
    "best(scope=run)": lambda fa: fa.best(kind="model", metric="acc", mode="max"),
    "best(scope=all)": lambda fa: fa.best(kind="model", metric="acc", mode="max", scope="all"),
    "count(scope=all)": lambda fa: fa.count(scope="all"),
    "count(kind, metric, all)": lambda fa: fa.count(kind="model", metric="loss", scope="all"),
    "search(metric, all, limit=10)": lambda fa: fa.search(metric="loss", mode="min", scope="all", limit=10),
    "search(kind, label, all, limit=10)": lambda fa: fa.search(kind="image", labels={"split": "val"}, scope="all",
                                                               limit=10),
    "search(all, limit=10)": lambda fa: fa.search(scope="all", limit=10),
}


async def timings(fa, reps: int) -> dict[str, float]:
    out = {}
    for name, q in QUERIES.items():
        await q(fa)  # warm: metric columns and best tables are built once, on first use
        ns = []
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            await q(fa)
            ns.append(time.perf_counter_ns() - t0)
        out[name] = statistics.median(ns) / 1000
    return out


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        async with await open_ledger(Path(tmp) / "ledger", fsync=False) as led:
            for run in range(args.runs):
                evs = [event(run * args.per_run + j, run, rng) for j in range(args.per_run)]
                async with anyio.create_task_group() as tg:
                    for k in range(32):
                        async def push(k: int = k) -> None:
                            for ev in evs[k::32]:  # noqa: B023  (awaited in this iteration)
                                await led._append(ev)
                        tg.start_soon(push)
            fa = led.artifacts(run_id="run000", graph_id="g", node_id="n0", project_id="bench")
            before = await timings(fa, args.reps)
            for _ in range(args.retire):
                # Retire the current leaders: every answer above has to look past them.
                for q in (QUERIES["best(scope=run)"], QUERIES["best(scope=all)"]):
                    lead = await q(fa)
                    if lead is not None and len(led.catalog.life.retired) < args.retire:
                        await fa.retire(lead.artifact_id, "bench")
                top = await QUERIES["search(all, limit=10)"](fa)
                if top and len(led.catalog.life.retired) < args.retire:
                    await fa.retire(top[0].artifact_id, "bench")
            if args.bulk:
                # Many retirements at once, as a large purge leaves them: the newest artifacts, which
                # newest-first searches meet first (retired straight through the log, without the checks).
                from artifact_ledger.ledger.events import Retired

                cat = led.catalog
                for aid in [cat.ids[i] for i in range(len(cat.ids) - 1, -1, -1)][:args.bulk]:
                    if aid not in cat.life.retired:
                        await led._append(Retired(artifact_id=aid, reason="bench"))
            after = await timings(fa, args.reps)
            print(f"machine: {os.cpu_count()} cpus, {cpu_model()}, python {platform.python_version()}")
            print(f"ledger: {args.runs * args.per_run} artifacts; {len(led.catalog.life.retired)} retired; "
                  f"median of {args.reps}")
            print(f"{'query':40} {'no retired':>12} {'retired':>12} {'ratio':>7}")
            for name in QUERIES:
                print(f"{name:40} {before[name]:10.1f}us {after[name]:10.1f}us {after[name] / before[name]:6.1f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--per-run", type=int, default=1000)
    ap.add_argument("--retire", type=int, default=5)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--bulk", type=int, default=0, metavar="N", help="then retire the N newest artifacts too")
    anyio.run(main, ap.parse_args())
