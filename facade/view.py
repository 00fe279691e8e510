"""Read-only views of the catalogue as it was after a past event."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..projections.catalog import Catalog, Row
from ..projections.query import pinned_at

from .model import Artifact, RunSummary, utc_from_us

if TYPE_CHECKING:
    from .artifacts import ArtifactFacade
    from .ledger import Context, Ledger
    from .projecting import PastProjection


class LedgerView:
    """The ledger as of seq ``seq``: the facade's read API, and nothing that writes."""

    def __init__(self, ledger: "Ledger", seq: int):
        self._ledger = ledger
        self.seq = seq
        self.upto: int | None = seq
        self.store = ledger.store
        self.root = ledger.root
        self.where = ledger.where
        self.staging = ledger.staging

    def __repr__(self) -> str:
        return f"LedgerView(root={str(self.root)!r}, seq={self.seq})"

    @property
    def materialized(self) -> Path:
        """Where directory artifacts are built: the ledger's (made on first use when read-only)."""
        return self._ledger.materialized

    @property
    def catalog(self) -> Catalog:
        """The live catalogue; every query through this view is cut at ``seq``."""
        return self._ledger.catalog

    @property
    def time(self) -> datetime:
        """Commit time of event ``seq``."""
        return utc_from_us(self.catalog.times[self.seq - 1])

    def artifacts(self, *, run_id: str, graph_id: str, node_id: str, project_id: str | None = None) -> ArtifactFacade:
        """A read-only ArtifactFacade bound to these ids, answering as of ``seq``."""
        from .artifacts import ArtifactFacade

        self._ledger._check_ids(run_id, graph_id, node_id, project_id)
        return ArtifactFacade(self, run_id=run_id, graph_id=graph_id, node_id=node_id,
                              project_id=project_id, read_only=True)

    def context(self, *, run_id: str, graph_id: str, node_id: str, project_id: str | None = None) -> Context:
        """A context whose ``.artifacts()`` is the read-only facade."""
        from .ledger import Context

        return Context(self.artifacts(run_id=run_id, graph_id=graph_id, node_id=node_id, project_id=project_id))

    # ------------------------------------------------------------ conveniences
    async def runs(self, *, project_id: str | None = None) -> list[RunSummary]:
        """``Ledger.runs()`` as of ``seq``: runs, artifact counts and times up to that event."""
        from .ledger import run_summaries

        return run_summaries(await self._refresh(), self.seq, project_id)

    async def export_files(self, directory: str | os.PathLike[str], *, run_id: str | None = None,
                           graph_id: str | None = None, node_id: str | None = None, project_id: str | None = None,
                           kind: str | None = None, labels: dict[str, Any] | None = None, metric: str | None = None,
                           mode: str | None = None, limit: int | None = None,
                           overwrite: bool = False) -> dict[str, Path]:
        """``Ledger.export_files()`` as of ``seq``: only artifacts recorded by then, as they were then."""
        from .exporting import export_from

        return await export_from(
            self, directory, ids={"run_id": run_id, "graph_id": graph_id, "node_id": node_id, "project_id": project_id},
            kind=kind, labels=labels, metric=metric, mode=mode, limit=limit, overwrite=overwrite)

    async def project(self, projection: Any) -> PastProjection:
        """The past lifecycle: ``projection``'s state after event ``seq`` (folded from the first ``seq`` events)."""
        from .projecting import past

        self._ledger._check_open()
        return await past(self._ledger, projection, self.seq)

    # ------------------------------------------------------------ source protocol used by the facade
    def _check_open(self) -> None:
        self._ledger._check_open()

    async def _refresh(self) -> Catalog:
        self._ledger._check_open()
        return self._ledger.catalog

    def _to_artifact(self, row: Row, catalog: Catalog | None = None) -> Artifact:
        from .ledger import alias_names, current_artifact, row_to_artifact

        pinned = pinned_at(self.catalog, row, self.seq)
        art = current_artifact(row.cat, row.i)
        # The shared head-state Artifact is right unless its pin or aliases changed since this view's seq.
        if art.pinned == pinned and art.aliases == alias_names(row.cat, art.artifact_id, self.seq):
            return art
        return row_to_artifact(row, pinned, self.seq)

    async def _append(self, event: Any) -> NoReturn:
        from ..ledger.errors import ReadOnlyError

        raise ReadOnlyError("a past view of the ledger cannot record events")
