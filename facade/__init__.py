"""The ArtifactFacade of the reference, composed over ledger, projections and store."""

from .artifacts import ArtifactFacade, ReadOnlyError
from .ledger import Context, Ledger, open_ledger
from .model import Artifact

__all__ = ["Artifact", "ArtifactFacade", "Context", "Ledger", "ReadOnlyError", "open_ledger"]
