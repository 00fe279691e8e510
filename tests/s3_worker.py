"""A worker process of tests/test_s3_multiprocess.py: saves into a shared ledger with S3 blobs, printing
``ack <artifact id>`` once each save returned (so the parent knows what was acknowledged)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

from artifact_ledger.facade import open_ledger


async def main(root: str, url: str, cache: str, count: int, big: int) -> None:
    async with open_ledger(root, blobs=url, cache_dir=cache) as led:
        fa = led.artifacts(run_id=f"w{os.getpid()}", graph_id="g", node_id="n")
        scratch = Path(cache) / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        last = None
        for i in range(count):
            op = i % 4
            if op == 0 or big:
                f = scratch / f"f{i}.bin"
                f.write_bytes(os.urandom(big or 2000))
                art = await fa.save(str(f), kind="bin", metrics={"i": i})
            elif op == 1:
                async with fa.writer(kind="bin", metrics={"i": i}) as w:
                    w.write(os.urandom(3000))
                art = fa.last_artifact
            elif op == 2:
                d = Path(await fa.stage_dir())
                (d / "a").write_bytes(os.urandom(100))
                (d / "b").write_bytes(b"shared member")  # the same bytes from every worker
                art = await fa.ingest_dir(str(d), metrics={"i": i})
            else:
                assert last is not None
                await fa.pin(last.artifact_id)
                art = last
            last = art
            print(f"ack {art.artifact_id}", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
