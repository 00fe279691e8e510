"""The reference's five "Practical examples" and its writer() examples, run as written."""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path

import anyio
import numpy as np
import PIL.Image as Image

from artifact_ledger.facade import Artifact, ArtifactFacade, open_ledger

IDS = {"run_id": "run-1", "graph_id": "graph-a", "node_id": "node-x"}


def _run(body):
    """Run ``body(context)`` against a freshly opened ledger, then close it."""

    async def main(root):
        async with open_ledger(root) as ledger:
            await body(ledger.context(**IDS))

    return main


def test_direct_save(root, tmp_path):
    """Example 1: save() of an existing file records it with its labels and metrics."""
    uri = tmp_path / "plot.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(uri, format="PNG")
    original = uri.read_bytes()

    async def body(context):
        art = await context.artifacts().save(str(uri), kind="image", labels={"task": "eval"}, metrics={"psnr": 31.2})
        assert isinstance(art, Artifact)
        assert art.kind == "image"
        assert art.labels == {"task": "eval"}
        assert art.metrics == {"psnr": 31.2}
        assert art.mime == "image/png"
        assert art.bytes == len(original)
        assert (art.run_id, art.graph_id, art.node_id) == ("run-1", "graph-a", "node-x")
        assert context.artifacts().last_artifact == art
        assert await context.artifacts().load_artifact_bytes(art.uri) == original
        assert [a.id for a in await context.artifacts().list()] == [art.id]

    anyio.run(_run(body), root)
    assert uri.read_bytes() == original


def test_stage_write_ingest(root):
    """Example 2: stage a .csv, write it, ingest it; it loads back as the same text."""

    async def body(context):
        staged = await context.artifacts().stage(".csv")
        with open(staged, "w", encoding="utf-8") as f:
            f.write("x,y\n1,2\n3,4\n")
        art = await context.artifacts().ingest(staged_path=staged, kind="table", labels={"split": "val"})
        assert art.kind == "table"
        assert art.labels == {"split": "val"}
        assert art.mime == "text/csv"
        assert not Path(staged).exists()
        assert await context.artifacts().load_artifact(art.uri) == "x,y\n1,2\n3,4\n"
        assert context.artifacts().last_artifact == art
        found = await context.artifacts().search(kind="table", labels={"split": "val"})
        assert [a.id for a in found] == [art.id]

    anyio.run(_run(body), root)


def test_search_best(root, tmp_path):
    """Example 3: best(kind="model", metric="val_acc", mode="max", scope="run") picks the top model of this run."""

    async def main():
        async with open_ledger(root) as ledger:
            await body(ledger.context(**IDS), ledger.context(**{**IDS, "run_id": "run-2"}))

    async def body(context, other_context):
        arts = context.artifacts()
        assert await arts.best(kind="model", metric="val_acc", mode="max", scope="run") is None
        saved = {}
        for i, acc in enumerate([0.71, 0.93, 0.85]):
            p = tmp_path / f"model-{i}.bin"
            p.write_bytes(f"weights {i}".encode())
            saved[acc] = await arts.save(str(p), kind="model", metrics={"val_acc": acc})
        # A better model in another run must not win this run's best().
        p = tmp_path / "other.bin"
        p.write_bytes(b"other run weights")
        await other_context.artifacts().save(str(p), kind="model", metrics={"val_acc": 0.99})

        winner = await arts.best(kind="model", metric="val_acc", mode="max", scope="run")
        assert winner is not None
        assert winner.id == saved[0.93].id
        assert f"Best model: {winner.uri} acc={winner.metrics['val_acc']:.3f}".endswith("acc=0.930")

    anyio.run(main)


def test_multi_file_directory(root):
    """Example 4: stage_dir, write several files, ingest_dir; the directory loads back identical."""
    files = {
        "index.html": b"<html><body>report</body></html>",
        "css/site.css": b"body { color: black }",
        "img/a/plot.bin": bytes(range(256)),
    }

    async def body(context):
        dir_path = await context.artifacts().stage_dir("_report")
        assert dir_path.endswith("_report")
        for rel, data in files.items():
            target = Path(dir_path) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        art = await context.artifacts().ingest_dir(dir_path, kind="report", labels={"format": "html"})
        assert art.kind == "report"
        assert art.labels == {"format": "html"}
        assert art.bytes == sum(len(d) for d in files.values())
        assert not Path(dir_path).exists()
        loaded = await context.artifacts().load_artifact(art.uri)
        assert isinstance(loaded, Path) and loaded.is_dir()
        got = {p.relative_to(loaded).as_posix(): p.read_bytes() for p in loaded.rglob("*") if p.is_file()}
        assert got == files

    anyio.run(_run(body), root)


def test_pin(root, tmp_path):
    """Example 5: pin(artifact_id=art.id, pinned=True) pins the artifact; reads reflect it."""
    src = tmp_path / "a.txt"
    src.write_text("keep me")

    async def body(context):
        art = await context.artifacts().save(str(src), kind="text")
        assert art.pinned is False
        assert await context.artifacts().pin(artifact_id=art.id, pinned=True) is None
        [listed] = await context.artifacts().list()
        assert listed.id == art.id and listed.pinned is True

    anyio.run(_run(body), root)


def test_writer_png(root):
    """writer() example: PIL saves a PNG into the writer; last_artifact holds it and it decodes back."""

    async def body(context):
        img = Image.new("RGB", (128, 128), (255, 122, 26))
        async with context.artifacts().writer(kind="image", planned_ext=".png") as w:
            img.save(w, format="PNG")
        art = context.artifacts().last_artifact
        assert art is not None
        assert art.kind == "image" and art.mime == "image/png"
        assert art.uri == f"artifact://{art.artifact_id}"
        data = await context.artifacts().load_artifact_bytes(art.uri)
        assert art.bytes == len(data)
        with Image.open(io.BytesIO(data)) as back:
            assert back.format == "PNG"
            assert back.size == (128, 128)
            assert back.convert("RGB").getpixel((0, 0)) == (255, 122, 26)
            assert back.convert("RGB").getpixel((127, 64)) == (255, 122, 26)
        result = {"uri": art.uri}
        assert json.loads(json.dumps(result)) == {"uri": art.uri}

    anyio.run(_run(body), root)


def test_writer_numpy(root):
    """numpy.save(w, array) into writer(); np.load of the loaded bytes gives the same array."""
    array = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 7.0

    async def body(context):
        async with context.artifacts().writer(kind="array", planned_ext=".npy") as w:
            np.save(w, array)
        art = context.artifacts().last_artifact
        assert art is not None and art.kind == "array"
        data = await context.artifacts().load_artifact_bytes(f"artifact://{art.id}")
        back = np.load(io.BytesIO(data))
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)
        # Not JSON or text, so load_artifact hands back the raw bytes.
        assert await context.artifacts().load_artifact(art.uri) == data

    anyio.run(_run(body), root)


# name -> [(parameter, kind, default)]; "-" marks a required parameter.
P, K = "POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY"
REFERENCE_SIGNATURES = {
    "stage": [("ext", P, "")],
    "ingest": [("staged_path", P, "-"), ("kind", K, "-"), ("labels", K, None), ("metrics", K, None),
               ("suggested_uri", K, None), ("pin", K, False)],
    "save": [("path", P, "-"), ("kind", K, "-"), ("labels", K, None), ("metrics", K, None),
             ("suggested_uri", K, None), ("pin", K, False)],
    "writer": [("kind", K, "-"), ("planned_ext", K, None), ("pin", K, False)],
    "stage_dir": [("suffix", P, "")],
    "ingest_dir": [("staged_dir", P, "-")],
    "tmp_path": [("suffix", P, "")],
    "load_artifact": [("uri", P, "-")],
    "load_artifact_bytes": [("uri", P, "-")],
    "list": [("scope", K, "run")],
    "search": [("kind", K, None), ("labels", K, None), ("metric", K, None), ("mode", K, None), ("scope", K, "run"),
               ("extra_scope_labels", K, None)],
    "best": [("kind", K, "-"), ("metric", K, "-"), ("mode", K, "-"), ("scope", K, "run"), ("filters", K, None)],
    "pin": [("artifact_id", P, "-"), ("pinned", P, True)],
}


def test_facade_methods_have_the_reference_signatures():
    """Every reference method exists with its parameter names, kinds and defaults (extras only as optional keywords)."""
    for name, params in REFERENCE_SIGNATURES.items():
        fn = getattr(ArtifactFacade, name)
        sig = inspect.signature(fn)
        got = {p.name: p for p in sig.parameters.values() if p.name != "self"}
        for pname, kind, default in params:
            assert pname in got, (name, pname)
            p = got[pname]
            assert p.kind.name == kind, (name, pname, p.kind)
            want = inspect.Parameter.empty if default == "-" else default
            assert p.default == want, (name, pname, p.default)
        for extra in set(got) - {p[0] for p in params}:
            p = got[extra]
            assert p.kind is inspect.Parameter.VAR_KEYWORD or (
                p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
            ), (name, extra)
        if name == "writer":
            assert not inspect.iscoroutinefunction(fn)
        else:
            assert inspect.iscoroutinefunction(fn), name
    assert "kw" in inspect.signature(ArtifactFacade.ingest_dir).parameters
