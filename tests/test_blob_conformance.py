"""The blob store contract (store/base.py), rule by rule, against every backend: local and S3 (SeaweedFS).

A new backend is "add a fixture param here and pass", nothing more. Each backend fixture gives a
``Backend``: the store, a way to open a second store over the same blobs (another process or machine),
and a way to damage a stored blob behind the store's back.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from artifact_ledger.store import open_store
from artifact_ledger.store.base import BlobCorrupted, BlobStore


@dataclass
class Backend:
    store: BlobStore
    another: Callable[[], BlobStore]  # a second store over the same blobs, with nothing cached or pending
    damage: Callable[[str, bytes], None]  # replace a stored blob's bytes behind the store's back


def _local(tmp_path: Path) -> Backend:
    where = str(tmp_path / "blobs")

    def damage(sha: str, data: bytes) -> None:
        path = Path(where) / "sha256" / sha[:2] / sha
        os.chmod(path, 0o644)
        path.write_bytes(data)

    return Backend(open_store(where), lambda: open_store(where), damage)


def _s3(tmp_path: Path, bucket: str, prefix: str) -> Backend:
    import boto3

    url = f"s3://{bucket}/{prefix}/team"
    caches = iter(range(1 << 20))

    def another() -> BlobStore:
        return open_store(url, cache_dir=tmp_path / f"cache{next(caches)}")

    def damage(sha: str, data: bytes) -> None:
        # An unconditional PUT with no checksum: what a buggy tool or a bit flip at rest would leave.
        boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/team/sha256/{sha[:2]}/{sha}", Body=data)

    return Backend(another(), another, damage)


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path) -> Any:
    if request.param == "local":
        b = _local(tmp_path)
    else:
        b = _s3(tmp_path, *request.getfixturevalue("s3_place"))
    yield b
    b.store.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_durable(store: BlobStore, data: bytes) -> str:
    info = store.put_bytes(data)
    store.make_durable()
    return info.sha256


# ------------------------------------------------------------------ puts
def test_put_bytes_returns_the_address_and_size(backend):
    info = backend.store.put_bytes(b"hello")
    assert (info.sha256, info.size) == (sha(b"hello"), 5)


def test_put_file_equals_put_bytes_and_leaves_the_file(backend, tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 3000)
    a = backend.store.put_file(str(f))
    b = backend.store.put_bytes(b"x" * 3000)
    assert a.sha256 == b.sha256 == sha(b"x" * 3000) and a.size == 3000
    assert f.read_bytes() == b"x" * 3000


def test_published_blobs_are_seen_by_another_store(backend):
    s = put_durable(backend.store, b"shared")
    other = backend.another()
    try:
        assert other.exists(s)
        assert other.read_bytes(s) == b"shared"
    finally:
        other.close()


def test_same_bytes_are_one_blob(backend):
    a = put_durable(backend.store, b"dup")
    b = put_durable(backend.store, b"dup")
    assert a == b
    assert list(backend.store.iter_blobs()) == [a]


def test_empty_blob(backend):
    s = put_durable(backend.store, b"")
    assert backend.store.read_bytes(s) == b"" and backend.store.size(s) == 0


def test_concurrent_puts_of_the_same_bytes_all_succeed(backend):
    data = os.urandom(200_000)
    stores = [backend.another() for _ in range(8)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def put(store: BlobStore) -> None:
        try:
            barrier.wait()
            store.put_bytes(data)
            store.make_durable()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == []
    assert list(backend.store.iter_blobs()) == [sha(data)]
    assert backend.store.read_bytes(sha(data)) == data


# ------------------------------------------------------------------ reads
def test_read_and_size_and_exists(backend):
    s = put_durable(backend.store, b"abc")
    assert backend.store.exists(s)
    assert backend.store.read_bytes(s) == b"abc"
    assert backend.store.size(s) == 3
    assert backend.store.verify(s)


def test_absent_blob(backend, tmp_path):
    s = sha(b"never stored")
    store = backend.store
    assert not store.exists(s)
    for call in (lambda: store.read_bytes(s), lambda: store.size(s), lambda: store.verify(s),
                 lambda: store.local_file(s), lambda: store.copy_to(s, str(tmp_path / "out"))):
        with pytest.raises(FileNotFoundError, match=s):
            call()
    assert not (tmp_path / "out").exists()


def test_copy_to_streams_into_a_new_file(backend, tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    s = put_durable(backend.store, data)
    out = tmp_path / "out.bin"
    backend.store.copy_to(s, str(out))
    assert out.read_bytes() == data
    with pytest.raises(FileExistsError):
        backend.store.copy_to(s, str(out))  # never over an existing file


def test_local_file_holds_the_bytes_and_is_named_by_the_store(backend):
    s = put_durable(backend.store, b"local")
    path = backend.store.local_file(s)
    assert path.read_bytes() == b"local"
    assert backend.store.names_blob(path, s)
    assert not backend.store.names_blob(path.parent / "elsewhere", s)


def test_uri_names_the_blob(backend):
    s = put_durable(backend.store, b"u")
    uri = backend.store.uri(s)
    assert uri.endswith(s) and "://" in uri


def test_iter_blobs_lists_exactly_the_blobs(backend):
    want = {put_durable(backend.store, bytes([i]) * 10) for i in range(5)}
    assert set(backend.store.iter_blobs()) == want


# ------------------------------------------------------------------ damage
def test_damaged_blob_is_refused_by_every_read(backend, tmp_path):
    s = put_durable(backend.store, b"good bytes")
    backend.damage(s, b"evil bytes")
    other = backend.another()  # nothing cached: it must read the damaged store
    try:
        assert not other.verify(s)
        with pytest.raises(BlobCorrupted):
            other.read_bytes(s)
        with pytest.raises(BlobCorrupted):
            other.copy_to(s, str(tmp_path / "out"))
        assert not (tmp_path / "out").exists()
    finally:
        other.close()


# ------------------------------------------------------------------ delete
def test_delete_removes_a_blob_once(backend):
    keep = put_durable(backend.store, b"keep")
    gone = put_durable(backend.store, b"gone")
    backend.store.read_bytes(gone)  # cached too, where the store caches
    assert backend.store.delete(gone) is True
    assert backend.store.delete(gone) is False
    assert not backend.store.exists(gone)
    with pytest.raises(FileNotFoundError):
        backend.store.read_bytes(gone)
    assert list(backend.store.iter_blobs()) == [keep]
    assert put_durable(backend.store, b"gone") == gone  # and it can come back
    assert backend.store.read_bytes(gone) == b"gone"


# ------------------------------------------------------------------ addresses
@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "0" * 63, "", "0" * 64 + "/x"])
def test_bad_addresses_are_refused(backend, bad, tmp_path):
    store = backend.store
    for call in (store.exists, store.read_bytes, store.size, store.verify, store.local_file, store.delete, store.uri,
                 lambda s: store.copy_to(s, str(tmp_path / "o")), lambda s: store.names_blob(tmp_path, s)):
        with pytest.raises(ValueError, match="not a SHA-256"):
            call(bad)
