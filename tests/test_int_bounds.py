"""Integer labels and metrics: the event encoding's range is accepted, anything beyond is refused up front."""

from __future__ import annotations

import anyio
import pytest

from artifact_ledger.facade import open_ledger

EDGES = [-(2**63), 2**63, 2**64 - 1]
BEYOND = [-(2**63) - 1, 2**64, 10**30]


def test_edge_integers_read_back_after_reopen(root, tmp_path):
    """The extreme integers msgpack holds are recorded and read back unchanged after a reopen."""
    src = tmp_path / "x.bin"
    src.write_bytes(b"x")

    async def main():
        async with open_ledger(root, fsync=False) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            saved = [await arts.save(str(src), kind="k", labels={"i": v}, metrics={"m": v}) for v in EDGES]
        async with open_ledger(root, fsync=False) as led:
            return saved, await led.artifacts(run_id="r", graph_id="g", node_id="n").list()

    saved, listed = anyio.run(main)
    assert listed == saved[::-1]
    assert [(a.labels["i"], a.metrics["m"]) for a in listed] == [(v, v) for v in EDGES[::-1]]


@pytest.mark.parametrize("value", BEYOND)
@pytest.mark.parametrize("where", ["labels", "metrics"])
def test_out_of_range_integers_raise_value_error_naming_the_key(root, tmp_path, value, where):
    """An integer the log cannot encode raises ValueError naming its key, and nothing is written."""
    src = tmp_path / "x.bin"
    src.write_bytes(b"never stored")

    async def main():
        async with open_ledger(root, fsync=False) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            with pytest.raises(ValueError, match="'too_big'"):
                await arts.save(str(src), kind="k", **{where: {"too_big": value}})
            return led.head[0]

    assert anyio.run(main) == 0
    assert [p for p in (root / "blobs").rglob("*") if p.is_file()] == []
