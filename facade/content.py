"""Content rules: MIME guessing, decoding on load, and directory manifests."""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

DIR_MIME = "inode/directory"
MANIFEST_FORMAT = "artifact-ledger.dir-manifest"
MANIFEST_VERSION = 1

_EXTRA_TYPES = {
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".md": "text/markdown",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".txt": "text/plain",
    ".log": "text/plain",
    ".npy": "application/octet-stream",
}
JSON_KINDS = frozenset({"json"})
TEXT_KINDS = frozenset({"text"})


def guess_mime(name: str | None) -> str:
    """MIME type from a file name's extension; ``application/octet-stream`` when unknown."""
    if not name:
        return "application/octet-stream"
    ext = os.path.splitext(name)[1].lower()
    if ext in _EXTRA_TYPES:
        return _EXTRA_TYPES[ext]
    mime, _ = mimetypes.guess_type(name, strict=False)
    return mime or "application/octet-stream"


def decode(kind: str, mime: str, data: bytes) -> Any:
    """Decode bytes by the artifact's kind and MIME type (see README, "Loading")."""
    if kind in JSON_KINDS or mime == "application/json" or mime.endswith("+json"):
        return json.loads(data)
    if kind in TEXT_KINDS or mime.startswith("text/"):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data
    return data


def scan_directory(root: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Walk a staged directory: (relative path, absolute path) of files, and subdirectories.

    Symlinks and special files are refused before anything is stored.
    """
    base = Path(root)
    files: list[tuple[str, str]] = []
    dirs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = Path(full).relative_to(base).as_posix()
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                raise ValueError(f"{rel!r} in {root} is a symlink; directory artifacts hold regular files only")
            if stat.S_ISDIR(mode):
                dirs.append(rel)
            elif stat.S_ISREG(mode):
                files.append((rel, full))
            else:
                raise ValueError(f"{rel!r} in {root} is a special file; directory artifacts hold regular files only")
    files.sort()
    dirs.sort()
    return files, dirs


def encode_manifest(entries: list[dict[str, Any]], dirs: list[str]) -> bytes:
    """Deterministic JSON manifest, so equal trees share one manifest blob."""
    doc = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "files": entries, "dirs": dirs}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_manifest(data: bytes) -> dict[str, Any]:
    """Parse and check a directory manifest."""
    doc = json.loads(data)
    if doc.get("format") != MANIFEST_FORMAT or doc.get("version") != MANIFEST_VERSION:
        raise ValueError("not a directory manifest of a supported version")
    return doc


def materialize(manifest: dict[str, Any], read_blob, target: Path) -> Path:
    """Build the directory a manifest describes at ``target`` (atomically, once)."""
    if target.is_dir():
        return target
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        for d in manifest["dirs"]:
            (tmp / d).mkdir(parents=True, exist_ok=True)
        for entry in manifest["files"]:
            dest = tmp / entry["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(read_blob(entry["sha256"]))
            # Cached trees are shared by every load; keep them read-only.
            os.chmod(dest, 0o444)
        # Cached trees are shared by every load: no file or folder in them is writable.
        for d in sorted(manifest["dirs"], key=len, reverse=True):
            os.chmod(tmp / d, 0o555)
        os.chmod(tmp, 0o555)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            _rmtree_force(tmp)  # another loader won the race
    except BaseException:
        if tmp.exists():
            _rmtree_force(tmp)
        raise
    return target


def _rmtree_force(path: Path) -> None:
    # Directories were made read-only; deleting entries needs them writable again.
    os.chmod(path, 0o755)
    for p in path.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)
    shutil.rmtree(path, ignore_errors=True)
