"""The log in PostgreSQL with the blobs in S3 (SeaweedFS on loopback): two "machines" that share only
the two URLs, each with a cache directory of its own, see and load each other's artifacts."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import boto3

from artifact_ledger.facade import open_ledger

R = {"run_id": "r1", "graph_id": "g1", "node_id": "n1", "project_id": "p1"}


def test_two_machines_share_a_catalogue_and_its_bytes(pg_url, s3_place, tmp_path):
    bucket, prefix = s3_place
    blobs = f"s3://{bucket}/{prefix}"
    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(3000))

    async def main():
        async with open_ledger(pg_url, blobs=blobs, cache_dir=tmp_path / "machine-a") as a:
            fa = a.artifacts(**R)
            saved = await fa.save(str(src), kind="model", metrics={"acc": 0.9})
            d = Path(await fa.stage_dir())
            (d / "x.txt").write_text("X")
            tree = await fa.ingest_dir(str(d), kind="dataset")
            async with open_ledger(pg_url, blobs=blobs, cache_dir=tmp_path / "machine-b") as b:
                # B sees A's commits and loads their bytes from S3, not from A's disk.
                best = await b.artifacts(**R).best(kind="model", metric="acc", mode="max", scope="run")
                assert best is not None and best.artifact_id == saved.artifact_id
                loaded = await b.artifacts(**R).load_artifact(saved.uri)
                assert loaded == src.read_bytes()
                assert any((tmp_path / "machine-b" / "s3-cache").rglob(saved.sha256))
                tree_path = await b.artifacts(**R).load_artifact(tree.uri)
                assert (Path(tree_path) / "x.txt").read_text() == "X"
                result = await b.verify()
                assert result.ok, result
            # Every object the events name exists in the bucket.
            client = boto3.client("s3")
            for art in (saved, tree):
                client.head_object(Bucket=bucket, Key=f"{prefix}/sha256/{art.sha256[:2]}/{art.sha256}")

    anyio.run(main)
