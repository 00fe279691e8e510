"""Creating a ledger directory crash-safely, telling a damaged one from "not a ledger", and repairing it.

``repair_ledger(root)`` runs every repair step in order (``REPAIRS``); each
step returns what it did, so new steps (e.g. for the log) are one more entry.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from ..ledger.errors import LedgerError
from ..ledger.filelog import POISON_MARK, SEGMENT_SUFFIX, repair_log
from ..ledger.framing import SEGMENT_HEADER_SIZE, HeaderError, decode_segment_header
from ..store.durable import fsync_dir, fsync_fd, makedirs_durable, owner_tag, unique_hex

MARKER = "ARTIFACT-LEDGER"
# Version 2: processes may flush a batch's blobs and records with one syncfs (FORMAT.md, "One flush per
# batch"), which libraries that wrote version 1 do not know how to recover or deduplicate against.
MARKER_TEXT = "artifact-ledger 2\n"
OLD_MARKER_TEXTS = ("artifact-ledger 1\n",)  # read, and rewritten as MARKER_TEXT by a writable open
_MARKER_VERSION = re.compile(r"artifact-ledger (\S+)\n")
# Every directory a ledger holds, parents before children.
LEDGER_DIRS = ("log", "blobs", "blobs/sha256", "blobs/tmp", "checkpoints", "staging", "materialized")
_TOP_LEVEL = frozenset(d.split("/")[0] for d in LEDGER_DIRS) | {MARKER}
MARKER_TMP_PREFIX = f".{MARKER}."


class LedgerNeedsRepair(LedgerError):
    """The directory holds a ledger's log but its marker is missing or damaged."""


def marker_state(root: Path) -> str:
    """``"ok"``, ``"old"`` (a version this library upgrades), ``"missing"``, ``"damaged"`` (unreadable as a
    marker) or ``"version <v>"`` (another version)."""
    try:
        text = (root / MARKER).read_bytes().decode("utf-8")
    except FileNotFoundError:
        return "missing"
    except UnicodeDecodeError:
        return "damaged"
    if text == MARKER_TEXT:
        return "ok"
    if text in OLD_MARKER_TEXTS:
        return "old"
    m = _MARKER_VERSION.fullmatch(text)
    return f"version {m.group(1)}" if m else "damaged"


def log_segments(root: Path) -> list[str]:
    """Names of the segment files in ``root/log`` whose header is intact."""
    log = root / "log"
    try:
        names = sorted(os.listdir(log))
    except (FileNotFoundError, NotADirectoryError):
        return []
    valid = []
    for name in names:
        if not name.endswith(SEGMENT_SUFFIX):
            continue
        try:
            with open(log / name, "rb") as f:
                decode_segment_header(f.read(SEGMENT_HEADER_SIZE))
        except (OSError, HeaderError):
            continue
        valid.append(name)
    return valid


def _is_ledger_entry(name: str) -> bool:
    return name in _TOP_LEVEL or (name.startswith(MARKER_TMP_PREFIX) and name.endswith(".tmp"))


def foreign_entries(root: Path) -> list[str]:
    """Entries of ``root`` that no ledger (or a ledger being created) would hold."""
    try:
        return sorted(n for n in os.listdir(root) if not _is_ledger_entry(n))
    except FileNotFoundError:
        return []


def ensure_dirs(root: Path) -> list[str]:
    """Create the root (and missing parents) and every ledger directory, each fsynced into its parent."""
    created = makedirs_durable(str(root))
    for sub in LEDGER_DIRS:
        created += makedirs_durable(str(root / sub))
    return created


def write_marker(root: Path) -> None:
    """Write the marker crash-safely: temp file, fsync of its bytes, rename, fsync of the root."""
    # The temp name carries its owner, so a sweep can tell a dead creator's leftover from a live one.
    tmp = root / f"{MARKER_TMP_PREFIX}{owner_tag()}.{unique_hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(MARKER_TEXT.encode())
            while view:
                view = view[os.write(fd, view):]
            fsync_fd(fd)
        finally:
            os.close(fd)
        # Concurrent creators all rename identical bytes; whichever lands last, the marker is whole.
        os.replace(tmp, root / MARKER)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(str(root))


def needs_repair_message(root: Path, state: str) -> str:
    """The error for a ledger whose log survives but whose marker does not."""
    what = "is missing" if state == "missing" else "is damaged"
    return (f"{root} holds a ledger log (log/ has intact segments) but its {MARKER} marker {what}; "
            f"repair it with `artifact-ledger -C {root} repair` or "
            f"artifact_ledger.repair_ledger({str(root)!r}) (no record is changed)")


def prepare_root(root: Path, create: bool, *, read_only: bool = False) -> None:
    """Make ``root`` an openable ledger: check it, or create it crash-safely (idempotent, race-safe).

    ``read_only`` only checks: nothing is created, not even a missing subdirectory.
    """
    state = marker_state(root) if root.is_dir() else "missing"
    if state in ("ok", "old"):
        if not read_only:
            ensure_dirs(root)  # a ledger from an older version may lack some (no-op otherwise)
            if state == "old":
                # Before this process writes anything: from now on, libraries that only know version 1
                # refuse the ledger rather than trust a blob name whose bytes were never flushed.
                write_marker(root)
        return
    if state.startswith("version"):
        raise ValueError(f"{root / MARKER} names an unsupported ledger version: {state.split(' ', 1)[1]!r}; "
                         f"this library reads {', '.join(repr(t.split()[1]) for t in OLD_MARKER_TEXTS)} and "
                         f"{MARKER_TEXT.split()[1]!r}")
    if log_segments(root):
        raise LedgerNeedsRepair(needs_repair_message(root, state))
    if not create:
        raise FileNotFoundError(f"no ledger at {root} ({MARKER} is {state} and log/ holds no segment); "
                                "open_ledger(root) creates one")
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory; open_ledger(root) needs a directory")
    foreign = foreign_entries(root)
    if foreign:
        raise FileExistsError(f"{root} exists, is not empty and is not a ledger (it holds {foreign[:3]}); "
                              "refusing to write into it")
    # Directories first, marker last: a marker always stands for a complete layout.
    ensure_dirs(root)
    write_marker(root)


def _repair_marker(root: Path) -> list[str]:
    state = marker_state(root)
    if state in ("ok", "old") or state.startswith("version"):
        return []  # an old marker is upgraded by the next writable open
    if not log_segments(root) and not (root / "log").is_dir():
        raise FileNotFoundError(f"{root} is not a ledger (no {MARKER} and no log/); nothing to repair")
    foreign = foreign_entries(root)
    if foreign:
        raise FileExistsError(f"{root} holds entries no ledger has ({foreign[:3]}); not repairing it")
    created = ensure_dirs(root)
    write_marker(root)
    done = [f"created missing directory {d}" for d in created]
    return done + [f"rewrote the {state} {MARKER} marker"]


def _repair_poisoned_log(root: Path) -> list[str]:
    # A write that failed and could not be cut back left log/POISONED, which stops every
    # append until the log is cut back to its last durable record (ledger/FORMAT.md).
    if not (root / "log" / POISON_MARK).exists():
        return []
    return [repair_log(root / "log")]


REPAIRS: list[Callable[[Path], list[str]]] = [_repair_marker, _repair_poisoned_log]
"""Repair steps, run in order by ``repair_ledger``; each returns what it did."""


def repair_ledger(root: str | os.PathLike[str]) -> list[str]:
    """Repair what keeps a ledger from opening (e.g. a lost marker beside a valid log); returns what it did."""
    if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
        raise ValueError(f"repair_ledger(root) needs a directory path, got {root!r}")
    path = Path(root).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"no ledger at {path}: no such directory")
    done: list[str] = []
    for step in REPAIRS:
        done += step(path)
    return done
