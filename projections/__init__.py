"""Pure projections of the ledger's events: the catalogue and its queries."""

from .catalog import SCOPES, Catalog, Logged, Row, apply, replay
from .labels import RESERVED, canon
from .query import Filter, best, by_blob, pinned_at, rank, select, seq_at_time

__all__ = [
    "Catalog", "Filter", "Logged", "RESERVED", "Row", "SCOPES", "apply", "best", "by_blob", "canon",
    "pinned_at", "rank", "replay", "select", "seq_at_time",
]
