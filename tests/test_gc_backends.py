"""gc on the distributed backends: the log in PostgreSQL (its table lock is the protocol's log lock) with the
blobs in S3 (SeaweedFS on loopback), so writers and a gc may run on different machines."""

from __future__ import annotations

import os

import anyio
import boto3
import pytest

from artifact_ledger.facade import open_ledger

P1 = {"run_id": "r1", "graph_id": "g1", "node_id": "n1", "project_id": "p1"}


def go(tmp_path, url, blobs, fn, machine="a"):
    async def main():
        async with open_ledger(url, blobs=blobs, cache_dir=tmp_path / machine) as led:
            fa = led.artifacts(**P1)

            async def save(data: bytes, **kw):
                p = tmp_path / f"f{os.urandom(6).hex()}.bin"
                p.write_bytes(data)
                kw.setdefault("kind", "model")
                return await fa.save(str(p), **kw)

            return await fn(led, fa, save)
    return anyio.run(main)


@pytest.fixture
def place(s3_place):
    bucket, prefix = s3_place
    return bucket, prefix, f"s3://{bucket}/{prefix}"


def present(bucket: str, prefix: str, sha: str) -> bool:
    try:
        boto3.client("s3").head_object(Bucket=bucket, Key=f"{prefix}/sha256/{sha[:2]}/{sha}")
        return True
    except Exception as exc:  # botocore's ClientError for a 404
        if "404" in str(exc) or "Not Found" in str(exc):
            return False
        raise


def test_purge_then_gc_deletes_the_object_and_verify_tells_it_collected(tmp_path, pg_url, place):
    bucket, prefix, url = place

    async def t(led, fa, save):
        keep = await save(b"kept bytes")
        gone = await save(b"purged bytes")
        await fa.purge(gone.artifact_id, "contains secrets")
        plan = await led.gc(grace=0)
        assert gone.sha256 in plan.blobs and keep.sha256 not in plan.blobs
        res = await led.gc(dry_run=False, grace=0)
        assert res.blobs >= 1
        assert not present(bucket, prefix, gone.sha256) and present(bucket, prefix, keep.sha256)
        check = await led.verify()
        assert check.ok and gone.sha256 in check.collected, check
        types = [e.type async for e in led.events()]
        assert "gc.planned" in types and "gc.swept" in types
        return keep

    keep = go(tmp_path, pg_url, url, t)

    async def other(led, fa, save):
        # Another machine (its own cache) sees the purge and the kept bytes.
        assert await fa.load_artifact_bytes(keep.uri) == b"kept bytes"
        assert (await led.verify()).ok
    go(tmp_path, pg_url, url, other, machine="b")


def test_a_writer_whose_object_a_gc_deletes_before_its_append_stores_it_again(tmp_path, pg_url, place,
                                                                              monkeypatch):
    """The protocol's race on PostgreSQL + S3: the object is uploaded (found present), then collected by a gc
    elsewhere, then the event is appended: the check under the table lock stores it again first."""
    bucket, prefix, url = place

    async def t(led, fa, save):
        a = await save(b"shared bytes")
        await fa.purge(a.artifact_id, "x")
        real = led.store.put_file
        fired = []

        def put_then_collected(path, adopt=False):
            info = real(path, adopt=adopt)
            if not fired:
                fired.append(info.sha256)
                led.store.delete(info.sha256)  # what a gc on another machine may do right now
            return info

        monkeypatch.setattr(led.store, "put_file", put_then_collected)
        b = await save(b"shared bytes")
        assert fired == [b.sha256]
        assert present(bucket, prefix, b.sha256)
        assert (await led.verify()).ok
        return b

    b = go(tmp_path, pg_url, url, t)

    async def other(led, fa, save):
        assert await fa.load_artifact_bytes(b.uri) == b"shared bytes"
    go(tmp_path, pg_url, url, other, machine="b")


def test_gc_holds_the_table_lock_while_it_deletes(tmp_path, pg_url, place):
    """While a gc holds the log (the sweep's critical section), no append of another process commits."""
    bucket, prefix, url = place
    from artifact_ledger.ledger.errors import LockTimeout

    async def t(led, fa, save):
        await save(b"x")
        with led._log.holding(lambda rec: None):
            async with open_ledger(pg_url, blobs=url, cache_dir=tmp_path / "w", lock_timeout=0.5) as other:
                src = tmp_path / "y.bin"
                src.write_bytes(b"y")
                with pytest.raises(LockTimeout):
                    await other.artifacts(**P1).save(str(src), kind="model")
        # Released: the same save now commits.
        async with open_ledger(pg_url, blobs=url, cache_dir=tmp_path / "w") as other:
            src = tmp_path / "y.bin"
            await other.artifacts(**P1).save(str(src), kind="model")
    go(tmp_path, pg_url, url, t)

