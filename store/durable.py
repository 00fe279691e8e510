"""Durability primitives shared by the log, the checkpoints and the blob store."""

from __future__ import annotations

import ctypes
import os
import random
import shutil
from typing import Callable


def fsync_dir(path: str) -> None:
    """Make a directory's entries (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: str) -> None:
    """Make a file's data durable, given only its name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_with(path: str, fill: Callable[[str], None]) -> None:
    """Build a temp file next to ``path`` with ``fill``, then rename it over ``path``."""
    tmp = f"{path}.{unique_hex()}.tmp"
    try:
        fill(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write(path: str, data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` all at once (temp file, fsync, rename, directory fsync)."""

    def fill(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())

    _replace_with(path, fill)
    if fsync:
        fsync_dir(os.path.dirname(path) or ".")


def unshare(path: str) -> None:
    """Give ``path`` a fresh inode with the same bytes, so other hard links to the old one no longer see it."""
    _replace_with(path, lambda tmp: shutil.copyfile(path, tmp))


def _load_syncfs():
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_syncfs = _load_syncfs()


def syncfs_available() -> bool:
    """Whether this platform offers syncfs(2)."""
    return _syncfs is not None


def syncfs(path: str) -> None:
    """Flush every dirty page and metadata of the filesystem holding ``path`` and wait for it.

    One call replaces many fsyncs of small files: the device does one journal
    commit instead of one per file. Errors are reported (Linux 5.8 and later).
    """
    if _syncfs is None:
        raise OSError("syncfs(2) is not available on this platform")
    fd = os.open(path, os.O_RDONLY)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs failed: {os.strerror(err)}", path)
    finally:
        os.close(fd)


class _UniqueNames:
    """Random-looking 128-bit hex names from a per-process generator seeded by os.urandom.

    As unique as uuid4 in practice (128 random-looking bits, so prefixes are as
    distinctive too), without a getrandom() system call per name, which is
    measurable when thousands of saves a second each need two names.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._rng = random.Random()

    def __call__(self) -> str:
        pid = os.getpid()
        if pid != self._pid:  # a forked child must not repeat its parent's names
            self._rng = random.Random(os.urandom(32))
            self._pid = pid
        return f"{self._rng.getrandbits(128):032x}"


unique_hex = _UniqueNames()
"""A fresh 32-hex-character name, unique across processes and calls."""
