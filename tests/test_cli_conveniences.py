"""The CLI's conveniences (issue 7), run as a subprocess: runs, export-files, row limits, short labels, URIs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import pytest

from artifact_ledger import open_ledger
from test_cli import fails, ok_json, run_cli

N = 60  # more rows than a table shows by default (50)
LONG = "a-very-long-label-value-" * 5


async def _build(root: Path, scratch: Path) -> dict:
    made: dict = {"ids": []}
    async with open_ledger(root, fsync=False) as led:
        for i in range(N):
            arts = led.artifacts(run_id=f"r{i:02d}", graph_id="g", node_id="n", project_id="even" if i % 2 else "odd")
            src = scratch / f"f{i}.txt"
            src.write_text(f"file {i}")
            a = await arts.save(str(src), kind="text", labels={"i": i})
            made["ids"].append(a.artifact_id)
        r1 = led.artifacts(run_id="r01", graph_id="g", node_id="n")
        src = scratch / "model.bin"
        src.write_bytes(b"weights")
        made["long"] = await r1.save(str(src), kind="model", labels={"note": LONG, "short": "x"},
                                     metrics={"acc": 0.9})
        src.write_bytes(b"other weights")
        made["other"] = await r1.save(str(src), kind="model", metrics={"acc": 0.5})
        d = Path(await r1.stage_dir())
        (d / "sub").mkdir()
        (d / "sub" / "w.txt").write_text("in tree")
        made["dir"] = await r1.ingest_dir(str(d), suggested_uri="outputs/tree")
        made["file_uri"] = f"{led.store.uri(made['long'].sha256)}#{made['long'].artifact_id}"
        made["head"] = led.head[0]
    return made


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli_conv")
    scratch = base / "src"
    scratch.mkdir()
    made = anyio.run(_build, base / "ledger", scratch)
    made["root"] = base / "ledger"
    return made


def _rows(stdout: str) -> list[str]:
    """Table body lines (no header, no trailing note)."""
    return [line for line in stdout.splitlines()[1:] if not line.startswith("...")]


def test_tables_show_50_rows_and_say_how_many_were_left_out(big):
    """list/search/log/runs tables stop at 50 rows with a line naming the rest; --limit/--all change it."""
    root = big["root"]
    total_arts = N + 3
    res = run_cli("list", root=root)
    assert res.returncode == 0, res.stderr
    assert len(_rows(res.stdout)) == 50
    assert res.stdout.splitlines()[-1] == f"... {total_arts - 50} more artifacts not shown (of {total_arts}; " \
                                          "--limit N or --all to show more)"
    res = run_cli("list", "--limit", "5", root=root)
    assert len(_rows(res.stdout)) == 5 and f"{total_arts - 5} more artifacts" in res.stdout
    res = run_cli("list", "--all", root=root)
    assert len(_rows(res.stdout)) == total_arts and "not shown" not in res.stdout
    assert len(ok_json("list", root=root)) == total_arts  # --json is never cut by default
    assert len(ok_json("list", "--limit", "7", root=root)) == 7
    res = run_cli("search", "--kind", "text", "--metric", "acc", "--mode", "max", root=root)
    assert res.stdout.strip() == "no artifacts match"
    res = run_cli("search", "--kind", "model", "--metric", "acc", "--mode", "max", "--limit", "1", root=root)
    assert len(_rows(res.stdout)) == 1 and "1 more artifacts not shown (of 2" in res.stdout
    res = run_cli("log", root=root)
    assert len(_rows(res.stdout)) == 50 and f"{big['head'] - 50} more events not shown" in res.stdout
    assert len(_rows(run_cli("log", "--all", root=root).stdout)) == big["head"]
    assert [e["seq"] for e in ok_json("log", "--limit", "3", root=root)] == [1, 2, 3]
    assert len(ok_json("log", root=root)) == big["head"]
    res = run_cli("runs", root=root)
    assert len(_rows(res.stdout)) == 50 and f"{N - 50} more runs not shown (of {N}" in res.stdout
    assert len(_rows(run_cli("runs", "--all", root=root).stdout)) == N


def test_long_labels_are_shortened_in_tables_only(big):
    """A long label value is cut with '...' in the table; --json and show keep it whole."""
    root = big["root"]
    aid = big["long"].artifact_id
    res = run_cli("search", "--kind", "model", root=root)
    assert res.returncode == 0, res.stderr
    line = next(line for line in res.stdout.splitlines() if aid in line)
    assert LONG not in line and "note=a-very-long-label-val... short=x" in line
    labels = line.split("  ")[-1]
    assert len(labels) <= 60
    assert ok_json("search", "--kind", "model", root=root)[-1]["labels"]["note"] == LONG
    assert LONG in run_cli("show", aid, root=root).stdout


def test_runs_table_json_project_and_as_of(big):
    """runs lists run ids with artifact counts and first/last times; --project filters; as-of cuts."""
    root = big["root"]
    runs = ok_json("runs", root=root)
    assert len(runs) == N
    assert runs[0]["run_id"] == "r01" and runs[0]["artifacts"] == 4  # most recently active first
    by_id = {r["run_id"]: r for r in runs}
    assert by_id["r00"]["artifacts"] == 1 and by_id["r00"]["first_at"] == by_id["r00"]["last_at"]
    assert by_id["r01"]["first_at"] < by_id["r01"]["last_at"]
    odd = ok_json("runs", "--project", "odd", root=root)
    assert sorted(r["run_id"] for r in odd) == [f"r{i:02d}" for i in range(0, N, 2)]
    assert ok_json("runs", "--project", "none", root=root) == []
    assert run_cli("runs", "--project", "none", root=root).stdout.strip() == "no runs in project none"
    past = ok_json("as-of", "--seq", "3", "runs", root=root)
    assert [r["run_id"] for r in past] == ["r02", "r01", "r00"]
    res = run_cli("runs", "--limit", "2", root=root)
    assert res.returncode == 0
    header, first = res.stdout.splitlines()[:2]
    assert header.split() == ["RUN", "ARTIFACTS", "FIRST", "LAST"] and first.split()[:2] == ["r01", "4"]


def test_show_accepts_artifact_uris(big):
    """show takes artifact://<id> (and the older file form) as well as ids and prefixes."""
    root = big["root"]
    aid = big["long"].artifact_id
    for given in (big["long"].uri, f"artifact://{aid[:8]}", big["file_uri"]):
        doc = ok_json("show", given, root=root)
        assert doc["artifact"]["artifact_id"] == aid and doc["artifact"]["uri"] == f"artifact://{aid}"
    fails(run_cli("show", "artifact://" + "0" * 32, root=root), 2, "no artifact with id")


def test_export_files_of_a_run(big, tmp_path):
    """export-files --run r1 DIR writes one file per artifact, trees as directories, and a manifest."""
    root = big["root"]
    out = tmp_path / "out"
    res = run_cli("export-files", "--run", "r01", str(out), root=root)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"exported 4 artifacts to {out} (manifest: {out / 'manifest.jsonl'})"
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [x["artifact_id"] for x in lines] == [a["artifact_id"] for a in ok_json("list", "--run", "r01", root=root)]
    paths = {x["artifact_id"]: x["path"] for x in lines}
    assert paths[big["long"].artifact_id] == "model.bin"
    assert paths[big["other"].artifact_id] == f"model-{big['other'].artifact_id[:12]}.bin"
    assert (out / "model.bin").read_bytes() == b"weights"
    assert (out / paths[big["other"].artifact_id]).read_bytes() == b"other weights"
    assert (out / "tree" / "sub" / "w.txt").read_text() == "in tree"
    assert (out / "f1.txt").read_text() == "file 1"
    assert sorted(os.listdir(out)) == sorted([*paths.values(), "manifest.jsonl"])
    # Again: refused, nothing changed; --overwrite replaces.
    (out / "model.bin").write_bytes(b"edited")
    fails(run_cli("export-files", "--run", "r01", str(out), root=root), 2, "already exist", "--overwrite")
    assert (out / "model.bin").read_bytes() == b"edited"
    doc = ok_json("export-files", "--run", "r01", "--overwrite", str(out), root=root)
    assert doc["artifacts"] == 4 and doc["manifest"] == str(out / "manifest.jsonl")
    assert (out / "model.bin").read_bytes() == b"weights"
    assert set(doc["files"]) == set(paths)


def test_export_files_takes_the_query_options(big, tmp_path):
    """export-files filters like list/search (--kind, --label, --metric/--mode, --limit, --project) and runs
    under as-of."""
    root = big["root"]
    doc = ok_json("export-files", "--kind", "model", "--metric", "acc", "--mode", "max", "--limit", "1",
                  str(tmp_path / "best"), root=root)
    assert list(doc["files"]) == [big["long"].artifact_id]
    doc = ok_json("export-files", "--label", "i=3", str(tmp_path / "three"), root=root)
    assert [Path(p).name for p in doc["files"].values()] == ["f3.txt"]
    doc = ok_json("export-files", "--project", "even", str(tmp_path / "even"), root=root)
    assert doc["artifacts"] == N // 2
    doc = ok_json("as-of", "--seq", "2", "export-files", str(tmp_path / "past"), root=root)
    assert doc["artifacts"] == 2 and sorted(os.listdir(tmp_path / "past")) == ["f0.txt", "f1.txt", "manifest.jsonl"]
    fails(run_cli("export-files", "--metric", "acc", str(tmp_path / "x"), root=root), 2, "mode")
    assert not (tmp_path / "x").exists()
    (tmp_path / "afile").write_text("")
    fails(run_cli("export-files", "--run", "r01", str(tmp_path / "afile"), root=root), 2, "not a directory")
