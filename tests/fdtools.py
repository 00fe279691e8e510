"""What an open file descriptor refers to, for tests that inject faults only into the log's own files."""

from __future__ import annotations

import os


def fd_path(fd: int) -> str:
    """The path an open fd refers to ('' if unknown)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def is_segment(fd: int) -> bool:
    """Whether ``fd`` is an open log segment (not its temp file, not a blob)."""
    return fd_path(fd).endswith(".seg")
