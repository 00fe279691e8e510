"""Audit: event listings with hash links, per-artifact history, diffs between positions, verification."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from artifact_ledger.facade import content
from artifact_ledger.facade.audit import LedgerEvent
from artifact_ledger.ledger.events import ArtifactRecorded, PinChanged, decode_event
from artifact_ledger.ledger.filelog import TornTailWarning
from artifact_ledger.ledger.framing import FRAME_SIZE
from logcheck import read_log as disk_records
import backends
from backends import file_only, open_ledger
from backends import flip_byte as flip

# The conformance suite: every test here runs once per log backend (tests/backends.py).
pytestmark = pytest.mark.usefixtures("backend")


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
GENESIS = "00" * 32
CTXS = [
    ("r1", "g1", "n1", None),
    ("r1", "g1", "n2", "p1"),
    ("r1", "g2", "n1", "p1"),
    ("r2", "g1", "n1", "p2"),
]
ALL = {"run_id": "r1", "graph_id": "g1", "node_id": "n1"}


def ids_of(ctx):
    """Keyword ids for a context tuple."""
    run, graph, node, project = ctx
    return {"run_id": run, "graph_id": graph, "node_id": node, "project_id": project}


async def collect(aiter) -> list[LedgerEvent]:
    """Drain an async iterator."""
    return [e async for e in aiter]


async def small_history(led, tmp: Path):
    """Saves and pins over two contexts; returns the artifacts in recording order."""
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    a_fac = led.artifacts(**ids_of(CTXS[0]))
    b_fac = led.artifacts(**ids_of(CTXS[1]))
    arts = []
    for i in range(6):
        p = src / f"f{i}.txt"
        p.write_bytes(f"content {i % 4}".encode())  # some artifacts share a blob
        fac = a_fac if i % 2 == 0 else b_fac
        arts.append(await fac.save(str(p), kind="k", labels={"i": i}, metrics={"m": i % 3}))
        if i == 2:
            await a_fac.pin(arts[0].artifact_id)
        if i == 4:
            await a_fac.pin(arts[0].artifact_id, False)
            await b_fac.pin(arts[1].artifact_id)
    return arts


# ---------------------------------------------------------------- events and history

@file_only
def test_events_are_ordered_typed_and_hash_linked(tmp_path):
    """events() yields every record in seq order with UTC time and hashes that chain record to record."""

    async def main():
        root = tmp_path / "ledger"
        async with open_ledger(root, fsync=False, segment_bytes=700) as led:
            arts = await small_history(led, tmp_path)
            head = led.head
            evs = await collect(led.events())
        raw = disk_records(root)
        assert len({r.segment for r in raw}) > 1  # the listing crosses segment boundaries
        assert [e.seq for e in evs] == list(range(1, head[0] + 1)) == [r.seq for r in raw]
        assert evs[0].prev_hash == GENESIS
        for e, nxt in zip(evs, evs[1:]):
            assert e.hash == nxt.prev_hash
            assert e.time < nxt.time
        assert evs[-1].hash == head[1]
        for e, r in zip(evs, raw):
            # The hash is SHA-256 of the record body as it lies on disk.
            body = (root / "log" / r.segment).read_bytes()[r.offset + FRAME_SIZE : r.offset + r.length]
            assert e.hash == hashlib.sha256(body).hexdigest()
            assert e.time == EPOCH + timedelta(microseconds=r.ts_us)
            assert e.time.utcoffset() == timedelta(0)
            assert e.event == decode_event(r.payload)
            doc = e.to_json()
            assert json.loads(json.dumps(doc))["seq"] == e.seq
            assert doc["hash"] == e.hash and doc["prev_hash"] == e.prev_hash
            assert doc["type"] in ("artifact.recorded", "artifact.pin")
        recorded = [e.event for e in evs if isinstance(e.event, ArtifactRecorded)]
        pins = [(e.event.artifact_id, e.event.pinned) for e in evs if isinstance(e.event, PinChanged)]
        assert [ev.artifact_id for ev in recorded] == [a.artifact_id for a in arts]
        assert [(ev.kind, ev.labels, ev.metrics) for ev in recorded] == [(a.kind, a.labels, a.metrics) for a in arts]
        assert pins == [(arts[0].artifact_id, True), (arts[0].artifact_id, False), (arts[1].artifact_id, True)]

    anyio.run(main)


def test_events_bounds_are_inclusive(tmp_path):
    """since/until (seq or aware datetime) bound the listing inclusively and clip to the log."""

    async def main():
        root = tmp_path / "ledger"
        async with open_ledger(root, fsync=False, segment_bytes=700) as led:
            await small_history(led, tmp_path)
            head = led.head[0]
            seqs = lambda evs: [e.seq for e in evs]  # noqa: E731
            assert seqs(await collect(led.events(since=3, until=5))) == [3, 4, 5]
            assert seqs(await collect(led.events(since=4))) == list(range(4, head + 1))
            assert seqs(await collect(led.events(until=2))) == [1, 2]
            assert seqs(await collect(led.events(since=head, until=head))) == [head]
            assert seqs(await collect(led.events(since=head + 1))) == []
            assert seqs(await collect(led.events(since=6, until=5))) == []
            assert seqs(await collect(led.events(until=head + 50))) == list(range(1, head + 1))
            times = [e.time for e in await collect(led.events())]
            by_time = await collect(led.events(since=times[2], until=times[6]))
            assert seqs(by_time) == [3, 4, 5, 6, 7]
            between = await collect(led.events(since=times[2] + timedelta(microseconds=1),
                                               until=times[6] - timedelta(microseconds=1)))
            assert seqs(between) == [4, 5, 6]
            with pytest.raises(ValueError):
                await collect(led.events(since=datetime(2000, 1, 1)))  # naive
        # After a reopen from a checkpoint, listings still read the log correctly.
        async with open_ledger(root, fsync=False) as led:
            await led.checkpoint()
        async with open_ledger(root, fsync=False) as led:
            assert led._ckpt_seq == head
            assert seqs(await collect(led.events(since=2, until=4))) == [2, 3, 4]

    anyio.run(main)


def test_events_seek_across_many_records(tmp_path):
    """Listings starting deep in a long, multi-segment log begin at the right record."""

    async def main():
        root = tmp_path / "ledger"
        async with open_ledger(root, fsync=False, segment_bytes=40_000) as led:
            src = tmp_path / "x.bin"
            src.write_bytes(b"x")
            fac = led.artifacts(**ALL)
            art = await fac.save(str(src), kind="k")
            for i in range(2500):
                await fac.pin(art.artifact_id, i % 2 == 0)
            head = led.head[0]
            for since in (1023, 1024, 1025, 2049, head - 1):
                got = await collect(led.events(since=since, until=since + 2))
                assert [e.seq for e in got] == [s for s in range(since, since + 3) if s <= head]
                assert all(e.event.pinned == ((e.seq - 2) % 2 == 0) for e in got if e.seq > 1)
        if backends.log_kind() == "file":
            assert len({r.segment for r in disk_records(root)}) > 2

    anyio.run(main)


def test_history_lists_recording_and_pins(tmp_path):
    """history(id) gives the recording event then every pin event of that artifact; KeyError for unknown ids."""

    async def main():
        root = tmp_path / "ledger"
        async with open_ledger(root, fsync=False) as led:
            arts = await small_history(led, tmp_path)
            evs = {e.seq: e for e in await collect(led.events())}
            h0 = await led.history(arts[0].artifact_id)
            assert [type(e.event) for e in h0] == [ArtifactRecorded, PinChanged, PinChanged]
            assert [e.event.pinned for e in h0] == [False, True, False]
            assert all(e.event.artifact_id == arts[0].artifact_id for e in h0)
            assert h0[0].seq == arts[0].seq
            assert [e.seq for e in h0] == sorted(e.seq for e in h0)
            for e in h0:
                assert e == evs[e.seq]
            h1 = await led.history(arts[1].artifact_id)
            assert [(type(e.event), e.event.pinned) for e in h1] == [(ArtifactRecorded, False), (PinChanged, True)]
            assert [e.seq for e in await led.history(arts[5].artifact_id)] == [arts[5].seq]
            with pytest.raises(KeyError):
                await led.history("0" * 32)
            with pytest.raises(KeyError):
                await led.history("")
        async with open_ledger(root, fsync=False) as led:
            assert [e.seq for e in await led.history(arts[0].artifact_id)] == [e.seq for e in h0]

    anyio.run(main)


# ---------------------------------------------------------------- diff

def scope_keys(ev: ArtifactRecorded):
    """(scope, scope_key dict) pairs an artifact belongs to, written out independently."""
    out = [
        ("node", {"run_id": ev.run_id, "graph_id": ev.graph_id, "node_id": ev.node_id}),
        ("graph", {"run_id": ev.run_id, "graph_id": ev.graph_id}),
        ("run", {"run_id": ev.run_id}),
        ("all", {}),
    ]
    if ev.project_id is not None:
        out.append(("project", {"project_id": ev.project_id}))
    return out


def brute_best(recs, upto, scope_key, kind, metric, mode):
    """Winner id among artifacts recorded at or before ``upto``; ties go to the newer one."""
    cands = [
        (ev.metrics[metric], seq, ev.artifact_id)
        for seq, ev in recs
        if seq <= upto and ev.kind == kind and metric in ev.metrics
        and all(getattr(ev, k) == v for k, v in scope_key.items())
    ]
    if not cands:
        return None
    if mode == "max":
        return max(cands, key=lambda c: (c[0], c[1]))[2]
    return min(cands, key=lambda c: (c[0], -c[1]))[2]


def pinned_at(events, aid, upto):
    """Pin state of an artifact after event ``upto``, by a linear pass over the events."""
    state = None
    for seq, ev in events:
        if seq > upto:
            break
        if isinstance(ev, ArtifactRecorded) and ev.artifact_id == aid:
            state = ev.pinned
        elif isinstance(ev, PinChanged) and ev.artifact_id == aid and state is not None:
            state = ev.pinned
    return state


diff_ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("save"), st.integers(0, len(CTXS) - 1), st.sampled_from(("a", "b")),
                  st.fixed_dictionaries({}, optional={"m": st.sampled_from((0, 1, 1.0, 2)),
                                                      "k": st.integers(0, 1)}),
                  st.booleans()),
        st.tuples(st.just("pin"), st.integers(0, 2), st.booleans()),
    ),
    min_size=1,
    max_size=10,
)


@given(ops=diff_ops_st)
def test_diff_matches_brute_force(ops):
    """diff(a, b) reports exactly the added artifacts, changed pins and changed best winners, for all a <= b."""

    async def main(tmp: Path):
        src = tmp / "s.bin"
        src.write_bytes(b"s")
        async with open_ledger(tmp / "ledger", fsync=False) as led:
            ids: list[str] = []
            for op in ops:
                if op[0] == "save":
                    _, ci, kind, metrics, pin = op
                    art = await led.artifacts(**ids_of(CTXS[ci])).save(str(src), kind=kind, metrics=metrics, pin=pin)
                    ids.append(art.artifact_id)
                elif ids:
                    await led.artifacts(**ALL).pin(ids[op[1] % len(ids)], op[2])
            head = led.head[0]
            events = [(e.seq, e.event) for e in await collect(led.events())]
            recs = [(s, ev) for s, ev in events if isinstance(ev, ArtifactRecorded)]
            views = {}
            for n in range(1, head + 1):
                listed = await (await led.as_of(seq=n)).artifacts(**ALL).list(scope="all")
                views[n] = {x.artifact_id: x for x in listed}
            tables = {(scope, tuple(sorted(key.items())), ev.kind, metric)
                      for _, ev in recs for scope, key in scope_keys(ev) for metric in ev.metrics}
            for a in range(0, head + 1):
                for b in range(a, head + 1):
                    d = await led.diff(a, b)
                    assert (d.a, d.b) == (a, b)
                    added = [ev.artifact_id for s, ev in recs if a < s <= b]
                    assert [x.artifact_id for x in d.added] == added
                    assert d.added == [views[b][aid] for aid in added]
                    want_pins = sorted(
                        (ev.artifact_id, pinned_at(events, ev.artifact_id, a), pinned_at(events, ev.artifact_id, b))
                        for s, ev in recs if s <= a
                        and pinned_at(events, ev.artifact_id, a) != pinned_at(events, ev.artifact_id, b)
                    )
                    assert sorted((p.artifact_id, p.before, p.after) for p in d.pins) == want_pins
                    want_best = set()
                    for scope, key, kind, metric in tables:
                        for mode in ("max", "min"):
                            old = brute_best(recs, a, dict(key), kind, metric, mode)
                            new = brute_best(recs, b, dict(key), kind, metric, mode)
                            if old != new:
                                want_best.add((scope, key, kind, metric, mode, old, new))
                    got_best = [(c.scope, tuple(sorted(c.scope_key.items())), c.kind, c.metric, c.mode,
                                 c.old and c.old.artifact_id, c.new and c.new.artifact_id) for c in d.best]
                    assert len(got_best) == len(set(got_best))
                    assert set(got_best) == want_best, (a, b)
                    for c in d.best:
                        assert c.old is None or c.old == views[a][c.old.artifact_id]
                        assert c.new == views[b][c.new.artifact_id]
                    json.dumps(d.to_json())

    with tempfile.TemporaryDirectory() as d:
        anyio.run(main, Path(d))


def test_diff_example_and_bad_positions(tmp_path):
    """A worked diff, and ValueError for a > b or positions outside 0..head."""

    async def main():
        async with open_ledger(tmp_path / "ledger", fsync=False) as led:
            arts = await small_history(led, tmp_path)
            head = led.head[0]
            assert head == 9
            # seq: 1 a0, 2 a1, 3 a2, 4 pin a0, 5 a3, 6 a4, 7 unpin a0, 8 pin a1, 9 a5
            d = await led.diff(3, 9)
            assert [x.artifact_id for x in d.added] == [a.artifact_id for a in arts[3:]]
            assert [(p.artifact_id, p.before, p.after) for p in d.pins] == [(arts[1].artifact_id, False, True)]
            run_max = [c for c in d.best if c.scope == "run" and c.mode == "max"]
            # m = i % 3: a2 (m=2) was the run's max at 3; a5 (m=2, newer) wins the tie at 9.
            assert [(c.scope_key, c.kind, c.metric, c.old.artifact_id, c.new.artifact_id) for c in run_max] == [
                ({"run_id": "r1"}, "k", "m", arts[2].artifact_id, arts[5].artifact_id)]
            assert (await led.diff(3, 7)).pins == []  # pinned at 4, unpinned at 7: no net change
            empty = await led.diff(5, 5)
            assert (empty.added, empty.pins, empty.best) == ([], [], [])
            for a, b in ((5, 4), (head, 0)):
                with pytest.raises(ValueError, match="a <= b"):
                    await led.diff(a, b)
            for a, b in ((-1, 3), (0, head + 1), (head + 1, head + 2)):
                with pytest.raises(ValueError, match=rf"0\.\.{head}"):
                    await led.diff(a, b)

    anyio.run(main)


# ---------------------------------------------------------------- verify

async def verify_ledger(tmp: Path, *, segment_bytes: int = 900):
    """An open ledger with files, shared blobs and a directory artifact (caller closes it)."""
    led = await open_ledger(tmp / "ledger", fsync=False, segment_bytes=segment_bytes)
    arts = await small_history(led, tmp)
    fac = led.artifacts(**ALL)
    d = Path(await fac.stage_dir())
    (d / "sub").mkdir()
    (d / "one.txt").write_bytes(b"first file")
    (d / "sub" / "two.bin").write_bytes(b"second file")
    arts.append(await fac.ingest_dir(str(d)))
    return led, arts


def test_verify_clean_ledger(tmp_path):
    """A clean ledger verifies ok with the live head, every record and every blob counted, with progress."""

    async def main():
        async with open_ledger(tmp_path / "empty", fsync=False) as led:
            res = await led.verify()
            assert res.ok and res.head == (0, GENESIS) and res.records == 0 and res.problem is None
        led, arts = await verify_ledger(tmp_path)
        try:
            calls = []
            res = await led.verify(progress=lambda done, total: calls.append((done, total)))
            assert res.ok and res.problem is None and res.problems == []
            assert res.head == led.head
            assert res.records == led.head[0]
            # 4 distinct file contents, the manifest and its two member files.
            assert res.blobs == 4 + 3
            seg_bytes = backends.log_bytes(tmp_path / "ledger")
            total = calls[-1][1]
            assert total > seg_bytes and res.bytes == total
            assert calls and calls[-1] == (total, total)
            assert all(t == total for _, t in calls)
            dones = [d for d, _ in calls]
            assert dones == sorted(dones) and all(0 <= d <= total for d in dones)
            assert len(set(dones)) >= 3  # progress is reported more than once
            res2 = await led.verify(expect_head=led.head)
            assert res2.ok
            doc = res2.to_json()
            assert doc["head"] == {"seq": led.head[0], "hash": led.head[1]} and doc["ok"] is True
            with pytest.raises(TypeError):
                await led.verify(expect_head=list(led.head))
            with pytest.raises(TypeError):
                await led.verify(expect_head=(str(led.head[0]), led.head[1]))
        finally:
            await led.aclose()

    anyio.run(main)


@file_only
def test_verify_detects_flipped_byte_in_any_record(tmp_path):
    """A flipped byte anywhere in any record (or segment header) fails verify, naming segment, offset and seq."""

    async def main():
        led, _ = await verify_ledger(tmp_path)
        try:
            log_dir = tmp_path / "ledger" / "log"
            recs = disk_records(tmp_path / "ledger")
            assert len(recs) == led.head[0] and len({r.segment for r in recs}) > 1
            checked = 0
            for rec in recs:
                seg = log_dir / rec.segment
                # length, crc, seq, time, previous hash, payload start, last payload byte
                for rel in (0, 4, FRAME_SIZE, FRAME_SIZE + 8, FRAME_SIZE + 20, FRAME_SIZE + 48, rec.length - 1):
                    flip(seg, rec.offset + rel)
                    try:
                        res = await led.verify()
                    finally:
                        flip(seg, rec.offset + rel)
                    assert not res.ok, (rec.seq, rel)
                    assert res.problem is not None and res.problem in res.problems
                    assert rec.segment in res.problem, res.problem
                    assert f"offset {rec.offset}" in res.problem, res.problem
                    assert f"seq {rec.seq}" in res.problem, res.problem
                    checked += 1
            assert checked == 7 * len(recs)
            for seg in sorted(log_dir.glob("*.seg")):
                flip(seg, 12)  # inside the first-seq field of the segment header
                try:
                    res = await led.verify()
                finally:
                    flip(seg, 12)
                assert not res.ok and seg.name in res.problem and "header" in res.problem
            assert (await led.verify()).ok
        finally:
            await led.aclose()

    anyio.run(main)


def test_verify_detects_damaged_or_missing_blob(tmp_path):
    """A flipped byte in any blob, a damaged directory member or a missing blob fails verify, naming the blob."""

    async def main():
        led, arts = await verify_ledger(tmp_path)
        store, where = led.store, led.root
        try:
            for art in arts[:4]:
                for off in (0, backends.blob_size(where, art.sha256) - 1):
                    backends.flip_blob_byte(where, art.sha256, off)
                    try:
                        res = await led.verify()
                    finally:
                        backends.flip_blob_byte(where, art.sha256, off)
                    assert not res.ok and art.sha256 in res.problem, res.problem
                    assert res.head == led.head  # the chain itself is fine
            manifest = content.decode_manifest(store.read_bytes(arts[-1].sha256))
            member = manifest["files"][0]["sha256"]
            backends.flip_blob_byte(where, member, 0)
            try:
                res = await led.verify()
            finally:
                backends.flip_blob_byte(where, member, 0)
            assert not res.ok and member in res.problem
            assert (await led.verify()).ok
            saved = backends.hide_blob(where, arts[2].sha256)
            try:
                res = await led.verify()
            finally:
                backends.unhide_blob(where, arts[2].sha256, saved)
            assert not res.ok and arts[2].sha256 in res.problem and "missing" in res.problem
            assert (await led.verify()).ok
        finally:
            await led.aclose()

    anyio.run(main)


@file_only
def test_verify_expect_head_detects_truncated_tail(tmp_path):
    """After the tail is cut (and repaired on reopen), verify(expect_head=old head) fails; the shorter log verifies."""

    async def main():
        root = tmp_path / "ledger"
        led, _ = await verify_ledger(tmp_path)
        old_head = led.head
        await led.aclose()
        last = disk_records(root)[-1]
        # No local evidence of the lost record (a close-time checkpoint would raise RecordsLost):
        # only the head recorded elsewhere can tell.
        shutil.rmtree(root / "checkpoints")
        os.truncate(root / "log" / last.segment, last.offset + last.length - 5)
        with pytest.warns(TornTailWarning):
            led = await open_ledger(root, fsync=False)
        try:
            assert led.head[0] == old_head[0] - 1
            res = await led.verify(expect_head=old_head)
            assert not res.ok and f"seq {old_head[0]}" in res.problem
            assert res.head == led.head
            assert (await led.verify()).ok
            prev = disk_records(root)[-1]
            assert prev.seq == old_head[0] - 1
            assert (await led.verify(expect_head=(prev.seq, prev.hash.hex()))).ok
            assert (await led.verify(expect_head=(prev.seq, prev.hash.hex().upper()))).ok
            wrong = (prev.seq, hashlib.sha256(b"not it").hexdigest())
            res = await led.verify(expect_head=wrong)
            assert not res.ok and wrong[1] in res.problem
        finally:
            await led.aclose()

    anyio.run(main)


@file_only
def test_verify_reports_unrepaired_torn_tail(tmp_path):
    """A partial record at the end that no reopen has repaired yet is reported by verify."""

    async def main():
        root = tmp_path / "ledger"
        led, _ = await verify_ledger(tmp_path)
        try:
            last = disk_records(root)[-1]
            seg = root / "log" / last.segment
            with open(seg, "ab") as f:
                f.write(b"\x40\x00\x00\x00partial")
            res = await led.verify()
            assert not res.ok and last.segment in res.problem
            assert f"offset {last.offset + last.length}" in res.problem and f"seq {last.seq + 1}" in res.problem
            os.truncate(seg, last.offset + last.length)
            assert (await led.verify()).ok
        finally:
            await led.aclose()

    anyio.run(main)


@file_only
def test_verify_expect_head_on_a_copy(tmp_path):
    """A copy of the ledger verifies against the head recorded from the original."""

    async def main():
        led, _ = await verify_ledger(tmp_path)
        head = led.head
        await led.aclose()
        shutil.copytree(tmp_path / "ledger", tmp_path / "copy")
        async with open_ledger(tmp_path / "copy", fsync=False) as again:
            res = await again.verify(expect_head=head)
            assert res.ok and res.head == head

    anyio.run(main)
