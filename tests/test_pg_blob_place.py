"""A PostgreSQL ledger remembers where its blobs live (schema version 3, ``settings``): an open that
forgets ``blobs=`` uses the recorded S3 place, one naming another place or a local directory is refused,
and a log whose events name local blobs never adopts an S3 place (real PostgreSQL and SeaweedFS)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import anyio
import boto3
import pytest

import backends
import place_workers
from artifact_ledger import open_ledger
from artifact_ledger.ledger import postgres
from artifact_ledger.ledger.errors import AppendNotRecorded

SPAWN = multiprocessing.get_context("spawn")
R = {"run_id": "r", "graph_id": "g", "node_id": "n"}


sql = backends.pg_sql


def settings(url: str) -> dict[str, str]:
    name = url.rsplit("schema=", 1)[1]
    return dict(sql(f'SELECT name, value FROM "{name}".settings'))


def recorded_place(url: str) -> str | None:
    return settings(url).get(postgres.BLOB_PLACE)


def in_bucket(bucket: str, prefix: str, sha256: str) -> bool:
    try:
        boto3.client("s3").head_object(Bucket=bucket, Key=f"{prefix}/sha256/{sha256[:2]}/{sha256}")
        return True
    except Exception as exc:
        if "404" in repr(exc) or "NotFound" in repr(exc):
            return False
        raise


async def save(led, tmp_path: Path, data: bytes):
    src = tmp_path / f"src-{os.urandom(4).hex()}.bin"
    src.write_bytes(data)
    return await led.artifacts(**R).save(str(src), kind="k")


@pytest.fixture
def place(s3_place):
    """(url, bucket, prefix) of a fresh S3 prefix."""
    bucket, prefix = s3_place
    return f"s3://{bucket}/{prefix}", bucket, prefix


def test_an_s3_place_is_recorded_and_an_open_without_blobs_uses_it(pg_url, place, tmp_path):
    """The first open with blobs=s3://... records the place; a second machine that forgets blobs= loads the
    first one's bytes from S3 and stores its own there, not in its local cache."""
    url, bucket, prefix = place

    async def main():
        async with open_ledger(pg_url, blobs=url, cache_dir=tmp_path / "a") as a:
            first = await save(a, tmp_path, b"from machine a")
        assert recorded_place(pg_url) == url
        async with open_ledger(pg_url, cache_dir=tmp_path / "b") as b:
            assert await b.artifacts(**R).load_artifact(first.uri) == b"from machine a"
            second = await save(b, tmp_path, b"from machine b")
            assert (await b.verify()).ok
        assert in_bucket(bucket, prefix, second.sha256)
        assert not any((tmp_path / "b" / "blobs").rglob(second.sha256))
        async with open_ledger(pg_url, blobs=url, cache_dir=tmp_path / "a") as a:
            assert await a.artifacts(**R).load_artifact(second.uri) == b"from machine b"

    anyio.run(main)


def test_an_open_naming_another_place_is_refused_naming_both(pg_url, place, tmp_path, s3_place):
    """A ledger that records s3://b/p refuses blobs=s3://b/other (ValueError naming both), records nothing new,
    and accepts the same place written with client options."""
    url, bucket, prefix = place
    other = f"s3://{bucket}/{prefix}-other"

    async def main():
        async with open_ledger(pg_url, blobs=url, cache_dir=tmp_path / "a") as a:
            art = await save(a, tmp_path, b"x")
        with pytest.raises(ValueError) as info:
            await open_ledger(pg_url, blobs=other, cache_dir=tmp_path / "b")
        assert url in str(info.value) and other in str(info.value)
        assert recorded_place(pg_url) == url
        async with open_ledger(pg_url, blobs=url + "?read_timeout=30", cache_dir=tmp_path / "c") as c:
            assert await c.artifacts(**R).load_artifact(art.uri) == b"x"

    anyio.run(main)


def test_a_log_whose_events_name_local_blobs_refuses_an_s3_place(pg_url, place, tmp_path):
    """No place recorded and events in the log: their blobs are local, so blobs=s3://... is refused (also
    read-only) and nothing is recorded; the ledger still opens with its local blobs."""
    url, _, _ = place

    async def main():
        async with open_ledger(pg_url, cache_dir=tmp_path / "a") as a:
            art = await save(a, tmp_path, b"local bytes")
        with pytest.raises(ValueError, match="already holds 1 event"):
            await open_ledger(pg_url, blobs=url, cache_dir=tmp_path / "a")
        with pytest.raises(ValueError, match="already holds 1 event"):
            await open_ledger(pg_url, blobs=url, cache_dir=tmp_path / "a", read_only=True)
        assert recorded_place(pg_url) is None
        async with open_ledger(pg_url, cache_dir=tmp_path / "a") as a:
            assert await a.artifacts(**R).load_artifact(art.uri) == b"local bytes"

    anyio.run(main)


def test_a_ledger_recording_an_s3_place_refuses_a_local_blob_directory(pg_url, place, tmp_path):
    """blobs=<a local directory> on a ledger whose blobs are in S3 is refused, naming both, writing nothing."""
    url, _, _ = place

    async def main():
        async with open_ledger(pg_url, blobs=url, cache_dir=tmp_path / "a"):
            pass
        local = tmp_path / "local-blobs"
        with pytest.raises(ValueError) as info:
            await open_ledger(pg_url, blobs=local, cache_dir=tmp_path / "b")
        assert url in str(info.value) and str(local) in str(info.value)
        assert not local.exists()

    anyio.run(main)


def test_a_process_opened_before_the_place_was_recorded_cannot_append_local_blobs(pg_url, place, tmp_path):
    """A opens the empty ledger without blobs= (local store); B then records an S3 place. A's save is refused
    under the table lock (AppendNotRecorded), so no event names a blob only A's disk holds."""
    url, _, _ = place

    async def main():
        async with open_ledger(pg_url, cache_dir=tmp_path / "a") as a:
            async with open_ledger(pg_url, blobs=url, cache_dir=tmp_path / "b") as b:
                with pytest.raises(AppendNotRecorded, match="now keeps its blobs in"):
                    await save(a, tmp_path, b"would be local")
                art = await save(b, tmp_path, b"in s3")
        assert [r.seq for r in backends.pg_rows(pg_url.rsplit("schema=", 1)[1])] == [1]
        async with open_ledger(pg_url, cache_dir=tmp_path / "a") as a:
            assert await a.artifacts(**R).load_artifact(art.uri) == b"in s3"

    anyio.run(main)


def _race(url: str, places: list[str], tmp_path: Path) -> list[str]:
    barrier = SPAWN.Barrier(len(places))
    outs = [tmp_path / f"out-{i}" for i in range(len(places))]
    procs = [SPAWN.Process(target=place_workers.first_open,
                           args=(url, p, str(tmp_path / f"m{i}"), barrier, str(outs[i])))
             for i, p in enumerate(places)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    return [o.read_text() for o in outs]


def test_concurrent_first_opens_of_two_processes_agree_on_one_place(place, tmp_path):
    """Two processes create the same ledger at once: naming the same place both succeed; naming two places,
    exactly one wins and the other is refused naming both (several rounds, each on a fresh schema)."""
    url, bucket, prefix = place
    other = f"s3://{bucket}/{prefix}-b"
    backends.need_postgres()
    try:
        for round_ in range(3):
            same = backends.url_for(backends.new_schema())
            assert _race(same, [url, url], tmp_path / f"same{round_}") == ["ok", "ok"]
            assert recorded_place(same) == url
            two = backends.url_for(backends.new_schema())
            results = _race(two, [url, other], tmp_path / f"two{round_}")
            assert sorted(r == "ok" for r in results) == [False, True], results
            winner = url if results[0] == "ok" else other
            loser = other if winner == url else url
            refused = next(r for r in results if r != "ok")
            assert winner in refused and loser in refused, refused
            assert recorded_place(two) == winner
    finally:
        backends.drop_schemas()


def _as_version_2(url: str) -> None:
    """Make the schema what a version-2 library left: no settings table, no version-3 row."""
    name = url.rsplit("schema=", 1)[1]
    sql(f'DROP TABLE "{name}".settings')
    sql(f'DELETE FROM "{name}".ledger_version WHERE version > 2')


def test_a_version_2_schema_with_s3_blobs_is_migrated_and_may_record_its_place(pg_url, place, tmp_path):
    """Version 2 recorded no place, so its ledgers with S3 blobs have events and no place: the migration
    marks them, the first open naming the place records it, and later opens need no blobs=."""
    url, _, _ = place

    async def main():
        async with open_ledger(pg_url, blobs=url, cache_dir=tmp_path / "a") as a:
            art = await save(a, tmp_path, b"v2 bytes")
        _as_version_2(pg_url)
        async with open_ledger(pg_url, blobs=url, cache_dir=tmp_path / "b") as b:
            assert await b.artifacts(**R).load_artifact(art.uri) == b"v2 bytes"
        assert settings(pg_url) == {postgres.UNKNOWN_THROUGH: "1", postgres.BLOB_PLACE: url}
        async with open_ledger(pg_url, cache_dir=tmp_path / "c") as c:
            assert await c.artifacts(**R).load_artifact(art.uri) == b"v2 bytes"
            assert (await c.verify()).ok

    anyio.run(main)
    name = pg_url.rsplit("schema=", 1)[1]
    assert sql(f'SELECT version FROM "{name}".ledger_version ORDER BY version') == [
        (v,) for v in range(1, postgres.SCHEMA_VERSION + 1)]


def test_a_migrated_ledger_that_appended_local_blobs_since_refuses_an_s3_place(pg_url, place, tmp_path):
    """After the migration, a save without blobs= names a local blob: from then on an S3 place is refused."""
    url, _, _ = place

    async def main():
        async with open_ledger(pg_url, cache_dir=tmp_path / "a") as a:
            await save(a, tmp_path, b"one")
        _as_version_2(pg_url)
        async with open_ledger(pg_url, cache_dir=tmp_path / "a") as a:
            await save(a, tmp_path, b"two")
        with pytest.raises(ValueError, match="already holds 2 event"):
            await open_ledger(pg_url, blobs=url, cache_dir=tmp_path / "a")
        assert recorded_place(pg_url) is None

    anyio.run(main)


def test_an_empty_version_2_schema_is_migrated_without_a_mark(pg_url, tmp_path):
    """A version-2 schema without events gets an empty settings table: nothing is unknown."""

    async def main():
        async with open_ledger(pg_url, cache_dir=tmp_path / "a"):
            pass
        _as_version_2(pg_url)
        async with open_ledger(pg_url, cache_dir=tmp_path / "a"):
            pass

    anyio.run(main)
    assert settings(pg_url) == {}


# ---------------------------------------------------------------- the same contract on the file backend
def test_the_file_log_adopts_a_place_only_while_no_segment_holds_a_record(tmp_path):
    """FileEventLog.adopt_blob_place writes blobs/remote under the exclusive lock, refuses once another log
    object appended (even though this one has read nothing), and refuses another place naming both."""
    from artifact_ledger.ledger.backends import open_file_log

    root = tmp_path / "L"

    async def create():
        async with open_ledger(root):
            pass

    anyio.run(create)
    first, second = open_file_log(root, fsync=False), open_file_log(root, fsync=False)
    try:
        first.open(lambda rec: None, None)
        second.open(lambda rec: None, None)
        second.append_batch([b"an event naming a local blob"], lambda rec: None)
        with pytest.raises(ValueError, match="already holds events"):
            first.adopt_blob_place("s3://b/p")
        assert first.blob_place() is None and not (root / "blobs" / "remote").exists()
    finally:
        first.close()
        second.close()
    fresh = tmp_path / "M"

    async def create_fresh():
        async with open_ledger(fresh):
            pass

    anyio.run(create_fresh)
    log = open_file_log(fresh, fsync=False)
    try:
        log.open(lambda rec: None, None)
        assert log.adopt_blob_place("s3://b/p") == "s3://b/p"
        assert (fresh / "blobs" / "remote").read_text() == "s3://b/p\n"
        assert log.adopt_blob_place("s3://b/p") == "s3://b/p"
        with pytest.raises(ValueError) as info:
            log.adopt_blob_place("s3://b/q")
        assert "s3://b/p" in str(info.value) and "s3://b/q" in str(info.value)
    finally:
        log.close()
