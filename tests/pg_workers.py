"""Child processes for the PostgreSQL multi-process and fault tests (importable by ``spawn``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio

from artifact_ledger import open_ledger


def writer(url: str, cache_dir: str, saves: int, tag: str, ack_path: str, pins: bool = True) -> None:
    """Record ``saves`` artifacts, mixing save, ingest_dir and writer (and pin every third save), writing
    each acknowledged id to ``ack_path`` after its call returned (so a line there means: acknowledged;
    a writer() artifact, whose id the block does not give, is acknowledged as the line ``writer``)."""

    async def main() -> None:
        async with open_ledger(url, cache_dir=cache_dir) as led:
            fac = led.artifacts(run_id=tag, graph_id="g", node_id="n")
            src = Path(cache_dir) / f"src-{tag}.bin"
            with open(ack_path, "a", encoding="utf-8") as acks:
                for i in range(saves):
                    data = f"{tag}-{i}".encode() * 64
                    if i % 5 == 1:
                        d = Path(await fac.stage_dir())
                        (d / "sub").mkdir()
                        (d / "a.txt").write_bytes(data)
                        (d / "sub" / "b.bin").write_bytes(data[::-1])
                        art = await fac.ingest_dir(str(d), labels={"w": tag})
                    elif i % 5 == 2:
                        async with fac.writer(kind="k", planned_ext=".bin", labels={"w": tag}) as f:
                            f.write(data)
                        acks.write("writer\n")
                        acks.flush()
                        continue
                    else:
                        src.write_bytes(data)
                        art = await fac.save(str(src), kind="k", labels={"w": tag}, metrics={"i": i})
                    acks.write(f"{art.artifact_id} {art.seq}\n")
                    acks.flush()
                    if pins and i % 3 == 0:
                        await fac.pin(art.artifact_id)

    anyio.run(main)


def forever_writer(url: str, cache_dir: str, ack_path: str) -> None:
    """Save until killed; every acknowledged id goes to ``ack_path`` (flushed, fsynced) after its call returned."""

    async def main() -> None:
        async with open_ledger(url, cache_dir=cache_dir) as led:
            fac = led.artifacts(run_id="victim", graph_id="g", node_id="n")
            src = Path(cache_dir) / "src.bin"
            fd = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            i = 0
            while True:
                src.write_bytes(f"victim-{i}".encode())
                art = await fac.save(str(src), kind="k", metrics={"i": i})
                os.write(fd, f"{art.artifact_id}\n".encode())
                os.fsync(fd)
                i += 1

    anyio.run(main)


def tailer(url: str, cache_dir: str, expect: int, out_path: str, timeout: float) -> None:
    """Follow the log read-only until ``expect`` artifact records were seen (or ``timeout`` s passed),
    writing ``seq prev_hash hash type artifact_id`` per event, in the order seen."""

    async def main() -> None:
        async with open_ledger(url, cache_dir=cache_dir, read_only=True) as led:
            seen = 0
            last = 0
            deadline = time.monotonic() + timeout
            with open(out_path, "w", encoding="utf-8") as out:
                while seen < expect and time.monotonic() < deadline:
                    async for ev in led.events(since=last + 1):
                        aid = getattr(ev.event, "artifact_id", "")
                        out.write(f"{ev.seq} {ev.prev_hash} {ev.hash} {ev.type} {aid}\n")
                        last = ev.seq
                        if ev.type == "artifact.recorded":
                            seen += 1
                    out.flush()
                    await anyio.sleep(0.002)

    anyio.run(main)
