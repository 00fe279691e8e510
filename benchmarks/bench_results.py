#!/usr/bin/env python3
"""Large result sets on this machine (a script, not a timed test).

On a 20,000-artifact ledger (one run, half of the artifacts labelled
``half="yes"``), prints medians of:
  * a label search returning all 10,000 matches;
  * ``search(metric=, mode=)`` returning all 20,000 ranked;
  * ``list(scope="all")`` returning all 20,000;
each beside its same-run baselines: building the same Artifacts without the
per-row cache (the previous implementation's cost), and building a plain list
of as many small tuples (the floor: "building the list"). The first call after
opening (cold: nothing cached yet) is printed separately.

Usage: ``python benchmarks/bench_results.py [--n 20000] [--reps 15]``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from artifact_ledger.facade import open_ledger
from artifact_ledger.facade.ledger import row_to_artifact
from artifact_ledger.ledger.events import ArtifactRecorded
from artifact_ledger.projections.query import Filter, rank, select


def event_for(i: int, rng: random.Random) -> ArtifactRecorded:
    """One synthetic artifact: every other one is labelled half="yes"."""
    return ArtifactRecorded(
        artifact_id=f"{rng.getrandbits(128):032x}", origin="save", kind="model",
        sha256=hashlib.sha256(i.to_bytes(8, "little")).hexdigest(), size=4096, mime="application/octet-stream",
        labels={"half": "yes" if i % 2 == 0 else "no", "split": ("train", "val", "test")[i % 3], "seed": i % 7},
        metrics={"loss": round(rng.random(), 6), "acc": round(rng.random(), 6)},
        run_id="run0", graph_id=f"g{i % 5}", node_id=f"n{i % 20}", project_id="bench", name=f"a{i}.bin")


async def build(root: Path, n: int) -> None:
    """Append the events through the ledger's own append path (fsync off, 64 at a time)."""
    rng = random.Random(7)
    events = [event_for(i, rng) for i in range(n)]
    async with open_ledger(root, fsync=False) as led:
        async with anyio.create_task_group() as tg:
            for k in range(64):
                async def push(k: int = k) -> None:
                    for ev in events[k::64]:  # noqa: B023  (awaited in this iteration)
                        await led._append(ev)
                tg.start_soon(push)


def med_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:8.2f} ms"


async def main(n: int, reps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ledger"
        await build(root, n)
        async with open_ledger(root) as led:
            fac = led.artifacts(run_id="run0", graph_id="g0", node_id="n0", project_id="bench")
            cat = led.catalog
            cases = {
                f"label search, {n // 2} of {n}": (
                    lambda: fac.search(labels={"half": "yes"}, scope="all"),
                    lambda: select(cat, Filter.build({}, {"half": "yes"}, None)), "<= 15 ms"),
                f"search(metric=, mode=), all {n} ranked": (
                    lambda: fac.search(metric="loss", mode="min", scope="all"),
                    lambda: rank(cat, Filter.build({}, None, None), "loss", "min"), "<= 30 ms"),
                f"list(scope='all'), {n}": (
                    lambda: fac.list(scope="all"),
                    lambda: select(cat, Filter.build({}, None, None)), ""),
            }
            pc = time.perf_counter
            print(f"{'workload':42} {'median':>11} {'cold 1st':>11} {'uncached':>11} {'tuple list':>11}  target")
            for name, (call, rows_of, target) in cases.items():
                t = pc()
                res = await call()
                cold = pc() - t
                warm = []
                for _ in range(reps):
                    t = pc()
                    res = await call()
                    warm.append(pc() - t)
                # The previous implementation: every Artifact built anew from the columns.
                old = []
                for _ in range(reps):
                    t = pc()
                    rows = rows_of()
                    prev = [row_to_artifact(r, bool(cat.pin_now[r.i])) for r in rows]
                    old.append(pc() - t)
                assert prev == res, name
                floor = []
                for _ in range(reps):
                    t = pc()
                    _ = [(i, i, i) for i in range(len(res))]
                    floor.append(pc() - t)
                print(f"{name:42} {med_ms(warm)} {cold * 1000:8.2f} ms {med_ms(old)} {med_ms(floor)}  {target}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    anyio.run(main, a.n, a.reps)
