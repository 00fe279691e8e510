"""Everyday conveniences (issue 7): stable URIs, get(), runs(), export_files(), local_path(), count()."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from artifact_ledger import ReadOnlyError, open_ledger
from artifact_ledger.facade.exporting import MANIFEST_NAME, safe_component

IDS = {"run_id": "r1", "graph_id": "g", "node_id": "n", "project_id": "p"}


def run(body, *args):
    """Run an async test body."""
    return anyio.run(body, *args)


def write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


async def _fill(led, tmp: Path) -> dict:
    """Artifacts in two runs (one over the same bytes twice), a directory and a pin."""
    a = led.artifacts(**IDS)
    b = led.artifacts(run_id="r2", graph_id="g2", node_id="n2")
    made = {}
    made["x"] = await a.save(write(tmp / "src" / "x.txt", b"x text"), kind="text", labels={"k": "v"})
    made["x2"] = await a.save(write(tmp / "src" / "x.txt", b"x text"), kind="text")
    made["j"] = await b.save(write(tmp / "src" / "m.json", b'{"a": 1}'), kind="json", metrics={"acc": 0.5})
    d = Path(await a.stage_dir())
    write(d / "sub" / "f.bin", b"in the tree")
    (d / "empty").mkdir()
    made["d"] = await a.ingest_dir(str(d), suggested_uri="reports/tree/")
    await a.pin(made["x"].id)
    return made


# ---------------------------------------------------------------- URIs that survive a move
def test_uri_is_stable_and_resolves_after_the_ledger_is_moved(tmp_path):
    """art.uri is artifact://<id>; after moving the ledger every earlier art.uri (and the file form) resolves."""
    old_root = tmp_path / "old" / "ledger"

    async def before():
        async with open_ledger(old_root) as led:
            made = await _fill(led, tmp_path)
            file_forms = {k: f"{led.store.uri(a.sha256)}#{a.id}" for k, a in made.items()}
            return made, file_forms

    made, file_forms = run(before)
    for a in made.values():
        assert a.uri == f"artifact://{a.artifact_id}"
        assert str(old_root) not in a.uri
    new_root = tmp_path / "elsewhere" / "copy"
    shutil.copytree(old_root, new_root)
    shutil.rmtree(tmp_path / "old")  # a move: nothing may be read from the old place

    async def after():
        async with open_ledger(new_root, create=False) as led:
            arts = led.artifacts(**IDS)
            for key, a in made.items():
                for uri in (a.uri, file_forms[key]):
                    if key == "d":
                        tree = await arts.load_artifact(uri)
                        assert (tree / "sub" / "f.bin").read_bytes() == b"in the tree"
                        assert tree.is_relative_to(new_root)
                    else:
                        assert await arts.load_artifact_bytes(uri) == (await arts.local_path(a.uri)).read_bytes()
            assert await arts.load_artifact(made["j"].uri) == {"a": 1}
            # The file form names its occurrence by the fragment, wherever the ledger now lives ...
            assert (await arts.get(made["x2"].id)).labels == {}
            assert await arts.load_artifact(file_forms["x2"]) == "x text"
            # ... but a fragment naming an artifact over other bytes still resolves to nothing.
            wrong = file_forms["x"].split("#")[0] + "#" + made["j"].id
            with pytest.raises(FileNotFoundError):
                await arts.load_artifact(wrong)

    run(after)


# ---------------------------------------------------------------- get
def test_get_from_any_facade_whatever_its_scope(tmp_path):
    """get(id) finds an artifact of another run and node; unknown ids raise KeyError naming them."""

    async def body():
        async with open_ledger(tmp_path / "L") as led:
            made = await _fill(led, tmp_path)
            stranger = led.artifacts(run_id="other", graph_id="o", node_id="o")
            assert await stranger.list() == []
            got = await stranger.get(made["j"].id)
            assert got == (await led.artifacts(run_id="r2", graph_id="g2", node_id="n2").list())[0]
            assert (await stranger.get(made["x"].id)).pinned is True
            for unknown in ("0" * 32, "", made["x"].uri, made["x"].id.upper()):
                with pytest.raises(KeyError) as info:
                    await stranger.get(unknown)
                assert repr(unknown) in str(info.value)
            with pytest.raises(TypeError):
                await stranger.get(None)

    run(body)


def test_get_on_a_past_view_answers_as_of_its_seq(tmp_path):
    """A view's get() shows the artifact as it was (pin state) and refuses ids recorded after its seq."""

    async def body():
        async with open_ledger(tmp_path / "L") as led:
            made = await _fill(led, tmp_path)
            view = await led.as_of(seq=made["d"].seq)  # before the pin
            past = view.artifacts(run_id="z", graph_id="z", node_id="z")
            assert (await past.get(made["x"].id)).pinned is False
            early = (await led.as_of(seq=1)).artifacts(run_id="z", graph_id="z", node_id="z")
            assert (await early.get(made["x"].id)).seq == 1
            with pytest.raises(KeyError) as info:
                await early.get(made["j"].id)
            assert repr(made["j"].id) in str(info.value) and "after this view's seq 1" in str(info.value)

    run(body)


# ---------------------------------------------------------------- runs
def test_runs_counts_and_times_live_and_as_of(tmp_path):
    """runs() gives each run's artifact count and first/last recording times, live and on as_of views."""

    async def body():
        async with open_ledger(tmp_path / "L") as led:
            assert await led.runs() == []
            made = await _fill(led, tmp_path)
            runs = await led.runs()
            assert [(r.run_id, r.artifacts) for r in runs] == [("r1", 3), ("r2", 1)]  # most recently active first
            r1 = runs[0]
            assert (r1.first_at, r1.last_at) == (made["x"].created_at, made["d"].created_at)
            assert (runs[1].first_at, runs[1].last_at) == (made["j"].created_at,) * 2
            assert [(r.run_id, r.artifacts) for r in await led.runs(project_id="p")] == [("r1", 3)]
            assert await led.runs(project_id="nope") == []
            view = await led.as_of(seq=made["x2"].seq)
            assert [(r.run_id, r.artifacts, r.last_at) for r in await view.runs()] == [
                ("r1", 2, made["x2"].created_at)]
            assert [r.artifacts for r in await view.runs(project_id="p")] == [2]
            with pytest.raises(TypeError):
                await led.runs(project_id="")

    run(body)


# ---------------------------------------------------------------- count
def test_count_matches_search_without_a_limit(tmp_path):
    """count() is len(search()) for the same arguments, metric included, and cut at a view's seq."""

    async def body():
        async with open_ledger(tmp_path / "L") as led:
            made = await _fill(led, tmp_path)
            a = led.artifacts(**IDS)
            for kw in ({}, {"kind": "text"}, {"scope": "all"}, {"scope": "all", "metric": "acc"},
                       {"labels": {"k": "v"}}, {"kind": "nope"}, {"scope": "all", "metric": "nope"}):
                mode = {"mode": "max"} if "metric" in kw else {}
                assert await a.count(**kw) == len(await a.search(**kw, **mode)), kw
            past = (await led.as_of(seq=made["x2"].seq)).artifacts(**IDS)
            assert await past.count(scope="all") == 2

    run(body)


# ---------------------------------------------------------------- local_path
def test_local_path_is_the_read_only_blob_or_tree(tmp_path):
    """local_path() gives the blob file itself (read-only) or the materialised tree, for any URI form."""

    async def body():
        async with open_ledger(tmp_path / "L") as led:
            made = await _fill(led, tmp_path)
            a = led.artifacts(**IDS)
            p = await a.local_path(made["x"].uri)
            assert p == led.store.path(made["x"].sha256) and p.read_bytes() == b"x text"
            assert not os.access(p, os.W_OK) or os.geteuid() == 0
            assert os.stat(p).st_mode & 0o222 == 0
            assert await a.local_path(f"{led.store.uri(made['x'].sha256)}#{made['x'].id}") == p
            tree = await a.local_path(made["d"].uri)
            assert tree == await a.load_artifact(made["d"].uri)
            assert (tree / "sub" / "f.bin").read_bytes() == b"in the tree" and (tree / "empty").is_dir()
            with pytest.raises(FileNotFoundError):
                await a.local_path("artifact://" + "0" * 32)
            os.chmod(p, 0o644)
            p.unlink()
            with pytest.raises(FileNotFoundError, match=made["x"].sha256):
                await a.local_path(made["x"].uri)

    run(body)


MEMORY_PROBE = textwrap.dedent("""
    import anyio, sys
    from artifact_ledger import open_ledger

    def kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    async def main(root, src):
        async with open_ledger(root) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            art = await arts.save(src, kind="model")
            h0 = kib("VmHWM")
            path = await arts.local_path(art.uri)
            with open(path, "rb") as f:          # read through the path in small pieces
                while f.read(1 << 16):
                    pass
            h1 = kib("VmHWM")
            data = await arts.load_artifact_bytes(art.uri)
            h2 = kib("VmHWM")
            assert len(data) == art.bytes
            print(h0, h1, h2)

    anyio.run(main, sys.argv[1], sys.argv[2])
""")


def test_local_path_does_not_read_a_big_artifact_into_memory(tmp_path):
    """Peak RSS grows by well under the size of a 48 MiB artifact with local_path, and by about it with
    load_artifact_bytes (which shows the measurement sees such growth)."""
    size = 48 << 20
    src = tmp_path / "model.bin"
    with open(src, "wb") as f:
        block = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB, not all zeros
        for _ in range(size // len(block)):
            f.write(block)
    res = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "L"), str(src)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    h0, h1, h2 = (int(x) for x in res.stdout.split())
    mib = 1024
    assert h1 - h0 < 8 * mib, (h0, h1)
    assert h2 - h1 > 40 * mib, (h1, h2)


# ---------------------------------------------------------------- export_files
def _manifest(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / MANIFEST_NAME).read_text().splitlines()]


def test_export_files_of_a_run(tmp_path):
    """One file per artifact with readable, collision-free names; directories as trees; a manifest."""

    async def body():
        async with open_ledger(tmp_path / "L") as led:
            made = await _fill(led, tmp_path)
            out = tmp_path / "out" / "r1"
            paths = await led.export_files(out, run_id="r1")
            assert set(paths) == {made[k].id for k in ("x", "x2", "d")}
            # The oldest keeps the plain name; the second x.txt gets its id prefix.
            assert paths[made["x"].id] == out / "x.txt"
            assert paths[made["x2"].id] == out / f"x-{made['x2'].id[:12]}.txt"
            assert paths[made["d"].id] == out / "tree"
            assert (out / "x.txt").read_bytes() == b"x text"
            assert (out / "tree" / "sub" / "f.bin").read_bytes() == b"in the tree" and (out / "tree" / "empty").is_dir()
            # Copies are the user's: writable, and changing one leaves the blob alone.
            (out / "x.txt").write_bytes(b"changed")
            assert await led.artifacts(**IDS).load_artifact_bytes(made["x"].uri) == b"x text"
            lines = _manifest(out)
            assert [line["artifact_id"] for line in lines] == [a.id for a in await led.artifacts(**IDS).list()]
            for line in lines:
                art = made[next(k for k, a in made.items() if a.id == line["artifact_id"])]
                assert line == {**json.loads((await led.artifacts(**IDS).get(art.id)).model_dump_json()),
                                "path": paths[art.id].name}
            assert sorted(os.listdir(out)) == sorted(["x.txt", paths[made["x2"].id].name, "tree", MANIFEST_NAME])

            # Query options narrow it; the facade exports its scope.
            only = await led.export_files(tmp_path / "json", kind="json", metric="acc", mode="max")
            assert list(only) == [made["j"].id] and only[made["j"].id].name == "m.json"
            scoped = await led.artifacts(**IDS).export_files(tmp_path / "scoped", kind="text", limit=1)
            assert list(scoped) == [made["x2"].id]
            # A past view exports what it shows.
            view = await led.as_of(seq=1)
            assert list(await view.export_files(tmp_path / "past")) == [made["x"].id]

    run(body)


def test_export_files_refuses_to_overwrite_unless_asked(tmp_path):
    """An existing target (file, symlink or manifest) is refused before anything is written; overwrite replaces."""

    async def body():
        async with open_ledger(tmp_path / "L") as led:
            made = await _fill(led, tmp_path)
            out = tmp_path / "out"
            out.mkdir()
            (out / "x.txt").write_bytes(b"mine")
            outside = tmp_path / "outside.txt"
            outside.write_bytes(b"do not touch")
            (out / "tree").symlink_to(outside)
            with pytest.raises(FileExistsError) as info:
                await led.export_files(out, run_id="r1")
            assert "'x.txt'" in str(info.value) and "'tree'" in str(info.value) and "overwrite" in str(info.value)
            assert sorted(os.listdir(out)) == ["tree", "x.txt"] and (out / "x.txt").read_bytes() == b"mine"
            await led.export_files(out, run_id="r1", overwrite=True)
            assert (out / "x.txt").read_bytes() == b"x text"
            # The symlink was replaced by the tree, never followed out of the directory.
            assert not (out / "tree").is_symlink() and (out / "tree" / "sub" / "f.bin").is_file()
            assert outside.read_bytes() == b"do not touch"
            with pytest.raises(FileExistsError, match=MANIFEST_NAME):
                await led.export_files(out, run_id="r2")
            with pytest.raises(NotADirectoryError):
                await led.export_files(outside, run_id="r1")
            with pytest.raises(TypeError):
                await led.export_files(out, run_id="r1", overwrite="yes")
            with pytest.raises(ValueError, match="mode"):
                await led.export_files(tmp_path / "never", metric="acc")
            assert not (tmp_path / "never").exists()
            assert made

    run(body)


@pytest.mark.parametrize("hint, expected", [
    ("../../etc/passwd", "passwd"), ("a/b/..", None), ("..", None), (".hidden", "hidden"), ("a\\..\\b.txt", "b.txt"),
    ("we\x00ird\nname?.txt", "we_ird_name_.txt"), ("C:evil", "C_evil"), ("/", None), (" . ", None),
    ("x" * 300 + ".png", "x" * 196 + ".png"), ("é" * 150, "é" * 100),
])
def test_safe_component(hint, expected):
    """Names from user data become one harmless path component (or nothing)."""
    assert safe_component(hint) == expected


def test_export_names_from_user_data_never_escape(tmp_path):
    """Names taken from original file names and suggested URIs stay inside DIR, sanitised and distinct."""

    async def body():
        async with open_ledger(tmp_path / "L") as led:
            a = led.artifacts(**IDS)
            made = []
            for i, name in enumerate(["..x", "MANIFEST.JSONL", "manifest.jsonl", "A.txt", "a.TXT", "a-b.c"]):
                made.append(await a.save(write(tmp_path / "src" / str(i) / name, f"{i}".encode()), kind="k"))
            async with a.writer(kind="k", planned_ext=".json", suggested_uri="deep/up.json") as w:
                w.write(b"{}")
            made.append(a.last_artifact)
            async with a.writer(kind="k", planned_ext=".json") as w:
                w.write(b"[]")
            made.append(a.last_artifact)
            out = tmp_path / "out"
            paths = await a.export_files(out)
            names = [paths[m.id].name for m in made]
            assert len({n.casefold() for n in names}) == len(names)
            assert all(paths[m.id].parent == out for m in made)
            assert names[0] == "x" and names[3] == "A.txt" and names[6] == "up.json"
            assert names[1] != "MANIFEST.JSONL" and names[2] != MANIFEST_NAME and names[4] != "a.TXT"
            assert names[7] == f"{made[7].id}.json"
            assert sorted(os.listdir(out)) == sorted(names + [MANIFEST_NAME])
            assert not (tmp_path / "up.json").exists()

    run(body)


def test_export_files_on_a_read_only_view_writes_nothing_to_the_ledger(tmp_path):
    """Exporting reads only: the log head does not move, and views stay read-only."""

    async def body():
        async with open_ledger(tmp_path / "L") as led:
            await _fill(led, tmp_path)
            head = led.head
            await led.export_files(tmp_path / "out")
            assert led.head == head
            view = await led.as_of(seq=2)
            with pytest.raises(ReadOnlyError):
                await view.artifacts(**IDS).save(write(tmp_path / "y", b"y"), kind="k")

    run(body)


def test_the_conveniences_without_await(tmp_path):
    """artifact_ledger.sync offers get, count, local_path, runs and export_files with the async answers."""
    from artifact_ledger.sync import open_ledger as open_sync

    with open_sync(tmp_path / "L") as led:
        arts = led.artifacts(**IDS)
        a = arts.save(write(tmp_path / "a.txt", b"aaa"), kind="text")
        other = led.artifacts(run_id="o", graph_id="o", node_id="o")
        assert other.get(a.id) == a and arts.count() == 1
        assert arts.local_path(a.uri).read_bytes() == b"aaa"
        assert [(r.run_id, r.artifacts) for r in led.runs()] == [("r1", 1)]
        assert [r.run_id for r in led.as_of(seq=1).runs()] == ["r1"]
        assert led.export_files(tmp_path / "out", run_id="r1") == {a.id: tmp_path / "out" / "a.txt"}
        assert list(led.as_of(seq=1).export_files(tmp_path / "past")) == [a.id]
        assert list(arts.export_files(tmp_path / "facade")) == [a.id]


def test_a_failed_export_leaves_nothing_it_created(tmp_path):
    """A blob missing half-way: FileNotFoundError naming it, and no new file or temp file is left in DIR."""

    async def body():
        async with open_ledger(tmp_path / "L") as led:
            made = await _fill(led, tmp_path)
            blob = led.store.path(made["j"].sha256)
            os.chmod(blob, 0o644)
            blob.unlink()
            out = tmp_path / "out"
            out.mkdir()
            (out / "keep.txt").write_text("mine")
            with pytest.raises(FileNotFoundError, match=made["j"].sha256):
                await led.export_files(out)  # j is the newest but one: some files were already copied
            assert os.listdir(out) == ["keep.txt"]

    run(body)


def test_a_directory_manifest_with_an_escaping_path_is_refused(tmp_path):
    """Defence in depth: a directory manifest naming ../ paths is never written outside DIR."""
    from artifact_ledger.facade import content

    async def body():
        async with open_ledger(tmp_path / "L") as led:
            a = led.artifacts(**IDS)
            inner = led.store.put_bytes(b"evil")
            for bad in ("../escaped.txt", "a/../../escaped.txt", "/abs.txt"):
                entries = [{"path": bad, "sha256": inner.sha256, "bytes": 4}]
                manifest = led.store.put_bytes(content.encode_manifest(entries, []))
                meta = a._meta("directory", None, None, None, False)
                await a._record(origin="ingest_dir", sha256=manifest.sha256, size=4, mime=content.DIR_MIME,
                                name="tree", meta=meta)
                out = tmp_path / "out"
                with pytest.raises(ValueError, match="unsafe path"):
                    await a.export_files(out)
                assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "abs.txt").exists()
                assert not any(p.name in ("escaped.txt", "abs.txt") for p in tmp_path.rglob("*"))
                assert os.listdir(out) == []

    run(body)
