"""Event schema versions: newer ones are a clear error, never read silently; older ones are upcast (issue 6)."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import anyio
import msgspec
import pytest

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger import events as E
from artifact_ledger.ledger.errors import LedgerCorruption
from artifact_ledger.ledger.filelog import SegmentLog

R1 = {"run_id": "r1", "graph_id": "g1", "node_id": "n1"}


def build(root: Path, tmp_path: Path) -> list[str]:
    """A ledger with two saves and a pin (seqs 1..3); returns the artifact ids."""

    async def main() -> list[str]:
        async with open_ledger(root) as led:
            arts = led.artifacts(**R1)
            ids = []
            for i in range(2):
                src = tmp_path / f"f{i}.txt"
                src.write_text(f"file {i}")
                ids.append((await arts.save(str(src), kind="text", labels={"i": i})).artifact_id)
            await arts.pin(ids[0])
            return ids

    return anyio.run(main)


def raw_event(**over) -> dict:
    """The raw map of a valid current ArtifactRecorded payload, with ``over`` replacing fields."""
    ev = E.ArtifactRecorded(artifact_id="f" * 32, origin="save", kind="text", sha256="0" * 64, size=1,
                            mime="text/plain", **R1)
    return {**msgspec.to_builtins(ev), **over}


def append_raw(root: Path, raw: dict) -> int:
    """Append one well-framed record with this payload, as another library version's writer would."""
    log = SegmentLog(str(root / "log"))
    try:
        log.recover(lambda rec: None)
        [rec] = log.append_batch([msgspec.msgpack.encode(raw)], lambda rec: None)
        return rec.seq
    finally:
        log.close()


def open_fails(root: Path) -> LedgerCorruption:
    """Open the ledger, insisting that it raises LedgerCorruption; return the error."""
    async def main() -> None:
        async with open_ledger(root):
            pass

    with pytest.raises(LedgerCorruption) as info:
        anyio.run(main)
    return info.value


@pytest.mark.parametrize("checkpoint", ["kept", "deleted"])
def test_a_newer_schema_version_on_replay_is_corruption_naming_the_seq(root, tmp_path, checkpoint):
    """A v2 payload (this library knows v1) makes open raise LedgerCorruption at that seq, saying to upgrade."""
    build(root, tmp_path)
    seq = append_raw(root, raw_event(v=E.SCHEMA_VERSION + 1))
    if checkpoint == "deleted":
        shutil.rmtree(root / "checkpoints")
    exc = open_fails(root)
    assert exc.seq == seq == 4
    assert f"schema version {E.SCHEMA_VERSION + 1}, newer than this library's {E.SCHEMA_VERSION}" in str(exc)
    assert "upgrade artifact-ledger" in str(exc)


@pytest.mark.parametrize("over, words", [
    ({"v": E.SCHEMA_VERSION + 1}, "newer than this library's"),
    ({"type": "artifact.teleported"}, "unknown event type 'artifact.teleported'"),
    ({"v": 0}, "invalid schema version 0"),
])
def test_events_raises_on_a_record_it_cannot_read_committed_by_another_writer(root, tmp_path, over, words):
    """An open ledger that meets such a record (appended by another process) raises from events(), naming seq."""
    build(root, tmp_path)

    async def main() -> None:
        async with open_ledger(root) as led:
            assert [e.seq async for e in led.events()] == [1, 2, 3]
            await anyio.to_thread.run_sync(append_raw, root, raw_event(**over))
            with pytest.raises(LedgerCorruption) as info:
                async for _ in led.events():
                    pass
            assert info.value.seq == 4 and words in str(info.value)

    anyio.run(main)


def test_decode_event_refuses_newer_unknown_and_invalid_versions():
    """decode_event itself: a newer version, an unknown type or a version below 1 is an EventDecodeError."""
    for over, words in (({"v": 2}, "newer than"), ({"v": 99}, "version 99"), ({"type": "x.y"}, "unknown event type"),
                        ({"v": 0}, "invalid schema version"), ({"v": "1"}, "invalid schema version")):
        with pytest.raises(E.EventDecodeError, match=words):
            E.decode_event(msgspec.msgpack.encode(raw_event(**over)))
    assert E.decode_event(msgspec.msgpack.encode(raw_event())).kind == "text"


def test_old_versions_are_upcast_on_decode_and_on_replay(root, tmp_path, monkeypatch):
    """With a (pretend) current version 2, v1 records go through the v1->v2 upcasters, on disk unchanged."""
    ids = build(root, tmp_path)
    seg = sorted((root / "log").glob("*.seg"))
    before = [p.read_bytes() for p in seg]

    def recorded_v1_to_v2(raw: dict) -> dict:
        # What a real upcaster does: give an old event the shape of the new one.
        return {**raw, "labels": {**raw.get("labels", {}), "upcast_from": raw["v"]}, "kind": raw["kind"].upper()}

    monkeypatch.setattr(E, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(E.UPCASTERS, ("artifact.recorded", 1), recorded_v1_to_v2)
    monkeypatch.setitem(E.UPCASTERS, ("artifact.pin", 1), lambda raw: raw)

    ev = E.decode_event(msgspec.msgpack.encode(raw_event()))
    assert ev.v == 2 and ev.kind == "TEXT" and ev.labels == {"upcast_from": 1}
    v2 = E.decode_event(msgspec.msgpack.encode(raw_event(v=2)))
    assert v2.v == 2 and v2.kind == "text" and v2.labels == {}  # current version: no upcaster runs
    with pytest.raises(E.EventDecodeError, match="newer than this library's 2"):
        E.decode_event(msgspec.msgpack.encode(raw_event(v=3)))

    shutil.rmtree(root / "checkpoints")  # a full replay of the v1 log

    async def main() -> None:
        async with open_ledger(root) as led:
            arts = led.artifacts(**R1)
            got = {a.artifact_id: a for a in await arts.list()}
            assert set(got) == set(ids)
            for i, aid in enumerate(ids):
                assert got[aid].kind == "TEXT" and got[aid].labels == {"i": i, "upcast_from": 1}
            assert got[ids[0]].pinned is True
            assert [e.event.v async for e in led.events()] == [2, 2, 2]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        anyio.run(main)
    assert [p.read_bytes() for p in seg] == before  # upcast on read, never rewritten


@pytest.mark.parametrize("value", [b"\x00\x01", {"nested": 1}, [[1, 2]], [b"x"]],
                         ids=["bin", "map", "nested-list", "bin-in-list"])
@pytest.mark.parametrize("checkpoint", ["kept", "deleted"])
def test_a_label_value_no_writer_of_this_library_makes_is_corruption_naming_the_seq(root, tmp_path, value,
                                                                                     checkpoint):
    """A foreign record whose label value is not a JSON scalar or list of them (msgpack bin, a map, a list of
    lists) fails open with LedgerCorruption at its seq and naming the label, on either replay path (C or not)."""
    build(root, tmp_path)
    # It names a blob that is stored, so the last-batch check on open has nothing to cut.
    sha = hashlib.sha256(b"file 0").hexdigest()
    seq = append_raw(root, raw_event(sha256=sha, size=6, labels={"odd": value}))
    if checkpoint == "deleted":
        shutil.rmtree(root / "checkpoints")
    exc = open_fails(root)
    assert exc.seq == seq == 4
    assert "labels.odd" in str(exc), str(exc)
    with pytest.raises(E.EventDecodeError, match=r"labels\.odd"):
        E.decode_event(msgspec.msgpack.encode(raw_event(labels={"odd": value})))
