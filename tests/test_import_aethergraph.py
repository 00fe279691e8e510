"""``artifact-ledger import aethergraph`` against a real workspace written by aethergraph 0.1.0a15.

The workspace is written with aethergraph's own ArtifactFacade over its FS
artifact store and SQLite index: files (the same bytes twice, with different
labels and metrics), tags, a pin, a streamed writer, a directory archived as
a bundle, and (in its own workspace) a manifest-only directory whose files
aethergraph does not keep.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pty
import shutil
import sqlite3
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("aethergraph")

from aethergraph.services.artifacts.facade import ArtifactFacade as AgFacade  # noqa: E402
from aethergraph.storage.artifacts.artifact_index_sqlite import SqliteArtifactIndex  # noqa: E402
from aethergraph.storage.artifacts.fs_cas import FSArtifactStore  # noqa: E402

from artifact_ledger.facade.cli import main  # noqa: E402
from artifact_ledger.sync import open_ledger  # noqa: E402

INDEX = Path("artifacts") / "index.sqlite"


@dataclass
class Expect:
    """One occurrence as aethergraph recorded it, and what the ledger must show for it."""

    occurrence_id: str
    kind: str
    content: bytes | dict[str, bytes]
    labels: dict
    metrics: dict
    pinned: bool
    run_id: str
    graph_id: str
    node_id: str
    created_at: str = ""


@dataclass
class Workspace:
    path: Path
    expect: list[Expect] = field(default_factory=list)


def _facade(ws: Path, run_id: str, graph_id: str = "g1", node_id: str = "n1") -> AgFacade:
    store = FSArtifactStore(str(ws / "artifacts"))
    index = SqliteArtifactIndex(str(ws / INDEX))
    return AgFacade(run_id=run_id, graph_id=graph_id, node_id=node_id, tool_name="trainer", tool_version="2.1",
                    art_store=store, art_index=index)


def _occurrence_ids(ws: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(ws / INDEX)
    try:
        return [(r[0], r[1]) for r in con.execute(
            "SELECT occurrence_id, created_at FROM artifact_occurrences ORDER BY id")]
    finally:
        con.close()


async def _write_workspace(ws: Path, src: Path) -> list[Expect]:
    src.mkdir(parents=True, exist_ok=True)
    f = _facade(ws, "r1")
    expect: list[Expect] = []
    (src / "eval.txt").write_bytes(b"eval output\n")
    await f.save_file(str(src / "eval.txt"), kind="text", labels={"task": "eval", "cfg": {"depth": 2}},
                      metrics={"acc": 0.9}, cleanup=False)
    expect.append(Expect("", "text", b"eval output\n", {"task": "eval", "cfg": '{"depth": 2}', "filename": "eval.txt"},
                         {}, False, "r1", "g1", "n1"))
    # The same bytes again: aethergraph overwrites the first save's row (labels, metrics, pin);
    # its occurrence log keeps both saves, and the latest carries the row's metrics and pin.
    g = _facade(ws, "r2", node_id="n2")
    await g.save_file(str(src / "eval.txt"), kind="text", labels={"task": "train"}, metrics={"acc": 0.5},
                      pin=True, cleanup=False)
    expect.append(Expect("", "text", b"eval output\n", {"task": "train", "filename": "eval.txt"},
                         {"acc": 0.5}, True, "r2", "g1", "n2"))
    (src / "weights.npy").write_bytes(b"\x93NUMPY" + bytes(range(256)))
    await f.save_file(str(src / "weights.npy"), kind="model", tags=["best", "v2"], metrics={"loss": 0.25},
                      cleanup=False)
    expect.append(Expect("", "model", b"\x93NUMPY" + bytes(range(256)),
                         {"tags": ["best", "v2"], "filename": "weights.npy"}, {"loss": 0.25}, False, "r1", "g1", "n1"))
    async with f.writer(kind="log", planned_ext=".log") as w:
        w.write(b"line 1\nline 2\n")
        w.add_metrics({"lines": 2})
    expect.append(Expect("", "log", b"line 1\nline 2\n", {}, {"lines": 2}, False, "r1", "g1", "n1"))
    staged = Path(await f.stage_dir())
    (staged / "sub").mkdir()
    (staged / "x.bin").write_bytes(b"\x00\x01")
    (staged / "sub" / "y.txt").write_bytes(b"why")
    await f.ingest_dir(str(staged), kind="dataset", labels={"split": "val"}, metrics={"n": 2}, archive=True)
    expect.append(Expect("", "dataset", {"x.bin": b"\x00\x01", "sub/y.txt": b"why"},
                         {"split": "val", "filename": "bundle.tar.gz"}, {"n": 2}, False, "r1", "g1", "n1"))
    for e, (occ, created) in zip(expect, _occurrence_ids(ws), strict=True):
        e.occurrence_id, e.created_at = occ, created
    return expect


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    base = tmp_path_factory.mktemp("aethergraph")
    ws = Workspace(base / "ws")
    ws.expect = asyncio.run(_write_workspace(ws.path, base / "src"))
    return ws


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """``artifact-ledger ARGS`` run in this process (a process per call would dominate the test's time)."""
    # main() installs the tool's one-line warning printer; keep it out of later tests.
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)

    def run(*args: str) -> Ran:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return Ran(code, out, err)
    return run


def import_json(cli, root: Path, ws: Path, *extra: str, code: int = 0) -> dict:
    res = cli("-C", str(root), "import", "aethergraph", str(ws), "--json", *extra)
    assert res.returncode == code, (res.stdout, res.stderr)
    assert res.stderr == ""
    return json.loads(res.stdout)


def imported(root: Path) -> dict[str, object]:
    with open_ledger(root, create=False) as led:
        return {a.labels["import.id"]: a
                for a in led.artifacts(run_id="-", graph_id="-", node_id="-").list(scope="all")}


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _iso(created: str) -> str:
    from datetime import datetime, timezone

    return datetime.fromisoformat(created).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------- the import
def test_every_occurrence_arrives_with_bytes_labels_and_metrics(workspace, tmp_path, cli):
    """Each save aethergraph recorded is one artifact: its bytes, labels, metrics, pin, ids and original time."""
    root = tmp_path / "ledger"
    index_before = _digest(workspace.path / INDEX)
    doc = import_json(cli, root, workspace.path, "--create")
    assert (doc["imported"], doc["skipped"], doc["failed"]) == (len(workspace.expect), 0, 0)
    assert doc["source"] == "aethergraph" and doc["from"] == str(workspace.path)
    assert _digest(workspace.path / INDEX) == index_before  # the source is only read

    arts = imported(root)
    assert set(arts) == {e.occurrence_id for e in workspace.expect}
    with open_ledger(root, create=False) as led:
        facade = led.artifacts(run_id="-", graph_id="-", node_id="-")
        for e in workspace.expect:
            art = arts[e.occurrence_id]
            assert (art.kind, art.run_id, art.graph_id, art.node_id) == (e.kind, e.run_id, e.graph_id, e.node_id)
            if isinstance(e.content, dict):
                assert art.mime == "inode/directory"
                assert _tree(facade.load_artifact(art.uri)) == e.content
            else:
                assert facade.load_artifact_bytes(art.uri) == e.content
                assert art.labels["import.artifact_id"] == hashlib.sha256(e.content).hexdigest() == art.sha256
            own = {k: v for k, v in art.labels.items() if not k.startswith("import.")}
            if e.kind == "log":  # aethergraph names a streamed file after its staging path
                own.pop("filename")
            assert own == e.labels
            assert art.metrics == e.metrics
            assert art.pinned == e.pinned
            assert art.labels["import.source"] == "aethergraph"
            assert art.labels["import.created_at"] == _iso(e.created_at)
            assert art.labels["import.tool_name"] == "trainer" and art.labels["import.tool_version"] == "2.1"
    first, second = (arts[e.occurrence_id] for e in workspace.expect[:2])
    # One blob, two artifacts: the overwritten first save keeps its own labels and run.
    assert first.sha256 == second.sha256 and first.artifact_id != second.artifact_id
    assert (first.labels["task"], second.labels["task"]) == ("eval", "train")


def test_a_rerun_imports_nothing_twice(workspace, tmp_path, cli):
    """A second import finds every occurrence already recorded and appends no event; new saves are picked up."""
    ws = tmp_path / "ws"
    shutil.copytree(workspace.path, ws)
    root = tmp_path / "ledger"
    import_json(cli, root, ws, "--create")
    with open_ledger(root, create=False) as led:
        head = led.head
    again = import_json(cli, root, ws)
    assert (again["imported"], again["skipped"], again["failed"]) == (0, len(workspace.expect), 0)
    with open_ledger(root, create=False) as led:
        assert led.head == head

    async def one_more() -> None:
        (tmp_path / "late.txt").write_bytes(b"late\n")
        await _facade(ws, "r3").save_file(str(tmp_path / "late.txt"), kind="text", cleanup=False)

    asyncio.run(one_more())
    third = import_json(cli, root, ws)
    assert (third["imported"], third["skipped"], third["failed"]) == (1, len(workspace.expect), 0)
    assert len(imported(root)) == len(workspace.expect) + 1


def test_a_moved_workspace_still_finds_its_bytes(workspace, tmp_path, cli):
    """URIs in the index hold absolute paths; a workspace copied elsewhere is read from its own blobs."""
    moved = tmp_path / "elsewhere" / "ws"
    shutil.copytree(workspace.path, moved)
    root = tmp_path / "ledger"
    hidden = workspace.path.with_name("ws-hidden")
    workspace.path.rename(hidden)  # the absolute paths recorded in the index now lead nowhere
    try:
        doc = import_json(cli, root, moved, "--create")
    finally:
        hidden.rename(workspace.path)
    assert (doc["imported"], doc["failed"]) == (len(workspace.expect), 0)


def test_missing_or_damaged_bytes_fail_that_artifact_only(workspace, tmp_path, cli):
    """A manifest-only directory (aethergraph dropped its files) and a changed blob are reported; the rest arrive."""
    ws = tmp_path / "ws"
    shutil.copytree(workspace.path, ws)

    async def manifest_only() -> None:
        f = _facade(ws, "r9")
        staged = Path(await f.stage_dir())
        (staged / "lost.txt").write_bytes(b"gone")
        await f.ingest_dir(str(staged), kind="dataset")

    asyncio.run(manifest_only())
    blob = next((ws / "artifacts" / "blobs" / "cas" / "blobs").glob(
        hashlib.sha256(b"\x93NUMPY" + bytes(range(256))).hexdigest() + "*"))
    blob.write_bytes(b"tampered")
    root = tmp_path / "ledger"
    doc = import_json(cli, root, ws, "--create", code=1)
    assert (doc["imported"], doc["failed"]) == (len(workspace.expect) - 1, 2)
    errors = " | ".join(f["error"] for f in doc["failures"])
    assert "kept only the manifest" in errors and "'lost.txt'" in errors
    assert "SHA-256" in errors and "not the" in errors
    res = cli("-C", str(root), "import", "aethergraph", str(ws))
    assert res.returncode == 1
    assert "skipped" in res.stdout and "failed 2" in res.stdout
    assert res.stdout.count("\nfailed: ") == 2


# ---------------------------------------------------------------- progress and summary
def _stderr_on_tty(*args: str) -> tuple[int, str, str]:
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "artifact_ledger", *args], stdout=subprocess.PIPE,
                              stderr=slave, timeout=120)
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO once drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    return proc.returncode, proc.stdout.decode(), b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_and_summary(workspace, tmp_path, cli):
    """A terminal stderr gets a bar counting artifacts; the summary line goes to stdout; no bar off a terminal."""
    n = len(workspace.expect)
    code, out, err = _stderr_on_tty("-C", str(tmp_path / "l1"), "import", "aethergraph", str(workspace.path),
                                    "--create")
    assert code == 0, (out, err)
    assert "importing from aethergraph [" in err and "100.0%" in err and f"{n} artifacts/{n} artifacts" in err
    assert out.strip() == (f"imported {n} artifacts from aethergraph ({workspace.path}) into {tmp_path / 'l1'}; "
                           "skipped 0 already present; failed 0")
    res = cli("-C", str(tmp_path / "l2"), "import", "aethergraph", str(workspace.path), "--create")
    assert res.returncode == 0 and res.stderr == ""


# ---------------------------------------------------------------- bad sources write nothing
def _refused(cli, root: Path, ws: Path, *words: str) -> None:
    res = cli("-C", str(root), "import", "aethergraph", str(ws), "--create")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stdout == "" and "Traceback" not in res.stderr
    assert res.stderr.startswith("artifact-ledger: error: ") and len(res.stderr.strip().splitlines()) == 1
    for w in words:
        assert w in res.stderr, (w, res.stderr)
    assert not root.exists()


def test_missing_unreadable_or_unknown_workspaces_fail_before_writing(workspace, tmp_path, cli):
    """No directory, no index, a non-database, an unknown schema, a JSONL index: exit 2 and no ledger."""
    root = tmp_path / "ledger"
    _refused(cli, root, tmp_path / "nowhere", "no AetherGraph workspace", "no such directory")
    bare = tmp_path / "bare"
    bare.mkdir()
    _refused(cli, root, bare, "no AetherGraph workspace", "index.sqlite does not exist")
    junk = tmp_path / "junk"
    (junk / "artifacts").mkdir(parents=True)
    (junk / INDEX).write_bytes(b"not a database at all" * 50)
    _refused(cli, root, junk, "cannot read the AetherGraph index")
    other = tmp_path / "other"
    (other / "artifacts").mkdir(parents=True)
    con = sqlite3.connect(other / INDEX)
    con.execute("CREATE TABLE unrelated (x)")
    con.commit()
    con.close()
    _refused(cli, root, other, "not an AetherGraph artifact index")
    future = tmp_path / "future"
    shutil.copytree(workspace.path, future)
    con = sqlite3.connect(future / INDEX)
    con.execute("ALTER TABLE artifacts DROP COLUMN metrics_json")
    con.commit()
    con.close()
    before = _digest(future / INDEX)
    _refused(cli, root, future, "schema this importer does not know", "metrics_json")
    assert _digest(future / INDEX) == before
    jsonl = tmp_path / "jsonl"
    (jsonl / "artifacts").mkdir(parents=True)
    (jsonl / "artifacts" / "index.jsonl").write_text("{}\n")
    _refused(cli, root, jsonl, "JSONL artifact index")


def test_an_interrupted_import_resumes_without_duplicates(workspace, tmp_path, cli, monkeypatch):
    """Stopped midway (Ctrl-C while reading the third artifact), a re-run brings the rest and nothing twice."""
    import artifact_ledger.facade.import_aethergraph as ag

    real = ag._link_or_copy
    calls = []

    def interrupt_third(src: Path, dst: Path) -> None:
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(ag, "_link_or_copy", interrupt_third)
    root = tmp_path / "ledger"
    res = cli("-C", str(root), "import", "aethergraph", str(workspace.path), "--create")
    assert res.returncode == 130
    assert len(imported(root)) == 2  # the two recorded before the interruption are durable
    monkeypatch.setattr(ag, "_link_or_copy", real)
    doc = import_json(cli, root, workspace.path)
    assert (doc["imported"], doc["skipped"], doc["failed"]) == (len(workspace.expect) - 2, 2, 0)
    assert set(imported(root)) == {e.occurrence_id for e in workspace.expect}


def test_rows_without_occurrence_ids_are_told_apart_across_workspaces(tmp_path, cli):
    """Older indexes have no occurrence ids: two such workspaces in one ledger both arrive, then skip."""
    async def tiny(ws: Path, data: bytes) -> None:
        (tmp_path / "f.txt").write_bytes(data)
        f = _facade(ws, "r1")
        await f.save_file(str(tmp_path / "f.txt"), kind="text", cleanup=False)
        await f.save_file(str(tmp_path / "f.txt"), kind="text", labels={"again": True}, cleanup=False)

    spaces = [tmp_path / "ws-a", tmp_path / "ws-b"]
    for ws, data in zip(spaces, (b"from a", b"from b"), strict=True):
        asyncio.run(tiny(ws, data))
        con = sqlite3.connect(ws / INDEX)
        con.execute("UPDATE artifact_occurrences SET occurrence_id = NULL")
        con.commit()
        con.close()
    root = tmp_path / "ledger"
    assert import_json(cli, root, spaces[0], "--create")["imported"] == 2
    assert import_json(cli, root, spaces[1])["imported"] == 2  # row numbers 1, 2 again: not the same saves
    with open_ledger(root, create=False) as led:
        facade = led.artifacts(run_id="-", graph_id="-", node_id="-")
        assert sorted(facade.load_artifact_bytes(a.uri) for a in facade.list(scope="all")) == [b"from a"] * 2 + [
            b"from b"] * 2
    for ws in spaces:
        doc = import_json(cli, root, ws)
        assert (doc["imported"], doc["skipped"]) == (0, 2)
