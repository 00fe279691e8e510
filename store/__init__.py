"""Content-addressed blob stores."""

from .base import BlobInfo, BlobStore
from .local import BlobCorrupted, LocalBlobStore

__all__ = ["BlobCorrupted", "BlobInfo", "BlobStore", "LocalBlobStore"]
