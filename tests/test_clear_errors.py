"""Bad arguments get an error naming what was wrong, raised before anything is written (issue 6, "wrong today")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

from artifact_ledger.facade import open_ledger

R1 = {"run_id": "r1", "graph_id": "g1", "node_id": "n1"}


def written(root: Path) -> tuple:
    """Log bytes, blobs, store temp files and staging: what a refused call must not change."""
    return (
        sorted((p.name, p.stat().st_size) for p in (root / "log").iterdir()),
        sorted(p.name for p in (root / "blobs" / "sha256").rglob("*") if p.is_file()),
        sorted(os.listdir(root / "blobs" / "tmp")),
        sorted(os.listdir(root / "staging")),
    )


def with_ledger(root: Path, tmp_path: Path, body) -> None:
    """Run ``body(ledger, facade)`` on a ledger holding two saved models."""
    async def main() -> None:
        async with open_ledger(root) as led:
            arts = led.artifacts(**R1)
            for i, acc in enumerate((0.5, 0.9)):
                src = tmp_path / f"m{i}.bin"
                src.write_bytes(b"model %d" % i)
                await arts.save(str(src), kind="model", metrics={"acc": acc}, labels={"epoch": i})
            await body(led, arts)

    anyio.run(main)


# ---------------------------------------------------------------- as_of(time=)
@pytest.mark.parametrize("bad", [10**9, -5, 0, 1, 2.5, "2024-05-01T00:00:00Z", date(2024, 5, 1), True])
def test_as_of_time_takes_aware_datetimes_only(root, tmp_path, bad):
    """time=10**9 was shown as seq 1000000000, time=-5 as an empty view, time=0 raised AttributeError."""

    async def body(led, arts):
        with pytest.raises(TypeError, match=r"^time must be a timezone-aware datetime"):
            await led.as_of(time=bad)

    with_ledger(root, tmp_path, body)


def test_as_of_time_refuses_naive_datetimes_and_seq_refuses_datetimes(root, tmp_path):
    """A naive datetime is a ValueError naming time; seq= takes an int position, not a moment."""

    async def body(led, arts):
        with pytest.raises(ValueError, match="time=.*naive"):
            await led.as_of(time=datetime(2030, 1, 1))
        with pytest.raises(TypeError, match="^seq must be an int"):
            await led.as_of(seq=datetime.now(timezone.utc))
        # The aware forms still work, in any zone.
        view = await led.as_of(time=datetime.now(timezone(timedelta(hours=-5))) + timedelta(days=1))
        assert view.seq == led.head[0]
        assert (await led.as_of(seq=1)).seq == 1

    with_ledger(root, tmp_path, body)


# ---------------------------------------------------------------- paths that are not regular files
def test_save_of_an_empty_path_or_a_device_says_what_it_is_and_writes_nothing(root, tmp_path):
    """save("") is not the current directory, and /dev/null is a character device, not a directory."""

    async def body(led, arts):
        before = written(led.root)
        with pytest.raises(ValueError, match="path is empty"):
            await arts.save("", kind="text")
        with pytest.raises(ValueError, match="/dev/null.*character device"):
            await arts.save("/dev/null", kind="text")
        with pytest.raises(IsADirectoryError, match="is a directory"):
            await arts.save(str(tmp_path), kind="text")
        assert written(led.root) == before

    with_ledger(root, tmp_path, body)


_FIFO_SCRIPT = textwrap.dedent("""
    import os, sys
    import anyio
    from artifact_ledger.facade import open_ledger

    async def main():
        async with open_ledger(sys.argv[1]) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            fifo = sys.argv[2]
            os.mkfifo(fifo)
            for call in (lambda: arts.save(fifo, kind="text"),):
                try:
                    await call()
                    print("accepted")
                except Exception as exc:
                    print(type(exc).__name__, exc)
            staged = await arts.stage(".txt")
            os.unlink(staged)
            os.mkfifo(staged)
            try:
                await arts.ingest(staged, kind="text")
                print("accepted")
            except Exception as exc:
                print(type(exc).__name__, exc)
            print("head", led.head[0], "staged", os.path.exists(staged))

    anyio.run(main)
""")


def test_save_and_ingest_of_a_fifo_say_so_without_blocking(root, tmp_path):
    """A FIFO is named as one, never opened (which would block until a writer came); nothing is recorded."""
    proc = subprocess.run([sys.executable, "-c", _FIFO_SCRIPT, str(root), str(tmp_path / "pipe")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ValueError") and "FIFO (named pipe)" in lines[0] and "pipe" in lines[0], lines
    assert lines[1].startswith("ValueError") and "FIFO (named pipe)" in lines[1], lines
    assert lines[2] == "head 0 staged True"


# ---------------------------------------------------------------- queries
def test_best_blames_filters_not_labels(root, tmp_path):
    """best(filters="x") names the argument the caller actually passed."""

    async def body(led, arts):
        with pytest.raises(TypeError, match="^filters must be a dict"):
            await arts.best(kind="model", metric="acc", mode="max", filters="x")
        with pytest.raises(TypeError, match="^filters key 1 is a int"):
            await arts.best(kind="model", metric="acc", mode="max", filters={1: 2})
        assert (await arts.best(kind="model", metric="acc", mode="max", filters={"epoch": 1})).metrics == {"acc": 0.9}

    with_ledger(root, tmp_path, body)


def test_an_empty_metric_name_is_refused_before_anything_is_written(root, tmp_path):
    """A metric named "" could be saved but never ranked (search/best refuse an empty metric)."""
    src = tmp_path / "x.txt"
    src.write_text("x")

    async def body(led, arts):
        before = written(led.root)
        with pytest.raises(ValueError, match="metrics key '' is empty"):
            await arts.save(str(src), kind="m", metrics={"": 1.0})
        assert written(led.root) == before
        with pytest.raises(TypeError, match="metric must be a non-empty string"):
            await arts.best(kind="m", metric="", mode="max")

    with_ledger(root, tmp_path, body)


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (-10**6, ValueError), (1.5, TypeError),
                                        ("3", TypeError), (True, TypeError)])
def test_search_limit_must_be_a_non_negative_int(root, tmp_path, bad, error):
    """limit=-1 (and floats, strings, bools) are refused naming limit; 0 is an empty answer."""

    async def body(led, arts):
        with pytest.raises(error, match="^limit must be a non-negative integer"):
            await arts.search(kind="model", limit=bad)
        with pytest.raises(error, match="^limit must be a non-negative integer"):
            await arts.search(kind="model", metric="acc", mode="max", limit=bad)
        assert await arts.search(kind="model", limit=0) == []
        assert len(await arts.search(kind="model", limit=1)) == 1

    with_ledger(root, tmp_path, body)
