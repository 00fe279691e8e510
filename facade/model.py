"""The Artifact record users receive."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def utc_from_us(ts_us: int) -> datetime:
    """A timezone-aware UTC datetime from microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=ts_us)


class Artifact(BaseModel):
    """One recorded artifact: identity, content address, metadata and ledger position."""

    model_config = ConfigDict(frozen=True)

    artifact_id: str
    uri: str
    kind: str
    sha256: str
    bytes: int
    mime: str
    labels: dict[str, Any]
    metrics: dict[str, float | int]
    pinned: bool
    run_id: str
    graph_id: str
    node_id: str
    project_id: str | None
    created_at: datetime
    seq: int
    suggested_uri: str | None

    @property
    def id(self) -> str:
        """Alias of ``artifact_id`` (the reference's pin example uses ``art.id``)."""
        return self.artifact_id
