"""Read an AetherGraph workspace (FS artifact store, SQLite index) as a list of source artifacts.

Read with ``sqlite3`` in read-only mode and plain file reads, so the
``aethergraph`` package is not needed (its own index class alters the schema
when it opens a database). Layout, as aethergraph 0.1.0a15 writes it::

    WORKSPACE/artifacts/index.sqlite               tables artifacts, artifact_occurrences
    WORKSPACE/artifacts/blobs/cas/blobs/<sha><ext>  file bytes
    WORKSPACE/artifacts/blobs/cas/trees/<tree>/     manifest.json (+ bundle.tar.gz when archived)

AetherGraph keys ``artifacts`` by content hash, so saving the same bytes again
overwrites that row; ``artifact_occurrences`` keeps one row per save. Each
occurrence becomes one artifact here; the row's metrics and pin (kept only for
the latest save of those bytes) go to that bytes' latest occurrence.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tarfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable
from urllib.parse import unquote, urlparse

from .importing import IMPORT_PREFIX, UNKNOWN_ID, ImportSourceError, SourceArtifact, iso_time, kind_for_name, \
    source_labels, split_metrics

INDEX = Path("artifacts") / "index.sqlite"
BLOBS = Path("artifacts") / "blobs"
DIR_MIME = "application/vnd.aethergraph.bundle+dir"
ARTIFACT_COLUMNS = {"artifact_id", "run_id", "graph_id", "node_id", "kind", "sha256", "bytes", "mime",
                    "created_at", "labels_json", "metrics_json", "pinned", "uri"}
OCCURRENCE_COLUMNS = {"artifact_id", "run_id", "graph_id", "node_id", "created_at", "labels_json"}
_TENANT = ("org_id", "user_id", "client_id", "app_id", "session_id")


# ---------------------------------------------------------------- opening the index
def _connect(ws: Path) -> sqlite3.Connection:
    if not ws.is_dir():
        raise ImportSourceError(f"no AetherGraph workspace at {ws}: no such directory")
    index = ws / INDEX
    if not index.is_file():
        if (ws / "artifacts" / "index.jsonl").exists():
            raise ImportSourceError(f"the AetherGraph workspace {ws} uses the JSONL artifact index; "
                                    "only the SQLite index (artifacts/index.sqlite) can be imported")
        raise ImportSourceError(f"no AetherGraph workspace at {ws}: {index} does not exist")
    try:
        con = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
        con.row_factory = sqlite3.Row
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise ImportSourceError(f"cannot read the AetherGraph index {index}: {exc}") from None
    if "artifacts" not in tables:
        con.close()
        raise ImportSourceError(f"{index} is not an AetherGraph artifact index (no artifacts table)")
    _require(con, index, "artifacts", ARTIFACT_COLUMNS)
    if "artifact_occurrences" in tables:
        _require(con, index, "artifact_occurrences", OCCURRENCE_COLUMNS)
    return con


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {r["name"] for r in con.execute(f"PRAGMA table_info({table})")}


def _require(con: sqlite3.Connection, index: Path, table: str, needed: set[str]) -> None:
    missing = needed - _columns(con, table)
    if missing:
        con.close()
        raise ImportSourceError(
            f"{index} has an artifact index schema this importer does not know: table {table} lacks "
            f"{', '.join(sorted(missing))} (it reads the index written by aethergraph 0.1.0a15)")


# ---------------------------------------------------------------- values
def _time(text: Any) -> str | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return str(text)  # kept as the source wrote it
    return iso_time(t if t.tzinfo else t.replace(tzinfo=timezone.utc))


def _json(text: Any, where: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"{where} is not JSON: {text[:80]!r}") from None
    return value if isinstance(value, dict) else {"value": value}


def _local(ws: Path, uri: str | None) -> Path | None:
    """The file a ``file://`` URI of the store names, looked up inside this workspace first.

    URIs hold absolute paths; a workspace that was moved still has its blobs
    under ``artifacts/blobs/cas/...``.
    """
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else uri)
    parts = path.parts
    if "cas" in parts:
        at = len(parts) - 1 - parts[::-1].index("cas")
        inside = ws / BLOBS / Path(*parts[at:])
        if inside.exists() or not path.exists():
            return inside
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _safe_name(name: Any, fallback: str) -> str:
    base = PurePosixPath(str(name or "").replace("\\", "/")).name
    return base if base not in ("", ".", "..") else fallback


# ---------------------------------------------------------------- fetching bytes
def _file_fetcher(ws: Path, uri: str | None, sha: str | None, name: str) -> Callable[[Path], Path]:
    def fetch(scratch: Path) -> Path:
        blob = _local(ws, uri)
        if blob is None and sha:
            blob = next(iter(sorted((ws / BLOBS / "cas" / "blobs").glob(f"{sha}*"))), None)
        if blob is None or not blob.is_file():
            raise FileNotFoundError(f"the bytes ({uri}) are not in the workspace")
        # A link under the original name, so that the ledger records that name and its MIME type.
        out = scratch / name
        _link_or_copy(blob, out)
        return out
    return fetch


def _tree_hash(entries: list[dict[str, Any]]) -> str:
    # aethergraph's own: SHA-256 over sorted "path\tsha\tbytes\n" lines
    h = hashlib.sha256()
    for line in sorted(f"{e['path']}\t{e['sha256']}\t{e['bytes']}\n" for e in entries):
        h.update(line.encode("utf-8"))
    return h.hexdigest()


def _rel(path: Any) -> PurePosixPath:
    rel = PurePosixPath(str(path))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"the directory manifest holds the unsafe path {str(path)!r}")
    return rel


def _dir_fetcher(ws: Path, tree_sha: str, archive_uri: str | None, name: str) -> Callable[[Path], Path]:
    def fetch(scratch: Path) -> Path:
        tree = ws / BLOBS / "cas" / "trees" / tree_sha
        manifest_path = tree / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"the directory's manifest {manifest_path} is not in the workspace")
        entries = json.loads(manifest_path.read_text(encoding="utf-8")).get("files") or []
        if _tree_hash(entries) != tree_sha:
            raise ValueError(f"the manifest {manifest_path} does not hash to the directory's id {tree_sha}")
        out = scratch / name
        out.mkdir()
        archive = _local(ws, archive_uri) if archive_uri else None
        if archive is not None and archive.is_file():
            with tarfile.open(archive, mode="r:*") as tar:
                tar.extractall(out, filter="data")
        else:
            blobs = ws / BLOBS / "cas" / "blobs"
            missing = []
            for e in entries:
                found = next(iter(sorted(blobs.glob(f"{e['sha256']}*"))), None)
                if found is None:
                    missing.append(e["path"])
                else:
                    _link_or_copy(found, out / _rel(e["path"]))
            if missing:
                raise FileNotFoundError(
                    f"aethergraph kept only the manifest of this directory (no archive); the bytes of "
                    f"{len(missing)} of its {len(entries)} files are not in the workspace (e.g. {missing[0]!r})")
        from ..store.base import file_sha256

        for e in entries:
            f = out / _rel(e["path"])
            if not f.is_file() or file_sha256(f) != e["sha256"]:
                raise ValueError(f"{e['path']!r} of the directory does not match its manifest's SHA-256")
        return out
    return fetch


# ---------------------------------------------------------------- listing
def _item(ws: Path, key: str, occ: dict[str, Any], art: dict[str, Any] | None, latest: bool) -> SourceArtifact:
    src = art or {}
    binding: dict[str, str | None] = {k: occ.get(k) or src.get(k) or UNKNOWN_ID
                                      for k in ("run_id", "graph_id", "node_id")}
    aid = str(occ.get("artifact_id") or src.get("artifact_id"))
    labels = source_labels(_json(occ.get("labels_json"), f"labels of {key}"), binding)
    metrics: dict[str, Any] = {}
    if latest and art is not None:
        metrics, rest = split_metrics(_json(art.get("metrics_json"), f"metrics of {aid}"))
        labels.update(rest)
    mime = occ.get("mime") or src.get("mime")
    uri = occ.get("uri") or src.get("uri")
    is_dir = mime == DIR_MIME or "/cas/trees/" in str(uri or "")
    facts = {"artifact_id": aid, "created_at": _time(occ.get("created_at")), "uri": uri,
             "tool_name": occ.get("tool_name") or src.get("tool_name"),
             "tool_version": occ.get("tool_version") or src.get("tool_version")}
    facts.update({k: occ.get(k) or src.get(k) for k in _TENANT})
    labels.update({IMPORT_PREFIX + k: v for k, v in facts.items() if v is not None})
    sha = src.get("sha256") or (aid if len(aid) == 64 else None)
    blob_name = PurePosixPath(urlparse(str(uri or "")).path).name or aid
    name = _safe_name(occ.get("filename") or labels.get("filename"), blob_name)
    kind = occ.get("kind") or src.get("kind") or ("directory" if is_dir else kind_for_name(name))
    if is_dir:
        fetch = _dir_fetcher(ws, aid, occ.get("preview_uri") or src.get("preview_uri"),
                             _safe_name(PurePosixPath(name).stem.removesuffix(".tar"), aid))
    else:
        fetch = _file_fetcher(ws, uri, sha, name)
    return SourceArtifact(key=key, run_id=binding["run_id"] or UNKNOWN_ID, graph_id=binding["graph_id"] or UNKNOWN_ID,
                          node_id=binding["node_id"] or UNKNOWN_ID, project_id=None, kind=str(kind), labels=labels,
                          metrics=metrics, fetch=fetch, is_dir=is_dir,
                          pinned=bool(latest and art is not None and art.get("pinned")),
                          sha256=None if is_dir else sha)


def _natural_key(row: dict[str, Any]) -> str:
    """An identity for a row without an occurrence id (older indexes): what the save was, and when.

    A row number would collide across workspaces and skip another workspace's artifacts.
    """
    parts = [str(row.get(k) or "") for k in ("artifact_id", "created_at", "run_id", "graph_id", "node_id")]
    return "save-" + hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def list_artifacts(workspace: str | os.PathLike[str]) -> list[SourceArtifact]:
    """Every artifact occurrence of the workspace's SQLite index, oldest first; writes nothing."""
    ws = Path(workspace)
    con = _connect(ws)
    try:
        arts = {r["artifact_id"]: dict(r) for r in con.execute("SELECT * FROM artifacts")}
        has_occ = "artifact_occurrences" in {r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        occs = [dict(r) for r in con.execute("SELECT * FROM artifact_occurrences ORDER BY id")] if has_occ else []
    except sqlite3.DatabaseError as exc:
        raise ImportSourceError(f"cannot read the AetherGraph index {ws / INDEX}: {exc}") from None
    finally:
        con.close()
    last = {o["artifact_id"]: i for i, o in enumerate(occs)}
    items = []
    try:
        for i, occ in enumerate(occs):
            key = occ.get("occurrence_id") or _natural_key(occ)
            items.append(_item(ws, str(key), occ, arts.get(occ["artifact_id"]), last[occ["artifact_id"]] == i))
        # Rows saved before aethergraph kept occurrences have only their artifacts row.
        for aid, art in arts.items():
            if aid not in last:
                items.append(_item(ws, _natural_key(art), art, art, True))
    except ValueError as exc:
        raise ImportSourceError(f"cannot read the AetherGraph index {ws / INDEX}: {exc}") from None
    return items
