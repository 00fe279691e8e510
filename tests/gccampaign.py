"""GC under concurrency: writer processes save identical and distinct bytes (and purge some of their own
artifacts, so the shared blob keeps becoming collectable) while another process runs gc in a loop and is
SIGKILLed at seeded random moments. Afterwards every acknowledged artifact not purged must load with its
exact bytes, and verify() must pass (collected blobs allowed, missing ones not).

Used by tests/test_gc.py (bounded) and benchmarks/gc_kill_campaign.py (long).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

SHARED = [b"the very same bytes", b"another shared blob"]


def writer_main(root: str, report: str, scratch: str, seed: int, saves: int, stop: str) -> None:
    """Save artifacts (half over shared bytes) until ``stop`` exists (at most ``saves``), purge some; log every
    acknowledgement to ``report``."""
    import anyio

    from artifact_ledger.facade import open_ledger

    rnd = random.Random(seed)

    async def main() -> None:
        async with await open_ledger(root, fsync=False) as led:
            fa = led.artifacts(run_id=f"w{seed}", graph_id="g", node_id="n")
            real_put = led.store.put_file

            def slow_put(path, adopt=False):  # type: ignore[no-untyped-def]
                # A slow writer: the gap between finding a blob present and appending the event that
                # names it is where a gc may delete it; widened so the campaign meets that moment.
                info = real_put(path, adopt=adopt)
                time.sleep(rnd.uniform(0, 0.01))
                return info

            led.store.put_file = slow_put  # type: ignore[method-assign]
            with open(report, "a", buffering=1) as out:
                mine: list[str] = []
                for i in range(saves):
                    if os.path.exists(stop):
                        break
                    data = rnd.choice(SHARED) if rnd.random() < 0.5 else f"{seed}-{i}-{rnd.random()}".encode()
                    how = rnd.choice(["save", "ingest", "dir"])
                    if how == "save":
                        p = Path(scratch) / f"{seed}-{i}.bin"
                        p.write_bytes(data)
                        art = await fa.save(str(p), kind="blob")
                    elif how == "ingest":
                        staged = await fa.stage(".bin")
                        Path(staged).write_bytes(data)
                        art = await fa.ingest(staged, kind="blob")
                    else:
                        d = Path(await fa.stage_dir())
                        (d / "f.bin").write_bytes(data)
                        art = await fa.ingest_dir(str(d))
                    out.write(f"A {art.artifact_id} {how} {data.hex()}\n")
                    if data in SHARED and rnd.random() < 0.9:
                        # Shared bytes mostly purged at once: their blob keeps becoming collectable while
                        # the other writers keep saving the very same bytes.
                        await fa.purge(art.artifact_id, "campaign")
                        out.write(f"P {art.artifact_id}\n")
                        continue
                    mine.append(art.artifact_id)
                    if rnd.random() < 0.3 and mine:
                        victim = mine.pop(rnd.randrange(len(mine)))
                        await fa.purge(victim, "campaign")
                        out.write(f"P {victim}\n")

    anyio.run(main)


def gc_main(root: str, ready: str) -> None:
    """Run gc (grace 0: everything unneeded goes at once) in a loop until killed; ``ready`` once open."""
    import anyio

    from artifact_ledger.facade import open_ledger

    async def main() -> None:
        async with await open_ledger(root, fsync=False) as led:
            Path(ready).touch()
            while True:
                await led.gc(dry_run=False, grace=0)

    anyio.run(main)


@dataclass
class Tally:
    """What a campaign saw."""

    kills: int = 0
    acknowledged: int = 0
    purged: int = 0
    checked: int = 0
    collected: int = 0
    gc_runs: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for people."""
        return (f"{self.kills} gc kills, {self.acknowledged} artifacts acknowledged ({self.purged} purged), "
                f"{self.checked} loaded back exactly, {self.collected} blobs collected, {self.gc_runs} gc results, "
                f"{len(self.failures)} failures")


def run_campaign(directory: Path, kills: int, seed: int, *, writers: int = 2, saves: int = 2000) -> Tally:
    """Writers save while a gc process is SIGKILLed ``kills`` times at random moments; then check."""
    import anyio

    from artifact_ledger.facade import open_ledger

    rnd = random.Random(seed)
    root = str(directory / "ledger")
    scratch = directory / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    report = str(directory / "acks.txt")

    async def create() -> None:
        async with await open_ledger(root, fsync=False):
            pass
    anyio.run(create)
    ctx = multiprocessing.get_context("forkserver")
    tally = Tally()
    stop = str(directory / "stop")
    procs = [ctx.Process(target=writer_main, args=(root, report, str(scratch), seed * 100 + w, saves, stop),
                         daemon=True) for w in range(writers)]
    for p in procs:
        p.start()
    while tally.kills < kills:
        ready = directory / f"ready.{tally.kills}"
        g = ctx.Process(target=gc_main, args=(root, str(ready)), daemon=True)
        g.start()
        while not ready.exists() and g.is_alive():
            time.sleep(0.005)
        # Killed somewhere in its loop: planning, recording the plan, deleting under the lock, or recording
        # the result (a gc of this small ledger takes a few milliseconds to a few tens of them).
        time.sleep(rnd.uniform(0.0, 0.15))
        os.kill(g.pid, signal.SIGKILL)  # type: ignore[arg-type]
        g.join()
        tally.kills += 1
    Path(stop).touch()
    for p in procs:
        p.join(timeout=300)
        if p.exitcode != 0:
            tally.failures.append(f"writer exited with {p.exitcode}")
    arts: dict[str, tuple[str, bytes]] = {}
    purged: set[str] = set()
    for line in Path(report).read_text().splitlines():
        parts = line.split()
        if parts[0] == "A":
            arts[parts[1]] = (parts[2], bytes.fromhex(parts[3]) if len(parts) > 3 else b"")
        else:
            purged.add(parts[1])
    tally.acknowledged, tally.purged = len(arts), len(purged)

    async def check() -> None:
        async with await open_ledger(root, fsync=False) as led:
            await led.gc(dry_run=False, grace=0)  # one last, unkilled gc finishes every open plan
            fa = led.artifacts(run_id="x", graph_id="g", node_id="n")
            for aid, (how, data) in arts.items():
                if aid in purged:
                    continue
                uri = f"artifact://{aid}"
                try:
                    if how == "dir":
                        got = (Path(await fa.load_artifact(uri)) / "f.bin").read_bytes()
                    else:
                        got = await fa.load_artifact_bytes(uri)
                except Exception as exc:  # noqa: BLE001  (any failure to load is what the campaign counts)
                    tally.failures.append(f"{aid} ({how}) does not load: {exc!r}")
                    continue
                if got != data:
                    tally.failures.append(f"{aid} ({how}) loads other bytes")
                tally.checked += 1
            v = await led.verify()
            if not v.ok:
                tally.failures.extend(f"verify: {p}" for p in v.problems)
            tally.collected = len(v.collected)
            tally.gc_runs = len(led.catalog.life.sweeps) - 1  # results of the killed gcs (not the last one)
            if led.catalog.life.open_plans():
                tally.failures.append(f"plans left open: {led.catalog.life.open_plans()}")
    anyio.run(check)
    return tally
