"""``export_files``: the files of chosen artifacts copied into a directory, plus a manifest.

Names come from user data (suggested URIs, original file names), so each is cut
down to one harmless path component; nothing is ever written outside the target
directory, and nothing already there is replaced unless the caller asks.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..store.base import BlobStore
from ..store.durable import unique_hex

from . import content
from .model import Artifact
from .validation import check_id

MANIFEST_NAME = "manifest.jsonl"
MAX_NAME_BYTES = 200  # well under NAME_MAX (255 bytes), leaving room for a disambiguating suffix
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_EXT_OF_MIME = {mime: ext for ext, mime in reversed(list(content._EXTRA_TYPES.items()))}


def safe_component(text: str | None) -> str | None:
    """The last path component of ``text`` made harmless (no separators, control or reserved characters,
    no leading dots, at most ``MAX_NAME_BYTES``); None when nothing usable is left."""
    if not text:
        return None
    base = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip(" .")
    if not base:
        return None
    if len(base.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        stem, ext = _split_ext(base)
        if len(ext.encode()) > 16:
            stem, ext = base, ""
        budget = MAX_NAME_BYTES - len(ext.encode())
        stem = stem.encode("utf-8", "surrogatepass")[:budget].decode("utf-8", "ignore").rstrip(" .")
        base = stem + ext
    return base or None


def _split_ext(name: str) -> tuple[str, str]:
    stem, ext = os.path.splitext(name)
    return (stem, ext) if stem else (name, "")


def _default_ext(mime: str) -> str:
    if mime in (content.DIR_MIME, "application/octet-stream"):
        return ""  # bytes of unknown type: no extension is better than a wrong one
    return _EXT_OF_MIME.get(mime) or mimetypes.guess_extension(mime, strict=False) or ""


def base_name(art: Artifact, recorded_name: str | None) -> str:
    """A readable name: the suggested URI's last part, else the original file name, else the id (plus an
    extension from the MIME type)."""
    for candidate in (art.suggested_uri, recorded_name):
        name = safe_component(candidate)
        if name is not None:
            return name
    return art.artifact_id + _default_ext(art.mime)


def assign_names(arts: list[Artifact], recorded_names: dict[str, str | None]) -> dict[str, str]:
    """Collision-free names (case-insensitively, for case-insensitive filesystems), by artifact id.

    The oldest artifact keeps the plain name, so re-exporting a growing run keeps earlier names;
    later ones get ``-<id prefix>`` before the extension.
    """
    taken = {MANIFEST_NAME.casefold()}
    out: dict[str, str] = {}
    for art in sorted(arts, key=lambda a: a.seq):
        base = base_name(art, recorded_names.get(art.artifact_id))
        stem, ext = _split_ext(base)
        tries = [base, f"{stem}-{art.artifact_id[:12]}{ext}", f"{stem}-{art.artifact_id}{ext}"]
        n = 2
        while tries[0].casefold() in taken:
            tries.pop(0)
            if not tries:
                tries.append(f"{stem}-{art.artifact_id}-{n}{ext}")
                n += 1
        out[art.artifact_id] = tries[0]
        taken.add(tries[0].casefold())
    return out


def _tree_paths(manifest: dict[str, Any], art: Artifact) -> tuple[list[str], list[tuple[str, str]]]:
    """A directory manifest's subdirectories and (file path, sha256), each path checked to stay inside."""

    def checked(rel: Any) -> str:
        parts = rel.split("/") if isinstance(rel, str) else None
        if not parts or any(p in ("", ".", "..") or "\x00" in p for p in parts):
            raise ValueError(f"directory artifact {art.artifact_id} lists an unsafe path {rel!r}; not exported")
        return rel

    dirs = [checked(d) for d in manifest["dirs"]]
    files = [(checked(f["path"]), f["sha256"]) for f in manifest["files"]]
    return dirs, files


def _write_tree(store: BlobStore, art: Artifact, tmp: Path) -> None:
    dirs, files = _tree_paths(content.decode_manifest(store.read_bytes(art.sha256)), art)
    tmp.mkdir()
    top = tmp.resolve()
    for d in dirs:
        (tmp / d).mkdir(parents=True, exist_ok=True)
    for rel, sha in files:
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.parent.resolve().is_relative_to(top):
            raise ValueError(f"directory artifact {art.artifact_id}: {rel!r} would leave the export directory")
        _copy_blob(store, sha, dest)


def _copy_blob(store: BlobStore, sha: str, dest: Path) -> None:
    # Streamed and checked against the SHA-256 by the store (never read into memory); the copy
    # gets ordinary permissions, so the user may change it without touching the read-only blob.
    store.copy_to(sha, str(dest))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def export(directory: Path, arts: list[Artifact], recorded_names: dict[str, str | None],
           store: BlobStore, *, overwrite: bool) -> dict[str, Path]:
    """Copy each artifact's bytes (a directory artifact as a directory tree) into ``directory`` under
    ``assign_names``' names and write ``manifest.jsonl``; returns the path of each artifact by id.

    Refuses (FileExistsError, before writing anything) when a target already exists, unless ``overwrite``.
    """
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"cannot export into {str(directory)!r}: it is not a directory")
    names = assign_names(arts, recorded_names)
    manifest = directory / MANIFEST_NAME
    targets = [directory / names[a.artifact_id] for a in arts] + [manifest]
    existing = [t.name for t in targets if os.path.lexists(t)]
    if existing and not overwrite:
        shown = (", ".join(repr(n) for n in existing[:5])
                 + (f" and {len(existing) - 5} more" if len(existing) > 5 else ""))
        raise FileExistsError(f"cannot export into {str(directory)!r}: {shown} already exist(s); "
                              "pass overwrite=True (--overwrite) to replace them")
    directory.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    tmp: Path | None = None
    out: dict[str, Path] = {}
    try:
        for art in arts:
            target = directory / names[art.artifact_id]
            # Built under a fresh temporary name and renamed into place: a name that exists as a
            # symlink is replaced, never followed out of the directory.
            tmp = directory / f".export-{unique_hex()}.tmp"
            if art.mime == content.DIR_MIME:
                _write_tree(store, art, tmp)
            else:
                _copy_blob(store, art.sha256, tmp)
            existed = os.path.lexists(target)
            if existed and (tmp.is_dir() or (target.is_dir() and not target.is_symlink())):
                _remove(target)  # os.replace puts neither a directory over a file nor anything over a directory
            os.replace(tmp, target)
            tmp = None
            if not existed:
                created.append(target)
            out[art.artifact_id] = target
        tmp = directory / f".export-{unique_hex()}.tmp"
        with open(tmp, "x", encoding="utf-8") as f:
            for art in arts:
                line = {**art.model_dump(mode="json"), "path": names[art.artifact_id]}
                f.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")
        if manifest.is_dir() and not manifest.is_symlink():
            _remove(manifest)
        os.replace(tmp, manifest)
        tmp = None
    except BaseException:
        if tmp is not None:
            _remove(tmp)
        for path in created:  # what this call added; what it replaced cannot come back
            _remove(path)
        raise
    return out


async def export_from(source: Any, directory: str | os.PathLike[str], *, ids: dict[str, str | None],
                      **query: Any) -> dict[str, Path]:
    """``export_files`` of a ledger or a past view: the ids given filter (as labels), nothing else binds."""
    from .artifacts import ArtifactFacade

    given = {k: check_id(k, v) for k, v in ids.items() if v is not None}
    # Scope "all" never reads the binding, so placeholder ids are safe here.
    facade = ArtifactFacade(source, run_id="-", graph_id="-", node_id="-", read_only=True)
    return await facade.export_files(directory, scope="all", extra_scope_labels=given or None, **query)
