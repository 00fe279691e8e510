#!/usr/bin/env python3
"""GC benchmark on the 1,000,000-event ledger of bench_history.py (a script; nothing is asserted on time).

On a copy of that ledger (its 1,000 pool blobs shared by 990,000 artifacts), purges every artifact over
the first ``--purge-blobs`` pool blobs, adds ``--orphans`` unreferenced blobs (as crashed saves leave),
then times:
  * gc(dry_run=True) without a policy, and with a keep_best policy (planner over every artifact);
  * gc(dry_run=False) (plan, record, sweep under the log lock, result),
and compares the bytes reclaimed with the bytes expected (computed independently from the recipe).

Usage: ``python benchmarks/bench_gc.py [--quick] [--purge-blobs 100] [--orphans 1000]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_history as bh  # noqa: E402
from bench_facade import cpu_model  # noqa: E402

from artifact_ledger.facade import open_ledger  # noqa: E402
from artifact_ledger.ledger.events import Purged  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the 100,000-event ledger instead")
    ap.add_argument("--purge-blobs", type=int, default=100)
    ap.add_argument("--orphans", type=int, default=1000)
    args = ap.parse_args()
    runs = (bh.QUICK if args.quick else bh.FULL)["runs"]
    src, built = bh.cached(f"{runs * bh.EVENTS_PER_RUN}", ["build-big", str(runs)], False)
    if built is not None:
        print(f"built the {runs * bh.EVENTS_PER_RUN:,}-event ledger in {built:.0f} s (cached for reruns)")
    work = Path(tempfile.mkdtemp(prefix="bench-gc-"))
    root = work / "ledger"
    try:
        t = time.perf_counter()
        shutil.copytree(src, root)
        print(f"copied it in {time.perf_counter() - t:.1f} s")
        return anyio.run(bench, root, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def bench(root: Path, args: argparse.Namespace) -> int:
    t = time.perf_counter()
    async with await open_ledger(root, fsync=False) as led:
        print(f"opened in {time.perf_counter() - t:.2f} s: {led.catalog.head_seq:,} events, "
              f"{led.catalog.n:,} artifacts")
        cat = led.catalog
        doomed = set(sorted(set(cat.sha_hex(i) for i in range(cat.n)))[: args.purge_blobs])
        victims = [cat.ids[i] for i in range(cat.n) if cat.sha_hex(i) in doomed]
        expected = sum(os.path.getsize(led.store.path(s)) for s in doomed)
        t = time.perf_counter()
        for k in range(0, len(victims), 2000):
            async with anyio.create_task_group() as tg:  # group commit: many purges share a batch
                for aid in victims[k:k + 2000]:
                    tg.start_soon(led._append, Purged(artifact_id=aid, reason="bench", force=True))
        print(f"recorded {len(victims):,} purges (every artifact over {len(doomed)} blobs) in "
              f"{time.perf_counter() - t:.1f} s")
        orphan_bytes = 0
        for j in range(args.orphans):
            data = f"orphan {j}".encode() * 100
            led.store.put_bytes(data)
            orphan_bytes += len(data)
        led.store.make_durable()
        old = time.time() - 7200
        for sha in led.store.iter_blobs():
            os.utime(led.store.path(sha), (old, old))
        expected += orphan_bytes
        t = time.perf_counter()
        plan = await led.gc(grace=3600)
        plan_s = time.perf_counter() - t
        print(f"gc plan (no policy): {plan_s:.2f} s; {len(plan.blobs)} blobs, {plan.bytes:,} bytes "
              f"({plan.collectable} collectable, {plan.orphans} orphans)")
        pol = {"keep_best": [{"kind": "model", "metric": "acc", "mode": "max", "k": 5, "scope": "run"}]}
        t = time.perf_counter()
        ppol = await led.gc(pol, grace=3600)
        print(f"gc plan (keep_best k=5 per run over {led.catalog.n:,} artifacts): {time.perf_counter() - t:.2f} s; "
              f"selects {len(ppol.purge):,} artifacts, {len(ppol.blobs)} blobs")
        t = time.perf_counter()
        res = await led.gc(dry_run=False, grace=3600)
        run_s = time.perf_counter() - t
        print(f"gc run (plan + record + sweep + result): {run_s:.2f} s; deleted {res.blobs} blobs, "
              f"{res.bytes:,} bytes reclaimed; expected {expected:,} bytes: "
              f"{'MATCH' if res.bytes == expected else 'MISMATCH'}")
        t = time.perf_counter()
        v = await led.verify()
        print(f"verify after gc: ok={v.ok}, {len(v.collected)} collected, in {time.perf_counter() - t:.1f} s")
    print(f"machine: {os.cpu_count()} cpus, {cpu_model()}, {platform.platform()}")
    return 0 if res.bytes == expected and v.ok else 1


if __name__ == "__main__":
    sys.exit(main())
