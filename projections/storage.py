"""Example projection: storage accounting, logical and deduplicated bytes per run and per project.

Logical bytes add up the size of every recorded artifact; deduplicated bytes count each distinct
content (SHA-256) once within the run or project, as the content-addressed store keeps it. A
directory artifact counts as one content, its manifest's, sized as the sum of its files: the event
names no file blobs, so files shared between directories are not deduplicated across them here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import msgspec

from ..ledger.events import ArtifactRecorded

if TYPE_CHECKING:
    from ..facade.audit import LedgerEvent


class Usage(msgspec.Struct, array_like=True):
    """Bytes of one run, project, or the whole ledger: artifacts, logical bytes, distinct contents."""

    artifacts: int = 0
    logical: int = 0
    deduplicated: int = 0
    contents: set[str] = set()  # SHA-256 of every distinct content counted in ``deduplicated``

    def add(self, sha256: str, size: int) -> None:
        """Count one more artifact."""
        self.artifacts += 1
        self.logical += size
        if sha256 not in self.contents:
            self.contents.add(sha256)
            self.deduplicated += size


class Accounts(msgspec.Struct):
    """Storage state: usage per run_id, per project_id (None: artifacts without a project) and in total."""

    runs: dict[str, Usage] = {}
    projects: dict[str | None, Usage] = {}
    total: Usage = msgspec.field(default_factory=Usage)

    def run(self, run_id: str) -> Usage:
        """Usage of one run (zero if it recorded nothing)."""
        return self.runs.get(run_id) or Usage()

    def project(self, project_id: str | None) -> Usage:
        """Usage of one project (zero if it recorded nothing)."""
        return self.projects.get(project_id) or Usage()


_decoder = msgspec.msgpack.Decoder(Accounts)


class StorageAccounting:
    """Logical and deduplicated bytes per run and per project."""

    name = "storage-accounting"
    version = 1

    def initial(self) -> Accounts:
        """Nothing stored yet."""
        return Accounts()

    def apply(self, state: Accounts, event: "LedgerEvent") -> Accounts:
        """Count a recorded artifact in its run, its project and the total."""
        ev = event.event
        if isinstance(ev, ArtifactRecorded):
            state.runs.setdefault(ev.run_id, Usage()).add(ev.sha256, ev.size)
            state.projects.setdefault(ev.project_id, Usage()).add(ev.sha256, ev.size)
            state.total.add(ev.sha256, ev.size)
        return state

    def apply_batch(self, state: Accounts, events: Sequence["LedgerEvent"]) -> Accounts:
        """The same as applying ``events`` one by one."""
        for e in events:
            state = self.apply(state, e)
        return state

    def encode(self, state: Accounts) -> bytes:
        """msgpack of the whole state."""
        return msgspec.msgpack.encode(state)

    def decode(self, data: bytes) -> Accounts:
        """The inverse of ``encode``."""
        return _decoder.decode(data)
