"""Sweeping what killed processes left in a ledger directory, never what a live one uses.

What is swept (on every open, and by ``Ledger.sweep()`` / ``artifact-ledger repair``):

- temp files of dead processes: ``blobs/tmp/*.part`` (blob bytes of an unfinished
  save), ``checkpoints/*.tmp``, ``checkpoints/projections/*.tmp``, ``.ARTIFACT-LEDGER.*.tmp``, and the
  ``materialized/.tmp.*`` / ``.stale.*`` trees of an unfinished load. Their names
  carry the owner (pid, process start time, boot and pid namespace), so a file
  whose owner is gone is removed at once, and one whose owner lives is kept;
- such temp files whose owner cannot be told (written by an older version, or by
  a process of another pid namespace) once untouched for ``UNOWNED_MAX_AGE``;
- ``staging/`` entries (from ``stage()``, ``stage_dir()``, ``writer()``) untouched
  (newest mtime in the entry) for ``STAGING_MAX_AGE``;
- with ``materialized=True`` only, every materialised directory copy (a cache,
  rebuilt by the next ``load_artifact``); paths handed out earlier stop existing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..store.durable import is_stale, newest_mtime, remove_tree
from .repair import MARKER_TMP_PREFIX

STAGING_MAX_AGE = 7 * 24 * 3600.0  # seconds a staging entry may sit untouched
UNOWNED_MAX_AGE = 24 * 3600.0  # seconds a temp file of unknown owner may sit untouched


def _entries(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


def sweep_root(root: Path, *, staging_age: float = STAGING_MAX_AGE, materialized: bool = False,
               now: float | None = None) -> list[str]:
    """Remove leftovers no live process can own (see the module doc); returns what was removed."""
    now = time.time() if now is None else now
    temps: list[Path] = []
    temps += [root / "blobs" / "tmp" / n for n in _entries(root / "blobs" / "tmp") if n.endswith(".part")]
    temps += [root / "checkpoints" / n for n in _entries(root / "checkpoints") if n.endswith(".tmp")]
    pdir = root / "checkpoints" / "projections"  # user projections' checkpoints (facade/projecting.py)
    temps += [pdir / n for n in _entries(pdir) if n.endswith(".tmp")]
    temps += [root / n for n in _entries(root) if n.startswith(MARKER_TMP_PREFIX) and n.endswith(".tmp")]
    mat = root / "materialized"
    temps += [mat / n for n in _entries(mat) if n.startswith((".tmp", ".stale"))]
    removed: list[str] = []
    for p in temps:
        if is_stale(str(p), UNOWNED_MAX_AGE, now=now):
            remove_tree(str(p))
            removed.append(f"removed {p.relative_to(root)} (temp file of a process that is gone)")
    for n in _entries(root / "staging"):
        p = root / "staging" / n
        if newest_mtime(str(p)) < now - staging_age:
            remove_tree(str(p))
            removed.append(f"removed {p.relative_to(root)} (staged, untouched for {staging_age:g} s)")
    if materialized:
        for n in _entries(mat):
            if not n.startswith("."):
                remove_tree(str(mat / n))
                removed.append(f"removed {(mat / n).relative_to(root)} (materialised copy)")
    return removed
