"""The ArtifactFacade of the reference, composed over ledger, projections and store."""

from .artifacts import ArtifactCorrupted, ArtifactDecodeError, ArtifactFacade, ReadOnlyError
from .ledger import Context, Ledger, open_ledger
from .model import Artifact
from .repair import LedgerNeedsRepair, repair_ledger

__all__ = ["Artifact", "ArtifactCorrupted", "ArtifactDecodeError", "ArtifactFacade", "Context", "Ledger",
           "LedgerNeedsRepair", "ReadOnlyError", "open_ledger", "repair_ledger"]
