#!/usr/bin/env python3
"""Cost of one registered trivial projection (a script, not a timed test).

Prints, for the machine it runs on, in the same run and interleaved:
  * append throughput (events/s, fsync on, 64 concurrent tasks) with no projection and with one
    registered trivial projection (a counter with a codec);
  * opening a 100,000-event ledger: no projection; the projection registered with its checkpoint
    current; registered without a checkpoint (it folds the whole log on open); and with neither the
    catalogue's nor the projection's checkpoint (both replay everything).

Usage: ``python benchmarks/bench_projections.py [--quick] [--events N] [--appends N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger.events import ArtifactRecorded
from bench_facade import cpu_model, store_pool  # its pool of real 4 KiB blobs


class Count:
    """The trivial projection: events seen."""

    name = "count"
    version = 1

    def initial(self) -> int:
        return 0

    def apply(self, state: int, event: object) -> int:
        return state + 1

    def apply_batch(self, state: int, events: list) -> int:
        return state + len(events)

    def encode(self, state: int) -> bytes:
        return str(state).encode()

    def decode(self, data: bytes) -> int:
        return int(data)


def event(i: int, pool: list[str]) -> ArtifactRecorded:
    return ArtifactRecorded(artifact_id=f"{i:032x}", origin="save", kind="model", sha256=pool[i % len(pool)],
                            size=4096, mime="application/octet-stream", labels={"split": "train", "i": i},
                            metrics={"loss": (i % 97) / 97}, run_id=f"run-{i % 100}", graph_id="g", node_id="n")


async def append_all(led, start: int, n: int, tasks: int, pool: list[str]) -> None:
    async def lane(k: int) -> None:
        for i in range(start + k, start + n, tasks):
            await led._append(event(i, pool))

    async with anyio.create_task_group() as tg:
        for k in range(tasks):
            tg.start_soon(lane, k)


async def appends_per_s(root: Path, n: int, projections: list) -> float:
    shutil.rmtree(root, ignore_errors=True)
    pool = store_pool(root)
    async with open_ledger(root, fsync=True, projections=projections) as led:
        t = time.perf_counter()
        await append_all(led, 0, n, 64, pool)
        dt = time.perf_counter() - t
        if projections:
            assert (await led.project(Count())).state == n
    return n / dt


async def open_s(root: Path, projections: list) -> float:
    t = time.perf_counter()
    async with open_ledger(root, fsync=False, projections=projections) as led:
        dt = time.perf_counter() - t
        if projections:
            assert (await led.project(Count())).state == led.head[0]
        # Leave the checkpoints as they were: nothing moved, so close writes none.
    return dt


def machine() -> str:
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu_model()}), " \
        f"Python {sys.version.split()[0]}"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--appends", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.events, args.appends, args.rounds = 10_000, 2_000, 2
    print(machine())
    tmp = Path(tempfile.mkdtemp(prefix="bench-projections-"))
    try:
        rates: dict[str, list[float]] = {"none": [], "one": []}
        for _ in range(args.rounds):
            rates["none"].append(await appends_per_s(tmp / "appends", args.appends, []))
            rates["one"].append(await appends_per_s(tmp / "appends", args.appends, [Count()]))
        none, one = statistics.median(rates["none"]), statistics.median(rates["one"])
        print(f"append, fsync on, 64 tasks, {args.appends} events: no projection {none:,.0f}/s, "
              f"one registered {one:,.0f}/s ({(one / none - 1) * 100:+.1f}%)")

        big = tmp / "big"
        pool = store_pool(big)
        async with open_ledger(big, fsync=False, checkpoint_every=10**9, projections=[Count()]) as led:
            await append_all(led, 0, args.events, 256, pool)
        ckpts = big / "checkpoints"
        pfile = ckpts / "projections" / "count.v1.pckpt"
        saved = pfile.read_bytes()
        catalogue = {p.name: p.read_bytes() for p in ckpts.iterdir() if p.is_file()}

        def restore(cat: bool, proj: bool) -> None:
            """Put back exactly the checkpoints a measurement starts from (closing may write new ones)."""
            for p in ckpts.iterdir():
                if p.is_file():
                    p.unlink()
            pfile.unlink(missing_ok=True)
            if cat:
                for name, data in catalogue.items():
                    (ckpts / name).write_bytes(data)
            if proj:
                pfile.write_bytes(saved)

        cases = {"none": (True, True, []), "ckpt": (True, True, [Count()]), "fold": (True, False, [Count()]),
                 "replay-none": (False, False, []), "replay-one": (False, False, [Count()])}
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.rounds):
            for k, (cat, proj, projections) in cases.items():
                restore(cat, proj)
                times[k].append(await open_s(big, projections))
        m = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(f"open, {args.events:,} events, catalogue checkpoint at head: no projection {m['none']:.0f} ms; "
              f"one registered with its checkpoint {m['ckpt']:.0f} ms; "
              f"one registered without its checkpoint (folds the whole log) {m['fold']:.0f} ms")
        print(f"open, {args.events:,} events, no checkpoints (full replay): no projection {m['replay-none']:.0f} ms; "
              f"one registered {m['replay-one']:.0f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    anyio.run(main)
