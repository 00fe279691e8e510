"""Content-addressed blob stores."""

from .base import BlobInfo, BlobStore
from .local import LocalBlobStore

__all__ = ["BlobInfo", "BlobStore", "LocalBlobStore"]
