"""The S3 blob store's own rules, against a real SeaweedFS server on loopback: checksums the server
enforces, create-if-absent under concurrency, multipart with bounded memory, aborts, and clear errors
for a stopped server, wrong credentials, a missing bucket and an unreachable endpoint."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import threading
import tracemalloc
from pathlib import Path

import anyio
import boto3
import pytest
from botocore.exceptions import ClientError

from artifact_ledger.facade import open_ledger
from artifact_ledger.store import durable
from artifact_ledger.store import (BlobCorrupted, BlobStoreAccessDenied, BlobStoreMissing, BlobStoreUnavailable,
                                   open_store)
from artifact_ledger.store.s3 import MiB, BlobChecksumRefused, S3BlobStore, parse_url

R = {"run_id": "r", "graph_id": "g", "node_id": "n"}
PART = 5 * MiB  # S3's smallest part: keeps multipart tests small and fast


def store_for(bucket: str, prefix: str, cache: Path, **kw) -> S3BlobStore:
    return S3BlobStore(bucket, prefix, cache_dir=cache, **kw)


def multipart_uploads(bucket: str, prefix: str) -> list[str]:
    answer = boto3.client("s3").list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/")
    return [u["Key"] for u in answer.get("Uploads", [])]


def head(bucket: str, key: str) -> dict | None:
    try:
        return boto3.client("s3").head_object(Bucket=bucket, Key=key)
    except ClientError:
        return None


# ------------------------------------------------------------------ checksums
def test_server_refuses_a_wrong_checksum(s3_place, tmp_path):
    bucket, prefix = s3_place
    wrong = hashlib.sha256(b"other bytes").digest()
    store = store_for(bucket, prefix, tmp_path)
    sha = hashlib.sha256(b"payload").hexdigest()
    with pytest.raises(BlobChecksumRefused, match="BadDigest"):
        store._put_single(b"payload", sha, wrong, "bytes")
    assert not store.exists(sha)


def test_store_sends_the_sha256_with_every_upload(s3_place, tmp_path, monkeypatch):
    bucket, prefix = s3_place
    store = store_for(bucket, prefix, tmp_path, multipart_threshold=PART, part_size=PART)
    sent: list[tuple[str, str]] = []
    client = store.client

    def spy(event_name, params, **kw):
        sent.append((params["headers"].get("x-amz-checksum-sha256", ""), event_name))

    client.meta.events.register("before-call.s3.PutObject", spy)
    client.meta.events.register("before-call.s3.UploadPart", spy)
    store.put_bytes(b"small")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(PART + 100))
    store.put_file(str(big))
    assert len(sent) == 3 and all(checksum for checksum, _ in sent)


# ------------------------------------------------------------------ create-if-absent
def test_put_never_overwrites_an_existing_object(s3_place, tmp_path):
    bucket, prefix = s3_place
    store = store_for(bucket, prefix, tmp_path)
    sha = hashlib.sha256(b"true bytes").hexdigest()
    # Another writer's object already holds the key: a conditional create leaves it as it is
    # (here damaged bytes, so that an overwrite would show).
    boto3.client("s3").put_object(Bucket=bucket, Key=store.key(sha), Body=b"already there")
    assert store.put_bytes(b"true bytes").sha256 == sha  # "already exists" is success
    assert boto3.client("s3").get_object(Bucket=bucket, Key=store.key(sha))["Body"].read() == b"already there"
    assert not store.verify(sha)


def _upload_same(args: tuple[str, str, str, str, dict[str, str]]) -> str:
    bucket, prefix, cache, path, env = args
    os.environ.update(env)
    store = S3BlobStore(bucket, prefix, cache_dir=cache, part_size=PART, multipart_threshold=PART)
    try:
        return store.put_file(path).sha256
    finally:
        store.close()


def test_processes_uploading_the_same_bytes_all_succeed(s3_env, s3_place, tmp_path):
    bucket, prefix = s3_place
    data = os.urandom(2 * PART + 1234)  # multipart: the costly case
    path = tmp_path / "same.bin"
    path.write_bytes(data)
    jobs = [(bucket, prefix, str(tmp_path / f"c{i}"), str(path), s3_env.env()) for i in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        shas = pool.map(_upload_same, jobs)
    assert set(shas) == {hashlib.sha256(data).hexdigest()}
    store = store_for(bucket, prefix, tmp_path / "check")
    assert list(store.iter_blobs()) == [shas[0]]
    assert store.read_bytes(shas[0]) == data
    assert multipart_uploads(bucket, prefix) == []  # the losers' parts were aborted


# ------------------------------------------------------------------ multipart
def test_large_file_goes_up_in_parts_with_bounded_memory(s3_place, tmp_path):
    bucket, prefix = s3_place
    size = 12 * PART + 777
    path = tmp_path / "large.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(size // MiB + 1):
            chunk = os.urandom(min(MiB, size - i * MiB))
            digest.update(chunk)
            f.write(chunk)
    store = store_for(bucket, prefix, tmp_path / "c", part_size=PART, multipart_threshold=PART, max_concurrency=2)
    tracemalloc.start()
    try:
        info = store.put_file(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.sha256 == digest.hexdigest() and info.size == size
    # At most max_concurrency parts in flight plus the one being read, never the 60 MiB file.
    assert peak < (2 + 2) * PART + 4 * MiB, f"peak {peak / MiB:.1f} MiB"
    etag = head(bucket, store.key(info.sha256))["ETag"]
    assert etag.strip('"').endswith("-13")  # 13 parts
    assert store.verify(info.sha256)
    out = tmp_path / "back.bin"
    store.copy_to(info.sha256, str(out))
    assert out.stat().st_size == size


def test_a_file_changed_during_upload_is_aborted_and_not_stored(s3_place, tmp_path, monkeypatch):
    bucket, prefix = s3_place
    path = tmp_path / "moving.bin"
    path.write_bytes(os.urandom(3 * PART))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    store = store_for(bucket, prefix, tmp_path / "c", part_size=PART, multipart_threshold=PART, max_concurrency=1)
    real = S3BlobStore._upload_part

    def upload_part(self, key, upload_id, number, data, doing):
        if number == 1:
            with open(path, "r+b") as f:  # the writer is still at work on the last part
                f.seek(2 * PART)
                f.write(b"changed")
        return real(self, key, upload_id, number, data, doing)

    monkeypatch.setattr(S3BlobStore, "_upload_part", upload_part)
    with pytest.raises(Exception, match="changed while it was being uploaded"):
        store.put_file(str(path))
    assert not store.exists(sha)
    assert multipart_uploads(bucket, prefix) == []


# ------------------------------------------------------------------ the server goes away
def test_server_stopped_mid_upload_records_nothing_and_recovers(s3_env, s3_place, tmp_path, monkeypatch):
    bucket, prefix = s3_place
    url = f"s3://{bucket}/{prefix}?max_attempts=2&connect_timeout=2&read_timeout=10&part_size={PART}" \
          f"&multipart_threshold={PART}&max_concurrency=1"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * PART))
    real = S3BlobStore._upload_part
    state = {"kill": True}

    def upload_part(self, key, upload_id, number, data, doing):
        if number == 2 and state["kill"]:
            state["kill"] = False
            s3_env.stop()  # the server goes away between two parts
        return real(self, key, upload_id, number, data, doing)

    monkeypatch.setattr(S3BlobStore, "_upload_part", upload_part)

    async def main():
        async with open_ledger(tmp_path / "L", blobs=url, cache_dir=tmp_path / "c") as led:
            fa = led.artifacts(**R)
            with pytest.raises(BlobStoreUnavailable, match="did not answer"):
                await fa.save(str(big), kind="bin")
            assert led.head[0] == 0 and await fa.list() == []
            s3_env.start()  # same ports and data: the server is back
            art = await fa.save(str(big), kind="bin")
            assert await fa.load_artifact_bytes(art.uri) == big.read_bytes()
            assert (await led.verify()).ok
            assert led.head[0] == 1

    anyio.run(main)


# ------------------------------------------------------------------ clear errors
def test_wrong_credentials_are_named_before_anything_is_created(s3_place, tmp_path, monkeypatch):
    bucket, prefix = s3_place
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(BlobStoreAccessDenied, match="refused the credentials"):
        anyio.run(lambda: open_ledger(tmp_path / "L", blobs=f"s3://{bucket}/{prefix}", cache_dir=tmp_path / "c"))
    assert not (tmp_path / "L").exists() and not (tmp_path / "c").exists()


def test_missing_credentials_are_named(s3_place, tmp_path, monkeypatch):
    bucket, prefix = s3_place
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(BlobStoreAccessDenied, match="no usable AWS credentials"):
        store_for(bucket, prefix, tmp_path)


def test_missing_bucket_is_named(s3_env, tmp_path):
    with pytest.raises(BlobStoreMissing, match="the bucket 'no-such-bucket-here' does not exist"):
        anyio.run(lambda: open_ledger(tmp_path / "L", blobs="s3://no-such-bucket-here/p", cache_dir=tmp_path / "c"))
    assert not (tmp_path / "L").exists()


def _in_thread(fn, limit: float) -> BaseException | None:
    """Run ``fn`` in a thread; the error it raised. Fails if it is still running after ``limit`` seconds."""
    box: list[BaseException] = []

    def target():
        try:
            fn()
        except BaseException as exc:
            box.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"still waiting after {limit} s: the timeouts do not bound the call"
    return box[0] if box else None


def test_refused_endpoint_fails_with_a_clear_error(s3_place, tmp_path, monkeypatch):
    bucket, prefix = s3_place
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    err = _in_thread(lambda: open_store(f"s3://{bucket}/{prefix}?max_attempts=2&connect_timeout=1",
                                        cache_dir=tmp_path), 60)
    assert isinstance(err, BlobStoreUnavailable)
    assert f"127.0.0.1:{port} did not answer" in str(err) and "AWS_ENDPOINT_URL" in str(err)


def test_silent_endpoint_fails_within_the_timeouts(s3_place, tmp_path, monkeypatch):
    bucket, prefix = s3_place
    # A server that accepts connections (the kernel completes them) and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        err = _in_thread(lambda: open_store(f"s3://{bucket}/{prefix}?max_attempts=1&connect_timeout=1&read_timeout=1",
                                            cache_dir=tmp_path), 60)
    finally:
        silent.close()
    assert isinstance(err, BlobStoreUnavailable) and "1 s read timeout" in str(err)


@pytest.mark.parametrize("url, message", [
    ("gs://bucket/p", "the scheme must be s3://"),
    ("/some/dir", "the scheme must be s3://"),
    ("s3:///p", "names no bucket"),
    ("s3://Bad_Bucket/p", "not a valid bucket name"),
    ("s3://bucket/a/../b", "'..'"),
    ("s3://bucket/p?speed=fast", "unknown option 'speed'"),
    ("s3://bucket/p?read_timeout=soon", "must be a number"),
])
def test_bad_urls_are_refused_before_anything_is_created(url, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        anyio.run(lambda: open_ledger(tmp_path / "L", blobs=url, cache_dir=tmp_path / "c"))
    assert not (tmp_path / "L").exists()


def test_parse_url_options():
    assert parse_url("s3://my-bucket/a/b/?part_size=8388608&read_timeout=2.5") == (
        "my-bucket", "a/b", {"part_size": 8388608, "read_timeout": 2.5})


# ------------------------------------------------------------------ the cache
def test_a_damaged_object_never_enters_the_cache(s3_place, tmp_path):
    bucket, prefix = s3_place
    store = store_for(bucket, prefix, tmp_path / "c")
    sha = store.put_bytes(b"the real bytes").sha256
    boto3.client("s3").put_object(Bucket=bucket, Key=store.key(sha), Body=b"damaged at rest")
    with pytest.raises(BlobCorrupted):
        store.local_file(sha)
    assert not store.cache_path(sha).exists()
    assert [p for p in (tmp_path / "c").rglob("*") if p.is_file()] == []  # no temp file left either


def test_a_damaged_cache_copy_is_fetched_again(s3_place, tmp_path):
    bucket, prefix = s3_place
    store = store_for(bucket, prefix, tmp_path / "c")
    sha = store.put_bytes(b"cached bytes").sha256
    path = store.local_file(sha)
    os.chmod(path, 0o644)
    path.write_bytes(b"bit rot")
    assert store.read_bytes(sha) == b"cached bytes"
    assert path.read_bytes() == b"cached bytes"
    out = tmp_path / "out"
    path.write_bytes(b"bit rot")
    store.copy_to(sha, str(out))
    assert out.read_bytes() == b"cached bytes"


def test_a_dead_process_cache_temp_file_is_swept(s3_place, tmp_path):
    bucket, prefix = s3_place
    store = store_for(bucket, prefix, tmp_path / "c")
    sha = store.put_bytes(b"sweep").sha256
    tmp = tmp_path / "c" / "tmp"
    tmp.mkdir(parents=True)
    host = durable.owner_tag().rsplit("-", 1)[1]
    dead = tmp / f"999999999-1-{host}.0123.part"  # this host, a pid no live process has
    dead.write_bytes(b"half a download")
    assert store.read_bytes(sha) == b"sweep"
    assert not dead.exists()
