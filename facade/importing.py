"""What both importers share: source artifacts in, ledger artifacts out, once each.

A source module (``import_mlflow.py``, ``import_aethergraph.py``) reads its
store and lists every artifact as a ``SourceArtifact`` before anything is
written; ``import_artifacts`` then records each one through the ordinary
facade (``save`` / ``ingest_dir``), skipping those whose source identity an
earlier import already recorded. The ``import`` command of the CLI is here too.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import anyio
import anyio.to_thread

from ..ledger.errors import LedgerError
from ..projections.labels import RESERVED
from ..store.base import file_sha256

from .cli_format import Progress, fmt_time

# Labels the importer records; user labels with these names move under SOURCE_PREFIX.
IMPORT_PREFIX = "import."
SOURCE_PREFIX = "source."
UNKNOWN_ID = "-"  # a binding id the source does not have (a ledger id must be a non-empty string)


class ImportSourceError(Exception):
    """The source is missing, unreadable or of an unknown version; nothing was written."""


@dataclass
class SourceArtifact:
    """One artifact of the source, mapped to the ledger's binding, kind, labels and metrics.

    ``fetch(scratch)`` runs in a worker thread and returns a local file or directory
    holding the artifact's bytes (inside ``scratch`` when they had to be copied there).
    """

    key: str
    run_id: str
    graph_id: str
    node_id: str
    project_id: str | None
    kind: str
    labels: dict[str, Any]
    metrics: dict[str, Any]
    fetch: Callable[[Path], Path]
    is_dir: bool = False
    pinned: bool = False
    sha256: str | None = None  # the source's own digest of a file's bytes, checked before saving


@dataclass
class ImportSummary:
    """What an import did: artifacts imported, skipped as already present, failed (with why)."""

    source: str
    location: str
    ledger: str
    imported: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (what ``--json`` prints)."""
        return {"source": self.source, "from": self.location, "ledger": self.ledger,
                "imported": self.imported, "skipped": self.skipped, "failed": self.failed,
                "failures": list(self.failures)}

    def text(self) -> str:
        """The summary for people: one line of counts, then one line per failure."""
        lines = [f"imported {self.imported} artifacts from {self.source} ({self.location}) into {self.ledger}; "
                 f"skipped {self.skipped} already present; failed {self.failed}"]
        lines += [f"failed: {f['id']}: {f['error']}" for f in self.failures]
        return "\n".join(lines)


# ---------------------------------------------------------------- mapping helpers
def iso_time(t: datetime | None) -> str | None:
    """A source time as the label value ``import.created_at`` and friends (UTC, ISO 8601)."""
    if t is None:
        return None
    return fmt_time(t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc))


def _label_value(v: Any) -> Any:
    if isinstance(v, (list, tuple)) and all(_is_scalar(x) for x in v):
        return [x if not _bad_float(x) else repr(x) for x in v]
    if _is_scalar(v):
        return repr(v) if _bad_float(v) else v
    # Nested values have no label form; keep their JSON text rather than drop them.
    return json.dumps(v, sort_keys=True, default=str)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, bool, int, float))


def _bad_float(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def source_labels(labels: dict[str, Any] | None, binding: dict[str, str | None]) -> dict[str, Any]:
    """The source's own labels as ledger labels.

    A key the ledger reserves (``run_id``, ...) is dropped when it repeats the
    binding and otherwise kept as ``source.<key>``, as is any key starting with
    ``import.``; values that are not JSON scalars (or lists of them) keep their JSON text.
    """
    out: dict[str, Any] = {}
    for key, value in (labels or {}).items():
        key = str(key)
        if key in RESERVED:
            if value == binding.get(key):
                continue
            key = SOURCE_PREFIX + key
        elif key.startswith(IMPORT_PREFIX):
            key = SOURCE_PREFIX + key
        out[key] = _label_value(value)
    return out


def split_metrics(metrics: dict[str, Any] | None) -> tuple[dict[str, int | float], dict[str, Any]]:
    """Metrics the ledger accepts (finite numbers), and the rest as ``import.metric.<name>`` labels."""
    good: dict[str, int | float] = {}
    rest: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)):
            good[str(key)] = int(value) if isinstance(value, numbers.Integral) else float(value)
        else:
            # NaN losses and non-numbers: not rankable here, but not lost either.
            rest[f"{IMPORT_PREFIX}metric.{key}"] = _label_value(value if _is_scalar(value) else str(value))
    return good, rest


def kind_for_name(name: str) -> str:
    """A kind for a source that has none, from the file name (``image``, ``json``, ``text``, else ``file``)."""
    from .content import guess_mime

    mime = guess_mime(name)
    if mime.startswith("image/"):
        return "image"
    if mime == "application/json" or mime.endswith("+json"):
        return "json"
    if mime.startswith("text/"):
        return "text"
    return "file"


# ---------------------------------------------------------------- the import itself
async def imported_keys(ledger: Any, source: str) -> set[str]:
    """Source identities (``import.id``) that earlier imports from ``source`` recorded in the ledger."""
    arts = ledger.artifacts(run_id=UNKNOWN_ID, graph_id=UNKNOWN_ID, node_id=UNKNOWN_ID)
    found = await arts.search(scope="all", labels={IMPORT_PREFIX + "source": source})
    return {a.labels[IMPORT_PREFIX + "id"] for a in found if isinstance(a.labels.get(IMPORT_PREFIX + "id"), str)}


async def _record_one(ledger: Any, source: str, item: SourceArtifact, scratch: Path) -> None:
    facade = ledger.artifacts(run_id=item.run_id, graph_id=item.graph_id, node_id=item.node_id,
                              project_id=item.project_id)
    path = await anyio.to_thread.run_sync(item.fetch, scratch)
    # The identity labels are what a later import looks up to skip this artifact.
    labels = {**item.labels, IMPORT_PREFIX + "source": source, IMPORT_PREFIX + "id": item.key}
    meta = {"kind": item.kind, "labels": labels, "metrics": item.metrics, "pin": item.pinned}
    if not item.is_dir:
        if item.sha256 is not None:
            actual = await anyio.to_thread.run_sync(file_sha256, path)
            if actual != item.sha256:
                raise ValueError(f"its bytes in the source ({path}) have SHA-256 {actual}, "
                                 f"not the {item.sha256} the source recorded")
        await facade.save(str(path), **meta)
        return
    staged = Path(await facade.stage_dir())
    try:
        # Copied, not linked: ingest_dir adopts the staged inodes as blobs, and the
        # source's files must stay the source's.
        await anyio.to_thread.run_sync(lambda: shutil.copytree(path, staged, dirs_exist_ok=True))
        await facade.ingest_dir(str(staged), **meta)
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(staged, ignore_errors=True))


async def import_artifacts(ledger: Any, source: str, items: list[SourceArtifact], summary: ImportSummary,
                           progress: Callable[[int, int], None] | None = None) -> ImportSummary:
    """Record every item not yet imported from ``source``; count imported, skipped and failed.

    A failure of one artifact (unreadable bytes, a value the ledger refuses) is
    counted and the import goes on; a failure of the ledger itself stops it.
    """
    done_keys = await imported_keys(ledger, source)
    total = len(items)
    if progress is not None:
        progress(0, total)
    for n, item in enumerate(items, 1):
        if item.key in done_keys:
            summary.skipped += 1
        else:
            with tempfile.TemporaryDirectory(prefix="artifact-ledger-import-") as tmp:
                try:
                    await _record_one(ledger, source, item, Path(tmp))
                except LedgerError:
                    raise
                except Exception as exc:  # one bad artifact must not stop the others
                    summary.failed += 1
                    summary.failures.append({"id": item.key, "error": f"{type(exc).__name__}: {exc}"})
                else:
                    summary.imported += 1
                    done_keys.add(item.key)
        if progress is not None:
            progress(n, total)
    return summary


# ---------------------------------------------------------------- the CLI command
def add_import_command(sub: Any, common: argparse.ArgumentParser, parser_class: type) -> None:
    """The ``import mlflow`` and ``import aethergraph`` commands (the only ones that record)."""
    p = sub.add_parser("import", parents=[common], help="record the artifacts of an MLflow or AetherGraph store",
                       description="Import every artifact of another store into the ledger, once: a re-run "
                                   "skips what an earlier import recorded. The only commands that record.")
    inner = p.add_subparsers(dest="source", required=True, metavar="SOURCE", parser_class=parser_class)
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--create", action="store_true",
                        help="create the ledger directory if it is not a ledger yet (it must be absent or empty)")
    m = inner.add_parser("mlflow", parents=[common, shared], help="runs of an MLflow tracking store",
                         description="Import the artifacts of every run and every finalized logged model of "
                                     "an MLflow tracking store (or of one experiment) with their tags, params "
                                     "and metrics.")
    m.add_argument("--tracking-uri", metavar="URI", required=True,
                   help="the tracking store, e.g. sqlite:///mlflow.db (read only, never changed)")
    m.add_argument("--experiment", metavar="NAME", help="only this experiment (default: every active one)")
    m.set_defaults(run_import=_run_mlflow)
    a = inner.add_parser("aethergraph", parents=[common, shared], help="an AetherGraph workspace",
                         description="Import every artifact occurrence recorded in an AetherGraph workspace "
                                     "(FS artifact store with the SQLite index).")
    a.add_argument("workspace", metavar="WORKSPACE", help="the workspace directory (holds artifacts/index.sqlite)")
    a.set_defaults(run_import=_run_aethergraph)


async def _run_mlflow(args: argparse.Namespace) -> tuple[str, str, list[SourceArtifact]]:
    from .import_mlflow import list_artifacts

    items = await anyio.to_thread.run_sync(lambda: list_artifacts(args.tracking_uri, args.experiment))
    return "mlflow", args.tracking_uri, items


async def _run_aethergraph(args: argparse.Namespace) -> tuple[str, str, list[SourceArtifact]]:
    from .import_aethergraph import list_artifacts

    items = await anyio.to_thread.run_sync(lambda: list_artifacts(args.workspace))
    return "aethergraph", str(Path(args.workspace)), items


async def cmd_import(root: Path, args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    """Read the source, then open (or with ``--create`` create) the ledger and import.

    Returns the summary document, its text and the exit code. The source is read
    in full before the ledger is opened, so a bad source writes nothing.
    """
    from ..store.base import BlobStoreError
    from .cli import open_options
    from .cli_commands import EXIT_FAILED, EXIT_OK, CliError
    from .ledger import open_ledger

    try:
        source, location, items = await args.run_import(args)
    except ImportSourceError as exc:
        raise CliError(str(exc)) from None
    try:
        ledger = await open_ledger(root, create=bool(args.create), **open_options(args))
    except BlobStoreError:
        raise  # before FileNotFoundError's "no ledger": a missing bucket is one too, and must say so
    except FileNotFoundError:
        raise CliError(f"no ledger at {root}: the directory is not an artifact ledger "
                       "(add --create to make one there)") from None
    except FileExistsError as exc:
        raise CliError(str(exc)) from None
    summary = ImportSummary(source=source, location=location, ledger=str(root))
    bar = Progress(f"importing from {source}", unit="artifacts")
    try:
        await import_artifacts(ledger, source, items, summary, progress=bar.update)
    finally:
        bar.close()
        await ledger.aclose()
    return summary.to_json(), summary.text(), EXIT_OK if summary.failed == 0 else EXIT_FAILED
