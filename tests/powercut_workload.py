"""Child process of the power-loss test: a real ledger workload run under ``powercut.Recorder``.

Usage: ``python powercut_workload.py '<json>'`` with keys ``anchor`` (the recorded directory; the
ledger is ``<anchor>/L``), ``scratch`` (source files, not recorded), ``out`` (where the trace goes),
optionally ``small`` (no multi-MiB files) and ``bug`` (a deliberate durability bug to put into the
library, to prove the power-loss check notices it). The recorder is installed before the library
is imported, since the library binds some ``os`` functions at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys

from powercut import Recorder

RUN = dict(run_id="pc", graph_id="g", node_id="n")
SEGMENT_BYTES = 8192
CHECKPOINT_EVERY = 8
BIG = 2 * 1024 * 1024 + 123  # multi-MiB saves: several write() calls per blob


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_bug(bug: str | None) -> None:
    """Put a known durability bug back into the library (only for the tests that prove detection)."""
    if bug is None:
        return
    from artifact_ledger.ledger import filelog
    from artifact_ledger.store import local

    if bug == "no_fdatasync":  # a batch acknowledged without its records being flushed
        filelog.os = _OsWithout("fdatasync")
    elif bug == "late_fdatasync":  # a batch acknowledged before its fdatasync, run with the next batch
        real_write = filelog.SegmentLog._write
        filelog.os = _OsWithout("fdatasync")

        def write_then_sync_later(self, buf, start):
            if self._seg_fd is not None:
                os.fdatasync(self._seg_fd)  # the previous batch's flush, one batch late
            real_write(self, buf, start)

        filelog.SegmentLog._write = write_then_sync_later
    elif bug == "no_segment_dir_fsync":  # a new segment renamed in without flushing log/
        filelog._fsync_dir = lambda path: None
    elif bug == "no_blob_dir_fsync":  # a blob renamed to its address without flushing the shard
        local._fsync_dir = lambda path: None
    elif bug == "no_syncfs":  # one flush per batch: the batch acknowledged without its syncfs
        filelog._syncfs_fd = lambda fd, what: None
    elif bug == "no_dedup_flush":  # a deduplicated small blob trusted without flushing its file
        local._flush_file = lambda path: True
    else:
        raise SystemExit(f"unknown bug {bug!r}")


class _OsWithout:
    """The os module, minus one durability call (which becomes a no-op)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr == self._name:
            return lambda *a, **k: None
        return getattr(os, attr)


async def workload(root: str, scratch: str, rec: Recorder, small: bool = False) -> None:
    """Saves (small and multi-MiB, deduplicated), writer, ingest, ingest_dir, pins, a burst of concurrent
    saves (one group commit over a segment rollover, blobs flushed with syncfs), checkpoints, reopen."""
    import anyio

    from artifact_ledger import open_ledger

    rng = random.Random(6)
    n = 0

    def ack(what: str, art, expect) -> None:
        rec.record("ack", what, art.artifact_id, art.seq, expect)

    async def save(fa, data: bytes, **kw):
        nonlocal n
        n += 1
        src = os.path.join(scratch, f"src{n}.bin")
        with open(src, "wb") as f:
            f.write(data)
        rec.record("mark", "source", _sha(data), src)  # lets a check save these bytes again
        art = await fa.save(src, kind="blob", **kw)
        ack("file", art, _sha(data))
        return art

    opts = dict(segment_bytes=SEGMENT_BYTES, checkpoint_every=CHECKPOINT_EVERY)
    async with open_ledger(root, **opts) as led:
        rec.record("mark", "opened")
        rec.record("mark", "protocol", led.flush_protocol)
        fa = led.artifacts(**RUN)
        first = await save(fa, b"first artifact")
        for i in range(4):
            await save(fa, f"small {i} ".encode() * (i + 3), labels={"i": i}, metrics={"m": i / 2})
        big = rng.randbytes(BIG // 64 if small else BIG)
        await save(fa, big, labels={"size": "big"})
        await save(fa, big, labels={"size": "big", "again": True})  # deduplicated blob
        await fa.pin(first.artifact_id)
        rec.record("ack", "pin", first.artifact_id, led.head[0], True)

        payload = rng.randbytes(24 * 1024 if small else 1536 * 1024)
        async with fa.writer(kind="model", planned_ext=".bin") as w:
            w.write(payload)
        ack("file", fa.last_artifact, _sha(payload))

        staged = await fa.stage(".txt")
        text = b"staged then ingested\n" * 50
        with open(staged, "wb") as f:
            f.write(text)
        ack("file", await fa.ingest(staged, kind="text"), _sha(text))

        d = await fa.stage_dir()
        files = {"a.txt": b"alpha\n", "sub/b.bin": rng.randbytes(70_000), "sub/deeper/c.txt": b"gamma"}
        for rel, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
            with open(os.path.join(d, rel), "wb") as f:
                f.write(data)
        ack("dir", await fa.ingest_dir(d, kind="dataset"), {k: _sha(v) for k, v in files.items()})

        # A burst: many saves queue behind one group commit; >= 4 blobs are flushed with one syncfs,
        # and the batch (padded labels) does not fit in what is left of the segment.
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(lambda i=i: save(fa, f"burst {i}".encode() * 40, labels={"pad": "p" * 500, "b": i}))
        rec.record("mark", "checkpoint")
        await led.checkpoint()
        for i in range(6):
            art = await save(fa, rng.randbytes(2000 + 700 * i), labels={"tail": i})
        # Another process, flushing one syncfs per batch, renamed a blob in and was killed before its
        # syncfs: a name whose bytes were never flushed. Saving the same bytes here must not trust it.
        orphan = b"renamed in by a process that died before its syncfs\n" * 20
        if await anyio.to_thread.run_sync(_dead_one_flush_put, str(led.store.root), scratch, orphan):
            await save(fa, orphan, labels={"after": "dead one-flush put"})
            # The same, racing: it renames the blob in after this save's put found no name, so this batch
            # finds the blob whole at its address and keeps the dead process's unflushed file.
            for racing in (b"renamed in between this save's put and its batch\n" * 30,
                           rng.randbytes(1024 * 1024 + 17)):  # and a large one, whose name is not flushed
                real_put = led.store.put_file

                def put_then_race(path, *, adopt=False, racing=racing, real_put=real_put):
                    info = real_put(path, adopt=adopt)
                    _dead_one_flush_put(str(led.store.root), scratch, racing)
                    return info

                led.store.put_file = put_then_race  # type: ignore[method-assign]
                try:
                    await save(fa, racing, labels={"after": "racing one-flush put"})
                finally:
                    del led.store.put_file
        await fa.pin(art.artifact_id)
        rec.record("ack", "pin", art.artifact_id, led.head[0], True)
    # What a writer killed inside its pwrite leaves (flushed, so it survives): half a record. The reopen
    # must cut it (ftruncate, fsync), so cut points fall inside recovery too.
    from artifact_ledger.ledger.framing import encode_record

    last = sorted(n for n in os.listdir(os.path.join(root, "log")) if n.endswith(".seg"))[-1]
    frame, _ = encode_record(10**6, 1, bytes(32), b"never acknowledged" * 20)
    with open(os.path.join(root, "log", last), "ab") as f:
        f.write(frame[: len(frame) // 2])
        f.flush()
        os.fsync(f.fileno())
    rec.record("mark", "reopen")
    async with open_ledger(root, **opts) as led:
        fa = led.artifacts(**RUN)
        for i in range(3):
            await save(fa, f"after reopen {i}".encode() * 30)


def _dead_one_flush_put(blobs: str, scratch: str, data: bytes) -> bool:
    """What a one-flush process killed between its batch's renames and its syncfs leaves: the blob renamed
    to its address, its bytes unflushed, no event. False where the kernel does not allow one flush."""
    from artifact_ledger.store import durable
    from artifact_ledger.store.local import LocalBlobStore

    if not durable.syncfs_reports_errors():
        return False
    src = os.path.join(scratch, f"dead-process-source-{_sha(data)[:12]}.bin")
    with open(src, "wb") as f:
        f.write(data)
    other = LocalBlobStore(blobs, deferred=True)
    other.enable_one_flush()
    other.put_file(src)
    other.publish()
    assert other.sync_fd is not None
    os.close(other.sync_fd)  # and nothing more: the process is gone
    return True


def main() -> None:
    """Record the workload's calls and write the trace."""
    args = json.loads(sys.argv[1])
    rec = Recorder(args["anchor"])
    rec.install()
    from artifact_ledger.store import durable

    rec.hook_syncfs(durable)
    if args.get("protocol"):
        os.environ["ARTIFACT_LEDGER_BATCH_FLUSH"] = args["protocol"]
    put_bug(args.get("bug"))
    import anyio

    try:
        anyio.run(workload, os.path.join(rec.anchor, "L"), args["scratch"], rec, bool(args.get("small")))
    finally:
        rec.uninstall()
    rec.dump(args["out"])


if __name__ == "__main__":
    main()
