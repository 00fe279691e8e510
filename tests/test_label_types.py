"""Label values read back exactly as recorded (1 stays int, 1.0 stays float) while matching as JSON numbers."""

import anyio

from artifact_ledger.facade import open_ledger


def test_int_and_float_labels_keep_their_type_and_match_each_other(root, tmp_path):
    """1 and 1.0 are one JSON number for search, but each artifact returns the value it was saved with."""
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")

    async def session(check_only: bool):
        async with open_ledger(root) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            if not check_only:
                await arts.save(str(src), kind="k", labels={"a": 1, "b": [1, 2]})
                await arts.save(str(src), kind="k", labels={"a": 1.0, "b": [1.0, 2]})
                await arts.save(str(src), kind="k", labels={"a": True})
            got = [a.labels for a in reversed(await arts.list())]
            assert got == [{"a": 1, "b": [1, 2]}, {"a": 1.0, "b": [1.0, 2]}, {"a": True}]
            assert [type(x["a"]) for x in got] == [int, float, bool]
            assert type(got[1]["b"][0]) is float
            for probe in (1, 1.0):
                assert len(await arts.search(labels={"a": probe})) == 2
            assert len(await arts.search(labels={"a": True})) == 1
            assert len(await arts.search(labels={"b": [1, 2]})) == 2

    anyio.run(session, False)
    anyio.run(session, True)  # after a checkpoint on close
