"""The whole facade with the file log and blobs in S3 (SeaweedFS on loopback): every capability,
the ordering rule (object acknowledged before its event), and where a ledger remembers its blobs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import anyio
import boto3
import pytest

import artifact_ledger.ledger.filelog as filelog
from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger.events import ArtifactRecorded, decode_event

R = {"run_id": "r1", "graph_id": "g1", "node_id": "n1", "project_id": "p1"}


@pytest.fixture
def place(s3_place):
    bucket, prefix = s3_place
    return bucket, prefix, f"s3://{bucket}/{prefix}"


def keys(bucket: str, prefix: str) -> list[str]:
    client = boto3.client("s3")
    out: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def obj_key(prefix: str, sha: str) -> str:
    return f"{prefix}/sha256/{sha[:2]}/{sha}"


def run(fn):
    return anyio.run(fn)


def test_every_capability_with_s3_blobs(tmp_path, place):
    bucket, prefix, url = place
    src = tmp_path / "model.json"
    src.write_text(json.dumps({"w": [1, 2, 3]}))

    async def main():
        async with open_ledger(tmp_path / "L", blobs=url, cache_dir=tmp_path / "cache") as led:
            fa = led.artifacts(**R)
            saved = await fa.save(str(src), kind="json", metrics={"loss": 0.5})
            staged = await fa.stage(".txt")
            Path(staged).write_text("hello")
            ingested = await fa.ingest(staged, kind="text", metrics={"loss": 0.2})
            assert not Path(staged).exists()
            async with fa.writer(kind="bin", planned_ext=".bin") as f:
                f.write(b"\x00\x01" * 1000)
            written = fa.last_artifact
            d = Path(await fa.stage_dir())
            (d / "sub").mkdir()
            (d / "a.txt").write_text("A")
            (d / "sub" / "b.txt").write_text("B")
            tree = await fa.ingest_dir(str(d), kind="dataset")
            await fa.pin(saved.artifact_id)

            # Every blob (and the directory's members and manifest) is an object under the prefix.
            stored = keys(bucket, prefix)
            for art in (saved, ingested, written, tree):
                assert obj_key(prefix, art.sha256) in stored
            for data in (b"A", b"B"):
                assert obj_key(prefix, hashlib.sha256(data).hexdigest()) in stored
            assert not any((tmp_path / "L" / "blobs" / "sha256").iterdir())  # nothing local

            assert await fa.load_artifact(saved.uri) == {"w": [1, 2, 3]}
            assert await fa.load_artifact(ingested.uri) == "hello"
            assert await fa.load_artifact_bytes(written.uri) == b"\x00\x01" * 1000
            path = await fa.load_artifact(tree.uri)
            assert (path / "a.txt").read_text() == "A" and (path / "sub" / "b.txt").read_text() == "B"
            local = await fa.local_path(saved.uri)
            assert json.loads(local.read_text()) == {"w": [1, 2, 3]}
            assert local.is_relative_to(tmp_path / "cache")

            assert (await fa.best(kind="text", metric="loss", mode="min")).artifact_id == ingested.artifact_id
            assert {a.artifact_id for a in await fa.search(scope="run")} == {
                saved.artifact_id, ingested.artifact_id, written.artifact_id, tree.artifact_id}
            assert (await fa.get(saved.artifact_id)).pinned
            view = await led.as_of(seq=1)
            assert [a.artifact_id for a in await view.artifacts(**R).list()] == [saved.artifact_id]
            assert len(await led.history(saved.artifact_id)) == 2

            res = await led.verify()
            assert res.ok, res.problems
            assert res.blobs == 6  # four artifacts' blobs, plus the directory's two members

            out = await fa.export_files(tmp_path / "export", scope="run")
            assert (out[tree.artifact_id] / "sub" / "b.txt").read_text() == "B"
            assert out[written.artifact_id].read_bytes() == b"\x00\x01" * 1000
            await led.sweep(materialized=True)
            return saved, tree

    saved, tree = run(main)

    async def reopen():
        # Another machine: its own cache, nothing local but the log; the ledger remembers the place.
        async with open_ledger(tmp_path / "L", cache_dir=tmp_path / "cache2") as led:
            fa = led.artifacts(**R)
            assert await fa.load_artifact(saved.uri) == {"w": [1, 2, 3]}
            assert ((await fa.load_artifact(tree.uri)) / "a.txt").read_text() == "A"
            assert (await led.verify()).ok

    run(reopen)


def test_object_is_acknowledged_before_its_event_is_appended(tmp_path, place, monkeypatch):
    bucket, prefix, url = place
    client = boto3.client("s3")
    seen: list[str] = []
    real = filelog.SegmentLog.append_batch

    def append_batch(self, payloads, *a, **kw):
        for p in payloads:
            ev = decode_event(bytes(p))
            if isinstance(ev, ArtifactRecorded):
                # The object must be in the bucket, as another machine would see it, before the event exists.
                client.head_object(Bucket=bucket, Key=obj_key(prefix, ev.sha256))
                seen.append(ev.sha256)
        return real(self, payloads, *a, **kw)

    monkeypatch.setattr(filelog.SegmentLog, "append_batch", append_batch)
    f = tmp_path / "x.bin"
    f.write_bytes(os.urandom(1000))

    async def main():
        async with open_ledger(tmp_path / "L", blobs=url, cache_dir=tmp_path / "c") as led:
            fa = led.artifacts(**R)
            await fa.save(str(f), kind="bin")
            async with fa.writer(kind="bin") as w:
                w.write(b"written")
            d = Path(await fa.stage_dir())
            (d / "m").write_bytes(b"member")
            await fa.ingest_dir(str(d))

    run(main)
    assert len(seen) == 3


def test_verify_finds_missing_and_damaged_objects(tmp_path, place):
    bucket, prefix, url = place
    client = boto3.client("s3")

    async def main():
        async with open_ledger(tmp_path / "L", blobs=url, cache_dir=tmp_path / "c") as led:
            fa = led.artifacts(**R)
            a = tmp_path / "a"
            a.write_bytes(b"aaaa")
            b = tmp_path / "b"
            b.write_bytes(b"bbbb")
            art_a = await fa.save(str(a), kind="bin")
            art_b = await fa.save(str(b), kind="bin")
            await fa.load_artifact_bytes(art_a.uri)  # cached: verify must still check the object itself
            client.put_object(Bucket=bucket, Key=obj_key(prefix, art_a.sha256), Body=b"evil")
            client.delete_object(Bucket=bucket, Key=obj_key(prefix, art_b.sha256))
            res = await led.verify()
            assert not res.ok
            text = "\n".join(res.problems)
            assert f"blob {art_a.sha256} (artifact {art_a.artifact_id}) does not match" in text
            assert f"blob {art_b.sha256} (artifact {art_b.artifact_id}) is missing" in text

    run(main)


def test_a_ledger_remembers_its_blob_place_and_refuses_another(tmp_path, place):
    bucket, prefix, url = place

    async def main():
        async with open_ledger(tmp_path / "L", blobs=url, cache_dir=tmp_path / "c"):
            pass
        assert (tmp_path / "L" / "blobs" / "remote").read_text() == url + "\n"
        with pytest.raises(ValueError, match=f"keeps its blobs in {url}, not s3://{bucket}/other"):
            await open_ledger(tmp_path / "L", blobs=f"s3://{bucket}/other", cache_dir=tmp_path / "c")
        # Options (timeouts, part sizes) may differ between opens; the place may not.
        async with open_ledger(tmp_path / "L", blobs=url + "?read_timeout=30", cache_dir=tmp_path / "c") as led:
            assert led.store.location == url

        async with open_ledger(tmp_path / "local") as led:  # blobs in the directory, and events naming them
            f = tmp_path / "f"
            f.write_bytes(b"f")
            await led.artifacts(**R).save(str(f), kind="bin")
        with pytest.raises(ValueError, match="cannot move them to"):
            await open_ledger(tmp_path / "local", blobs=url, cache_dir=tmp_path / "c")
        assert not (tmp_path / "local" / "blobs" / "remote").exists()

    run(main)


def test_read_only_open_uses_a_private_cache_and_writes_nothing(tmp_path, place):
    _, _, url = place
    f = tmp_path / "f"
    f.write_bytes(b"read me")

    async def main():
        async with open_ledger(tmp_path / "L", blobs=url, cache_dir=tmp_path / "c") as led:
            art = await led.artifacts(**R).save(str(f), kind="bin")
        before = sorted(str(p) for p in (tmp_path / "L").rglob("*"))
        async with open_ledger(tmp_path / "L", read_only=True) as led:
            assert await led.artifacts(**R).load_artifact_bytes(art.uri) == b"read me"
            cache = led._private_cache
            assert cache is not None and any(cache.rglob("*"))
        assert not cache.exists()
        assert sorted(str(p) for p in (tmp_path / "L").rglob("*")) == before

    run(main)


def test_the_stores_own_uri_of_a_blob_loads_it(tmp_path, place):
    _, _, url = place
    f = tmp_path / "f.txt"
    f.write_text("by uri")

    async def main():
        async with open_ledger(tmp_path / "L", blobs=url, cache_dir=tmp_path / "c") as led:
            fa = led.artifacts(**R)
            art = await fa.save(str(f), kind="text")
            blob_uri = led.store.uri(art.sha256)
            assert blob_uri == f"{url}/sha256/{art.sha256[:2]}/{art.sha256}"
            assert await fa.load_artifact(f"{blob_uri}#{art.artifact_id}") == "by uri"
            assert await fa.load_artifact(blob_uri) == "by uri"
            other = hashlib.sha256(b"never saved").hexdigest()
            for bad in (f"{blob_uri}#{'0' * 32}", led.store.uri(other), f"{led.store.uri(other)}#{art.artifact_id}",
                        f"s3://elsewhere/x/sha256/{art.sha256[:2]}/{art.sha256}"):
                with pytest.raises(FileNotFoundError, match="no artifact with URI"):
                    await fa.load_artifact(bad)

    run(main)


def test_verify_keeps_several_s3_reads_in_flight_and_reports_in_order(tmp_path, place):
    """verify() on S3 re-hashes several objects at once (the store's read_concurrency), and its problems
    list the blobs in the order a one-at-a-time walk would."""
    import threading

    bucket, prefix, url = place
    n = 6

    async def main():
        async with open_ledger(tmp_path / "L", blobs=url, cache_dir=tmp_path / "cache") as led:
            fa = led.artifacts(**R)
            shas = []
            for i in range(n):
                src = tmp_path / f"b{i}"
                src.write_bytes(b"blob %d" % i)
                shas.append((await fa.save(str(src), kind="bin")).sha256)
            store = led.store
            assert store.read_concurrency >= n
            # Every read waits for all n to be under way: one at a time, the first would break the barrier.
            barrier = threading.Barrier(n, timeout=60)
            real = store.verify

            def verify(sha):
                barrier.wait()
                return real(sha)

            store.verify = verify
            try:
                res = await led.verify()
            finally:
                store.verify = real
            assert res.ok and res.blobs == n, res.problems
            client = boto3.client("s3")
            for sha in (shas[4], shas[1]):
                client.delete_object(Bucket=bucket, Key=obj_key(prefix, sha))
            res = await led.verify()
            assert not res.ok and len(res.problems) == 2 and all("missing" in p for p in res.problems)
            store.read_concurrency = 1
            sequential = await led.verify()
            assert res.problems == sequential.problems and res.blobs == sequential.blobs == n

    run(main)
