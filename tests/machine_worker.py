"""A "machine" of tests/test_many_machines.py: a process that shares nothing with the others but the log URL
(PostgreSQL) and the blob URL (S3). Run as a script, it is either a worker or the tailer.

``machine_worker.py work LOG BLOBS CACHE TAG COUNT ACKS [HOLD_AFTER]`` records COUNT artifacts (COUNT 0: until
killed) from TASKS concurrent tasks, mixing save, writer, ingest_dir and pin. After each call returned it appends
one line to ACKS and fsyncs it, so a line there means: acknowledged. ``art <id> <op> <i>`` names an artifact
whose bytes ``content(TAG, op, i)`` (``tree(...)`` for a directory) gives back; ``pin <id> <0|1>`` a pin change.
With HOLD_AFTER, once that many artifacts are acknowledged two more saves start that stop forever at chosen
points, for the test to SIGKILL the process there while the other tasks go on: one after its first multipart
part was acknowledged (``held multipart <sha>``), one after its object was uploaded but before its event was
appended (``held uploaded <sha>``).

``machine_worker.py tail LOG CACHE OUT`` follows the log read-only with its own cache, writing
``seq prev_hash hash type artifact_id`` per event in the order seen, until it has seen the seq written on its
stdin (the parent writes it once every worker is done).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from artifact_ledger import open_ledger

TASKS = 2  # concurrent calls per process, so appends of one process share transactions too
OPS = ("save", "save", "writer", "dir", "save", "writer", "dir", "pin")
SHARED = b"the same bytes from every machine\n" * 8  # uploaded concurrently by all: create-if-absent
BIG = 11 << 20  # three 5 MiB parts in the holding worker's multipart upload
TAIL_TIMEOUT = 300.0


def content(tag: str, op: str, i: int) -> bytes:
    """The bytes artifact ``i`` of worker ``tag`` saved or wrote (small, distinct; every 25th one shared)."""
    if op == "save" and i % 25 == 0:
        return SHARED
    seed = hashlib.sha256(f"{tag}/{op}/{i}".encode()).digest()
    return seed * (4 + i % 29)


def tree(tag: str, i: int) -> dict[str, bytes]:
    """The files (relative path -> bytes) of directory artifact ``i`` of worker ``tag``."""
    data = content(tag, "dir", i)
    return {"a.txt": data, "sub/b.bin": data[::-1], "shared.txt": SHARED}


def big_content(tag: str) -> bytes:
    """The holding worker's multipart file: distinct per worker, made without a large random read."""
    block = hashlib.sha256(f"big/{tag}".encode()).digest() * 2048
    return (block * (BIG // len(block) + 1))[:BIG]


class Acks:
    """The ack file: one line per acknowledged call, fsynced before the next call starts."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())
        os.fsync(self.fd)


def _forever(acks: Acks, line: str) -> None:
    acks.write(line)
    threading.Event().wait()  # this call never returns; the rest of the process goes on until killed


def hold_points(store: Any, acks: Acks, multipart_sha: str, uploaded_name: str) -> None:
    """Make two chosen saves stop for good: one mid-multipart, one between its upload and its append."""
    upload_part = store._upload_part
    put_file = store.put_file

    def held_upload_part(key: str, upload_id: str, number: int, data: bytes, doing: str) -> Any:
        if key.endswith(multipart_sha) and number == 2:
            _forever(acks, f"held multipart {multipart_sha} {upload_id}")
        return upload_part(key, upload_id, number, data, doing)

    def held_put_file(path: Any, **kw: Any) -> Any:
        info = put_file(path, **kw)
        if Path(path).name == uploaded_name:
            _forever(acks, f"held uploaded {info.sha256}")
        return info

    store._upload_part = held_upload_part
    store.put_file = held_put_file


async def work(log: str, blobs: str, cache: str, tag: str, count: int, ack_path: str, hold_after: int) -> None:
    """Record ``count`` artifacts (0: until killed) from TASKS tasks, acknowledging each in ``ack_path``."""
    acks = Acks(ack_path)
    scratch = Path(cache) / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    async with open_ledger(log, blobs=blobs, cache_dir=cache) as led:
        recorded = 0
        held = anyio.Event()

        async def hold() -> None:
            big = scratch / "big.bin"
            big.write_bytes(big_content(tag))
            small = scratch / "hold-after-upload.bin"
            small.write_bytes(content(tag, "held", 0))
            hold_points(led.store, acks, hashlib.sha256(big.read_bytes()).hexdigest(), small.name)
            holders = led.artifacts(run_id=tag, graph_id="g", node_id="held")
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(holders.save, str(big), kind="big"))
                tg.start_soon(partial(holders.save, str(small), kind="held"))

        async def one_task(t: int) -> None:
            nonlocal recorded
            fa = led.artifacts(run_id=tag, graph_id="g", node_id=f"n{t}")  # one per task: its last_artifact
            last: str | None = None
            i = t
            while not count or recorded < count:
                op = OPS[i % len(OPS)]
                if op == "pin":
                    if last is not None:
                        pinned = (i // len(OPS)) % 3 != 2
                        await fa.pin(last, pinned)
                        acks.write(f"pin {last} {int(pinned)}")
                    i += TASKS
                    continue
                if op == "save":
                    src = scratch / f"src-{t}.bin"
                    src.write_bytes(content(tag, op, i))
                    art = await fa.save(str(src), kind="blob", labels={"op": op}, metrics={"i": i})
                elif op == "writer":
                    async with fa.writer(kind="blob", planned_ext=".bin", metrics={"i": i}) as f:
                        f.write(content(tag, op, i))
                    assert fa.last_artifact is not None
                    art = fa.last_artifact
                else:
                    d = Path(await fa.stage_dir())
                    (d / "sub").mkdir()
                    for rel, data in tree(tag, i).items():
                        (d / rel).write_bytes(data)
                    art = await fa.ingest_dir(str(d), kind="dir", metrics={"i": i})
                acks.write(f"art {art.artifact_id} {op} {i}")
                last = art.artifact_id
                recorded += 1
                if hold_after and recorded >= hold_after and not held.is_set():
                    held.set()
                    tg.start_soon(hold)
                i += TASKS

        async with anyio.create_task_group() as tg:
            for t in range(TASKS):
                tg.start_soon(one_task, t)


async def tail(log: str, cache: str, out_path: str) -> None:
    """Follow the log until the seq given on stdin was seen, writing each event as it is seen."""
    target: list[int] = []

    def read_target() -> None:
        line = sys.stdin.readline()
        target.append(int(line) if line.strip() else 0)

    threading.Thread(target=read_target, daemon=True).start()
    deadline = time.monotonic() + TAIL_TIMEOUT
    last = 0
    async with open_ledger(log, cache_dir=cache, read_only=True) as led:
        with open(out_path, "w", encoding="utf-8") as out:
            while not (target and last >= target[0]):
                if time.monotonic() > deadline:
                    raise SystemExit(f"tailer: seq {target} not seen within {TAIL_TIMEOUT}s (last {last})")
                async for ev in led.events(since=last + 1):
                    aid = getattr(ev.event, "artifact_id", "")
                    out.write(f"{ev.seq} {ev.prev_hash} {ev.hash} {ev.type} {aid}\n")
                    last = ev.seq
                out.flush()
                await anyio.sleep(0.01)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "work":
        anyio.run(work, args[0], args[1], args[2], args[3], int(args[4]), args[5], int(args[6]) if args[6:] else 0)
    elif mode == "tail":
        anyio.run(tail, args[0], args[1], args[2])
    else:
        raise SystemExit(f"unknown mode {mode!r}: work or tail")
