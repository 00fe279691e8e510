"""Pure projections of the ledger's events: the catalogue and its queries."""

from .catalog import SCOPES, Catalog, Logged, Row, apply, replay
from .labels import RESERVED, canon
from .query import Filter, best, rank, select

__all__ = ["Catalog", "Filter", "Logged", "RESERVED", "Row", "SCOPES", "apply", "best", "canon", "rank", "replay", "select"]
