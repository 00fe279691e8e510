"""``artifact-ledger import mlflow`` against a real MLflow SQLite tracking store written by mlflow-skinny.

The store is built once per module (creating MLflow's schema takes a while):
two experiments, three runs, params, tags, metric histories, files logged at
the root and under a folder, a directory tree and an MLflow model folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from artifact_ledger.facade.cli import main  # noqa: E402
from artifact_ledger.sync import open_ledger  # noqa: E402

# MLflow 3.17 on SQLAlchemy 2.1 warns about its own ORM options; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@dataclass
class Store:
    """The module's tracking store and what the test knows went into it."""

    uri: str
    db: Path
    art_root: Path
    # (run_id, path) -> expected bytes (files) or {relative path: bytes} (model folders)
    files: dict[tuple[str, str], bytes | dict[str, bytes]] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)  # run_id -> {experiment, params, tags, metrics}
    models: dict[str, dict] = field(default_factory=dict)  # MLflow 3 logged model id -> what went into it

    @property
    def total(self) -> int:
        """How many artifacts the whole store holds."""
        return len(self.files) + len(self.models)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    base = tmp_path_factory.mktemp("mlflow")
    db = base / "mlflow.db"
    uri = f"sqlite:///{db}"
    art_root = base / "artifact-root"
    src = base / "src"
    with pytest.MonkeyPatch.context() as mp:
        # No server, no telemetry: everything stays in the temp directory.
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("DO_NOT_TRACK", "true")
        mp.setenv("GIT_PYTHON_REFRESH", "quiet")
        mp.chdir(base)
        mlflow.set_tracking_uri(uri)
        st = Store(uri=uri, db=db, art_root=art_root)
        exp_a = mlflow.create_experiment("exp-a", artifact_location=(art_root / "a").as_uri())
        exp_b = mlflow.create_experiment("exp-b", artifact_location=(art_root / "b").as_uri())

        with mlflow.start_run(experiment_id=exp_a, run_name="first") as run:
            rid = run.info.run_id
            mlflow.log_param("lr", 0.01)
            mlflow.log_param("layers", 3)
            mlflow.set_tag("team", "vision")
            mlflow.set_tag("run_id", "not-this-one")  # collides with a ledger id key
            mlflow.log_metric("loss", 0.9, step=0)
            mlflow.log_metric("loss", 0.4, step=1)
            mlflow.log_metric("acc", 0.75)
            mlflow.log_metric("diverged", float("nan"))
            mlflow.log_artifact(str(_write(src / "r1" / "notes.txt", b"first run notes\n")))
            mlflow.log_artifact(str(_write(src / "r1" / "metrics.json", b'{"acc": 0.75}')), artifact_path="eval")
            tree = src / "r1" / "samples"
            _write(tree / "a.bin", b"\x00\x01\x02")
            _write(tree / "deep" / "b.txt", b"bee")
            mlflow.log_artifacts(str(tree), artifact_path="samples")
            model = src / "r1" / "model"
            _write(model / "MLmodel", b"flavors: {}\n")
            _write(model / "weights.bin", b"W" * 1000)
            _write(model / "sub" / "conf.yaml", b"k: v\n")
            mlflow.log_artifacts(str(model), artifact_path="model")
            # An MLflow 3 logged model: kept under the experiment, outside the run's tree.
            client = mlflow.tracking.MlflowClient(tracking_uri=uri)
            lm = client.create_logged_model(experiment_id=exp_a, name="clf", source_run_id=rid,
                                            tags={"framework": "toy"}, params={"depth": "4"})
            lm_dir = src / "r1" / "logged"
            _write(lm_dir / "MLmodel", b"artifact_path: clf\n")
            _write(lm_dir / "data" / "model.pkl", b"pickle-ish")
            client.log_model_artifacts(lm.model_id, str(lm_dir))
            mlflow.log_metric("val_acc", 0.6, step=0, model_id=lm.model_id)
            mlflow.log_metric("val_acc", 0.7, step=1, model_id=lm.model_id)
            client.finalize_logged_model(lm.model_id, mlflow.entities.LoggedModelStatus.READY)
            # A model whose logging never finished is not there for MLflow either.
            client.create_logged_model(experiment_id=exp_a, name="pending", source_run_id=rid)
        st.models[lm.model_id] = {"run_id": rid, "content": {"MLmodel": b"artifact_path: clf\n",
                                                             "data/model.pkl": b"pickle-ish"},
                                  "metrics": {"val_acc": 0.7}, "labels": {"framework": "toy", "param.depth": "4"}}
        st.files.update({
            (rid, "notes.txt"): b"first run notes\n",
            (rid, "eval/metrics.json"): b'{"acc": 0.75}',
            (rid, "samples/a.bin"): b"\x00\x01\x02",
            (rid, "samples/deep/b.txt"): b"bee",
            (rid, "model"): {"MLmodel": b"flavors: {}\n", "weights.bin": b"W" * 1000, "sub/conf.yaml": b"k: v\n"},
        })
        st.runs[rid] = {"experiment": "exp-a", "name": "first", "params": {"lr": "0.01", "layers": "3"},
                        "tags": {"team": "vision"}, "metrics": {"loss": 0.4, "acc": 0.75, "val_acc": 0.7}}

        with mlflow.start_run(experiment_id=exp_a, run_name="second") as run:
            rid = run.info.run_id
            mlflow.log_param("lr", 0.1)
            mlflow.log_metric("acc", 0.8)
            # The same bytes as the first run's notes: two artifacts over one blob.
            mlflow.log_artifact(str(src / "r1" / "notes.txt"))
        st.files[(rid, "notes.txt")] = b"first run notes\n"
        st.runs[rid] = {"experiment": "exp-a", "name": "second", "params": {"lr": "0.1"}, "tags": {},
                        "metrics": {"acc": 0.8}}

        with mlflow.start_run(experiment_id=exp_b, run_name="other") as run:
            rid = run.info.run_id
            mlflow.set_tag("stage", "prod")
            mlflow.log_artifact(str(_write(src / "r3" / "report.md", b"# report\n")), artifact_path="docs")
        st.files[(rid, "docs/report.md")] = b"# report\n"
        st.runs[rid] = {"experiment": "exp-b", "name": "other", "params": {}, "tags": {"stage": "prod"},
                        "metrics": {}}
        mlflow.set_tracking_uri("")
    return st


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_import(capsys, monkeypatch, *args: str, tty: bool = False) -> tuple[int, str, str]:
    """``artifact-ledger ARGS`` in this process (MLflow is already imported), stdout/stderr captured."""
    err = _Tty() if tty else None
    # main() installs the tool's one-line warning printer; keep it out of later tests.
    monkeypatch.setattr("warnings.showwarning", warnings.showwarning)
    if err is not None:
        monkeypatch.setattr("sys.stderr", err)
    capsys.readouterr()
    code = main(list(args))
    out, captured_err = capsys.readouterr()
    return code, out, err.getvalue() if err is not None else captured_err


def import_json(capsys, monkeypatch, root: Path, store: Store, *extra: str) -> dict:
    code, out, err = run_import(capsys, monkeypatch, "-C", str(root), "import", "mlflow",
                                "--tracking-uri", store.uri, "--json", *extra)
    assert code == 0, (out, err)
    assert err == ""
    return json.loads(out)


def by_source_id(root: Path) -> dict[str, object]:
    """Every imported artifact of the ledger, keyed by its ``import.id``."""
    with open_ledger(root, create=False) as led:
        arts = led.artifacts(run_id="-", graph_id="-", node_id="-").list(scope="all")
        return {a.labels["import.id"]: a for a in arts}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- the import
def test_every_artifact_arrives_with_bytes_labels_and_metrics(store, tmp_path, capsys, monkeypatch):
    """Each file (and the model folder) of every run is one artifact: bytes, tags, params, metrics, ids, times."""
    root = tmp_path / "ledger"
    db_before = _digest(store.db)
    doc = import_json(capsys, monkeypatch, root, store, "--create")
    assert doc["imported"] == store.total and doc["skipped"] == 0 and doc["failed"] == 0
    assert doc["source"] == "mlflow" and doc["failures"] == []
    assert _digest(store.db) == db_before  # the source is only read

    arts = by_source_id(root)
    assert set(arts) == {f"{rid}/{path}" for rid, path in store.files} | {f"models/{m}" for m in store.models}
    client = mlflow.tracking.MlflowClient(tracking_uri=store.uri)
    with open_ledger(root, create=False) as led:
        facade = led.artifacts(run_id="-", graph_id="-", node_id="-")
        for (rid, path), expected in store.files.items():
            art = arts[f"{rid}/{path}"]
            run = store.runs[rid]
            info = client.get_run(rid).info
            assert (art.run_id, art.graph_id, art.project_id) == (rid, "mlflow", run["experiment"])
            assert art.node_id == (path.rsplit("/", 1)[0] if "/" in path else ".")
            if isinstance(expected, dict):
                assert art.kind == "model" and art.mime == "inode/directory"
                assert _tree(facade.load_artifact(art.uri)) == expected
            else:
                assert facade.load_artifact_bytes(art.uri) == expected
                assert art.sha256 == hashlib.sha256(expected).hexdigest()
            assert art.metrics == run["metrics"]
            for k, v in run["params"].items():
                assert art.labels[f"param.{k}"] == v
            for k, v in run["tags"].items():
                assert art.labels[k] == v
            assert art.labels["mlflow.runName"] == run["name"]
            assert art.labels["import.source"] == "mlflow"
            assert art.labels["import.run_id"] == rid
            assert art.labels["import.path"] == path
            assert art.labels["import.experiment"] == run["experiment"]
            assert art.labels["import.run_name"] == run["name"]
            start = mlflow_time(info.start_time)
            assert art.labels["import.created_at"] == start
            assert art.labels["import.ended_at"] == mlflow_time(info.end_time)
        for model_id, m in store.models.items():
            art = arts[f"models/{model_id}"]
            assert (art.kind, art.run_id, art.graph_id, art.node_id) == ("model", m["run_id"], "mlflow", "models")
            assert art.project_id == "exp-a"
            assert _tree(facade.load_artifact(art.uri)) == m["content"]
            assert art.metrics == m["metrics"]
            assert {k: art.labels[k] for k in m["labels"]} == m["labels"]
            assert art.labels["import.model_id"] == model_id and art.labels["import.model_name"] == "clf"
            assert art.labels["import.uri"] == f"models:/{model_id}"
    first = next(rid for rid, r in store.runs.items() if r["name"] == "first")
    notes = arts[f"{first}/notes.txt"]
    # A tag named like a ledger id key is kept under source.; a NaN metric as a label.
    assert notes.labels["source.run_id"] == "not-this-one"
    assert notes.labels["import.metric.diverged"] == "nan"
    assert "diverged" not in notes.metrics
    kinds = {p: arts[f"{first}/{p}"].kind for p in ("notes.txt", "eval/metrics.json", "samples/a.bin")}
    assert kinds == {"notes.txt": "text", "eval/metrics.json": "json", "samples/a.bin": "file"}
    second = next(rid for rid, r in store.runs.items() if r["name"] == "second")
    # Same bytes in two runs: two artifacts over one blob, each with its own run.
    assert arts[f"{second}/notes.txt"].sha256 == notes.sha256
    assert arts[f"{second}/notes.txt"].artifact_id != notes.artifact_id


def mlflow_time(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_rerun_imports_nothing_twice(store, tmp_path, capsys, monkeypatch):
    """Importing again skips every artifact already imported (by run id and path), appending no event."""
    root = tmp_path / "ledger"
    first = import_json(capsys, monkeypatch, root, store, "--create", "--experiment", "exp-b")
    assert first["imported"] == 1
    with open_ledger(root, create=False) as led:
        head_after_b = led.head
    # Everything: exp-b's artifact is already there and is skipped, the rest arrives.
    again = import_json(capsys, monkeypatch, root, store)
    assert (again["imported"], again["skipped"], again["failed"]) == (store.total - 1, 1, 0)
    with open_ledger(root, create=False) as led:
        head = led.head
        assert head[0] == head_after_b[0] + store.total - 1
    third = import_json(capsys, monkeypatch, root, store)
    assert (third["imported"], third["skipped"], third["failed"]) == (0, store.total, 0)
    with open_ledger(root, create=False) as led:
        assert led.head == head
    assert len(by_source_id(root)) == store.total


def test_experiment_filter_and_text_summary(store, tmp_path, capsys, monkeypatch):
    """--experiment imports only that experiment; the text summary counts imported, skipped, failed."""
    root = tmp_path / "ledger"
    code, out, err = run_import(capsys, monkeypatch, "-C", str(root), "import", "mlflow", "--tracking-uri",
                                store.uri, "--experiment", "exp-a", "--create")
    assert code == 0 and err == ""
    n = sum(1 for rid, _ in store.files if store.runs[rid]["experiment"] == "exp-a") + len(store.models)
    assert out.startswith(f"imported {n} artifacts from mlflow ({store.uri})")
    assert "skipped 0 already present; failed 0" in out
    assert {a.project_id for a in by_source_id(root).values()} == {"exp-a"}


def test_progress_bar_on_a_terminal_only(store, tmp_path, capsys, monkeypatch):
    """On a terminal stderr the import draws a bar of artifacts and erases it; elsewhere stderr stays empty."""
    code, out, err = run_import(capsys, monkeypatch, "-C", str(tmp_path / "l1"), "import", "mlflow",
                                "--tracking-uri", store.uri, "--create", tty=True)
    assert code == 0
    n = store.total
    assert "importing from mlflow [" in err and f"{n} artifacts/{n} artifacts" in err and "100.0%" in err
    assert err.endswith("\r\x1b[K")
    assert out.startswith(f"imported {n} artifacts")
    monkeypatch.undo()
    code, out, err = run_import(capsys, monkeypatch, "-C", str(tmp_path / "l2"), "import", "mlflow",
                                "--tracking-uri", store.uri, "--create")
    assert code == 0 and err == ""


# ---------------------------------------------------------------- bad sources write nothing
def _copy_db(store: Store, tmp_path: Path, version: str | None) -> Path:
    db = tmp_path / "copy.db"
    shutil.copyfile(store.db, db)
    if version is not None:
        con = sqlite3.connect(db)
        con.execute("UPDATE alembic_version SET version_num = ?", (version,))
        con.commit()
        con.close()
    return db


def _refused(capsys, monkeypatch, root: Path, uri: str, *words: str, extra: tuple[str, ...] = ()) -> None:
    code, out, err = run_import(capsys, monkeypatch, "-C", str(root), "import", "mlflow", "--tracking-uri", uri,
                                "--create", *extra)
    assert code == 2, (out, err)
    assert out == "" and "Traceback" not in err
    assert err.startswith("artifact-ledger: error: ") and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not root.exists()  # not even the ledger directory


def test_missing_unreadable_or_unknown_sources_fail_before_writing(store, tmp_path, capsys, monkeypatch):
    """A missing database, a non-database, an unknown or older schema, an unknown experiment: exit 2, no ledger."""
    root = tmp_path / "ledger"
    missing = tmp_path / "nope.db"
    _refused(capsys, monkeypatch, root, f"sqlite:///{missing}", "no MLflow tracking database", str(missing))
    assert not missing.exists()  # MLflow would have created it
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    _refused(capsys, monkeypatch, root, f"sqlite:///{junk}", "not an SQLite database")
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    _refused(capsys, monkeypatch, root, f"sqlite:///{empty}", "not an MLflow tracking database")
    unknown = _copy_db(store, tmp_path, "ffffffffffff")
    before = _digest(unknown)
    _refused(capsys, monkeypatch, root, f"sqlite:///{unknown}", "schema version 'ffffffffffff'", "unknown")
    assert _digest(unknown) == before
    # 451aebb31d03 is MLflow's first migration: a database MLflow would want to upgrade.
    old = _copy_db(store, tmp_path, "451aebb31d03")
    before = _digest(old)
    _refused(capsys, monkeypatch, root, f"sqlite:///{old}", "older schema version 451aebb31d03", "mlflow db upgrade")
    assert _digest(old) == before
    _refused(capsys, monkeypatch, root, str(tmp_path / "no-such-dir"), "no MLflow tracking store")
    empty_dir = tmp_path / "empty-dir"
    empty_dir.mkdir()
    _refused(capsys, monkeypatch, root, empty_dir.as_uri(), "not an MLflow file tracking store")
    assert list(empty_dir.iterdir()) == []  # MLflow's file store would have made a default experiment there
    _refused(capsys, monkeypatch, root, store.uri, "no active experiment named 'exp-z'", "'exp-a'",
             extra=("--experiment", "exp-z"))


def test_an_existing_ledger_is_left_alone_by_a_bad_source(store, tmp_path, capsys, monkeypatch):
    """Into an existing ledger, a refused source appends nothing; without --create a missing ledger is an error."""
    root = tmp_path / "ledger"
    import_json(capsys, monkeypatch, root, store, "--create", "--experiment", "exp-b")
    with open_ledger(root, create=False) as led:
        head = led.head
    code, out, err = run_import(capsys, monkeypatch, "-C", str(root), "import", "mlflow", "--tracking-uri",
                                f"sqlite:///{tmp_path / 'nope.db'}")
    assert code == 2 and "no MLflow tracking database" in err
    with open_ledger(root, create=False) as led:
        assert led.head == head
    other = tmp_path / "other"
    code, _, err = run_import(capsys, monkeypatch, "-C", str(other), "import", "mlflow", "--tracking-uri", store.uri)
    assert code == 2 and "--create" in err and not other.exists()
