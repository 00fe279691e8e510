"""Durability primitives shared by the log, the checkpoints and the blob store."""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import re
import shutil
import sys
import time
from typing import Any, Callable


def fsync_dir(path: str) -> None:
    """Make a directory's entries (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_fd(fd: int) -> None:
    """Flush a file's data through the descriptor that wrote it.

    Only a descriptor open when a writeback error happened is sure to be told
    of it; one opened afterwards (close, reopen, fsync) may see success.
    """
    os.fsync(fd)


def makedirs_durable(path: str) -> list[str]:
    """Create ``path`` and any missing parents, each fsynced into its parent; returns those created.

    Safe when another process creates the same directories at the same time.
    """
    missing: list[str] = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    created: list[str] = []
    for d in reversed(missing):  # outermost first, so each parent exists before its child
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
        # Flushed even when another process made it: it may not have flushed the name yet.
        fsync_dir(d)
        fsync_dir(os.path.dirname(d))
    return created


def _replace_with(path: str, fill: Callable[[str], object]) -> None:
    """Build a temp file next to ``path`` with ``fill``, then rename it over ``path``."""
    tmp = f"{path}.{owner_tag()}.{unique_hex()}.tmp"
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


def _load_syncfs() -> Any:
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


def syncfs_fd(fd: int, what: str) -> None:
    """syncfs(2) through an fd held open since before the writes it must cover (it reports, Linux >= 5.8,
    the writeback errors of its filesystem that happened after that fd was opened)."""
    if _syncfs is None:
        raise OSError("syncfs(2) is not available on this platform")
    if _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs failed: {os.strerror(err)}", what)


def syncfs_reports_errors(release: str | None = None) -> bool:
    """Whether this kernel's syncfs(2) reports writeback errors (Linux 5.8 and later; ``release`` as
    ``uname -r`` prints it). Older kernels return success even when pages could not be written."""
    if _syncfs is None:
        return False
    if release is None:
        if sys.platform != "linux":
            return False
        release = os.uname().release
    parts = release.split(".")
    try:
        major, minor = int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return False
    return (major, minor) >= (5, 8)


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


# ------------------------------------------------------------------ temp-file owners
#
# Temp files (blob parts, checkpoint and marker temps, materialisation trees)
# carry their owner in their name: "<pid>-<start>-<host>.", where start is the
# process's start time (clock ticks since boot, so a reused pid does not match)
# and host is a hash of the boot id and the pid namespace. A sweeper removes
# a temp file at once when its owner is provably dead, and otherwise only when
# it is older than the age limit it is given (a foreign namespace or an older
# version's untagged name: nobody here can tell whether its owner lives).

OWNER_RE = re.compile(r"(?:^|\.)(\d+)-(\d+)-([0-9a-f]{8})\.")


def _proc_start(pid: int) -> int | None:
    """Start time of a live process (clock ticks since boot), 0 without /proc, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):  # a zombie writes nothing more
        return None
    return int(fields[19])


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _host_id() -> str:
    parts = []
    for path, read in (("/proc/sys/kernel/random/boot_id", _read_text),
                       ("/proc/self/ns/pid", os.readlink)):
        try:
            parts.append(read(path))
        except OSError:
            parts.append("")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


_owner_cache: tuple[int, str] = (-1, "")


def owner_tag() -> str:
    """This process's owner tag for temp-file names (``<pid>-<start>-<host>``)."""
    global _owner_cache
    pid = os.getpid()
    if _owner_cache[0] != pid:  # a forked child is an owner of its own
        _owner_cache = (pid, f"{pid}-{_proc_start(pid) or 0}-{_host_id()}")
    return _owner_cache[1]


def owner_alive(name: str) -> bool | None:
    """Whether the process named in a temp file's name is alive: True, False, or None if unknowable."""
    m = OWNER_RE.search(name)
    if m is None:
        return None
    pid, start, host = int(m.group(1)), int(m.group(2)), m.group(3)
    if host != owner_tag().rsplit("-", 1)[1]:
        return None  # another boot or pid namespace: its pids mean nothing here
    now = _proc_start(pid)
    if now is None:
        return False
    if now == 0 or start == 0:  # no /proc: a live pid is all we can check
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return now == start


def is_stale(path: str, max_age: float, *, now: float | None = None) -> bool:
    """Whether a temp file (or tree) can have no live owner: its owner is dead, or it is unowned and old."""
    alive = owner_alive(os.path.basename(path))
    if alive is not None:
        return not alive
    return newest_mtime(path) < (time.time() if now is None else now) - max_age


def newest_mtime(path: str) -> float:
    """The newest modification time in a file or directory tree (0 if it vanished)."""
    try:
        newest = os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0
    if os.path.isdir(path) and not os.path.islink(path):
        for dirpath, dirnames, filenames in os.walk(path):
            for n in dirnames + filenames:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, n)).st_mtime)
                except FileNotFoundError:
                    pass
    return newest


def remove_tree(path: str) -> None:
    """Remove a file or a directory tree, making read-only directories writable first."""
    if not os.path.isdir(path) or os.path.islink(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            try:
                os.chmod(os.path.join(dirpath, d), 0o755)
            except OSError:
                pass
    try:
        os.chmod(path, 0o755)
    except OSError:
        pass

    def tolerate_vanished(func, p, exc):
        exc = exc[1] if isinstance(exc, tuple) else exc
        if not isinstance(exc, FileNotFoundError):  # another sweeper may be removing the same tree
            raise exc

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=tolerate_vanished)
    else:
        shutil.rmtree(path, onerror=tolerate_vanished)
