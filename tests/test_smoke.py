"""The thinnest end-to-end path: open, save, list, close, reopen."""

import anyio

from artifact_ledger.facade import Artifact, open_ledger


def test_open_save_list_close_reopen(root, tmp_path):
    src = tmp_path / "plot.png"
    src.write_bytes(b"\x89PNG fake")

    async def main():
        led = await open_ledger(root)
        facade = led.context(run_id="r1", graph_id="g", node_id="n").artifacts()
        art = await facade.save(str(src), kind="image", labels={"task": "eval"}, metrics={"psnr": 31.2})
        assert isinstance(art, Artifact)
        assert [a.artifact_id for a in await facade.list()] == [art.artifact_id]
        await led.aclose()
        async with open_ledger(root) as again:
            listed = await again.artifacts(run_id="r1", graph_id="g", node_id="n").list()
            assert listed == [art]

    anyio.run(main)
