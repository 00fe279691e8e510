"""The inter-process lock of a log directory: bounded, cancellable waits and fork safety.

The lock is an ``flock`` on the ``log/`` directory itself, which a cleanup
script deleting ``*LOCK`` files cannot replace (a deleted and re-created lock
file would let a new process lock a different inode than a running one, and
two writers would interleave). ``log/LOCK`` is locked too, after the directory,
only so that processes of older library versions, which lock just that file,
still exclude and are excluded.

Waits poll with ``LOCK_NB`` and a growing pause instead of blocking in
``flock``: a blocked ``flock`` cannot be given up, so a stopped lock holder
would hang the waiter forever. Each pause checks a deadline (``timeout``) and
whether the async caller was cancelled (in an anyio worker thread).
"""

from __future__ import annotations

import fcntl
import math
import os
import time
import weakref
from typing import Callable

from .errors import LedgerError, LedgerForked, LockTimeout

DEFAULT_LOCK_TIMEOUT = 30.0
LOCK_FILE = "LOCK"
_FIRST_PAUSE = 0.0005
_MAX_PAUSE = 0.005

_pid = os.getpid()  # this process; updated in fork children by _after_fork_in_child
_live: "weakref.WeakSet[LogLock]" = weakref.WeakSet()


def check_lock_timeout(value: object) -> float | None:
    """``value`` as a lock timeout in seconds (None waits forever); ValueError if it is not one."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"lock_timeout must be a positive number of seconds or None (wait forever), got {value!r}")
    return float(value)


def _cancelled_in_worker() -> None:
    """Raise the caller's cancellation if this anyio worker thread's task was cancelled."""
    from anyio.from_thread import check_cancelled

    try:
        check_cancelled()
    except RuntimeError:
        pass  # not an anyio worker thread: nobody can cancel this wait but the deadline


def lock_holders(fd: int) -> list[tuple[int, str]]:
    """(pid, READ or WRITE) of every process holding an flock on ``fd``'s inode, from ``/proc/locks``.

    Empty when that is not available (not Linux, no procfs) or lists nobody.
    """
    st = os.fstat(fd)
    exact: list[tuple[int, str]] = []
    by_inode: list[tuple[int, str]] = []
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5308796 0 EOF"; waiters are marked "->".
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            pid = int(parts[4])
            major, minor, ino = parts[5].split(":")
            dev = (int(major, 16), int(minor, 16))
            inode = int(ino)
        except ValueError:
            continue
        if inode != st.st_ino:
            continue
        # Some filesystems (overlayfs, btrfs subvolumes) report another device here than stat().
        (exact if dev == (os.major(st.st_dev), os.minor(st.st_dev)) else by_inode).append((pid, parts[3]))
    return exact or by_inode


class LogLock:
    """The shared/exclusive lock of one log directory, held by one process (see module docstring)."""

    def __init__(self, directory: str, *, timeout: float | None = DEFAULT_LOCK_TIMEOUT,
                 abort_check: Callable[[], None] | None = _cancelled_in_worker, read_only: bool = False):
        self.directory = directory
        self.timeout = check_lock_timeout(timeout)
        # Called between polls; raises to give up the wait (default: anyio cancellation).
        self.abort_check = abort_check
        self._owner = _pid
        self._held: list[int] = []
        self._closed = False
        # Read-only (an auditor): flock works through read-only descriptors, and nothing is
        # created; what cannot be opened is left out and said in ``problem``.
        self.problem: str | None = None
        self._dir_fd = self._file_fd = -1
        lock_path = os.path.join(directory, LOCK_FILE)
        if read_only:
            try:
                self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                self.problem = f"cannot open {directory} to lock it ({exc.strerror or exc})"
            try:
                self._file_fd = os.open(lock_path, os.O_RDONLY)
            except OSError as exc:
                # Writers of this version lock the directory first, so the directory lock alone
                # still excludes them; only older versions, which lock just LOCK, are not.
                self.problem = (f"cannot open {lock_path} ({exc.strerror or exc})"
                                + ("" if self._dir_fd < 0 else "; locking the log/ directory only"))
        else:
            self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._file_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except BaseException:
                os.close(self._dir_fd)
                raise
        self._ids = [(st.st_dev, st.st_ino) if st is not None else None
                     for st in (os.fstat(fd) if fd >= 0 else None for fd in (self._dir_fd, self._file_fd))]
        _live.add(self)

    @property
    def locks_directory(self) -> bool:
        """Whether acquiring locks the ``log/`` directory (always, unless read-only and unopenable)."""
        return self._dir_fd >= 0 or self._closed

    def check_process(self) -> None:
        """Raise LedgerForked unless called in the process that opened this lock."""
        if self._owner != _pid:
            raise LedgerForked(
                f"this ledger was opened by process {self._owner} and cannot be used in process {_pid}, "
                "a fork() child of it (e.g. a multiprocessing worker with the 'fork' start method): the "
                "processes would share one lock and interleave their writes. Open the ledger in each child "
                "instead (call open_ledger(root) inside the child; pass the root path, not the Ledger)."
            )

    def acquire(self, exclusive: bool) -> None:
        """Take the lock, waiting at most ``timeout`` seconds; raises LockTimeout naming the holder."""
        self.check_process()
        if self._closed:
            raise LedgerError(f"the lock of {self.directory} is closed")
        op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            for fd in (self._dir_fd, self._file_fd):
                if fd < 0:
                    continue  # read-only, and not openable (see ``problem``)
                self._wait(fd, op, deadline, exclusive)
                self._held.append(fd)
        except BaseException:
            self.release()
            raise

    def _wait(self, fd: int, op: int, deadline: float | None, exclusive: bool) -> None:
        pause = _FIRST_PAUSE
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if self.abort_check is not None:
                self.abort_check()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise self._timeout_error(fd, exclusive)
            time.sleep(pause if deadline is None else min(pause, deadline - now))
            pause = min(pause * 2, _MAX_PAUSE)

    def _timeout_error(self, fd: int, exclusive: bool) -> LockTimeout:
        holders = [(pid, mode) for pid, mode in lock_holders(fd) if pid > 0]
        what = f"the {'exclusive' if exclusive else 'shared'} lock of the ledger log {self.directory}"
        if holders:
            pids = [pid for pid, _ in holders]
            who = ", ".join(f"pid {pid} ({'exclusive' if mode == 'WRITE' else 'shared'})" for pid, mode in holders)
            hint = (f"it is held by {who}. If that process is stopped or hung (see `ps -o pid,stat,args -p "
                    f"{','.join(map(str, pids))}`), resume or end it; if it is only busy, wait longer with "
                    "open_ledger(root, lock_timeout=SECONDS)")
        else:
            pids = []
            hint = ("the process holding it could not be identified (no /proc/locks entry visible here); "
                    "look for other processes using this ledger, or wait longer with "
                    "open_ledger(root, lock_timeout=SECONDS)")
        return LockTimeout(f"timed out after {self.timeout:g} s waiting for {what}: {hint}", pids)

    def release(self) -> None:
        """Release what ``acquire`` took (never in a fork child: the lock is the parent's)."""
        if self._owner != _pid:
            return
        while self._held:
            fcntl.flock(self._held.pop(), fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the descriptors; in a fork child that drops only its copies, never the parent's lock."""
        for name in ("_file_fd", "_dir_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        self._held.clear()
        self._closed = True

    def _drop_inherited(self) -> None:
        # In a fork child: the descriptors are copies of the parent's. Close them so
        # the child cannot keep the parent's lock alive (an flock lasts as long as
        # any descriptor of its open file description), after checking that the
        # numbers still name those files.
        for name, ident in zip(("_dir_fd", "_file_fd"), self._ids):
            fd = getattr(self, name)
            try:
                st = os.fstat(fd) if fd >= 0 else None
            except OSError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == ident:
                os.close(fd)
            setattr(self, name, -1)
        self._held.clear()
        self._closed = True


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()
    for lock in list(_live):
        lock._drop_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)
