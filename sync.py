"""``artifact_ledger.sync``: the same API without ``await`` (see ``facade/sync.py``)."""

from .facade.sync import SyncContext, SyncFacade, SyncLedger, SyncView, open_ledger

__all__ = ["SyncContext", "SyncFacade", "SyncLedger", "SyncView", "open_ledger"]
