"""artifact-ledger: an event-sourced, content-addressed artifact store with the ArtifactFacade API."""

from importlib.metadata import PackageNotFoundError, version as _version

from .facade import Artifact, ArtifactFacade, Context, Ledger, ReadOnlyError, open_ledger
from .facade import ArtifactCorrupted, ArtifactDecodeError, LedgerNeedsRepair, repair_ledger
from .facade.audit import Diff, LedgerEvent, VerifyResult
from .facade.projecting import PastProjection, ProjectionHandle
from .facade.view import LedgerView
from .facade.lifecycle import ArtifactPurged
from .projections.retention import KeepBest, KeepNewest, RetentionPolicy, Ttl
from .ledger.checkpoints import CheckpointWarning
from .ledger.errors import (LedgerClosed, LedgerCorruption, LedgerError, LedgerForked, LedgerPoisoned,
                            LedgerWriteError, LockTimeout,
                            LostRecordsWarning, RecordsLost)
from .ledger.errors import AppendNotRecorded, LedgerNotFound, LedgerUnreachable, SchemaTooNew
from .ledger.errors import TornTailWarning
from .projections.user import Projection, ProjectionError, ProjectionWarning

try:
    __version__ = _version("artifact-ledger")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AppendNotRecorded",
    "Artifact",
    "ArtifactCorrupted",
    "ArtifactDecodeError",
    "ArtifactFacade",
    "ArtifactPurged",
    "CheckpointWarning",
    "Context",
    "Diff",
    "KeepBest",
    "KeepNewest",
    "Ledger",
    "LedgerClosed",
    "LedgerCorruption",
    "LedgerError",
    "LedgerForked",
    "LedgerEvent",
    "LedgerNeedsRepair",
    "LedgerNotFound",
    "LedgerPoisoned",
    "LedgerUnreachable",
    "LedgerView",
    "LedgerWriteError",
    "LostRecordsWarning",
    "LockTimeout",
    "PastProjection",
    "Projection",
    "ProjectionError",
    "ProjectionHandle",
    "ProjectionWarning",
    "ReadOnlyError",
    "RecordsLost",
    "RetentionPolicy",
    "SchemaTooNew",
    "TornTailWarning",
    "Ttl",
    "VerifyResult",
    "__version__",
    "open_ledger",
    "repair_ledger",
]
