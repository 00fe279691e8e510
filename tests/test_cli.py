"""The artifact-ledger command-line tool, run as a subprocess against a real ledger."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from artifact_ledger.facade import open_ledger

ENV_ROOT = "ARTIFACT_LEDGER_ROOT"


@dataclass
class Built:
    """The module's ledger and what the test knows went into it."""

    root: Path
    ids: dict[str, str] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    head: tuple[int, str] = (0, "")
    times: list[str] = field(default_factory=list)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_ROOT}
    env.update(extra)
    return env


def run_cli(*args: str, root: Path | None = None, env: dict[str, str] | None = None,
            **kw) -> subprocess.CompletedProcess:
    """``python -m facade.cli [-C root] args...`` with text output captured."""
    cmd = [sys.executable, "-m", "artifact_ledger"]
    if root is not None:
        cmd += ["-C", str(root)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60,
                          env=_env() if env is None else env, **kw)


def ok_json(*args: str, root: Path):
    """Run with --json, insist on exit 0 and a clean stderr, and parse stdout."""
    res = run_cli(*args, "--json", root=root)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    return json.loads(res.stdout)


def fails(res: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """An expected failure: that exit code and one clear stderr line, no traceback."""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("artifact-ledger: error: ")
    for w in words:
        assert w in last, (w, last)


async def _build(root: Path, scratch: Path) -> Built:
    b = Built(root)
    async with open_ledger(root) as led:
        for run, accs in (("r1", (0.5, 0.7)), ("r2", (0.6, 0.9))):
            arts = led.artifacts(run_id=run, graph_id="train", node_id="fit", project_id="p")
            for epoch, acc in enumerate(accs):
                async with arts.writer(kind="model", planned_ext=".bin", labels={"epoch": epoch},
                                       metrics={"acc": acc}) as w:
                    w.write(f"weights {run} {epoch}".encode())
                a = arts.last_artifact
                b.ids[f"{run}e{epoch}"] = a.artifact_id
                b.seq[f"{run}e{epoch}"] = a.seq
        evals = led.artifacts(run_id="r2", graph_id="eval", node_id="report", project_id="p")
        src = scratch / "notes.json"
        src.write_text('{"ok": true}')
        a = await evals.save(str(src), kind="json", labels={"epoch": "1", "tags": ["a", "b"]})
        b.ids["json"], b.seq["json"] = a.artifact_id, a.seq
        d = Path(await evals.stage_dir())
        (d / "sub").mkdir()
        (d / "sub" / "x.txt").write_text("x" * 3000)
        (d / "y.bin").write_bytes(b"\x00\x01")
        a = await evals.ingest_dir(str(d), labels={"what": "tree"})
        b.ids["dir"], b.seq["dir"] = a.artifact_id, a.seq
        await evals.pin(b.ids["r1e1"])
        b.seq["pin"] = led.head[0]
        b.head = led.head
        b.times = [e.time.isoformat() async for e in led.events()]
    return b


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """A ledger with two runs, a JSON file, a directory artifact and a pin (built once)."""
    base = tmp_path_factory.mktemp("cli")
    return anyio.run(_build, base / "ledger", base)


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A private copy of the module's ledger for tests that change or damage it."""
    dst = tmp_path / "copy"
    shutil.copytree(built.root, dst)
    return dst


# ---------------------------------------------------------------- help and usage
def test_help_documents_root_convention_and_exit_codes():
    """--help names --root/-C, the environment variable and every exit code."""
    res = run_cli("--help")
    assert res.returncode == 0
    for needle in ("--root DIR", "-C DIR", ENV_ROOT, "Exit status", "0  success", "1  verification failed",
                   "2  usage error", "as-of", "export"):
        assert needle in res.stdout, needle


def test_usage_errors_exit_2(built):
    """Argparse errors and bad argument values exit 2 with a one-line message."""
    fails(run_cli("bogus", root=built.root), 2, "invalid choice")
    fails(run_cli("best", "--kind", "model", root=built.root), 2, "--metric")
    fails(run_cli("log", "--since", "yesterday", root=built.root), 2, "ISO 8601")
    fails(run_cli("list", "--label", "noequals", root=built.root), 2, "KEY=VALUE")
    fails(run_cli("list", "--label", 'x={"a":1}', root=built.root), 2, "JSON scalars")
    fails(run_cli("list", "--scope", "node", "--run", "r1", root=built.root), 2, "--graph", "--node")
    fails(run_cli("list", "--scope", "project", root=built.root), 2, "--project")
    fails(run_cli("list", "--run", "r1", "--label", "run_id=r2", root=built.root), 2, "run_id")
    fails(run_cli("search", "--metric", "acc", root=built.root), 2, "mode")


def test_missing_ledger_exits_2_and_creates_nothing(tmp_path):
    """A missing directory, a non-ledger directory or no root at all: exit 2, nothing created."""
    missing = tmp_path / "nope"
    for args in (("list",), ("checkpoint",)):
        fails(run_cli(*args, root=missing), 2, "no ledger at", str(missing))
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(run_cli("list", "--json", root=empty), 2, "not an artifact ledger")
    assert list(empty.iterdir()) == []
    fails(run_cli("list"), 2, "--root", ENV_ROOT)


def test_root_from_environment_and_options_after_command(built):
    """ARTIFACT_LEDGER_ROOT names the ledger; -C and --json also work after the command."""
    res = run_cli("list", "--json", env=_env(**{ENV_ROOT: str(built.root)}))
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)) == 6
    res = run_cli("list", "-C", str(built.root), "--json")
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)) == 6
    # An explicit -C wins over the environment.
    res = run_cli("list", "--json", root=built.root, env=_env(**{ENV_ROOT: "/nonexistent"}))
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------- list / search / best / show
def test_list_table_and_json(built):
    """list prints every artifact newest first, as an aligned table or a JSON list."""
    res = run_cli("list", root=built.root)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "ID", "KIND"]
    assert len(lines) == 7
    for aid in built.ids.values():
        assert aid in res.stdout
    # Columns line up: every row's ID starts where the header's ID does.
    col = lines[0].index("ID")
    assert all(line[col:col + 32] in built.ids.values() for line in lines[1:])
    arts = ok_json("list", root=built.root)
    assert [a["seq"] for a in arts] == sorted((a["seq"] for a in arts), reverse=True)
    assert {a["artifact_id"] for a in arts} == set(built.ids.values())
    pinned = {a["artifact_id"] for a in arts if a["pinned"]}
    assert pinned == {built.ids["r1e1"]}


def test_list_binding_and_scope(built):
    """--run/--graph/--node/--project bind the query; --scope reaches as in the facade."""
    ids = lambda arts: {a["artifact_id"] for a in arts}  # noqa: E731
    assert ids(ok_json("list", "--run", "r1", root=built.root)) == {built.ids["r1e0"], built.ids["r1e1"]}
    r2_fit = ok_json("list", "--run", "r2", "--graph", "train", "--node", "fit", root=built.root)
    assert ids(r2_fit) == {built.ids["r2e0"], built.ids["r2e1"]}
    # A node binding widened to its run sees the run's other graph too.
    wide = ok_json("list", "--run", "r2", "--graph", "eval", "--node", "report", "--scope", "run", root=built.root)
    assert ids(wide) == {built.ids[k] for k in ("r2e0", "r2e1", "json", "dir")}
    assert len(ok_json("list", "--project", "p", root=built.root)) == 6
    assert ok_json("list", "--project", "other", root=built.root) == []
    assert ids(ok_json("list", "--graph", "eval", root=built.root)) == {built.ids["json"], built.ids["dir"]}
    res = run_cli("list", "--run", "nobody", root=built.root)
    assert res.returncode == 0 and "no artifacts match" in res.stdout


def test_search_labels_are_json_when_they_parse(built):
    """--label k=v matches JSON values: 1 is a number, "1" a string, bare words strings."""
    ids = lambda arts: {a["artifact_id"] for a in arts}  # noqa: E731
    assert ids(ok_json("search", "--label", "epoch=1", root=built.root)) == {built.ids["r1e1"], built.ids["r2e1"]}
    assert ids(ok_json("search", "--label", 'epoch="1"', root=built.root)) == {built.ids["json"]}
    assert ids(ok_json("search", "--label", "what=tree", root=built.root)) == {built.ids["dir"]}
    assert ids(ok_json("search", "--label", 'tags=["a","b"]', root=built.root)) == {built.ids["json"]}
    both = ok_json("search", "--label", "epoch=1", "--label", "run_id=r2", "--kind", "model", root=built.root)
    assert ids(both) == {built.ids["r2e1"]}
    res = run_cli("search", "--label", 'epoch="1"', root=built.root)
    assert res.returncode == 0 and built.ids["json"] in res.stdout
    # The table shows a string that looks like a number quoted, so it can be pasted back.
    assert 'epoch="1"' in res.stdout


def test_search_ranked_by_metric(built):
    """search --metric --mode ranks best first, in the table and in JSON."""
    arts = ok_json("search", "--kind", "model", "--metric", "acc", "--mode", "max", root=built.root)
    assert [a["metrics"]["acc"] for a in arts] == [0.9, 0.7, 0.6, 0.5]
    low = ok_json("search", "--kind", "model", "--metric", "acc", "--mode", "min", "--limit", "1", root=built.root)
    assert [a["artifact_id"] for a in low] == [built.ids["r1e0"]]
    res = run_cli("search", "--kind", "model", "--metric", "acc", "--mode", "max", root=built.root)
    assert res.returncode == 0
    rows = res.stdout.splitlines()[1:]
    assert [r.split()[1] for r in rows] == [a["artifact_id"] for a in arts]


def test_best(built):
    """best gives the winner in a scope (table or JSON object) and null when none qualifies."""
    top = ok_json("best", "--kind", "model", "--metric", "acc", "--mode", "max", root=built.root)
    assert top["artifact_id"] == built.ids["r2e1"]
    r1 = ok_json("best", "--kind", "model", "--metric", "acc", "--mode", "max", "--run", "r1", root=built.root)
    assert r1["artifact_id"] == built.ids["r1e1"]
    r1_epoch0 = ok_json("best", "--kind", "model", "--metric", "acc", "--mode", "max", "--run", "r1",
                        "--label", "epoch=0", root=built.root)
    assert r1_epoch0["artifact_id"] == built.ids["r1e0"]
    assert ok_json("best", "--kind", "json", "--metric", "acc", "--mode", "max", root=built.root) is None
    res = run_cli("best", "--kind", "model", "--metric", "acc", "--mode", "min", "--project", "p", root=built.root)
    assert res.returncode == 0 and built.ids["r1e0"] in res.stdout and "acc=0.5" in res.stdout
    res = run_cli("best", "--kind", "json", "--metric", "acc", "--mode", "max", root=built.root)
    assert res.returncode == 0 and "no json artifact" in res.stdout


def test_show_fields_and_history(built):
    """show prints an artifact's fields and every event that touched it; ids may be prefixes."""
    aid = built.ids["r1e1"]
    doc = ok_json("show", aid, root=built.root)
    assert doc["artifact"]["artifact_id"] == aid and doc["artifact"]["pinned"] is True
    assert [(e["seq"], e["type"]) for e in doc["history"]] == [(built.seq["r1e1"], "artifact.recorded"),
                                                                (built.seq["pin"], "artifact.pin")]
    res = run_cli("show", aid[:8], root=built.root)
    assert res.returncode == 0, res.stderr
    assert f"id:            {aid}" in res.stdout
    assert "pinned:        yes" in res.stdout and "history:" in res.stdout
    assert " pin " in res.stdout.split("history:")[1]
    d = ok_json("show", built.ids["dir"], root=built.root)
    assert d["artifact"]["mime"] == "inode/directory" and d["artifact"]["bytes"] == 3002
    fails(run_cli("show", "0" * 32, root=built.root), 2, "no artifact with id")
    fails(run_cli("show", "--json", "zz", root=built.root), 2, "no artifact with id")


# ---------------------------------------------------------------- log / export
def test_log_all_and_filtered(built):
    """log lists events in order and filters by run, kind and seq or time range."""
    head = built.head[0]
    events = ok_json("log", root=built.root)
    assert [e["seq"] for e in events] == list(range(1, head + 1))
    assert events[-1]["hash"] == built.head[1]
    assert all(e["prev_hash"] == p["hash"] for p, e in zip(events, events[1:]))
    # The pin of an r1 artifact is an r1 event even though it was made from r2's facade.
    r1 = ok_json("log", "--run", "r1", root=built.root)
    assert [e["seq"] for e in r1] == [built.seq["r1e0"], built.seq["r1e1"], built.seq["pin"]]
    dirs = ok_json("log", "--kind", "directory", root=built.root)
    assert [e["event"]["artifact_id"] for e in dirs] == [built.ids["dir"]]
    assert [e["seq"] for e in ok_json("log", "--since", "2", "--until", "3", root=built.root)] == [2, 3]
    by_time = ok_json("log", "--since", built.times[3], "--until", built.times[4], root=built.root)
    assert [e["seq"] for e in by_time] == [4, 5]
    res = run_cli("log", root=built.root)
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "EVENT"] and len(lines) == head + 1
    assert lines[-1].split()[2] == "pin"


def test_export_json_lines(built, tmp_path):
    """export writes one JSON event per line, to stdout or --out, even without --json."""
    res = run_cli("export", root=built.root)
    assert res.returncode == 0 and res.stderr == ""
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, built.head[0] + 1))
    assert lines == ok_json("log", root=built.root)
    res = run_cli("export", "--json", "--since", "5", root=built.root)
    assert [json.loads(line)["seq"] for line in res.stdout.splitlines()] == list(range(5, built.head[0] + 1))
    out = tmp_path / "events.jsonl"
    res = run_cli("export", "--out", str(out), root=built.root)
    assert res.returncode == 0 and f"exported {built.head[0]} events" in res.stdout
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    doc = ok_json("export", "--out", str(out), root=built.root)
    assert doc == {"events": built.head[0], "out": str(out)}
    fails(run_cli("export", "--out", str(tmp_path / "no" / "such" / "dir.jsonl"), root=built.root), 2, "No such file")


# ---------------------------------------------------------------- time travel and diff
def test_as_of_seq_and_time(built):
    """as-of runs list/search/best/show on the catalogue as it was at a seq or time."""
    before_pin = built.seq["pin"] - 1
    arts = ok_json("as-of", "--seq", "3", "list", root=built.root)
    assert [a["seq"] for a in arts] == [3, 2, 1]
    best = ok_json("as-of", "--seq", "3", "best", "--kind", "model", "--metric", "acc", "--mode", "max",
                   root=built.root)
    assert best["artifact_id"] == built.ids["r1e1"]
    shown = ok_json("as-of", "--seq", str(before_pin), "show", built.ids["r1e1"], root=built.root)
    assert shown["artifact"]["pinned"] is False and len(shown["history"]) == 1
    at_time = ok_json("as-of", "--time", built.times[1], "search", "--kind", "model", root=built.root)
    assert [a["seq"] for a in at_time] == [2, 1]
    res = run_cli("as-of", "--seq", "2", "list", "--run", "r1", root=built.root)
    assert res.returncode == 0
    assert res.stdout.startswith("as of seq 2 (") and built.ids["r1e1"] in res.stdout
    fails(run_cli("as-of", "--seq", "2", "show", built.ids["dir"], root=built.root), 2, "recorded after seq 2")
    fails(run_cli("as-of", "--seq", "999", "list", root=built.root), 2, f"1..{built.head[0]}")
    fails(run_cli("as-of", "--time", "2000-01-01T00:00:00Z", "list", root=built.root), 2, "before the first event")
    fails(run_cli("as-of", "list", root=built.root), 2, "--seq")


def test_as_of_log_and_export_stop_at_the_view(built):
    """as-of also runs log and export: nothing after the view's seq, filters still apply."""
    events = ok_json("as-of", "--seq", "3", "log", root=built.root)
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert [e["seq"] for e in ok_json("as-of", "--seq", "3", "log", "--since", "2", root=built.root)] == [2, 3]
    res = run_cli("as-of", "--seq", "2", "export", root=built.root)
    assert res.returncode == 0, res.stderr
    assert [json.loads(line)["seq"] for line in res.stdout.splitlines()] == [1, 2]
    res = run_cli("as-of", "--seq", "2", "log", root=built.root)
    assert res.returncode == 0 and res.stdout.startswith("as of seq 2 (")


def test_diff(built):
    """diff A B reports the artifacts added, pins changed and best winners changed."""
    d = ok_json("diff", "2", "4", root=built.root)
    assert [a["artifact_id"] for a in d["added"]] == [built.ids["r2e0"], built.ids["r2e1"]]
    assert d["pins"] == []
    changed = {(c["scope"], c["mode"]): c for c in d["best"] if c["kind"] == "model"}
    assert changed[("all", "max")]["old"]["artifact_id"] == built.ids["r1e1"]
    assert changed[("all", "max")]["new"]["artifact_id"] == built.ids["r2e1"]
    pin = ok_json("diff", str(built.seq["pin"] - 1), root=built.root)
    assert pin["added"] == [] and pin["pins"] == [{"artifact_id": built.ids["r1e1"], "before": False, "after": True}]
    res = run_cli("diff", "2", "4", root=built.root)
    assert res.returncode == 0
    assert "diff seq 2 -> 4" in res.stdout and "added (2):" in res.stdout and "pins changed (0):" in res.stdout
    assert built.ids["r2e1"] in res.stdout
    by_time = ok_json("diff", built.times[1], built.times[3], root=built.root)
    assert (by_time["a"], by_time["b"]) == (2, 4)
    fails(run_cli("diff", "4", "2", root=built.root), 2, "a <= b")


# ---------------------------------------------------------------- verify / checkpoint / damage
def test_verify_ok_and_expected_head(built):
    """verify passes on an intact ledger and prints the head; --expect-head checks a recorded head."""
    doc = ok_json("verify", root=built.root)
    assert doc["ok"] is True and doc["problem"] is None
    assert (doc["head"]["seq"], doc["head"]["hash"]) == built.head
    assert doc["records"] == built.head[0] and doc["blobs"] >= 7
    res = run_cli("verify", root=built.root)
    assert res.returncode == 0 and res.stdout.startswith("ok: ")
    assert f"head: {built.head[0]}:{built.head[1]}" in res.stdout
    seq3 = ok_json("log", "--since", "3", "--until", "3", root=built.root)[0]["hash"]
    assert run_cli("verify", "--expect-head", f"3:{seq3}", root=built.root).returncode == 0
    wrong = ("0" if seq3[0] != "0" else "1") + seq3[1:]
    res = run_cli("verify", "--expect-head", f"3:{wrong}", root=built.root)
    assert res.returncode == 1 and "FAILED" in res.stdout and seq3 in res.stdout
    res = run_cli("verify", "--json", "--expect-head", f"{built.head[0] + 5}:{seq3}", root=built.root)
    assert res.returncode == 1
    assert json.loads(res.stdout)["ok"] is False
    fails(run_cli("verify", "--expect-head", "3-abc", root=built.root), 2, "SEQ:HASH")


def _blob_path(root: Path, sha: str) -> Path:
    return root / "blobs" / "sha256" / sha[:2] / sha


def test_verify_detects_flipped_blob_byte(built, copy):
    """A single flipped byte in a stored blob fails verify with exit 1, naming the blob."""
    sha = ok_json("show", built.ids["r2e1"], root=copy)["artifact"]["sha256"]
    path = _blob_path(copy, sha)
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    res = run_cli("verify", root=copy)
    assert res.returncode == 1
    assert "FAILED" in res.stdout and sha in res.stdout
    res = run_cli("verify", "--json", root=copy)
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and sha in doc["problem"]


def test_damaged_log_is_reported_in_one_line_with_exit_1(copy):
    """A flipped byte inside an early log record: exit 1 and one clear line, not a traceback."""
    shutil.rmtree(copy / "checkpoints")  # so that opening replays (and checks) the whole log
    seg = sorted((copy / "log").glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[len(data) // 3] ^= 0x40
    seg.write_bytes(bytes(data))
    fails(run_cli("list", root=copy), 1, "damaged")
    fails(run_cli("log", "--json", root=copy), 1, "damaged")


def test_checkpoint(built, copy):
    """checkpoint writes a checkpoint at the head and says at which seq."""
    assert ok_json("checkpoint", root=copy) == {"checkpoint_seq": built.head[0]}
    res = run_cli("checkpoint", root=copy)
    assert res.returncode == 0 and res.stdout.strip() == f"checkpoint written at seq {built.head[0]}"
    assert any(p.suffix == ".ckpt" for p in (copy / "checkpoints").iterdir())
    # Reading commands still agree with the ledger after the checkpoint.
    assert len(ok_json("list", root=copy)) == 6


# ---------------------------------------------------------------- progress bars
def _stderr_on_tty(*args: str, root: Path) -> tuple[int, str, str]:
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "artifact_ledger", "-C", str(root), *args], stdout=subprocess.PIPE,
                              stderr=slave, timeout=60, env=_env())
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO once the pty is drained and the slave side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    return proc.returncode, proc.stdout.decode(), b"".join(chunks).decode(errors="replace")


def test_progress_bars_only_on_a_terminal(built):
    """verify and export draw a progress bar on a terminal stderr, and nothing when it is not one."""
    code, out, err = _stderr_on_tty("verify", root=built.root)
    assert code == 0 and out.startswith("ok: ")
    assert "verify [" in err and "100.0%" in err
    code, out, err = _stderr_on_tty("export", root=built.root)
    assert code == 0 and len(out.splitlines()) == built.head[0]
    assert "export [" in err and "events" in err
    assert run_cli("verify", root=built.root).stderr == ""
    assert run_cli("export", root=built.root).stderr == ""
