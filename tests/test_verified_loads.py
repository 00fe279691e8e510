"""Loads do not trust the disk (every blob is checked against its SHA-256, a materialised copy is
verified or rebuilt), and decoding follows the kind first, with errors naming the artifact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import pytest

from artifact_ledger import ArtifactCorrupted, ArtifactDecodeError, open_ledger


def _facade(led):
    return led.artifacts(run_id="r", graph_id="g", node_id="n")


def _alter(path: Path, new: bytes | None = None) -> None:
    """Change a read-only file's bytes in place (same length unless ``new`` says otherwise)."""
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o644)
    data = path.read_bytes()
    path.write_bytes(new if new is not None else bytes([data[0] ^ 1]) + data[1:])


def test_an_altered_blob_is_refused_naming_the_artifact_and_its_path(root, tmp_path):
    """load_artifact_bytes and load_artifact raise ArtifactCorrupted naming the artifact and the blob's
    path. (Old code: returned the altered bytes.)"""
    src = tmp_path / "model.bin"
    src.write_bytes(b"trusted weights " * 100)

    async def main():
        async with open_ledger(root) as led:
            arts = _facade(led)
            art = await arts.save(str(src), kind="model")
            blob = led.store.path(art.sha256)
            _alter(blob)
            for load in (arts.load_artifact_bytes, arts.load_artifact):
                with pytest.raises(ArtifactCorrupted) as info:
                    await load(art.uri)
                assert art.artifact_id in str(info.value) and str(blob) in str(info.value)

    anyio.run(main)


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("edit", ["change", "add", "remove"])
def test_an_edited_materialised_copy_is_rebuilt(root, edit):
    """A materialised directory copy that was changed, grown or shrunk is rebuilt from the blobs on the
    next load. (Old code: handed the edited directory back.)"""

    async def main():
        async with open_ledger(root) as led:
            arts = _facade(led)
            d = Path(await arts.stage_dir())
            (d / "sub").mkdir()
            (d / "a.txt").write_bytes(b"alpha")
            (d / "sub" / "b.bin").write_bytes(b"beta")
            art = await arts.ingest_dir(str(d))
            first = await arts.load_artifact(art.uri)
            want = _tree(first)
            os.chmod(first, 0o755)
            os.chmod(first / "sub", 0o755)
            if edit == "change":
                _alter(first / "a.txt", b"ALPHA")
            elif edit == "add":
                (first / "sub" / "extra.txt").write_bytes(b"planted")
            else:
                os.unlink(first / "sub" / "b.bin")
            again = await arts.load_artifact(art.uri)
            assert _tree(again) == want

    anyio.run(main)


def test_a_damaged_file_blob_of_a_directory_artifact_is_refused(root):
    async def main():
        async with open_ledger(root) as led:
            arts = _facade(led)
            d = Path(await arts.stage_dir())
            (d / "a.txt").write_bytes(b"inside")
            art = await arts.ingest_dir(str(d))
            import hashlib
            _alter(led.store.path(hashlib.sha256(b"inside").hexdigest()))
            with pytest.raises(ArtifactCorrupted, match=art.artifact_id):
                await arts.load_artifact(art.uri)
            assert not (led.materialized / art.sha256).exists()

    anyio.run(main)


def test_decoding_follows_the_kind_and_failures_name_the_artifact(root, tmp_path):
    """A binary weights.json of kind "model" loads as bytes (old code: UnicodeDecodeError); invalid JSON of
    kind "json" raises ArtifactDecodeError naming the artifact and load_artifact_bytes (old code: a bare
    utf-16 decode error); +json MIME types load as JSON, not bytes."""
    weights = tmp_path / "weights.json"
    weights.write_bytes(b"\x80\x00\xff\xfe binary")
    bad = tmp_path / "broken.dat"
    bad.write_bytes(b"\x00{not json")
    geo = tmp_path / "shape.geojson"
    geo.write_text(json.dumps({"type": "Point", "coordinates": [1, 2]}))
    ld = tmp_path / "page.jsonld"
    ld.write_text('{"@id": "x"}')

    async def main():
        async with open_ledger(root) as led:
            arts = _facade(led)
            w = await arts.save(str(weights), kind="model")
            assert await arts.load_artifact(w.uri) == weights.read_bytes()
            b = await arts.save(str(bad), kind="json")
            with pytest.raises(ArtifactDecodeError) as info:
                await arts.load_artifact(b.uri)
            assert b.artifact_id in str(info.value) and "load_artifact_bytes" in str(info.value)
            assert await arts.load_artifact_bytes(b.uri) == bad.read_bytes()
            g = await arts.save(str(geo), kind="shape")
            assert g.mime == "application/geo+json"
            assert await arts.load_artifact(g.uri) == {"type": "Point", "coordinates": [1, 2]}
            p = await arts.save(str(ld), kind="page")
            assert await arts.load_artifact(p.uri) == {"@id": "x"}

    anyio.run(main)
