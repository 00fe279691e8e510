"""Staged inputs survive a failed recording; NumPy metrics; read-only materialised trees."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anyio
import numpy as np
import pytest

from artifact_ledger.facade import open_ledger


class Boom(RuntimeError):
    """Injected failure of the log append."""


def _run(root, body):
    async def main():
        async with open_ledger(root, fsync=False) as led:
            await body(led, led.artifacts(run_id="r", graph_id="g", node_id="n"))

    anyio.run(main)


def test_failed_ingest_keeps_the_staged_file(root, monkeypatch):
    """If the event cannot be recorded, ingest() leaves the staged file for a retry."""

    async def body(led, arts):
        staged = Path(await arts.stage(".txt"))
        staged.write_text("precious")

        async def fail(event):
            raise Boom("disk on fire")

        monkeypatch.setattr(led, "_append", fail)
        with pytest.raises(Boom):
            await arts.ingest(str(staged), kind="text")
        assert staged.read_text() == "precious"
        assert staged.stat().st_nlink == 1, "the staged file must not share its inode with a blob"
        monkeypatch.undo()
        # The user changes the staged file before retrying; a blob the failed attempt left
        # behind (it is published with the next commit) must keep its own bytes.
        staged.write_text("changed")
        art = await arts.ingest(str(staged), kind="text")
        assert not staged.exists()
        assert await arts.load_artifact(art.uri) == "changed"
        sha = hashlib.sha256(b"precious").hexdigest()
        assert led.store.exists(sha) and led.store.verify(sha)

    _run(root, body)


def test_failed_ingest_dir_keeps_the_staged_tree(root, monkeypatch):
    """If the event cannot be recorded, ingest_dir() leaves every staged file in place."""

    async def body(led, arts):
        d = Path(await arts.stage_dir())
        (d / "sub").mkdir()
        (d / "sub" / "a.txt").write_text("a")
        (d / "b.bin").write_bytes(b"b")

        async def fail(event):
            raise Boom("disk on fire")

        monkeypatch.setattr(led, "_append", fail)
        with pytest.raises(Boom):
            await arts.ingest_dir(str(d), kind="report")
        assert (d / "sub" / "a.txt").read_text() == "a" and (d / "b.bin").read_bytes() == b"b"
        assert (d / "sub" / "a.txt").stat().st_nlink == 1 and (d / "b.bin").stat().st_nlink == 1
        monkeypatch.undo()
        art = await arts.ingest_dir(str(d), kind="report")
        assert not d.exists()
        tree = await arts.load_artifact(art.uri)
        assert (tree / "sub" / "a.txt").read_text() == "a"

    _run(root, body)


def test_numpy_scalar_metrics_are_plain_numbers(root, tmp_path):
    """NumPy integer and float scalars are accepted as metrics and stored as int/float."""
    src = tmp_path / "m.bin"
    src.write_bytes(b"m")

    async def body(led, arts):
        art = await arts.save(str(src), kind="model", metrics={"a": np.int64(3), "b": np.float32(0.5)})
        assert art.metrics == {"a": 3, "b": 0.5}
        assert type(art.metrics["a"]) is int and type(art.metrics["b"]) is float
        with pytest.raises(ValueError, match="'c'"):
            await arts.save(str(src), kind="model", metrics={"c": np.float64("nan")})
        with pytest.raises(TypeError, match="'d'"):
            await arts.save(str(src), kind="model", metrics={"d": np.bool_(True)})

    _run(root, body)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_materialised_tree_is_read_only(root):
    """A loaded directory artifact cannot be changed in place (it is shared by every load)."""

    async def body(led, arts):
        d = Path(await arts.stage_dir())
        (d / "sub").mkdir()
        (d / "sub" / "a.txt").write_text("a")
        tree = await arts.load_artifact((await arts.ingest_dir(str(d))).uri)
        with pytest.raises(PermissionError):
            (tree / "sub" / "new.txt").write_text("x")
        with pytest.raises(PermissionError):
            (tree / "sub" / "a.txt").write_text("x")

    _run(root, body)


def test_materialised_tree_modes(root):
    """Materialised files are 0444 and folders 0555, whoever runs the tests."""

    async def body(led, arts):
        d = Path(await arts.stage_dir())
        (d / "sub").mkdir()
        (d / "sub" / "a.txt").write_text("a")
        tree = await arts.load_artifact((await arts.ingest_dir(str(d))).uri)
        assert (tree.stat().st_mode & 0o777) == 0o555
        assert ((tree / "sub").stat().st_mode & 0o777) == 0o555
        assert ((tree / "sub" / "a.txt").stat().st_mode & 0o777) == 0o444

    _run(root, body)
