"""Read an MLflow tracking store (through MLflow's own client) as a list of source artifacts.

Every file in the artifact tree of every active run becomes one artifact; a
folder holding an ``MLmodel`` file (a model logged the MLflow 2 way) becomes
one directory artifact of kind ``model``, and so does every finalized MLflow 3
logged model (stored outside the runs). The mapping is in the README ("Importing").
Needs ``mlflow-skinny`` (plus ``sqlalchemy`` and ``alembic`` for SQL stores).
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from .importing import IMPORT_PREFIX, UNKNOWN_ID, ImportSourceError, SourceArtifact, iso_time, kind_for_name, \
    source_labels, split_metrics

GRAPH_ID = "mlflow"  # MLflow has no graphs; every imported artifact is bound to this graph id
ROOT_NODE = "."  # node_id of artifacts at the top of a run's artifact tree
MODELS_NODE = "models"  # node_id of MLflow 3 logged models (kept outside the runs' trees)
MODEL_MARKER = "MLmodel"
_PAGE = 1000


def _ms(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


# ---------------------------------------------------------------- checks before MLflow opens the store
def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:"):]
    if not rest.startswith("///") or rest[3:] in ("", ":memory:"):
        raise ImportSourceError(f"tracking URI {uri!r} names no database file; use sqlite:///PATH")
    return Path(unquote(rest[3:].split("?", 1)[0]))


def _check_sqlite(uri: str, path: Path) -> None:
    """The database exists and is an MLflow schema this MLflow knows, checked read-only.

    MLflow itself would create a missing database, and upgrade or refuse an old one;
    the importer never changes its source.
    """
    if not path.is_file():
        raise ImportSourceError(f"no MLflow tracking database at {path} (from {uri}): no such file")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise ImportSourceError(f"{path} is not an MLflow tracking database (no alembic_version table)") from None
        raise ImportSourceError(f"cannot read the MLflow tracking database {path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise ImportSourceError(f"{path} is not an SQLite database ({exc})") from None
    version = row[0] if row else None
    known, head = _schema_revisions()
    if known is None:
        return  # this MLflow hides its migrations; its own schema check still refuses a mismatch
    if version not in known:
        raise ImportSourceError(
            f"the MLflow tracking database {path} has schema version {version!r}, unknown to the installed "
            f"MLflow (its newest is {head}); import with the MLflow version that wrote it")
    if version != head:
        raise ImportSourceError(
            f"the MLflow tracking database {path} has the older schema version {version}; the installed "
            f"MLflow reads {head}. Upgrade a copy with `mlflow db upgrade sqlite:///COPY` and import "
            "from the copy (the importer never changes its source)")


def _schema_revisions() -> tuple[set[str] | None, str | None]:
    try:
        from alembic.script import ScriptDirectory
        from mlflow.store.db.utils import _get_alembic_config

        script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
        return {rev.revision for rev in script.walk_revisions()}, script.get_current_head()
    except Exception:  # private MLflow API: when it moves, fall back to MLflow's own check
        return None, None


def _check_file_store(uri: str) -> None:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else uri)
    # MLflow's file store creates a missing root and a default experiment in an empty one.
    if not path.is_dir():
        raise ImportSourceError(f"no MLflow tracking store at {path} (from {uri}): no such directory")
    if not any(path.glob("*/meta.yaml")):
        raise ImportSourceError(f"{path} is not an MLflow file tracking store (no <experiment>/meta.yaml)")


def check_source(uri: str) -> None:
    """Refuse a tracking URI whose store is missing, unreadable or of an unknown schema version."""
    if not isinstance(uri, str) or not uri.strip():
        raise ImportSourceError("--tracking-uri is empty; give the tracking store, e.g. sqlite:///mlflow.db")
    path = _sqlite_path(uri)
    if path is not None:
        _check_sqlite(uri, path)
    else:
        _check_file_store(uri)


# ---------------------------------------------------------------- reading
def _client(uri: str) -> Any:
    # Usage telemetry would be network traffic the user did not ask for; they may still opt in.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ImportSourceError(f"importing from MLflow needs the mlflow-skinny package ({exc})") from None
    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as exc:
        raise ImportSourceError(f"cannot open the MLflow tracking store {uri}: {_message(exc)}") from None


def _message(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[0]


def _pages(call: Any, **kw: Any) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        page = call(page_token=token, **kw)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def _experiments(client: Any, uri: str, name: str | None) -> list[Any]:
    from mlflow.entities import ViewType

    if name is not None:
        exp = client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage != "active":
            names = sorted(e.name for e in _pages(client.search_experiments, view_type=ViewType.ACTIVE_ONLY,
                                                   max_results=_PAGE))
            raise ImportSourceError(f"no active experiment named {name!r} in {uri}; "
                                    f"experiments: {', '.join(map(repr, names)) or 'none'}")
        return [exp]
    return _pages(client.search_experiments, view_type=ViewType.ACTIVE_ONLY, max_results=_PAGE)


def _walk(client: Any, run_id: str, entries: list[Any] | None = None) -> list[tuple[str, bool]]:
    """(path, is_model_dir) of every artifact in a run's tree (below ``entries``, a listing)."""
    out: list[tuple[str, bool]] = []
    for info in client.list_artifacts(run_id) if entries is None else entries:
        if not info.is_dir:
            out.append((info.path, False))
            continue
        children = client.list_artifacts(run_id, info.path)
        if any(not c.is_dir and PurePosixPath(c.path).name == MODEL_MARKER for c in children):
            out.append((info.path, True))
        else:
            out.extend(_walk(client, run_id, children))
    return out


def _fetcher(client: Any, artifact_uri: str, run_id: str, rel: str) -> Any:
    if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
        raise ImportSourceError(f"run {run_id} lists the artifact path {rel!r}, which leaves its artifact directory")
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        base = Path(unquote(parsed.path) if parsed.scheme == "file" else artifact_uri)

        def local(scratch: Path) -> Path:
            # Local artifact stores are read in place; save() copies the bytes.
            p = base / rel
            if not p.exists():
                raise FileNotFoundError(f"{p} is listed by MLflow but missing")
            return p
        return local

    def download(scratch: Path) -> Path:
        return Path(client.download_artifacts(run_id, rel, dst_path=str(scratch)))
    return download


def _local_dir(location: str) -> Path | None:
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return None
    return Path(unquote(parsed.path) if parsed.scheme == "file" else location)


def _model_fetcher(uri: str, location: str) -> Any:
    def fetch(scratch: Path) -> Path:
        local = _local_dir(location)
        if local is not None:
            if not local.is_dir():
                raise FileNotFoundError(f"the model's artifact directory {local} is missing")
            return local
        from mlflow.artifacts import download_artifacts

        return Path(download_artifacts(artifact_uri=location, dst_path=str(scratch), tracking_uri=uri))
    return fetch


def _latest(metrics: list[Any] | None) -> dict[str, Any]:
    """The latest value of each metric of a history (highest step, then newest)."""
    best: dict[str, Any] = {}
    for m in metrics or ():
        if m.key not in best or (m.step, m.timestamp) >= (best[m.key].step, best[m.key].timestamp):
            best[m.key] = m
    return {k: m.value for k, m in best.items()}


def _model_items(client: Any, uri: str, exp: Any) -> list[SourceArtifact]:
    """MLflow 3 logged models (kept outside runs): each finalized one is a directory artifact."""
    search = getattr(client, "search_logged_models", None)
    if search is None:
        return []  # an MLflow before logged models
    items = []
    for model in _pages(search, experiment_ids=[exp.experiment_id], max_results=_PAGE):
        if str(getattr(model.status, "name", model.status)) != "READY":
            continue  # pending or failed: MLflow itself treats it as not there
        run_id = model.source_run_id or UNKNOWN_ID
        binding: dict[str, str | None] = {"run_id": run_id, "graph_id": GRAPH_ID, "node_id": MODELS_NODE,
                                          "project_id": exp.name}
        labels: dict[str, Any] = source_labels(model.tags, binding)
        labels.update({f"param.{k}": v for k, v in (model.params or {}).items()})
        metrics, metric_labels = split_metrics(_latest(model.metrics))
        labels.update(metric_labels)
        facts = {
            "model_id": model.model_id, "model_name": model.name, "model_type": model.model_type,
            "run_id": model.source_run_id, "experiment_id": exp.experiment_id, "experiment": exp.name,
            "status": "READY", "created_at": iso_time(_ms(model.creation_timestamp)),
            "uri": f"models:/{model.model_id}",
        }
        labels.update({IMPORT_PREFIX + k: v for k, v in facts.items() if v is not None})
        items.append(SourceArtifact(
            key=f"models/{model.model_id}", run_id=run_id, graph_id=GRAPH_ID, node_id=MODELS_NODE,
            project_id=exp.name, kind="model", labels=labels, metrics=metrics,
            fetch=_model_fetcher(uri, model.artifact_location), is_dir=True,
        ))
    return items


def _run_items(client: Any, exp: Any, run: Any) -> list[SourceArtifact]:
    info, data = run.info, run.data
    binding: dict[str, str | None] = {"run_id": info.run_id, "graph_id": GRAPH_ID, "project_id": exp.name}
    common: dict[str, Any] = source_labels(data.tags, binding)
    common.update({f"param.{k}": v for k, v in data.params.items()})
    metrics, metric_labels = split_metrics(data.metrics)
    common.update(metric_labels)
    facts = {
        "run_id": info.run_id, "run_name": info.run_name, "experiment_id": exp.experiment_id,
        "experiment": exp.name, "status": info.status, "created_at": iso_time(_ms(info.start_time)),
        "ended_at": iso_time(_ms(info.end_time)),
    }
    common.update({IMPORT_PREFIX + k: v for k, v in facts.items() if v is not None})
    items = []
    for rel, is_model in _walk(client, info.run_id):
        parent = str(PurePosixPath(rel).parent)
        labels = dict(common)
        labels[IMPORT_PREFIX + "path"] = rel
        labels[IMPORT_PREFIX + "uri"] = f"runs:/{info.run_id}/{rel}"
        items.append(SourceArtifact(
            key=f"{info.run_id}/{rel}", run_id=info.run_id, graph_id=GRAPH_ID,
            node_id=ROOT_NODE if parent == "." else parent, project_id=exp.name,
            kind="model" if is_model else kind_for_name(rel), labels=labels, metrics=dict(metrics),
            fetch=_fetcher(client, info.artifact_uri, info.run_id, rel), is_dir=is_model,
        ))
    return items


def list_artifacts(uri: str, experiment: str | None = None) -> list[SourceArtifact]:
    """Every artifact of the store's active runs (of one experiment, when named); writes nothing."""
    check_source(uri)
    client = _client(uri)
    try:
        from mlflow.entities import ViewType

        items: list[SourceArtifact] = []
        for exp in _experiments(client, uri, experiment):
            for run in _pages(client.search_runs, experiment_ids=[exp.experiment_id],
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=_PAGE):
                items.extend(_run_items(client, exp, run))
            items.extend(_model_items(client, uri, exp))
        return items
    except ImportSourceError:
        raise
    except Exception as exc:
        raise ImportSourceError(f"cannot read the MLflow tracking store {uri}: {_message(exc)}") from None
