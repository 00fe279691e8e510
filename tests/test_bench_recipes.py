"""The benchmarks' synthetic ledgers, built small, open cleanly by the rules a real open applies (the
last batch's blobs checked, no checkpoint to lean on): a benchmark whose recipe the recovery rules
refuse cannot print a figure. bench_facade's and bench_projections' recipes named blobs that never
existed, and on a fresh machine both failed at their first open."""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import anyio
import pytest

from artifact_ledger.facade import open_ledger

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(autouse=True)
def _benchmarks_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


def _reopen_without_checkpoints(root: Path) -> tuple[int, int]:
    """Open the ledger with its checkpoints gone, every warning an error; (head seq, artifacts)."""
    shutil.rmtree(root / "checkpoints", ignore_errors=True)

    async def main() -> tuple[int, int]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            async with open_ledger(root) as led:
                assert (await led.verify()).ok
                return led.head[0], len(led.catalog.rows)

    return anyio.run(main)


def test_bench_facade_big_ledger(tmp_path):
    """bench_facade's big ledger (64 concurrent appends through the facade, fsync off)."""
    import bench_facade

    root = tmp_path / "facade"
    anyio.run(bench_facade.build_ledger, root, 2, 40)
    assert _reopen_without_checkpoints(root) == (80, 80)


def test_bench_projections_ledger(tmp_path):
    """bench_projections' ledger (appends from many tasks, a user projection registered)."""
    import bench_projections

    root = tmp_path / "projections"
    pool = bench_projections.store_pool(root)

    async def build() -> None:
        async with open_ledger(root, fsync=False, projections=[bench_projections.Count()]) as led:
            await bench_projections.append_all(led, 0, 50, 8, pool)

    anyio.run(build)
    assert _reopen_without_checkpoints(root) == (50, 50)


def test_bench_history_big_ledger(tmp_path):
    """bench_history's big ledger (written straight into the segment log, then opened once)."""
    import bench_history

    root = tmp_path / "history"
    bench_history.build_big(root, 1)
    head, arts = _reopen_without_checkpoints(root)
    assert head == bench_history.EVENTS_PER_RUN and arts == bench_history.ARTS_PER_RUN
    sys.modules.pop("bench_history", None)
