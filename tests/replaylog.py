"""A synthetic ledger written straight into the segment log (fast to build, many records) for replay tests."""

from __future__ import annotations

from pathlib import Path

from artifact_ledger.facade.ledger import _prepare_root
from artifact_ledger.ledger.events import ArtifactRecorded, PinChanged, encode_event
from artifact_ledger.ledger.filelog import SegmentLog
from artifact_ledger.store.local import LocalBlobStore


def events(n: int, blobs: list[tuple[str, int]]) -> list[bytes]:
    out = []
    for i in range(n):
        if i % 10 == 9:
            out.append(encode_event(PinChanged(artifact_id=f"a{i - 3:05d}", pinned=i % 20 == 9)))
            continue
        sha, size = blobs[i % len(blobs)]
        out.append(encode_event(ArtifactRecorded(
            artifact_id=f"a{i:05d}", origin="save", kind=("model", "plot")[i % 2], sha256=sha, size=size,
            mime="application/octet-stream", labels={"i": i % 4}, metrics={"loss": i / 1000},
            run_id=f"r{i // 50}", graph_id="g", node_id="n", project_id="p", name=f"x{i}.bin")))
    return out


def build(root: Path, n: int = 300, batch: int = 40, segment_bytes: int = 16 * 1024) -> None:
    """A ledger of ``n`` events in batches of ``batch``, over several segments, straight into the log."""
    _prepare_root(root, True)
    store = LocalBlobStore(str(root / "blobs"), fsync=False)
    blobs = [(store.put_bytes(f"blob {k}".encode() * 50).sha256, len(f"blob {k}".encode()) * 50) for k in range(5)]
    log = SegmentLog(str(root / "log"), fsync=False, segment_bytes=segment_bytes)
    payloads = events(n, blobs)
    for lo in range(0, n, batch):
        log.append_batch(payloads[lo:lo + batch], lambda rec: None)
    log.close()
