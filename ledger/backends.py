"""Opening a log backend by kind: the one place that names the backend modules.

The facade asks for a log here and gets an ``EventLog``; it never imports a backend's types.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .base import EventLog
from .filelog import DEFAULT_SEGMENT_BYTES
from .framing import SEGMENT_HEADER_SIZE
from .lockfile import DEFAULT_LOCK_TIMEOUT

# The smallest segment holds its header and one small record.
MIN_SEGMENT_BYTES = SEGMENT_HEADER_SIZE + 64

__all__ = ["DEFAULT_SEGMENT_BYTES", "MIN_SEGMENT_BYTES", "is_log_url", "open_file_log", "open_log_url"]


def place_file(root: Path) -> Path:
    """Where a ledger directory records the ``s3://bucket/prefix`` its blobs live in."""
    return root / "blobs" / "remote"


def directory_blob_place(root: Path) -> str | None:
    """The blob place a ledger directory records, read before its log is opened (None: its own ``blobs/``)."""
    from .file import read_blob_place

    return read_blob_place(str(place_file(root)))


def open_file_log(root: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES, fsync: bool = True,
                  read_only: bool = False, lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT) -> EventLog:
    """The segment log of the ledger directory ``root`` (``root/log``, checkpoints in ``root/checkpoints``)."""
    from .file import FileEventLog

    log = FileEventLog(str(root / "log"), str(root / "checkpoints"), segment_bytes=segment_bytes, fsync=fsync,
                       read_only=read_only, lock_timeout=lock_timeout,
                       place_file=str(place_file(root)))
    if log.lock_problem is not None:
        consequence = ("only writers of older library versions, which lock just that file, are not excluded"
                       if log.locks_directory else "so a batch still being written may be seen before its "
                       "fsync returns (whole, checksummed records only)")
        warnings.warn(f"{log.lock_problem}: reading without the log lock file; {consequence}",
                      UserWarning, stacklevel=4)
    return log


URL_SCHEMES = ("postgresql", "postgres")


def is_log_url(root: object) -> bool:
    """Whether ``root`` names a log by URL (``scheme://...``) rather than a ledger directory."""
    return isinstance(root, str) and "://" in root


def open_log_url(url: str, *, create: bool = True, fsync: bool = True, read_only: bool = False,
                 lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT, connect_timeout: int | None = None) -> EventLog:
    """The log a URL names: ``postgresql://user@host:5432/db?schema=NAME`` (see README).

    Raises ValueError for an unsupported scheme or a malformed URL, LedgerUnreachable when the
    server cannot be reached within ``connect_timeout`` seconds, SchemaTooNew for a newer schema.
    """
    scheme = url.split("://", 1)[0].lower()
    if scheme not in URL_SCHEMES:
        raise ValueError(f"unsupported log URL scheme {scheme!r} in {url!r}: the log is a ledger directory "
                         "(a path) or postgresql://user@host:5432/db?schema=NAME")
    from .postgres import PostgresEventLog

    return PostgresEventLog(url, create=create, fsync=fsync, read_only=read_only, lock_timeout=lock_timeout,
                            connect_timeout=connect_timeout)
