"""One or more tests per rule of "Semantics to get right" (issue 2), bad inputs included."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from artifact_ledger.facade import Artifact, ArtifactFacade
from backends import blob_at_address, blob_names, blob_tmp_names, on_s3, open_ledger


# The conformance suite: every test here runs once per log backend (tests/backends.py).
pytestmark = pytest.mark.usefixtures("backend")


R1 = {"run_id": "r1", "graph_id": "g1", "node_id": "n1", "project_id": "p1"}


# ---------------------------------------------------------------- helpers
def staging_names(root: Path) -> list[str]:
    """Entries left in the ledger's staging area."""
    return sorted(os.listdir(Path(root) / "staging"))


def snapshot(ledger) -> tuple:
    """What a refused call must leave untouched: log head, artifacts, blobs, staging, store temp files."""
    root = ledger.root
    return (
        ledger.head,
        len(ledger.catalog.rows),
        dict(ledger.catalog.pinned),
        blob_names(root),
        staging_names(root),
        blob_tmp_names(root),
    )


def write_file(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def ids(arts) -> list[str]:
    return [a.artifact_id for a in arts]


def facade(ledger, **over) -> ArtifactFacade:
    return ledger.context(**{**R1, **over}).artifacts()


def run_with_ledger(root, body, **open_kw):
    """Open a ledger at ``root``, run ``body(ledger)`` and close it."""

    async def main():
        async with open_ledger(root, **open_kw) as ledger:
            return await body(ledger)

    return anyio.run(main)


# ---------------------------------------------------------------- rule 1: every write is a new artifact
def test_rule1_resave_identical_bytes_makes_new_artifacts_over_one_blob(root, tmp_path):
    """Rule 1: identical bytes saved twice -> two ids, one sha256, one blob; the first keeps its metadata."""
    data = b"identical payload"
    src = write_file(tmp_path / "same.bin", data)

    async def body(ledger):
        a1 = facade(ledger)
        a2 = facade(ledger, run_id="r2", graph_id="g2", node_id="n2", project_id="p2")
        first = await a1.save(src, kind="blob", labels={"who": "first"}, metrics={"m": 1.0}, pin=True,
                              suggested_uri="first/x.bin")
        blobs_after_first = blob_names(ledger.root)
        second = await a2.save(src, kind="other", labels={"who": "second"}, metrics={"m": 2.0}, pin=False,
                               suggested_uri="second/x.bin")
        assert second.artifact_id != first.artifact_id
        assert second.sha256 == first.sha256 == hashlib.sha256(data).hexdigest()
        assert blob_names(ledger.root) == blobs_after_first == [first.sha256]
        assert second.seq > first.seq

        [again] = await a1.search(scope="all", labels={"who": "first"})
        assert again == first
        assert again.kind == "blob" and again.metrics == {"m": 1.0} and again.pinned is True
        assert (again.run_id, again.graph_id, again.node_id, again.project_id) == ("r1", "g1", "n1", "p1")
        assert again.suggested_uri == "first/x.bin"
        assert ids(await a1.list()) == [first.artifact_id]
        assert ids(await a2.list()) == [second.artifact_id]
        # Pinning/unpinning one must not touch the other sharing its bytes.
        await a2.pin(second.artifact_id, True)
        await a1.pin(first.artifact_id, False)
        assert [a.pinned for a in await a1.list(scope="all")] == [True, False]

    run_with_ledger(root, body)


def test_rule1_every_write_path_records_a_new_artifact(root, tmp_path):
    """Rule 1: save, ingest, writer and ingest_dir of the same bytes each record their own artifact."""
    data = b"same bytes everywhere\n"
    src = write_file(tmp_path / "f.bin", data)

    async def body(ledger):
        arts = facade(ledger)
        made = [await arts.save(src, kind="k")]
        staged = await arts.stage(".bin")
        Path(staged).write_bytes(data)
        made.append(await arts.ingest(staged, kind="k"))
        async with arts.writer(kind="k", planned_ext=".bin") as w:
            w.write(data)
        made.append(arts.last_artifact)
        for _ in range(2):
            d = await arts.stage_dir()
            write_file(Path(d) / "f.bin", data)
            made.append(await arts.ingest_dir(d, kind="k"))
        assert len(set(ids(made))) == 5
        assert len({a.sha256 for a in made[:3]}) == 1
        # Two identical trees share one manifest blob.
        assert made[3].sha256 == made[4].sha256 != made[0].sha256
        assert blob_names(ledger.root) == sorted({made[0].sha256, made[3].sha256})
        assert ids(await arts.list()) == ids(reversed(made))

    run_with_ledger(root, body)


# ---------------------------------------------------------------- rule 2: save copies, ingest takes ownership
def test_rule2_save_leaves_callers_file_and_sets_last_artifact(root, tmp_path):
    """Rule 2: save() copies the file, leaves it byte-identical in place, and sets last_artifact."""
    src = tmp_path / "keep.txt"
    src.write_bytes(b"caller owns this")
    before = os.stat(src)

    async def body(ledger):
        arts = facade(ledger)
        assert arts.last_artifact is None
        art = await arts.save(str(src), kind="text")
        assert arts.last_artifact == art
        assert src.read_bytes() == b"caller owns this"
        assert os.stat(src).st_ino == before.st_ino
        # The store has its own copy: changing the caller's file does not change the artifact.
        src.write_bytes(b"changed later")
        assert await arts.load_artifact_bytes(art.uri) == b"caller owns this"
        art2 = await arts.save(Path(src), kind="text")
        assert arts.last_artifact == art2 != art

    run_with_ledger(root, body)


def test_rule2_ingest_takes_staged_file_and_leaves_staging_empty(root):
    """Rule 2: ingest() moves the staged file into the store, nothing stays in staging, last_artifact set."""

    async def body(ledger):
        arts = facade(ledger)
        staged = await arts.stage(".txt")
        Path(staged).write_text("staged text")
        art = await arts.ingest(staged_path=staged, kind="text")
        assert arts.last_artifact == art
        assert not Path(staged).exists()
        assert staging_names(ledger.root) == []
        assert blob_tmp_names(ledger.root) == []
        assert await arts.load_artifact(art.uri) == "staged text"
        # Ingesting bytes already in the store still consumes the staged file.
        staged2 = await arts.tmp_path(".txt")
        Path(staged2).write_text("staged text")
        art2 = await arts.ingest(staged2, kind="text")
        assert art2.sha256 == art.sha256 and art2.artifact_id != art.artifact_id
        assert staging_names(ledger.root) == []

    run_with_ledger(root, body)


def test_rule2_ingest_of_hard_linked_staged_files_copies(root, tmp_path):
    """Rule 2: a staged file hard-linked from elsewhere is copied, so that other name can never alter the blob."""
    mine = tmp_path / "mine.txt"
    mine.write_bytes(b"original")
    nested = tmp_path / "nested.txt"
    nested.write_bytes(b"nested original")

    async def body(ledger):
        arts = facade(ledger)
        staged = await arts.stage(".txt")
        os.unlink(staged)
        os.link(mine, staged)
        art = await arts.ingest(staged, kind="text")
        d = await arts.stage_dir()
        os.link(nested, Path(d) / "n.txt")
        dir_art = await arts.ingest_dir(d)
        assert staging_names(ledger.root) == []
        for p in (mine, nested):
            assert p.stat().st_nlink == 1
            assert p.stat().st_mode & stat.S_IWUSR  # the caller's file was not made read-only
        mine.write_bytes(b"tampered")
        nested.write_bytes(b"tampered too")
        assert await arts.load_artifact_bytes(art.uri) == b"original"
        loaded = await arts.load_artifact(dir_art.uri)
        assert (loaded / "n.txt").read_bytes() == b"nested original"
        assert all(ledger.store.verify(sha) for sha in blob_names(ledger.root))

    run_with_ledger(root, body)


def test_rule2_bad_paths_are_refused_without_recording(root, tmp_path):
    """Rule 2: save of a missing path or directory, ingest of a path not from stage(), are refused."""
    outside = write_file(tmp_path / "outside.txt", b"not staged")

    async def body(ledger):
        arts = facade(ledger)
        before = snapshot(ledger)
        with pytest.raises(FileNotFoundError, match="missing.txt"):
            await arts.save(str(tmp_path / "missing.txt"), kind="text")
        with pytest.raises(IsADirectoryError):
            await arts.save(str(tmp_path), kind="text")
        with pytest.raises(TypeError):
            await arts.save(123, kind="text")
        with pytest.raises(ValueError, match="outside.txt"):
            await arts.ingest(outside, kind="text")
        with pytest.raises(ValueError):
            await arts.ingest(str(ledger.root / "staging" / ".." / "ARTIFACT-LEDGER"), kind="text")
        with pytest.raises(FileNotFoundError):
            await arts.ingest(str(ledger.root / "staging" / "never-staged.txt"), kind="text")
        d = await arts.stage_dir()
        with pytest.raises(IsADirectoryError):
            await arts.ingest(d, kind="text")
        os.rmdir(d)
        assert snapshot(ledger) == before
        assert Path(outside).read_bytes() == b"not staged"
        assert arts.last_artifact is None

    run_with_ledger(root, body)


# ---------------------------------------------------------------- rule 3: writer
def test_rule3_writer_is_a_real_file_with_write_seek_tell(root):
    """Rule 3: writer() yields a real binary file supporting synchronous write/seek/tell."""

    async def body(ledger):
        arts = facade(ledger)
        async with arts.writer(kind="blob", planned_ext=".bin") as w:
            assert isinstance(w, io.IOBase)
            assert isinstance(w.fileno(), int)
            assert w.tell() == 0
            assert w.write(b"hello world") == 11
            assert w.tell() == 11
            w.seek(0)
            w.write(b"J")
            assert w.tell() == 1
            w.seek(0, os.SEEK_END)
            assert w.tell() == 11
            w.write(b"!")
        art = arts.last_artifact
        assert art is not None and art.bytes == 12
        assert await arts.load_artifact_bytes(art.uri) == b"Jello world!"
        assert staging_names(ledger.root) == []
        assert ids(await arts.list()) == [art.artifact_id]

    run_with_ledger(root, body)


def test_rule3_writer_records_metadata_and_empty_output(root):
    """Rule 3: a writer exit records kind/labels/metrics/pin, even for zero bytes written."""

    async def body(ledger):
        arts = facade(ledger)
        async with arts.writer(kind="empty", pin=True, labels={"a": 1}, metrics={"m": 0.5},
                               suggested_uri="out/empty.bin") as w:
            assert w.tell() == 0
        art = arts.last_artifact
        assert (art.kind, art.bytes, art.pinned, art.labels, art.metrics, art.suggested_uri) == (
            "empty", 0, True, {"a": 1}, {"m": 0.5}, "out/empty.bin")
        assert art.sha256 == hashlib.sha256(b"").hexdigest()
        assert await arts.load_artifact_bytes(art.uri) == b""

    run_with_ledger(root, body)


class _Boom(Exception):
    pass


def test_rule3_writer_exception_records_nothing_and_propagates(root, tmp_path):
    """Rule 3: an exception in the writer block records nothing, removes the staged file, keeps last_artifact."""
    src = write_file(tmp_path / "prev.bin", b"previous")

    async def body(ledger):
        arts = facade(ledger)
        prev = await arts.save(src, kind="blob")
        before = snapshot(ledger)
        staged_path = None
        with pytest.raises(_Boom):
            async with arts.writer(kind="blob", planned_ext=".bin") as w:
                staged_path = w.name
                w.write(b"half written")
                w.flush()
                raise _Boom()
        assert staged_path is not None and not Path(staged_path).exists()
        assert arts.last_artifact == prev
        assert snapshot(ledger) == before
        assert ids(await arts.list(scope="all")) == [prev.artifact_id]

    run_with_ledger(root, body)


def test_rule3_writer_cancelled_records_nothing(root):
    """Rule 3: cancellation inside the writer block is an exception too: nothing recorded, staging clean."""

    async def body(ledger):
        arts = facade(ledger)
        before = snapshot(ledger)
        with anyio.move_on_after(0.05) as scope:
            async with arts.writer(kind="blob") as w:
                w.write(b"never finished")
                await anyio.sleep(10)
        assert scope.cancelled_caught
        assert arts.last_artifact is None
        assert snapshot(ledger) == before

    run_with_ledger(root, body)


def test_rule3_writer_bad_arguments_refused_before_staging(root):
    """Rule 3 with rule 7: bad writer arguments raise before any staged file exists."""

    async def body(ledger):
        arts = facade(ledger)
        before = snapshot(ledger)
        for kw, exc in [
            ({"kind": 3}, TypeError),
            ({"kind": ""}, ValueError),
            ({"kind": "k", "planned_ext": "../x"}, ValueError),
            ({"kind": "k", "labels": {"bad": {"nested": 1}}}, TypeError),
            ({"kind": "k", "metrics": {"bad": float("nan")}}, ValueError),
            ({"kind": "k", "pin": "yes"}, TypeError),
            ({"kind": "k", "suggested_uri": "/abs"}, ValueError),
        ]:
            entered = False
            with pytest.raises(exc):
                async with arts.writer(**kw):
                    entered = True
            assert not entered, kw
            assert snapshot(ledger) == before, kw

    run_with_ledger(root, body)


# ---------------------------------------------------------------- rule 4: ingest_dir
TREE = {
    "index.html": b"<html>top</html>",
    "a/b/c/deep.txt": b"deep file",
    "a/sibling.bin": bytes(range(256)) * 4,
    "a/dup.txt": b"deep file",  # same bytes as deep.txt: one blob, two entries
    "z/empty-file": b"",
}
EMPTY_DIRS = ["empty", "a/b/also-empty", "a/b/c/d/e"]


def build_tree(base: Path) -> None:
    for rel, data in TREE.items():
        write_file(base / rel, data)
    for rel in EMPTY_DIRS:
        (base / rel).mkdir(parents=True, exist_ok=True)


def read_tree(base: Path) -> tuple[dict[str, bytes], list[str]]:
    files = {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}
    dirs = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_dir())
    return files, dirs


def test_rule4_ingest_dir_round_trip_with_nested_and_empty_dirs(root):
    """Rule 4: every file (nested, duplicate, empty) and every empty dir comes back; files are content-addressed."""

    async def body(ledger):
        arts = facade(ledger)
        d = await arts.stage_dir("_tree")
        build_tree(Path(d))
        expected = read_tree(Path(d))
        art = await arts.ingest_dir(d, labels={"t": "tree"}, metrics={"n": 5}, pin=True, suggested_uri="trees/t")
        assert arts.last_artifact == art
        assert art.kind == "directory"  # the documented default
        assert (art.labels, art.metrics, art.pinned, art.suggested_uri) == ({"t": "tree"}, {"n": 5}, True, "trees/t")
        assert art.bytes == sum(len(v) for v in TREE.values())
        assert staging_names(ledger.root) == []
        file_shas = {hashlib.sha256(v).hexdigest() for v in TREE.values()}
        assert set(blob_names(ledger.root)) == file_shas | {art.sha256}
        for uri in (art.uri, f"artifact://{art.artifact_id}"):
            loaded = await arts.load_artifact(uri)
            assert isinstance(loaded, Path) and loaded.is_dir()
            assert read_tree(loaded) == expected
            with pytest.raises(IsADirectoryError):
                await arts.load_artifact_bytes(uri)

    run_with_ledger(root, body)


def test_rule4_ingest_dir_of_empty_directory(root):
    """Rule 4: an empty staged directory is a valid (empty) directory artifact."""

    async def body(ledger):
        arts = facade(ledger)
        d = await arts.stage_dir()
        art = await arts.ingest_dir(d, kind="report")
        assert art.bytes == 0 and art.kind == "report"
        loaded = await arts.load_artifact(art.uri)
        assert loaded.is_dir() and list(loaded.iterdir()) == []

    run_with_ledger(root, body)


@pytest.mark.parametrize("special", ["symlink_file", "symlink_dir", "dangling_symlink", "fifo"])
def test_rule4_ingest_dir_refuses_symlinks_and_special_files(root, tmp_path, special):
    """Rule 4: a symlink or FIFO inside the directory -> ValueError naming it; nothing recorded or stored."""
    target = write_file(tmp_path / "elsewhere.txt", b"outside the staging dir")

    async def body(ledger):
        arts = facade(ledger)
        d = Path(await arts.stage_dir())
        build_tree(d)
        bad = d / "a" / "b" / "bad-entry"
        if special == "symlink_file":
            os.symlink(target, bad)
        elif special == "symlink_dir":
            os.symlink(tmp_path, bad)
        elif special == "dangling_symlink":
            os.symlink(tmp_path / "no-such-file", bad)
        else:
            os.mkfifo(bad)
        tree_before = sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))
        before = snapshot(ledger)
        with pytest.raises(ValueError, match="bad-entry"):
            await arts.ingest_dir(str(d), kind="report")
        assert snapshot(ledger) == before
        assert blob_names(ledger.root) == []
        assert arts.last_artifact is None
        # The caller's staged tree is left as it was, so it can be fixed and retried.
        assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*")) == tree_before
        assert Path(target).read_bytes() == b"outside the staging dir"

    run_with_ledger(root, body)


def test_rule4_ingest_dir_bad_arguments(root, tmp_path):
    """Rule 4: ingest_dir refuses unknown keywords, files, missing dirs and dirs outside staging."""

    async def body(ledger):
        arts = facade(ledger)
        d = await arts.stage_dir()
        staged_file = await arts.stage(".txt")
        outside = tmp_path / "outside"
        outside.mkdir()
        before = snapshot(ledger)
        with pytest.raises(TypeError, match="colour"):
            await arts.ingest_dir(d, colour="red")
        with pytest.raises(NotADirectoryError):
            await arts.ingest_dir(staged_file)
        with pytest.raises(FileNotFoundError):
            await arts.ingest_dir(str(ledger.root / "staging" / "nope"))
        with pytest.raises(ValueError):
            await arts.ingest_dir(str(outside))
        # A symlink planted in staging must not smuggle an outside tree or file into the store.
        link_dir = ledger.root / "staging" / "linked-dir"
        os.symlink(outside, link_dir)
        write_file(outside / "secret.txt", b"outside")
        link_file = ledger.root / "staging" / "linked-file.txt"
        os.symlink(outside / "secret.txt", link_file)
        before = snapshot(ledger)
        with pytest.raises(ValueError, match="symlink"):
            await arts.ingest_dir(str(link_dir))
        with pytest.raises(ValueError, match="symlink"):
            await arts.ingest(str(link_file), kind="k")
        assert snapshot(ledger) == before
        assert (outside / "secret.txt").read_bytes() == b"outside"

    run_with_ledger(root, body)


# ---------------------------------------------------------------- rule 5: load_artifact decoding
def test_rule5_load_artifact_decode_rules(root, tmp_path):
    """Rule 5: JSON -> object, text -> str, csv -> str, directory -> Path, anything else -> bytes."""
    doc = {"a": [1, 2.5, None], "b": "é"}
    cases = [
        # (file name, kind, bytes, expected decode)
        ("doc.json", "config", json.dumps(doc).encode(), doc),
        ("doc.bin", "json", json.dumps([1, 2]).encode(), [1, 2]),
        ("notes.txt", "notes", "plain text ✓".encode(), "plain text ✓"),
        ("notes.dat", "text", b"text by kind", "text by kind"),
        ("table.csv", "table", b"x,y\n1,2\n", "x,y\n1,2\n"),
        ("readme.md", "doc", b"# title\n", "# title\n"),
        ("image.png", "image", b"\x89PNG\r\n\x1a\n not really", b"\x89PNG\r\n\x1a\n not really"),
        ("weights.bin", "model", b"\x00\x01\x02", b"\x00\x01\x02"),
        ("noext", "blob", b"{\"looks\": \"json\"}", b"{\"looks\": \"json\"}"),
        ("latin1.txt", "notes", b"caf\xe9", b"caf\xe9"),  # not UTF-8 -> bytes, as documented
    ]

    async def body(ledger):
        arts = facade(ledger)
        made = []
        for name, kind, data, expected in cases:
            art = await arts.save(write_file(tmp_path / name, data), kind=kind)
            made.append((art, data, expected))
        d = await arts.stage_dir()
        write_file(Path(d) / "x.txt", b"in a dir")
        dir_art = await arts.ingest_dir(d)
        for art, data, expected in made:
            for uri in (art.uri, f"artifact://{art.artifact_id}"):
                got = await arts.load_artifact(uri)
                assert type(got) is type(expected) and got == expected, (art.kind, art.mime)
                assert await arts.load_artifact_bytes(uri) == data
        for uri in (dir_art.uri, f"artifact://{dir_art.artifact_id}"):
            got = await arts.load_artifact(uri)
            assert isinstance(got, Path)
            assert (got / "x.txt").read_bytes() == b"in a dir"

    run_with_ledger(root, body)


def test_rule5_unknown_uri_raises_file_not_found_naming_it(root, tmp_path):
    """Rule 5: unknown URIs raise FileNotFoundError naming the URI; non-strings raise TypeError."""

    async def body(ledger):
        arts = facade(ledger)
        art = await arts.save(write_file(tmp_path / "x.bin", b"known"), kind="blob")
        missing_sha = hashlib.sha256(b"never stored").hexdigest()
        foreign_blob = (tmp_path / "sha256" / missing_sha[:2] / missing_sha).as_uri()
        unknown = [
            "artifact://0123456789abcdef0123456789abcdef",
            "artifact://",
            f"{ledger.store.uri(art.sha256)}#{art.artifact_id}".replace(art.sha256, missing_sha),
            foreign_blob,
            (tmp_path / "x.bin").as_uri(),
            "s3://bucket/key",
            "/etc/passwd",
            "",
            art.artifact_id,  # a bare id is not a URI
        ]
        for uri in unknown:
            for load in (arts.load_artifact, arts.load_artifact_bytes):
                with pytest.raises(FileNotFoundError) as info:
                    await load(uri)
                assert repr(uri) in str(info.value) or uri in str(info.value)
        with pytest.raises(TypeError):
            await arts.load_artifact(None)
        with pytest.raises(TypeError):
            await arts.load_artifact_bytes(Path("x"))

    run_with_ledger(root, body)


def test_rule5_uri_round_trips_under_an_awkward_root(tmp_path):
    """Rule 5: art.uri and the file form load back even when the root has spaces, %, #, ? and non-ASCII characters."""
    root = tmp_path / "with space é%20#frag" / "L ?"

    async def body(ledger):
        arts = facade(ledger)
        art = await arts.save(write_file(tmp_path / "x.txt", b"hi"), kind="text")
        file_uri = f"{ledger.store.uri(art.sha256)}#{art.artifact_id}"
        # The blob's own URI: a file:/// URL of the local store (the root's characters quoted), an
        # s3://bucket/key one in S3 (the root appears nowhere in it).
        assert file_uri.startswith("s3://" if on_s3() else "file:///") and " " not in file_uri
        for uri in (art.uri, file_uri, ledger.store.uri(art.sha256)):
            assert await arts.load_artifact(uri) == "hi"
            assert await arts.load_artifact_bytes(uri) == b"hi"

    run_with_ledger(root, body)


def test_rule5_shared_bytes_decode_by_each_artifacts_own_kind(root, tmp_path):
    """Rule 5 with rule 1: artifacts sharing bytes each load by their own kind, through art.uri and artifact://<id>."""
    data = b'{"x": 1}'

    async def body(ledger):
        arts = facade(ledger)
        as_json = await arts.save(write_file(tmp_path / "a.json", data), kind="json")
        as_text = await arts.save(write_file(tmp_path / "b.txt", data), kind="text")
        as_raw = await arts.save(write_file(tmp_path / "c.bin", data), kind="raw")
        # One blob, but each occurrence keeps its own URI, in the artifact form and in the file form.
        assert len({a.sha256 for a in (as_json, as_text, as_raw)}) == 1
        assert len({as_json.uri, as_text.uri, as_raw.uri}) == 3
        for a, want in ((as_json, {"x": 1}), (as_text, '{"x": 1}'), (as_raw, data)):
            assert await arts.load_artifact(a.uri) == want
            assert await arts.load_artifact(f"{ledger.store.uri(a.sha256)}#{a.id}") == want
        assert await arts.load_artifact(f"artifact://{as_json.id}") == {"x": 1}
        assert await arts.load_artifact(f"artifact://{as_text.id}") == '{"x": 1}'
        assert await arts.load_artifact(f"artifact://{as_raw.id}") == data
        for art in (as_json, as_text, as_raw):
            assert await arts.load_artifact_bytes(art.uri) == data

    run_with_ledger(root, body)


# ---------------------------------------------------------------- rule 6: scopes
CONTEXTS = {
    "a": {"run_id": "r1", "graph_id": "g1", "node_id": "n1", "project_id": "p1"},
    "b": {"run_id": "r1", "graph_id": "g1", "node_id": "n2", "project_id": "p1"},
    "c": {"run_id": "r1", "graph_id": "g2", "node_id": "n1", "project_id": "p1"},
    "d": {"run_id": "r2", "graph_id": "g1", "node_id": "n1", "project_id": "p1"},
    "e": {"run_id": "r3", "graph_id": "g1", "node_id": "n1", "project_id": "p2"},
    "f": {"run_id": "r4", "graph_id": "g1", "node_id": "n1", "project_id": None},
}


def populate_scopes(ledger, tmp_path):
    """One 'model' artifact per context, named by label; metric rises with insertion order."""

    async def go():
        made = {}
        for i, (name, ids_) in enumerate(CONTEXTS.items()):
            arts = ledger.context(**ids_).artifacts()
            made[name] = await arts.save(write_file(tmp_path / f"{name}.bin", name.encode()), kind="model",
                                         labels={"name": name}, metrics={"acc": float(i)})
        return made

    return go()


def names(arts) -> list[str]:
    return [a.labels["name"] for a in arts]


def test_rule6_scopes_of_list_search_and_best(root, tmp_path):
    """Rule 6: node/graph/run/project/all select exactly the right artifacts in list, search and best."""
    expected = {  # newest first
        "node": ["a"],
        "graph": ["b", "a"],
        "run": ["c", "b", "a"],
        "project": ["d", "c", "b", "a"],
        "all": ["f", "e", "d", "c", "b", "a"],
    }

    async def body(ledger):
        await populate_scopes(ledger, tmp_path)
        arts = ledger.context(**CONTEXTS["a"]).artifacts()
        for scope, want in expected.items():
            assert names(await arts.list(scope=scope)) == want, scope
            assert names(await arts.search(scope=scope)) == want, scope
            assert names(await arts.search(kind="model", metric="acc", mode="max", scope=scope)) == want, scope
            best = await arts.best(kind="model", metric="acc", mode="min", scope=scope)
            assert best.labels["name"] == want[-1], scope
        assert names(await arts.list()) == expected["run"]
        assert names(await arts.search()) == expected["run"]
        assert (await arts.best(kind="model", metric="acc", mode="max")).labels["name"] == "c"

    run_with_ledger(root, body)


def test_rule6_project_scope_without_project_id_raises(root, tmp_path):
    """Rule 6: scope='project' on a facade bound without project_id raises ValueError; bad scopes too."""

    async def body(ledger):
        await populate_scopes(ledger, tmp_path)
        arts = ledger.context(**CONTEXTS["f"]).artifacts()
        assert arts.project_id is None
        with pytest.raises(ValueError, match="project"):
            await arts.list(scope="project")
        with pytest.raises(ValueError, match="project"):
            await arts.search(scope="project")
        with pytest.raises(ValueError, match="project"):
            await arts.best(kind="model", metric="acc", mode="max", scope="project")
        for bad in ("Run", "everything", None, ""):
            with pytest.raises(ValueError):
                await arts.list(scope=bad)
            with pytest.raises(ValueError):
                await arts.search(scope=bad)
            with pytest.raises(ValueError):
                await arts.best(kind="model", metric="acc", mode="max", scope=bad)

    run_with_ledger(root, body)


def test_rule6_ids_are_labels_and_extra_scope_labels_override(root, tmp_path):
    """Rule 6: run/graph/node/project ids are filterable labels; extra_scope_labels override the scope's."""

    async def body(ledger):
        await populate_scopes(ledger, tmp_path)
        arts = ledger.context(**CONTEXTS["a"]).artifacts()
        assert names(await arts.search(scope="all", labels={"graph_id": "g1"})) == ["f", "e", "d", "b", "a"]
        assert names(await arts.search(scope="all", labels={"node_id": "n2"})) == ["b"]
        assert names(await arts.search(scope="all", labels={"project_id": "p2"})) == ["e"]
        assert names(await arts.search(scope="all", labels={"project_id": None})) == ["f"]
        assert names(await arts.search(scope="all", labels={"run_id": "r1", "graph_id": "g2"})) == ["c"]
        # labels are ANDed with the scope: another run's id finds nothing in scope="run".
        assert await arts.search(labels={"run_id": "r2"}) == []
        # extra_scope_labels replaces the scope's own run_id.
        assert names(await arts.search(extra_scope_labels={"run_id": "r2"})) == ["d"]
        assert names(await arts.search(scope="graph", extra_scope_labels={"graph_id": "g2"})) == ["c"]
        assert names(await arts.search(scope="project", extra_scope_labels={"project_id": "p2"})) == ["e"]
        assert names(await arts.search(scope="node", extra_scope_labels={"node_id": "n2"})) == ["b"]
        assert names(await arts.search(scope="all", extra_scope_labels={"name": "e"})) == ["e"]
        assert names(await arts.search(extra_scope_labels={"run_id": "r2"}, labels={"name": "a"})) == []
        best = await arts.best(kind="model", metric="acc", mode="max", scope="all", filters={"graph_id": "g1"})
        assert best.labels["name"] == "f"
        # Within run r1, node n1 exists in graphs g1 (a) and g2 (c).
        best = await arts.best(kind="model", metric="acc", mode="max", filters={"node_id": "n1"})
        assert best.labels["name"] == "c"
        best = await arts.best(kind="model", metric="acc", mode="min", filters={"node_id": "n1"})
        assert best.labels["name"] == "a"

    run_with_ledger(root, body)


def test_rule6_reserved_id_labels_follow_the_binding(root, tmp_path):
    """Rule 6: labels cannot claim another run/graph/node/project than the facade's binding."""
    src = write_file(tmp_path / "x.bin", b"x")

    async def body(ledger):
        arts = facade(ledger)
        before = snapshot(ledger)
        for key, value in [("run_id", "r9"), ("graph_id", "g9"), ("node_id", "n9"), ("project_id", "p9")]:
            with pytest.raises(ValueError, match=key):
                await arts.save(src, kind="k", labels={key: value})
        assert snapshot(ledger) == before
        art = await arts.save(src, kind="k", labels={"run_id": "r1", "x": 1})
        assert art.labels == {"x": 1} and art.run_id == "r1"

    run_with_ledger(root, body)


# ---------------------------------------------------------------- rule 7: label equality and validation
LABELED = {
    "int1": {"v": 1},
    "str1": {"v": "1"},
    "true": {"v": True},
    "float1": {"v": 1.0},
    "zero": {"v": 0},
    "false": {"v": False},
    "none": {"v": None},
    "lower": {"v": "v"},
    "upper": {"v": "V"},
    "pct": {"v": "%"},
    "under": {"v": "_"},
    "a_pct": {"v": "a%"},
    "list12": {"v": [1, 2]},
    "list21": {"v": [2, 1]},
    "liststr": {"v": ["1", 2]},
    "two": {"v": "v", "w": "x"},
    "nolabel": {},
}


def test_rule7_label_filters_match_exact_json_equality(root, tmp_path):
    """Rule 7: 1 != "1", True != 1, "v" != "V", % and _ are literal, lists match exactly, all labels must match."""
    queries = [
        ({"v": 1}, {"int1", "float1"}),  # 1 and 1.0 are the same JSON number
        ({"v": 1.0}, {"int1", "float1"}),
        ({"v": "1"}, {"str1"}),
        ({"v": True}, {"true"}),
        ({"v": 0}, {"zero"}),
        ({"v": False}, {"false"}),
        ({"v": None}, {"none"}),
        ({"v": "v"}, {"lower", "two"}),
        ({"v": "V"}, {"upper"}),
        ({"v": "%"}, {"pct"}),
        ({"v": "_"}, {"under"}),
        ({"v": "a%"}, {"a_pct"}),
        ({"v": "a_"}, set()),
        ({"v": "%%"}, set()),
        ({"v": [1, 2]}, {"list12"}),
        ({"v": (1, 2)}, {"list12"}),
        ({"v": [2, 1]}, {"list21"}),
        ({"v": ["1", 2]}, {"liststr"}),
        ({"v": [1]}, set()),
        ({"v": []}, set()),
        ({"v": "v", "w": "x"}, {"two"}),
        ({"v": "v", "w": "y"}, set()),
        ({"w": "x"}, {"two"}),
        ({"missing": None}, set()),
        ({}, set(LABELED)),
    ]

    async def body(ledger):
        arts = facade(ledger)
        for name, labels in LABELED.items():
            await arts.save(write_file(tmp_path / f"{name}.bin", name.encode()), kind="k",
                            labels={**labels, "name": name})
        for labels, want in queries:
            got = await arts.search(labels=labels)
            assert {a.labels["name"] for a in got} == want, labels
            got_all = await arts.search(labels=labels, scope="all", kind="k")
            assert {a.labels["name"] for a in got_all} == want, labels
        # Labels read back with their JSON types intact.
        [t] = await arts.search(labels={"name": "true"})
        assert t.labels["v"] is True
        [l12] = await arts.search(labels={"name": "list12"})
        assert l12.labels["v"] == [1, 2]

    run_with_ledger(root, body)


BAD_LABELS = [
    ({"k_nan": float("nan")}, ValueError, "k_nan"),
    ({"k_inf": float("inf")}, ValueError, "k_inf"),
    ({"k_ninf": float("-inf")}, ValueError, "k_ninf"),
    ({"k_dict": {"nested": 1}}, TypeError, "k_dict"),
    ({"k_nested_list": [[1]]}, TypeError, "k_nested_list"),
    ({"k_list_dict": [{"a": 1}]}, TypeError, "k_list_dict"),
    ({"k_list_nan": [1.0, float("nan")]}, ValueError, "k_list_nan"),
    ({"k_bytes": b"raw"}, TypeError, "k_bytes"),
    ({"k_set": {1, 2}}, TypeError, "k_set"),
    ({"k_obj": object()}, TypeError, "k_obj"),
    ({"k_date": datetime(2024, 1, 1)}, TypeError, "k_date"),
    ({7: "int key"}, TypeError, "7"),
    ({("t",): "tuple key"}, TypeError, "'t'"),
    ({"ok": 1, None: "none key"}, TypeError, "None"),
    # The log stores msgpack integers (-2**63 .. 2**64-1) and UTF-8 strings.
    ({"k_big": 2 ** 64}, ValueError, "k_big"),
    ({"k_small": -(2 ** 63) - 1}, ValueError, "k_small"),
    ({"k_list_big": [1, 10 ** 20]}, ValueError, "k_list_big"),
    ({"k_surrogate": "a\ud800"}, ValueError, "k_surrogate"),
    ({"\udfff": 1}, ValueError, repr("\udfff")),
]
BAD_METRICS = [
    ({"m_nan": float("nan")}, ValueError, "m_nan"),
    ({"m_inf": float("inf")}, ValueError, "m_inf"),
    ({"m_ninf": float("-inf")}, ValueError, "m_ninf"),
    ({"m_bool": True}, TypeError, "m_bool"),
    ({"m_false": False}, TypeError, "m_false"),
    ({"m_str": "0.5"}, TypeError, "m_str"),
    ({"m_none": None}, TypeError, "m_none"),
    ({"m_list": [1.0]}, TypeError, "m_list"),
    ({"m_dict": {"a": 1}}, TypeError, "m_dict"),
    ({"m_complex": 1j}, TypeError, "m_complex"),
    ({3: 1.0}, TypeError, "3"),
    ({"ok": 1.0, b"bytes key": 1.0}, TypeError, "bytes key"),
    ({"m_big": 10 ** 30}, ValueError, "m_big"),
    ({"m_small": -(2 ** 63) - 1}, ValueError, "m_small"),
    ({"\ud800": 1.0}, ValueError, repr("\ud800")),
]


async def _every_write(ledger, arts, tmp_path, **meta):
    """Attempt save, ingest, writer and ingest_dir with ``meta``; return what each raised (None if nothing)."""
    src = write_file(tmp_path / "payload.bin", b"payload")
    staged = await arts.stage(".bin")
    Path(staged).write_bytes(b"payload")
    staged_dir = await arts.stage_dir()
    write_file(Path(staged_dir) / "f.bin", b"payload")
    before = snapshot(ledger)
    errors = []

    async def use_writer():
        async with arts.writer(kind="k", **meta) as w:
            w.write(b"payload")

    attempts = [
        lambda: arts.save(src, kind="k", **meta),
        lambda: arts.ingest(staged, kind="k", **meta),
        use_writer,
        lambda: arts.ingest_dir(staged_dir, kind="k", **meta),
    ]
    for attempt in attempts:
        try:
            await attempt()
        except Exception as exc:  # noqa: BLE001 - the caller checks type and message
            errors.append(exc)
        else:
            errors.append(None)
        assert snapshot(ledger) == before
    # Refused ingests leave the caller's staged inputs untouched for a retry.
    assert Path(staged).read_bytes() == b"payload"
    assert (Path(staged_dir) / "f.bin").read_bytes() == b"payload"
    assert Path(src).read_bytes() == b"payload"
    os.unlink(staged)
    os.unlink(Path(staged_dir) / "f.bin")
    os.rmdir(staged_dir)
    return errors


@pytest.mark.parametrize("labels,exc,key", BAD_LABELS, ids=[repr(list(b[0])[-1]) for b in BAD_LABELS])
def test_rule7_bad_labels_refused_naming_the_key_before_any_write(root, tmp_path, labels, exc, key):
    """Rule 7: a bad label raises ValueError/TypeError naming the key, and no event, blob or staging change happens."""

    async def body(ledger):
        arts = facade(ledger)
        for err in await _every_write(ledger, arts, tmp_path, labels=labels):
            assert type(err) is exc, err
            assert key in str(err), err
        assert arts.last_artifact is None
        with pytest.raises((ValueError, TypeError)):
            await arts.search(labels=labels)

    run_with_ledger(root, body)


@pytest.mark.parametrize("metrics,exc,key", BAD_METRICS, ids=[repr(list(b[0])[-1]) for b in BAD_METRICS])
def test_rule7_bad_metrics_refused_naming_the_key_before_any_write(root, tmp_path, metrics, exc, key):
    """Rule 7: a bad metric raises ValueError/TypeError naming the key, and nothing is written."""

    async def body(ledger):
        arts = facade(ledger)
        for err in await _every_write(ledger, arts, tmp_path, metrics=metrics):
            assert type(err) is exc, err
            assert key in str(err), err
        assert arts.last_artifact is None

    run_with_ledger(root, body)


def test_rule7_non_dict_labels_and_metrics_refused(root, tmp_path):
    """Rule 7: labels/metrics that are not dicts are refused before anything is written."""

    async def body(ledger):
        arts = facade(ledger)
        for meta in ({"labels": [("a", 1)]}, {"labels": "a=1"}, {"metrics": [1.0]}, {"metrics": 1.0},
                     {"pin": 1}, {"kind": None}):
            kw = {"kind": "k", **meta}
            kind = kw.pop("kind")
            src = write_file(tmp_path / "p.bin", b"p")
            before = snapshot(ledger)
            with pytest.raises(TypeError):
                await arts.save(src, kind=kind, **kw)
            assert snapshot(ledger) == before

    run_with_ledger(root, body)


def test_rule7_good_labels_and_metrics_round_trip(root, tmp_path):
    """Rule 7: scalars, lists of scalars, ints and finite floats are kept as given (tuples become lists)."""
    labels = {"s": "x", "i": -3, "f": 2.5, "b": False, "n": None, "l": ["a", 1, 2.5, True, None], "t": (1, 2),
              "empty": [], "": "empty key", "unicode ✓": "é"}
    metrics = {"acc": 0.93, "loss": -1e-9, "steps": 10 ** 12, "zero": 0, "big": 1.7e308,
               "u64_max": 2 ** 64 - 1, "i64_min": -(2 ** 63)}

    async def body(ledger):
        arts = facade(ledger)
        art = await arts.save(write_file(tmp_path / "x.bin", b"x"), kind="k", labels=labels, metrics=metrics)
        want_labels = {**labels, "t": [1, 2]}
        assert art.labels == want_labels
        assert art.metrics == metrics
        assert type(art.metrics["steps"]) is int
        [again] = await arts.list()
        assert again.labels == want_labels and again.metrics == metrics

    run_with_ledger(root, body)


def test_rule7_bad_kinds_and_ids_refused(root, tmp_path):
    """Rule 7: kinds and bound ids must be non-empty, UTF-8-encodable strings; refused before any write."""
    src = write_file(tmp_path / "p.bin", b"p")

    async def body(ledger):
        arts = facade(ledger)
        before = snapshot(ledger)
        for kind, exc in (("", ValueError), ("  ", ValueError), ("\ud800", ValueError), (None, TypeError),
                          (1, TypeError)):
            with pytest.raises(exc):
                await arts.save(src, kind=kind)
        assert snapshot(ledger) == before
        for key in ("run_id", "graph_id", "node_id", "project_id"):
            for bad, exc in (("\ud800", ValueError), ("", (TypeError, ValueError)), (3, TypeError)):
                with pytest.raises(exc, match=key):
                    ledger.context(**{**R1, key: bad})

    run_with_ledger(root, body)


# ---------------------------------------------------------------- rule 8: ranking
def test_rule8_ranking_best_first_ties_newest_first(root, tmp_path):
    """Rule 8: search(metric, mode) keeps only artifacts with the metric, best first, ties newest first."""
    values = [0.5, 0.9, 0.9, 0.1, 0.5, 1, 1.0, None, 0.1]

    async def body(ledger):
        arts = facade(ledger)
        made = []
        for i, v in enumerate(values):
            metrics = {"other": 5.0} if v is None else {"score": v}
            made.append(await arts.save(write_file(tmp_path / f"{i}.bin", str(i).encode()), kind="m",
                                        labels={"i": i}, metrics=metrics))
        # A different kind with a huge score only matters when kind is not filtered.
        made.append(await arts.save(write_file(tmp_path / "x.bin", b"x"), kind="other", labels={"i": 99},
                                    metrics={"score": 100.0}))
        having = [(a.metrics["score"], a.seq, a.labels["i"]) for a in made[:-1] if "score" in a.metrics]
        want_max = [i for _, _, i in sorted(having, key=lambda t: (-t[0], -t[1]))]
        want_min = [i for _, _, i in sorted(having, key=lambda t: (t[0], -t[1]))]
        assert want_max == [6, 5, 2, 1, 4, 0, 8, 3]  # the rule itself, spelled out
        assert want_min == [8, 3, 4, 0, 2, 1, 6, 5]

        def idx(arts_):
            return [a.labels["i"] for a in arts_]

        assert idx(await arts.search(kind="m", metric="score", mode="max")) == want_max
        assert idx(await arts.search(kind="m", metric="score", mode="min")) == want_min
        assert idx(await arts.search(metric="score", mode="max")) == [99] + want_max
        assert idx(await arts.search(kind="m", metric="score", mode="max", limit=3)) == want_max[:3]
        assert idx(await arts.search(kind="m", limit=3)) == [8, 7, 6]
        assert await arts.search(kind="m", limit=0) == []
        assert await arts.search(kind="m", metric="score", mode="max", limit=0) == []
        assert idx(await arts.search(kind="m")) == list(range(len(values)))[::-1]
        for filters in (None, {"i": 2}, {}):
            for mode, want in (("max", want_max), ("min", want_min)):
                got = await arts.best(kind="m", metric="score", mode=mode, filters=filters)
                expect = want[0] if not filters else 2
                assert got.labels["i"] == expect, (mode, filters)
        assert (await arts.best(kind="m", metric="other", mode="max")).labels["i"] == 7

    run_with_ledger(root, body)


def test_rule8_best_none_and_bad_ranking_arguments(root, tmp_path):
    """Rule 8: best is None when nothing ranks; metric without mode, mode without metric or a bad mode raise
    ValueError."""

    async def body(ledger):
        arts = facade(ledger)
        assert await arts.best(kind="m", metric="score", mode="max") is None
        assert await arts.search(kind="m", metric="score", mode="max") == []
        await arts.save(write_file(tmp_path / "a.bin", b"a"), kind="m", metrics={"other": 1.0})
        assert await arts.best(kind="m", metric="score", mode="max") is None
        assert await arts.best(kind="nope", metric="other", mode="max") is None
        assert await arts.best(kind="m", metric="other", mode="max", filters={"x": 1}) is None
        assert await arts.best(kind="m", metric="other", mode="max", scope="node",
                               filters={"run_id": "r2"}) is None
        for kw in ({"metric": "score"}, {"mode": "max"}, {"metric": "score", "mode": "MAX"},
                   {"metric": "score", "mode": "asc"}, {"metric": "score", "mode": ""}):
            with pytest.raises(ValueError):
                await arts.search(**kw)
        for kw in ({"metric": "score", "mode": None}, {"metric": None, "mode": "max"},
                   {"metric": "score", "mode": "best"}, {"metric": "score", "mode": "Min"}):
            with pytest.raises(ValueError):
                await arts.best(kind="m", **kw)

    run_with_ledger(root, body)


@given(
    entries=st.lists(
        st.tuples(
            st.sampled_from(["r1", "r2"]),
            st.sampled_from(["g1", "g2"]),
            st.sampled_from(["k1", "k2"]),
            st.one_of(st.none(), st.integers(-2, 2), st.sampled_from([0.5, -0.5, 2.0, 1e-3])),
        ),
        max_size=12,
    ),
    mode=st.sampled_from(["max", "min"]),
)
def test_rule8_ranking_matches_brute_force(entries, mode):
    """Rule 8: for random metric values (many ties), search/best equal a brute-force sort in every scope."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ledger"
        src = write_file(Path(tmp) / "src.bin", b"same bytes for all")

        async def body(ledger):
            records = []
            for run, graph, kind, value in entries:
                arts = facade(ledger, run_id=run, graph_id=graph)
                art = await arts.save(src, kind=kind, metrics={} if value is None else {"s": value})
                records.append(art)
            me = facade(ledger)
            scopes = {"all": lambda a: True, "run": lambda a: a.run_id == "r1",
                      "graph": lambda a: a.run_id == "r1" and a.graph_id == "g1"}
            sign = -1 if mode == "max" else 1
            for scope, keep in scopes.items():
                for kind in ("k1", "k2"):
                    ranked = [a for a in records if keep(a) and a.kind == kind and "s" in a.metrics]
                    ranked.sort(key=lambda a: (sign * a.metrics["s"], -a.seq))
                    got = await me.search(kind=kind, metric="s", mode=mode, scope=scope)
                    assert ids(got) == ids(ranked)
                    best = await me.best(kind=kind, metric="s", mode=mode, scope=scope)
                    assert (best.artifact_id if best else None) == (ranked[0].artifact_id if ranked else None)

        run_with_ledger(root, body, fsync=False)


# ---------------------------------------------------------------- rule 9: pin
def test_rule9_pin_is_an_event_reflected_by_every_read(root, tmp_path):
    """Rule 9: pin/unpin append one event each and list/search/best/other facades all see the current state."""

    async def body(ledger):
        arts = facade(ledger)
        other = facade(ledger, run_id="r2")
        art = await arts.save(write_file(tmp_path / "a.bin", b"a"), kind="m", metrics={"s": 1.0})
        seq0 = ledger.head[0]

        async def pinned_everywhere():
            states = {
                (await arts.list())[0].pinned,
                (await arts.search(kind="m"))[0].pinned,
                (await arts.search(metric="s", mode="max"))[0].pinned,
                (await arts.best(kind="m", metric="s", mode="max")).pinned,
                (await other.list(scope="all"))[0].pinned,
                (await other.search(scope="all", labels={"run_id": "r1"}))[0].pinned,
            }
            assert len(states) == 1
            return states.pop()

        assert await pinned_everywhere() is False
        assert await arts.pin(art.artifact_id) is None  # pinned defaults to True
        assert ledger.head[0] == seq0 + 1
        assert await pinned_everywhere() is True
        await other.pin(art.id, pinned=False)  # any facade on the ledger may pin
        assert ledger.head[0] == seq0 + 2
        assert await pinned_everywhere() is False
        await arts.pin(artifact_id=art.id, pinned=True)
        await arts.pin(artifact_id=art.id, pinned=True)  # idempotent in effect, still an event
        assert ledger.head[0] == seq0 + 4
        assert await pinned_everywhere() is True
        # The Artifact returned earlier is a snapshot; fresh reads carry the pin.
        assert art.pinned is False

    run_with_ledger(root, body)


def test_rule9_pin_unknown_id_and_bad_arguments(root, tmp_path):
    """Rule 9: an unknown id raises KeyError naming it; non-str ids and non-bool pinned raise TypeError; nothing
    appended."""

    async def body(ledger):
        arts = facade(ledger)
        art = await arts.save(write_file(tmp_path / "a.bin", b"a"), kind="m")
        before = snapshot(ledger)
        for unknown in ("deadbeef" * 4, "", art.artifact_id.upper(), art.uri, f"artifact://{art.artifact_id}"):
            with pytest.raises(KeyError) as info:
                await arts.pin(unknown)
            assert repr(unknown) in str(info.value)
        with pytest.raises(TypeError):
            await arts.pin(None)
        with pytest.raises(TypeError):
            await arts.pin(art.artifact_id, pinned="yes")
        with pytest.raises(TypeError):
            await arts.pin(art.artifact_id, pinned=1)
        assert snapshot(ledger) == before

    run_with_ledger(root, body)


# ---------------------------------------------------------------- rule 10: staging paths
def test_rule10_staging_paths_are_fresh_unique_and_inside_staging(root):
    """Rule 10: stage/stage_dir/tmp_path return never-colliding fresh paths inside the ledger's staging area."""

    async def body(ledger):
        arts = facade(ledger)
        staging = (ledger.root / "staging").resolve()
        got: list[tuple[str, str, str]] = []
        makers = {"stage": arts.stage, "tmp_path": arts.tmp_path, "stage_dir": arts.stage_dir}

        async def grab(kind, suffix):
            got.append((kind, suffix, await makers[kind](suffix)))

        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(grab, ("stage", "tmp_path", "stage_dir")[i % 3], ("", ".csv", "_x", ".tar.gz")[i % 4])
        paths = [p for _, _, p in got]
        assert len(paths) == len(set(paths)) == 60
        for kind, suffix, p in got:
            path = Path(p)
            assert isinstance(p, str) and path.is_absolute()
            assert path.parent == staging
            assert p.endswith(suffix) and len(path.name) > len(suffix)
            if kind == "stage_dir":
                assert path.is_dir() and list(path.iterdir()) == []
            else:
                # Reserved but empty: nothing of anyone else's is there.
                assert not path.exists() or (path.is_file() and path.stat().st_size == 0)
        # Freshness also holds against paths already consumed by ingest.
        first = await arts.stage(".txt")
        Path(first).write_text("x")
        await arts.ingest(first, kind="text")
        for _ in range(20):
            assert await arts.stage(".txt") != first

    run_with_ledger(root, body)


def test_rule10_suffixes_are_kept_and_bad_suffixes_refused(root):
    """Rule 10: the ext/suffix is kept at the end of the name; path-like suffixes are refused."""

    async def body(ledger):
        arts = facade(ledger)
        assert (await arts.stage(".png")).endswith(".png")
        assert (await arts.tmp_path(".npy")).endswith(".npy")
        assert (await arts.stage_dir("_report")).endswith("_report")
        before = snapshot(ledger)
        for fn in (arts.stage, arts.tmp_path, arts.stage_dir):
            for bad in ("../evil", "a/b", "/abs", "a\\b", "x\x00"):
                with pytest.raises(ValueError):
                    await fn(bad)
            with pytest.raises(TypeError):
                await fn(3)
        assert snapshot(ledger) == before

    run_with_ledger(root, body)


def test_rule10_staged_paths_belong_to_their_own_ledger(tmp_path):
    """Rule 10: a path staged by one ledger cannot be ingested by another; each keeps its own staging area."""

    async def main():
        async with open_ledger(tmp_path / "one") as one, open_ledger(tmp_path / "two") as two:
            a1, a2 = facade(one), facade(two)
            f1 = await a1.stage(".txt")
            d1 = await a1.stage_dir()
            Path(f1).write_text("from one")
            write_file(Path(d1) / "x", b"x")
            assert Path(f1).parent == one.root / "staging"
            assert Path(await a2.stage()).parent == two.root / "staging"
            before = snapshot(two)
            with pytest.raises(ValueError):
                await a2.ingest(f1, kind="text")
            with pytest.raises(ValueError):
                await a2.ingest_dir(d1)
            assert snapshot(two) == before
            assert Path(f1).read_text() == "from one"
            assert (await a1.ingest(f1, kind="text")).kind == "text"

    anyio.run(main)


# ---------------------------------------------------------------- rule 11: suggested_uri
def test_rule11_suggested_uri_recorded_on_every_write_path(root, tmp_path):
    """Rule 11: suggested_uri is recorded as given on save/ingest/writer/ingest_dir; blobs stay content-addressed."""

    async def body(ledger):
        arts = facade(ledger)
        made = [await arts.save(write_file(tmp_path / "a.bin", b"a"), kind="k", suggested_uri="plots/a.png")]
        staged = await arts.stage()
        Path(staged).write_bytes(b"b")
        made.append(await arts.ingest(staged, kind="k", suggested_uri="./tables/b.csv"))
        async with arts.writer(kind="k", suggested_uri="nested/dir/c") as w:
            w.write(b"c")
        made.append(arts.last_artifact)
        d = await arts.stage_dir()
        write_file(Path(d) / "f", b"d")
        made.append(await arts.ingest_dir(d, suggested_uri="reports/d/"))
        made.append(await arts.save(write_file(tmp_path / "e.bin", b"e"), kind="k"))
        assert [a.suggested_uri for a in made] == ["plots/a.png", "./tables/b.csv", "nested/dir/c", "reports/d/",
                                                    None]
        assert [a.suggested_uri for a in reversed(await arts.list())] == [a.suggested_uri for a in made]
        for a in made:
            # The store ignores the hint: the URI is artifact://<id>, the bytes sit at their content address.
            assert a.uri == f"artifact://{a.id}"
            assert blob_at_address(ledger.root, a.sha256)
        for hint in ("plots", "tables", "nested", "reports"):
            assert not any(p.name == hint for p in ledger.root.rglob("*")), hint
            assert not (tmp_path / hint).exists()

    run_with_ledger(root, body)


BAD_SUGGESTED = ["a\ud800", "/etc/passwd", "/tmp/x", "../escape", "a/../../b", "a/..", "..", "a\\..\\b",
                 "\\\\server\\share", "s3://bucket/key", "file:///tmp/x", "http://host/x",
                 "C:\\Windows\\x", "c:relative", "", "a\x00b"]


@pytest.mark.parametrize("hint", BAD_SUGGESTED)
def test_rule11_absolute_dotdot_and_scheme_suggested_uri_refused(root, tmp_path, hint):
    """Rule 11: absolute paths, '..', URI schemes (and empty/NUL) raise ValueError on every write path, nothing
    written."""

    async def body(ledger):
        arts = facade(ledger)
        for err in await _every_write(ledger, arts, tmp_path, suggested_uri=hint):
            assert type(err) is ValueError, err
        with pytest.raises(TypeError):
            await arts.save(write_file(tmp_path / "x", b"x"), kind="k", suggested_uri=Path("rel"))

    run_with_ledger(root, body)


# ---------------------------------------------------------------- rule 12: reads see writes; reopen is identical
def test_rule12_reads_see_prior_writes_across_facades(root, tmp_path):
    """Rule 12: each read sees every earlier write made through the same Ledger, from any facade."""

    async def body(ledger):
        a = facade(ledger)
        b = facade(ledger, node_id="n2")
        c = ledger.artifacts(run_id="r1", graph_id="g1", node_id="n3")
        for i in range(5):
            writer = (a, b, c)[i % 3]
            art = await writer.save(write_file(tmp_path / f"{i}.bin", f"{i}".encode()), kind="k",
                                    metrics={"s": i})
            for reader in (a, b, c):
                assert (await reader.list())[0] == art
                assert (await reader.best(kind="k", metric="s", mode="max")) == art
                assert await reader.load_artifact_bytes(f"artifact://{art.artifact_id}") == f"{i}".encode()
            assert art.seq == ledger.head[0]

        async def save_one(i):
            await a.save(write_file(tmp_path / f"c{i}.bin", f"c{i}".encode()), kind="c")

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(save_one, i)
        listed = await b.search(kind="c")
        assert len(listed) == 20
        assert [x.seq for x in listed] == sorted((x.seq for x in listed), reverse=True)

    run_with_ledger(root, body)


def test_rule12_everything_reads_back_identically_after_reopen(root, tmp_path):
    """Rule 12: after aclose() and open_ledger(root), list/search/best/load answers equal those before."""
    png = tmp_path / "p.png"
    png.write_bytes(b"\x89PNG fake")

    async def probe(ledger):
        out = {}
        for name, ids_ in CONTEXTS.items():
            arts = ledger.context(**ids_).artifacts()
            for scope in ("node", "graph", "run", "all") + (("project",) if ids_["project_id"] else ()):
                out[name, "list", scope] = await arts.list(scope=scope)
                out[name, "search", scope] = await arts.search(kind="model", metric="acc", mode="min", scope=scope)
                out[name, "best", scope] = await arts.best(kind="model", metric="acc", mode="max", scope=scope)
        everything = await ledger.artifacts(**R1).list(scope="all")
        loader = ledger.artifacts(**R1)
        for art in everything:
            for uri in (art.uri, f"artifact://{art.artifact_id}"):
                loaded = await loader.load_artifact(uri)
                out["load", uri] = read_tree(loaded) if isinstance(loaded, Path) else loaded
        out["head"] = ledger.head
        return out, everything

    async def main():
        async with open_ledger(root) as ledger:
            made = await populate_scopes(ledger, tmp_path)
            arts = facade(ledger)
            await arts.pin(made["b"].artifact_id)
            await arts.pin(made["c"].artifact_id)
            await arts.pin(made["c"].artifact_id, False)
            await arts.save(str(png), kind="image", labels={"l": [1, "x", None, True]}, metrics={"i": 3},
                            suggested_uri="img/p.png", pin=True)
            async with arts.writer(kind="json", planned_ext=".json") as w:
                w.write(b'{"k": [1, 2]}')
            d = await arts.stage_dir()
            build_tree(Path(d))
            await arts.ingest_dir(d, kind="tree")
            before, listed_before = await probe(ledger)
        # Reopen twice: the second replay must be as good as the first.
        for _ in range(2):
            ledger = await open_ledger(root)
            try:
                after, listed_after = await probe(ledger)
            finally:
                await ledger.aclose()
            assert after == before
            assert [a.model_dump() for a in listed_after] == [a.model_dump() for a in listed_before]
        assert {a.labels.get("name") for a in listed_before if a.pinned} == {"b", None}

    anyio.run(main)


def test_rule12_closed_ledger_refuses_calls(root, tmp_path):
    """Rule 12: after aclose() the old handle refuses reads and writes instead of answering stale data."""

    async def main():
        ledger = await open_ledger(root)
        arts = facade(ledger)
        await arts.save(write_file(tmp_path / "a", b"a"), kind="k")
        await ledger.aclose()
        with pytest.raises(Exception, match="closed"):
            await arts.list()
        with pytest.raises(Exception, match="closed"):
            await arts.save(write_file(tmp_path / "b", b"b"), kind="k")

    anyio.run(main)


# ---------------------------------------------------------------- Artifact model
def test_artifact_created_at_is_aware_utc_and_id_alias(root, tmp_path):
    """Artifact: created_at is timezone-aware UTC near now and non-decreasing with seq; .id aliases artifact_id."""
    fields = {"artifact_id", "uri", "kind", "sha256", "bytes", "mime", "labels", "metrics", "pinned", "run_id",
              "graph_id", "node_id", "project_id", "created_at", "seq", "suggested_uri"}

    async def body(ledger):
        arts = facade(ledger)
        start = datetime.now(timezone.utc)
        made = [await arts.save(write_file(tmp_path / f"{i}", b"%d" % i), kind="k") for i in range(3)]
        end = datetime.now(timezone.utc)
        for art in made:
            assert isinstance(art, Artifact)
            assert fields <= set(Artifact.model_fields)
            assert art.id == art.artifact_id and isinstance(art.id, str) and art.id
            assert art.created_at.tzinfo is not None
            assert art.created_at.utcoffset() == timedelta(0)
            assert start - timedelta(seconds=5) <= art.created_at <= end + timedelta(seconds=5)
            assert Artifact.model_validate(art.model_dump()) == art
            assert Artifact.model_validate_json(art.model_dump_json()) == art
        assert [a.seq for a in made] == sorted(a.seq for a in made)
        assert [a.created_at for a in made] == sorted(a.created_at for a in made)
        [listed] = await arts.search(labels={}, scope="all", limit=1)
        assert listed.id == made[-1].id and listed.created_at == made[-1].created_at

    run_with_ledger(root, body)
