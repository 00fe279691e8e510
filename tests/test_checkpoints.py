"""Checkpoints: loading one and replaying the tail always equals a full replay; bad ones are ignored."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import threading
import warnings
from pathlib import Path

import anyio
import pytest
from crc32c import crc32c
from hypothesis import given
from hypothesis import strategies as st

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger import checkpoints
from artifact_ledger.ledger.errors import LedgerCorruption, LostRecordsWarning, RecordsLost
from artifact_ledger.ledger.events import ArtifactRecorded, PinChanged, decode_event
from artifact_ledger.ledger.filelog import segment_name
from artifact_ledger.ledger.framing import encode_segment_header
from artifact_ledger.projections import snapshot
from artifact_ledger.projections.catalog import Catalog, Logged, apply, replay
from artifact_ledger.projections.query import Filter, best
from logcheck import read_log as disk_records

CTXS = [("r1", "g1", "n1", None), ("r1", "g2", "n1", "p1"), ("r2", "g1", "n2", "p1")]
FILES = {"a.bin": b"A", "b.txt": b"bee", "c.json": b"[1, 2]"}

save_st = st.tuples(
    st.just("save"),
    st.integers(0, len(CTXS) - 1),
    st.sampled_from(("x", "y")),
    st.fixed_dictionaries({}, optional={"t": st.sampled_from(("v", 1, True, [1, 2]))}),
    st.fixed_dictionaries({}, optional={"m": st.sampled_from((0, 1, 1.0, 2))}),
    st.booleans(),
    st.sampled_from(sorted(FILES)),
)
pin_st = st.tuples(st.just("pin"), st.integers(0, 3), st.booleans())
ckpt_st = st.just(("checkpoint",))
# Several sessions (open, ops, close) so that checkpoints come from periodic writes,
# explicit calls and closes, with a different K in each session.
sessions_st = st.lists(
    st.tuples(st.integers(1, 6), st.lists(st.one_of(save_st, save_st, pin_st, ckpt_st), max_size=10)),
    min_size=1,
    max_size=3,
)


def ids_of(ctx):
    """Keyword ids for a context tuple."""
    run, graph, node, project = ctx
    return {"run_id": run, "graph_id": graph, "node_id": node, "project_id": project}


def make_sources(tmp: Path) -> Path:
    """Source files that saves copy from."""
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    for name, data in FILES.items():
        (src / name).write_bytes(data)
    return src


def full_replay(root: Path) -> Catalog:
    """The catalogue rebuilt from every event in the log, no checkpoint involved."""
    return replay(Logged(r.seq, r.ts_us, decode_event(r.payload)) for r in disk_records(root))


def ckpt_files(root: Path) -> list[str]:
    """Names of the checkpoint files present, ascending."""
    d = root / "checkpoints"
    return sorted(n for n in os.listdir(d) if n.endswith(".ckpt")) if d.is_dir() else []


async def open_quiet(root: Path, **kw):
    """Open a ledger, failing on any checkpoint warning (a valid checkpoint must load silently)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", checkpoints.CheckpointWarning)
        return await open_ledger(root, fsync=False, **kw)


async def run_session(root: Path, src: Path, k: int, ops, ids: list[str], stash: Path) -> None:
    """One open/ops/close cycle; copies every checkpoint written into ``stash``."""

    def keep() -> None:
        for name in ckpt_files(root):
            shutil.copyfile(root / "checkpoints" / name, stash / name)

    led = await open_quiet(root, checkpoint_every=k)
    try:
        for op in ops:
            if op[0] == "save":
                _, ci, kind, labels, metrics, pin, fname = op
                fac = led.artifacts(**ids_of(CTXS[ci]))
                art = await fac.save(str(src / fname), kind=kind, labels=labels, metrics=metrics, pin=pin)
                ids.append(art.artifact_id)
            elif op[0] == "pin":
                if ids:
                    await led.artifacts(**ids_of(CTXS[0])).pin(ids[op[1] % len(ids)], op[2])
            else:
                assert await led.checkpoint() == led.catalog.head_seq == led.head[0]
            await led._join_checkpoint()
            # A periodic checkpoint follows every K events.
            assert led.catalog.head_seq - led._ckpt_seq < k
            keep()
    finally:
        await led.aclose()
    keep()


@given(sessions=sessions_st, k_reopen=st.integers(1, 7))
def test_checkpoint_plus_tail_equals_full_replay(sessions, k_reopen):
    """Opening from any checkpoint (any position, any K) and replaying the tail gives the full-replay state."""

    async def main(tmp: Path):
        src = make_sources(tmp)
        root = tmp / "ledger"
        stash = tmp / "stash"
        stash.mkdir()
        ids: list[str] = []
        for k, ops in sessions:
            await run_session(root, src, k, ops, ids, stash)
        full = full_replay(root)
        head = full.head_seq

        led = await open_quiet(root, checkpoint_every=k_reopen)
        assert led.catalog == full
        # The close-time checkpoint sits at the head, so nothing was replayed.
        assert led._ckpt_seq == head
        await led.aclose()

        stashed = sorted(os.listdir(stash))
        assert (head == 0) == (not stashed)
        def only(name: str) -> None:
            shutil.rmtree(root / "checkpoints")
            (root / "checkpoints").mkdir()
            shutil.copyfile(stash / name, root / "checkpoints" / name)

        for name in stashed:
            seq = int(name[: -len(".ckpt")])
            only(name)
            led = await open_quiet(root, checkpoint_every=10**9)
            assert led._ckpt_seq == seq  # this very checkpoint was loaded, then the tail replayed
            assert led.catalog == full, name
            await led.aclose()
            # With a small K the open itself checkpoints a long tail; that one loads as well.
            only(name)
            led = await open_quiet(root, checkpoint_every=k_reopen)
            await led._join_checkpoint()
            assert led._ckpt_seq == (head if head - seq >= k_reopen else seq)
            assert led.catalog == full, name
            await led.aclose()
            led = await open_quiet(root, checkpoint_every=k_reopen)
            assert led._ckpt_seq == head and led.catalog == full, name
            await led.aclose()

        shutil.rmtree(root / "checkpoints", ignore_errors=True)
        led = await open_quiet(root, checkpoint_every=k_reopen)
        assert led.catalog == full
        await led.aclose()

    with tempfile.TemporaryDirectory() as d:
        anyio.run(main, Path(d))


# ---------------------------------------------------------------- snapshot encoding

def _recorded(i: int, ctx: int, kind: str, labels: dict, metrics: dict, pinned: bool) -> ArtifactRecorded:
    run, graph, node, project = CTXS[ctx]
    return ArtifactRecorded(
        artifact_id=f"id{i}", origin="save", kind=kind, sha256=f"{i % 3:064x}", size=i, mime="text/plain",
        labels=labels, metrics=metrics, pinned=pinned, run_id=run, graph_id=graph, node_id=node,
        project_id=project, name=None if i % 2 else f"f{i}.txt",
    )


events_st = st.lists(
    st.one_of(
        st.tuples(st.just("rec"), st.integers(0, len(CTXS) - 1), st.sampled_from(("x", "y")),
                  st.fixed_dictionaries({}, optional={"t": st.sampled_from(("v", 1, 1.5, True, None, [1, "a"]))}),
                  st.fixed_dictionaries({}, optional={"m": st.sampled_from((0, 1, 2.5))}), st.booleans()),
        # Pins may name unknown ids (kept out of the state by apply) or repeat ids.
        st.tuples(st.just("pin"), st.integers(0, 12), st.booleans()),
    ),
    max_size=20,
)


def build_events(spec) -> list[Logged]:
    """Logged events from a generated spec, with strictly increasing times."""
    out = []
    for seq, item in enumerate(spec, start=1):
        if item[0] == "rec":
            _, ctx, kind, labels, metrics, pinned = item
            ev = _recorded(seq, ctx, kind, labels, metrics, pinned)
        else:
            ev = PinChanged(artifact_id=f"id{item[1]}", pinned=item[2])
        out.append(Logged(seq, 1_700_000_000_000_000 + 3 * seq, ev))
    return out


@given(spec=events_st, split=st.integers(0, 20), chunk=st.integers(1, 4))
def test_snapshot_round_trip(spec, split, chunk):
    """decode(encode(capture(state))) equals the state, and keeps folding like it."""
    events = build_events(spec)
    cut = min(split, len(events))
    state = replay(events[:cut])
    old = snapshot.CHUNK
    snapshot.CHUNK = chunk  # several list and index chunks even for small states
    try:
        data = snapshot.encode(snapshot.capture(state))
    finally:
        snapshot.CHUNK = old
    back = snapshot.decode(data)
    assert back == state
    assert back.fingerprint() == state.fingerprint()
    for e in events[cut:]:
        apply(back, e)
        apply(state, e)
    assert back == state == replay(events)
    for kind in ("x", "y"):
        for mode in ("max", "min"):
            f = Filter.build({}, None, kind)
            got, want = best(back, f, "m", mode), best(state, f, "m", mode)
            assert (got and got.seq) == (want and want.seq)


def test_snapshot_rejects_bad_bytes():
    """Truncated, garbage or other-schema snapshot bytes raise SnapshotError."""
    state = replay(build_events([("rec", 0, "x", {}, {"m": 1}, False)] * 3 + [("pin", 1, True)]))
    data = snapshot.encode(snapshot.capture(state))
    for bad in (data[:-1], data[:3], b"\x05\x00\x00\x00junk!", data + b"\x01"):
        with pytest.raises(snapshot.SnapshotError):
            snapshot.decode(bad)
    cap = snapshot.capture(state)
    old = snapshot.SNAPSHOT_SCHEMA
    snapshot.SNAPSHOT_SCHEMA = old + 1
    try:
        other = snapshot.encode(cap)
    finally:
        snapshot.SNAPSHOT_SCHEMA = old
    with pytest.raises(snapshot.SnapshotError, match="schema"):
        snapshot.decode(other)


# ---------------------------------------------------------------- bad checkpoints

async def build(root: Path, src: Path, n: int, *, checkpoint_at: int | None = None) -> None:
    """A ledger of ``n`` events (saves, then a pin), with an extra explicit checkpoint after event ``checkpoint_at``."""
    async with open_ledger(root, fsync=False) as led:
        fac = led.artifacts(**ids_of(CTXS[1]))
        names = sorted(FILES)
        first = None
        for i in range(n - 1):
            art = await fac.save(str(src / names[i % 3]), kind="x", labels={"i": i}, metrics={"m": i % 2})
            first = first or art
            if led.catalog.head_seq == checkpoint_at:
                assert await led.checkpoint() == checkpoint_at
        await fac.pin(first.artifact_id)
        if led.catalog.head_seq == checkpoint_at:
            await led.checkpoint()


def flip(path: Path, offset: int) -> None:
    """Invert one byte of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def rewrite_schema(path: Path, schema: int) -> None:
    """Give a checkpoint another schema number with a valid header checksum."""
    data = bytearray(path.read_bytes())
    m = len(checkpoints.MAGIC)
    fields = list(checkpoints._HEADER.unpack_from(data, m))
    fields[0] = schema
    head = checkpoints._HEADER.pack(*fields)
    data[m : m + len(head)] = head
    data[m + len(head) : m + len(head) + 4] = struct.pack("<I", crc32c(checkpoints.MAGIC + head))
    path.write_bytes(bytes(data))


def ckpt_path(root: Path, seq: int) -> Path:
    """Path of the checkpoint file for a seq."""
    return root / "checkpoints" / checkpoints.file_name(seq)


async def reopen_expecting_warning(root: Path, match: str, *, loaded: int) -> None:
    """Open once (one CheckpointWarning, state equal to a full replay), then again silently."""
    with pytest.warns(checkpoints.CheckpointWarning, match=match):
        led = await open_ledger(root, fsync=False)
    try:
        assert led._ckpt_seq == loaded
        assert led.catalog == full_replay(root)
        # The rebuilt state answers queries like the original.
        fac = led.artifacts(**ids_of(CTXS[1]))
        assert len(await fac.list()) == led.catalog.head_seq - 1
        assert (await fac.best(kind="x", metric="m", mode="max")).labels["i"] == max(
            i for i in range(led.catalog.head_seq - 1) if i % 2 == 1)
    finally:
        await led.aclose()


def header_size() -> int:
    """Bytes before a checkpoint's payload."""
    return checkpoints.HEADER_SIZE


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: flip(p, len(checkpoints.MAGIC) + 1), "header checksum"),  # schema field
        (lambda p: flip(p, len(checkpoints.MAGIC) + 20), "header checksum"),  # record hash field
        (lambda p: flip(p, 2), "magic"),
        (lambda p: flip(p, header_size() + 5), "payload checksum"),
        (lambda p: flip(p, p.stat().st_size - 1), "payload checksum"),
        (lambda p: p.write_bytes(p.read_bytes()[:-7]), "payload checksum"),
        (lambda p: p.write_bytes(p.read_bytes()[:50]), "too short"),
        (lambda p: rewrite_schema(p, snapshot.SNAPSHOT_SCHEMA + 1), "schema"),
        (lambda p: rewrite_schema(p, 0), "schema"),
    ],
    ids=["header-schema-byte", "header-hash-byte", "magic", "payload-start", "payload-end", "cut-payload",
         "cut-header", "newer-schema", "older-schema"],
)
def test_bad_checkpoint_is_ignored_and_rebuilt(tmp_path, damage, match):
    """A damaged or other-schema checkpoint is skipped with a CheckpointWarning; the older one or the log is used."""

    async def main():
        src = make_sources(tmp_path)
        root = tmp_path / "ledger"
        await build(root, src, 7, checkpoint_at=3)
        assert ckpt_files(root) == [checkpoints.file_name(3), checkpoints.file_name(7)]
        damage(ckpt_path(root, 7))
        # Falls back to the older, valid checkpoint and replays the tail from it.
        await reopen_expecting_warning(root, match, loaded=3)
        # The close rewrote checkpoint 7, so the next open is silent.
        led = await open_quiet(root)
        assert led._ckpt_seq == 7 and led.catalog == full_replay(root)
        await led.aclose()
        # With every checkpoint damaged the whole log is replayed.
        damage(ckpt_path(root, 7))
        damage(ckpt_path(root, 3))
        with pytest.warns(checkpoints.CheckpointWarning) as record:
            led = await open_ledger(root, fsync=False)
        assert len([w for w in record if issubclass(w.category, checkpoints.CheckpointWarning)]) == 2
        assert led._ckpt_seq == 0 and led.catalog == full_replay(root)
        await led.aclose()

    anyio.run(main)


def test_checkpoint_from_another_ledger_is_ignored(tmp_path):
    """A checkpoint whose record hash differs from this log's record at its seq is ignored."""

    async def main():
        src = make_sources(tmp_path)
        mine, other = tmp_path / "mine", tmp_path / "other"
        await build(mine, src, 6)
        await build(other, src, 6)
        for seq in (6,):
            shutil.copyfile(ckpt_path(other, seq), ckpt_path(mine, seq))
        await reopen_expecting_warning(mine, "does not match", loaded=0)

    anyio.run(main)


def test_checkpoint_beyond_truncated_log_is_lost_records(tmp_path):
    """A checkpoint at a seq the log no longer reaches (log cut below it) means lost records: open raises,
    cutting nothing; accept_loss=True opens the shorter log, drops those checkpoints, and appends continue."""

    async def main():
        src = make_sources(tmp_path)
        root = tmp_path / "ledger"
        await build(root, src, 8, checkpoint_at=6)
        recs = disk_records(root)
        cut = recs[4]  # keep seq 1..4, a clean record boundary
        os.truncate(root / "log" / cut.segment, cut.offset)
        assert ckpt_files(root) == [checkpoints.file_name(6), checkpoints.file_name(8)]
        before = (root / "log" / cut.segment).read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("error", checkpoints.CheckpointWarning)  # not a cache problem
            with pytest.raises(RecordsLost) as exc:
                await open_ledger(root, fsync=False)
        assert (exc.value.first, exc.value.last, exc.value.log_head) == (5, 8, 4)
        assert "seqs 5..8" in str(exc.value) and "accept_loss=True" in str(exc.value)
        assert (root / "log" / cut.segment).read_bytes() == before
        assert ckpt_files(root) == [checkpoints.file_name(6), checkpoints.file_name(8)]
        with pytest.warns(LostRecordsWarning, match="seqs 5..8"):
            led = await open_ledger(root, fsync=False, accept_loss=True)
        assert ckpt_files(root) == []
        assert led.catalog.head_seq == 4 and led.head[0] == 4
        assert led.catalog == full_replay(root)
        assert led._ckpt_seq == 0
        # New events at seqs 5..8 differ from the old ones: the stale files must not match them.
        fac = led.artifacts(**ids_of(CTXS[0]))
        for _ in range(4):
            await fac.save(str(src / "a.bin"), kind="z")
        await led.aclose()
        with warnings.catch_warnings():
            warnings.simplefilter("error", checkpoints.CheckpointWarning)
            led = await open_ledger(root, fsync=False)  # checkpoint 8 was rewritten at close
        assert led._ckpt_seq == 8 and led.catalog == full_replay(root)
        await led.aclose()

    anyio.run(main)


def test_damaged_log_after_checkpoint_is_still_reported(tmp_path):
    """Damage in the log tail after the loaded checkpoint raises LedgerCorruption naming the record."""

    async def main():
        src = make_sources(tmp_path)
        root = tmp_path / "ledger"
        await build(root, src, 8, checkpoint_at=3)
        os.unlink(ckpt_path(root, 8))  # the checkpoint at 3 is the one that loads
        recs = disk_records(root)
        bad = recs[4]  # seq 5; intact records follow, so this is not a torn tail
        flip(root / "log" / bad.segment, bad.offset + bad.length - 2)
        with warnings.catch_warnings():
            warnings.simplefilter("error", checkpoints.CheckpointWarning)
            with pytest.raises(LedgerCorruption) as exc:
                await open_ledger(root, fsync=False)
        assert exc.value.seq == 5 and exc.value.offset == bad.offset and exc.value.segment == bad.segment

    anyio.run(main)


def test_damaged_checkpointed_record_is_reported(tmp_path):
    """If the record a checkpoint points at is damaged, the checkpoint is ignored and the log damage reported."""

    async def main():
        src = make_sources(tmp_path)
        root = tmp_path / "ledger"
        await build(root, src, 8, checkpoint_at=3)
        os.unlink(ckpt_path(root, 8))
        rec = disk_records(root)[2]  # seq 3, the checkpoint's own record
        flip(root / "log" / rec.segment, rec.offset + rec.length - 1)
        with pytest.warns(checkpoints.CheckpointWarning, match="does not match"):
            with pytest.raises(LedgerCorruption) as exc:
                await open_ledger(root, fsync=False)
        assert exc.value.seq == 3

    anyio.run(main)


def test_pointer_pruning_and_return_value(tmp_path):
    """checkpoint() returns the head seq, writes _last_checkpoint, and at most three files are kept."""

    async def main():
        src = make_sources(tmp_path)
        root = tmp_path / "ledger"
        async with open_ledger(root, fsync=False, checkpoint_every=1) as led:
            assert await led.checkpoint() == 0  # empty ledger: nothing to checkpoint
            fac = led.artifacts(**ids_of(CTXS[0]))
            for i in range(8):
                await fac.save(str(src / "a.bin"), kind="x")
                await led._join_checkpoint()
                names = ckpt_files(root)
                assert 1 <= len(names) <= checkpoints.KEEP
                assert names[-1] == checkpoints.file_name(i + 1)
            assert await led.checkpoint() == 8 == led.head[0]
            pointer = json.loads((root / "checkpoints" / checkpoints.POINTER).read_text())
            assert pointer == {"seq": 8, "file": checkpoints.file_name(8)}
            assert ckpt_files(root) == [checkpoints.file_name(s) for s in (6, 7, 8)]
            assert not [n for n in os.listdir(root / "checkpoints") if n.endswith(".tmp")]
            await fac.pin((await fac.list())[0].artifact_id)
        # Close checkpointed the pin; the pointer follows.
        pointer = json.loads((root / "checkpoints" / checkpoints.POINTER).read_text())
        assert pointer["seq"] == 9 and len(ckpt_files(root)) == checkpoints.KEEP
        led = await open_quiet(root)
        assert led._ckpt_seq == 9 and led.catalog == full_replay(root)
        await led.aclose()

    anyio.run(main)


def test_periodic_checkpoint_default_and_validation(tmp_path):
    """checkpoint_every must be a positive int; with the default, a small ledger only checkpoints on close."""

    async def main():
        for bad in (0, -3, 1.5, True, "10"):
            with pytest.raises(ValueError):
                await open_ledger(tmp_path / "never", checkpoint_every=bad)
        src = make_sources(tmp_path)
        root = tmp_path / "ledger"
        async with open_ledger(root, fsync=False) as led:
            await led.artifacts(**ids_of(CTXS[0])).save(str(src / "a.bin"), kind="x")
            await led._join_checkpoint()
            assert ckpt_files(root) == []
        assert ckpt_files(root) == [checkpoints.file_name(1)]

    anyio.run(main)


def run_with_deadline(fn, seconds: float = 30) -> None:
    """Run ``fn`` in a daemon thread and fail (instead of hanging the suite) if it does not finish."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (hang)"
    if errors:
        raise errors[0]


def test_empty_last_segment_opens_and_checkpoints(tmp_path):
    """A segment created but never written (crash) neither hangs opening nor makes checkpoints unloadable."""

    async def main():
        src = make_sources(tmp_path)
        root = tmp_path / "ledger"
        await build(root, src, 4)
        seq, digest = disk_records(root)[-1].seq, disk_records(root)[-1].hash
        empty = root / "log" / segment_name(seq + 1)
        empty.write_bytes(encode_segment_header(seq + 1, digest))
        for keep_checkpoints in (True, False):
            if not keep_checkpoints:
                shutil.rmtree(root / "checkpoints")
            led = await open_quiet(root)
            assert led.head == (seq, digest.hex()) and led.catalog == full_replay(root)
            assert await led.checkpoint() == seq
            await led.aclose()
            led = await open_quiet(root)
            assert led._ckpt_seq == seq  # the checkpoint taken beside the empty segment loads
            assert led.catalog == full_replay(root)
            await led.aclose()
        async with open_ledger(root, fsync=False) as led:
            await led.artifacts(**ids_of(CTXS[0])).save(str(src / "a.bin"), kind="z")
        assert [r.seq for r in disk_records(root)] == list(range(1, seq + 2))
        assert disk_records(root)[-1].segment == empty.name
        led = await open_quiet(root)
        assert led._ckpt_seq == seq + 1 and led.catalog == full_replay(root)
        await led.aclose()

    run_with_deadline(lambda: anyio.run(main))


def test_background_checkpoints_under_concurrent_appends(tmp_path):
    """Periodic checkpoints taken while many appends are in flight still load to the full-replay state."""

    async def main():
        src = make_sources(tmp_path)
        root = tmp_path / "ledger"
        async with open_ledger(root, fsync=False, checkpoint_every=3) as led:
            facs = [led.artifacts(**ids_of(c)) for c in CTXS]

            async def worker(i: int) -> None:
                for j in range(6):
                    art = await facs[i % 3].save(str(src / "b.txt"), kind="x", metrics={"m": (i * j) % 4})
                    if j % 2:
                        await facs[0].pin(art.artifact_id)

            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(worker, i)
            head = led.head[0]
        assert head == 8 * 9
        full = full_replay(root)
        names = ckpt_files(root)
        assert names[-1] == checkpoints.file_name(head) and len(names) <= checkpoints.KEEP
        for name in names:  # every surviving checkpoint, not only the newest
            for other in names:
                if other != name:
                    os.rename(root / "checkpoints" / other, root / f"aside-{other}")
            led = await open_quiet(root, checkpoint_every=10**9)
            assert led._ckpt_seq == int(name[: -len(".ckpt")]) and led.catalog == full
            await led.aclose()
            for other in names:
                if other != name:
                    os.rename(root / f"aside-{other}", root / "checkpoints" / other)

    anyio.run(main)
