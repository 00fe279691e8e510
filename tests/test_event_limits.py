"""Events larger than the reader accepts are refused before anything is written (issue 6, case 5)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anyio
import pytest

from artifact_ledger.facade import content, open_ledger
from artifact_ledger.facade import validation as V
from artifact_ledger.ledger.events import ArtifactRecorded, encode_event
from artifact_ledger.ledger.framing import MAX_BODY

R1 = {"run_id": "r1", "graph_id": "g1", "node_id": "n1"}


def written(root: Path) -> tuple:
    """Everything a refused call must leave untouched: log bytes, blobs, store temp files, staging."""
    log = root / "log"
    return (
        sorted((p.name, p.stat().st_size) for p in log.iterdir() if p.name.endswith(".seg")),
        sorted(p.name for p in (root / "blobs" / "sha256").rglob("*") if p.is_file()),
        sorted(os.listdir(root / "blobs" / "tmp")),
        sorted(os.listdir(root / "staging")),
    )


def run(root: Path, body) -> None:
    """Run ``body(ledger, facade)`` on a ledger holding one saved artifact."""
    async def main() -> None:
        async with open_ledger(root) as led:
            arts = led.artifacts(**R1)
            # One artifact first, so the log has a segment whose size must not change.
            src = root.parent / "seed.txt"
            src.write_bytes(b"seed")
            await arts.save(str(src), kind="seed")
            await body(led, arts)

    anyio.run(main)


def replay_count(root: Path) -> int:
    """Open with every checkpoint gone: a full replay, as the reader sees the log."""
    for p in (root / "checkpoints").glob("*"):
        p.unlink()

    async def main() -> int:
        async with open_ledger(root) as led:
            return len(led.catalog.rows)

    return anyio.run(main)


def test_limits_are_far_below_the_readers_record_limit():
    """Every limit keeps an event well inside what the reader accepts."""
    assert V.MAX_EVENT_BYTES * 16 <= MAX_BODY
    assert V.MAX_LABEL_STR_CHARS * 4 < V.MAX_EVENT_BYTES  # 4 bytes per character at most in UTF-8


def test_the_72_mb_label_of_the_issue_is_refused_by_every_write_path_before_anything_is_written(root, tmp_path):
    """labels={"c": [0.5] * 8_000_000}: a ValueError naming the field and the limit; no blob, no event, staged kept."""
    huge = {"c": [0.5] * 8_000_000}
    src = tmp_path / "data.bin"
    src.write_bytes(b"payload of a refused save")

    async def body(led, arts):
        before = written(led.root)
        head = led.head
        with pytest.raises(ValueError, match=r"labels\['c'\].*8000000 items.*10000"):
            await arts.save(str(src), kind="m", labels=huge)
        assert written(led.root) == before and led.head == head

        staged = Path(await arts.stage(".bin"))
        staged.write_bytes(b"staged bytes")
        before = written(led.root)
        with pytest.raises(ValueError, match=r"labels\['c'\]"):
            await arts.ingest(str(staged), kind="m", labels=huge)
        assert written(led.root) == before and staged.read_bytes() == b"staged bytes"

        with pytest.raises(ValueError, match=r"labels\['c'\]"):
            async with arts.writer(kind="m", labels=huge) as w:
                w.write(b"never stored")
        assert written(led.root) == before

        d = Path(await arts.stage_dir())
        (d / "f.txt").write_bytes(b"in a staged dir")
        before = written(led.root)
        with pytest.raises(ValueError, match=r"labels\['c'\]"):
            await arts.ingest_dir(str(d), labels=huge)
        assert written(led.root) == before and (d / "f.txt").read_bytes() == b"in a staged dir"
        assert led.head == head

    run(root, body)
    assert replay_count(root) == 1


def _ok_then_refused(root: Path, tmp_path: Path, at: dict, over: dict, match: str) -> None:
    """Saving with ``at`` works (and replays); with ``over`` it is refused and nothing is written."""
    src = tmp_path / "x.txt"
    src.write_bytes(b"x")

    async def body(led, arts):
        art = await arts.save(str(src), kind="m", **at)
        for name, value in at.items():
            assert getattr(art, name) == value
        before = written(led.root)
        head = led.head
        with pytest.raises(ValueError, match=match):
            await arts.save(str(src), kind="m", **over)
        assert written(led.root) == before and led.head == head

    run(root, body)
    assert replay_count(root) == 2


@pytest.mark.parametrize("case", ["string", "list", "label_key", "metric_key", "labels", "metrics"])
def test_each_limit_exactly_at_works_and_one_over_is_refused(root, tmp_path, case):
    """Per label value (string, list), per key, and number of labels/metrics: at the limit ok, one over refused."""
    s, n, k = V.MAX_LABEL_STR_CHARS, V.MAX_LABEL_LIST_ITEMS, V.MAX_KEY_CHARS
    cases = {
        "string": ({"labels": {"s": "é" * s}}, {"labels": {"s": "é" * (s + 1)}},
                   rf"labels\['s'\] is a string of {s + 1} characters.*at most {s}"),
        "list": ({"labels": {"l": [1] * n}}, {"labels": {"l": [1] * (n + 1)}},
                 rf"labels\['l'\] is a list of {n + 1} items.*at most {n}"),
        "label_key": ({"labels": {"k" * k: 1}}, {"labels": {"k" * (k + 1): 1}},
                      rf"labels key .* is {k + 1} characters.*at most {k}"),
        "metric_key": ({"metrics": {"k" * k: 1.0}}, {"metrics": {"k" * (k + 1): 1.0}},
                       rf"metrics key .* is {k + 1} characters.*at most {k}"),
        "labels": ({"labels": {f"l{i}": i for i in range(V.MAX_LABELS)}},
                   {"labels": {f"l{i}": i for i in range(V.MAX_LABELS + 1)}},
                   rf"labels has {V.MAX_LABELS + 1} entries; at most {V.MAX_LABELS}"),
        "metrics": ({"metrics": {f"m{i}": i for i in range(V.MAX_METRICS)}},
                    {"metrics": {f"m{i}": i for i in range(V.MAX_METRICS + 1)}},
                    rf"metrics has {V.MAX_METRICS + 1} entries; at most {V.MAX_METRICS}"),
    }
    at, over, match = cases[case]
    _ok_then_refused(root, tmp_path, at, over, match)


def _probe_size(labels: dict, name: str) -> int:
    """The documented rule: the event's encoded size, with size and ids at their widest."""
    ev = ArtifactRecorded(artifact_id="0" * 32, origin="save", kind="m", sha256="0" * 64, size=2**64 - 1,
                          mime=content.guess_mime(name), name=name, labels=labels, **R1)
    return len(encode_event(ev))


def test_whole_event_limit_exactly_at_works_and_one_byte_over_is_refused(root, tmp_path):
    """Labels each within their limits but together over 1 MiB: refused naming the field and the limit."""
    src = tmp_path / "x.txt"
    src.write_bytes(b"x")
    fill = {f"f{i:02d}": "x" * V.MAX_LABEL_STR_CHARS for i in range(15)}

    def labels(k: int) -> dict:
        return {**fill, "last": "y" * k}

    k0 = 60_000
    k = k0 + V.MAX_EVENT_BYTES - _probe_size(labels(k0), src.name)
    assert 256 <= k < 65_535  # same msgpack string header as k0, so the size is linear in k
    assert _probe_size(labels(k), src.name) == V.MAX_EVENT_BYTES

    async def body(led, arts):
        art = await arts.save(str(src), kind="m", labels=labels(k))
        assert art.labels["last"] == "y" * k
        before = written(led.root)
        with pytest.raises(ValueError, match=rf"{V.MAX_EVENT_BYTES + 1} bytes.*limit of {V.MAX_EVENT_BYTES}.*labels"):
            await arts.save(str(src), kind="m", labels=labels(k + 1))
        staged = Path(await arts.stage(".txt"))
        staged.write_bytes(b"kept")
        before = written(led.root)
        with pytest.raises(ValueError, match="MAX_EVENT_BYTES"):
            await arts.ingest(str(staged), kind="m", labels=labels(k + 100))
        assert written(led.root) == before and staged.read_bytes() == b"kept"

    run(root, body)
    assert replay_count(root) == 2


ONE_BYTE_SHA = hashlib.sha256(b"x").hexdigest()


def test_the_log_append_refuses_an_oversized_event_itself(root):
    """Defence in depth: an event over MAX_EVENT_BYTES handed straight to the ledger is refused, nothing written."""

    def event(n: int) -> ArtifactRecorded:
        # A real blob: the open's check of the log's last batch cuts a batch naming a missing one.
        return ArtifactRecorded(artifact_id="a" * 32, origin="save", kind="m", sha256=ONE_BYTE_SHA, size=1,
                                mime="text/plain", labels={"big": "z" * n}, **R1)

    n0 = 100_000
    n = n0 + V.MAX_EVENT_BYTES - len(encode_event(event(n0)))
    assert len(encode_event(event(n))) == V.MAX_EVENT_BYTES

    async def body(led, arts):
        assert led.store.put_bytes(b"x").sha256 == ONE_BYTE_SHA
        led.store.make_durable()
        before = written(led.root)
        head = led.head
        with pytest.raises(ValueError, match=f"limit of {V.MAX_EVENT_BYTES}"):
            await led._append(event(n + 1))
        assert written(led.root) == before and led.head == head
        seq = await led._append(event(n))  # exactly at the limit
        assert seq == head[0] + 1

    run(root, body)
    assert replay_count(root) == 2
