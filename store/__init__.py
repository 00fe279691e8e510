"""Content-addressed blob stores: the contract (``base``) and one module per backend (``local``, ``s3``)."""

from __future__ import annotations

import os
from pathlib import Path

from .base import (BlobCorrupted, BlobInfo, BlobStore, BlobStoreAccessDenied, BlobStoreError, BlobStoreMissing,
                   BlobStoreUnavailable)
from .local import LocalBlobStore

S3_SCHEME = "s3://"


def is_remote(location: str | None) -> bool:
    """Whether a blob location names a remote store (an ``s3://`` URL) rather than a local directory."""
    return isinstance(location, str) and location.startswith(S3_SCHEME)


def remote_place(url: str) -> str:
    """The canonical ``s3://bucket/prefix`` of a remote blob URL (options dropped); ``ValueError`` if it is bad.

    Checked without contacting anything, so a bad URL is refused before a ledger is created.
    """
    if not isinstance(url, str):
        raise TypeError(f"blobs must be an s3://bucket/prefix URL string or None, got {type(url).__name__}")
    if not url.startswith(S3_SCHEME):
        scheme = url.split("://", 1)[0] + "://" if "://" in url else "none"
        raise ValueError(f"blobs={url!r}: the scheme must be s3:// (S3-compatible object storage, "
                         f"s3://bucket/prefix), got {scheme}; leave blobs unset to keep blobs in the ledger directory")
    from .s3 import parse_url

    bucket, prefix, _ = parse_url(url)
    return f"{S3_SCHEME}{bucket}/{prefix}" if prefix else f"{S3_SCHEME}{bucket}"


def open_store(location: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None,
               fsync: bool = True, read_only: bool = False) -> BlobStore:
    """The blob store at ``location``: ``s3://bucket/prefix[?options]`` or a local directory.

    A remote store needs ``cache_dir`` (where fetched blobs are kept, checked, by SHA-256). A bad
    location raises ``ValueError`` naming what is wrong before anything is contacted or written.
    """
    if isinstance(location, str) and "://" in location:
        if not location.startswith(S3_SCHEME):
            scheme = location.split("://", 1)[0]
            raise ValueError(f"blob store URL {location!r} has the scheme {scheme!r}; only s3://bucket/prefix "
                             "(S3-compatible object storage) or a local directory is supported")
        if cache_dir is None:
            raise ValueError(f"blobs={location!r} needs cache_dir=, a local directory for fetched blobs")
        from .s3 import S3BlobStore  # boto3 is needed only by ledgers that keep their blobs in S3

        return S3BlobStore.from_url(location, cache_dir=Path(cache_dir), read_only=read_only)
    return LocalBlobStore(location, fsync=fsync, deferred=True, read_only=read_only)


__all__ = ["BlobCorrupted", "BlobInfo", "BlobStore", "BlobStoreAccessDenied", "BlobStoreError", "BlobStoreMissing",
           "BlobStoreUnavailable", "LocalBlobStore", "is_remote", "open_store", "remote_place"]
