"""The backend pairs the conformance suite runs over, a PostgreSQL schema and an S3 prefix per ledger.

Conformance modules import ``open_ledger`` from here instead of the package and take the
``backend`` fixture (parametrised in conftest over ``BACKENDS``, pairs of log and blob store). Under
``file`` it is the real ``open_ledger``; under ``postgres`` a ledger directory argument ``D``
becomes the log URL of a schema of its own (named from ``D``) with ``cache_dir=D``, so
``ledger.root`` still holds the staging and materialised copies the tests look at. Under
``file+s3`` and ``postgres+s3`` the same, with ``blobs=`` an S3 prefix of its own (named from ``D``)
in the session's SeaweedFS bucket. Every schema and every object made is removed after the test.
PostgreSQL: ``$ARTIFACT_LEDGER_TEST_PG`` (default the loopback server, database ``test``);
unreachable, postgres tests skip, or fail when ``$ARTIFACT_LEDGER_REQUIRE_POSTGRES`` is set (CI sets it).

Helpers that look at what a backend stored (``blob_names``, ``blob_tmp_names``, ``stored_records``,
``log_bytes``) read it with the tests' own queries (a directory listing, SQL, an S3 listing), never
through the library's reader.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from artifact_ledger.facade import open_ledger as _real_open_ledger

# (log, blobs) pairs: the name is "<log>" for local blobs, "<log>+s3" for blobs in S3.
BACKENDS = ("file", "postgres", "file+s3", "postgres+s3")
PG_BASE = os.environ.get("ARTIFACT_LEDGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_ENV = "ARTIFACT_LEDGER_REQUIRE_POSTGRES"

_reachable: str | None = None  # "" once reached; the error text once not


class _Current:
    name = "file"
    schemas: set[str] = set()
    s3: tuple[str, str] | None = None  # (bucket, this test's prefix) on the s3 pairs


def log_kind() -> str:
    """The current pair's log backend: "file" or "postgres"."""
    return CURRENT.name.partition("+")[0]


def on_s3() -> bool:
    """Whether the current pair keeps its blobs in S3."""
    return CURRENT.name.endswith("+s3")


CURRENT = _Current()


def pg_reason() -> str:
    """"" if the test server answers, else why not (checked once per session)."""
    global _reachable
    if _reachable is None:
        try:
            import psycopg

            with psycopg.connect(PG_BASE, connect_timeout=3):
                pass
            _reachable = ""
        except Exception as exc:  # any failure means: no server for these tests
            _reachable = f"PostgreSQL at {PG_BASE} is unreachable: {exc}"
    return _reachable


def need_postgres() -> None:
    """Skip (or, under CI's $ARTIFACT_LEDGER_REQUIRE_POSTGRES, fail) when the test server is down."""
    reason = pg_reason()
    if reason:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{reason}; {REQUIRE_ENV} is set, so the postgres tests must run", pytrace=False)
        pytest.skip(reason)


def new_schema() -> str:
    """A fresh schema name, dropped by ``drop_schemas``."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    CURRENT.schemas.add(name)
    return name


def url_for(schema: str) -> str:
    """The log URL of ``schema`` on the test server."""
    sep = "&" if "?" in PG_BASE else "?"
    return f"{PG_BASE}{sep}schema={schema}"


def schema_for(path: Any) -> str:
    """The schema standing for a ledger directory: one per directory, dropped after the test."""
    name = "t_" + hashlib.sha256(os.fspath(Path(path).resolve()).encode()).hexdigest()[:16]
    CURRENT.schemas.add(name)
    return name


def drop_schemas() -> None:
    """Drop every schema this test made."""
    if not CURRENT.schemas:
        return
    import psycopg

    with psycopg.connect(PG_BASE, autocommit=True, connect_timeout=5) as conn:
        for name in sorted(CURRENT.schemas):
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    CURRENT.schemas.clear()


def _hash16(path: Any) -> str:
    return hashlib.sha256(os.fspath(Path(path).resolve()).encode()).hexdigest()[:16]


def s3_place_for(root: Any) -> tuple[str, str]:
    """(bucket, prefix) of the blobs of the ledger at directory ``root``: one prefix per directory,
    under this test's own prefix (removed after the test)."""
    assert CURRENT.s3 is not None, "an s3 pair without the s3 fixture"
    if log_kind() == "file":
        # A ledger directory remembers its place (blobs/remote): a copy of one shares its objects.
        try:
            place = (Path(root) / "blobs" / "remote").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            pass
        else:
            bucket, _, prefix = place.removeprefix("s3://").partition("/")
            return bucket, prefix
    bucket, base = CURRENT.s3
    return bucket, f"{base}/{_hash16(root)}"


def blobs_url_for(root: Any) -> str:
    """The ``blobs=`` URL of the ledger at directory ``root`` on the s3 pairs."""
    bucket, prefix = s3_place_for(root)
    return f"s3://{bucket}/{prefix}"


def open_ledger(root: Any, **kw: Any) -> Any:
    """``open_ledger`` on the current pair: a directory stays a directory under ``file``; under
    ``postgres`` it names a schema of its own and becomes the ``cache_dir``; on the s3 pairs the
    directory also names an S3 prefix of its own, passed as ``blobs=`` (unless the test passes one)."""
    if "://" in os.fspath(root):
        return _real_open_ledger(root, **kw)
    if on_s3():
        kw.setdefault("blobs", blobs_url_for(root))
    if log_kind() == "file":
        return _real_open_ledger(root, **kw)
    kw.setdefault("cache_dir", root)
    return _real_open_ledger(url_for(schema_for(root)), **kw)


file_only = pytest.mark.file_only  # a conformance test about the segment files themselves
local_blobs = pytest.mark.local_blobs  # a conformance test about blob files in a local directory


def s3_client() -> Any:
    """A plain boto3 client on the test server (the environment the s3 fixtures set)."""
    import boto3

    return boto3.client("s3")


def s3_keys(bucket: str, prefix: str) -> list[str]:
    """Every object key under ``prefix/`` in ``bucket``, straight from a listing."""
    client = s3_client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


def drop_s3() -> None:
    """Remove every object (and incomplete multipart upload) under this test's S3 prefix."""
    if CURRENT.s3 is None:
        return
    bucket, base = CURRENT.s3
    CURRENT.s3 = None
    client = s3_client()
    keys = s3_keys(bucket, base)
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=base + "/").get("Uploads", [])
    for up in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])


def blob_names(root: Any) -> list[str]:
    """The SHA-256 of every blob the ledger at directory ``root`` stored (its files under
    ``blobs/sha256``, or its objects in S3), sorted."""
    if on_s3():
        bucket, prefix = s3_place_for(root)
        return sorted(key.rsplit("/", 1)[1] for key in s3_keys(bucket, f"{prefix}/sha256"))
    objects = Path(root) / "blobs" / "sha256"
    return sorted(p.name for p in objects.rglob("*") if p.is_file())


def blob_at_address(root: Any, sha256: str) -> bool:
    """Whether the ledger at ``root`` holds the blob ``sha256`` at its content address
    (``blobs/sha256/<xx>/<hex>``, or the key ``<prefix>/sha256/<xx>/<hex>``)."""
    if on_s3():
        bucket, prefix = s3_place_for(root)
        return f"{prefix}/sha256/{sha256[:2]}/{sha256}" in s3_keys(bucket, f"{prefix}/sha256/{sha256[:2]}")
    return _local_blob(root, sha256).is_file()


def _local_blob(root: Any, sha256: str) -> Path:
    return Path(root) / "blobs" / "sha256" / sha256[:2] / sha256


def _s3_key(root: Any, sha256: str) -> tuple[str, str]:
    bucket, prefix = s3_place_for(root)
    return bucket, f"{prefix}/sha256/{sha256[:2]}/{sha256}"


def blob_size(root: Any, sha256: str) -> int:
    """The stored size of the blob ``sha256`` of the ledger at ``root`` (its file, or its object)."""
    if on_s3():
        bucket, key = _s3_key(root, sha256)
        return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    return _local_blob(root, sha256).stat().st_size


def flip_blob_byte(root: Any, sha256: str, offset: int) -> None:
    """Invert one byte of the stored blob behind the library's back (twice restores it): in its
    file, or by an unconditional PUT with no checksum of the changed bytes over its object (what a
    buggy tool or a bit flip at rest would leave)."""
    if on_s3():
        bucket, key = _s3_key(root, sha256)
        client = s3_client()
        data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        data[offset] ^= 0xFF
        client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
        return
    flip_byte(_local_blob(root, sha256), offset)


def flip_byte(path: Any, offset: int) -> None:
    """Invert one byte of a file in place, read-only ones too (calling it twice restores the file)."""
    os.chmod(path, 0o644)  # blobs are stored read-only
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def hide_blob(root: Any, sha256: str) -> Any:
    """Take the stored blob away (its file renamed, its object deleted); returns what ``unhide_blob`` needs."""
    if on_s3():
        bucket, key = _s3_key(root, sha256)
        client = s3_client()
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        client.delete_object(Bucket=bucket, Key=key)
        return data
    path = _local_blob(root, sha256)
    os.rename(path, path.with_name("moved-away"))
    return None


def unhide_blob(root: Any, sha256: str, saved: Any) -> None:
    """Put back a blob ``hide_blob`` took away."""
    if on_s3():
        bucket, key = _s3_key(root, sha256)
        s3_client().put_object(Bucket=bucket, Key=key, Body=saved)
        return
    path = _local_blob(root, sha256)
    os.rename(path.with_name("moved-away"), path)


def blob_tmp_names(root: Any) -> list[str]:
    """The blob store's temp files of the ledger at ``root``: ``blobs/tmp`` of a local store, the
    download temp files of the S3 cache (the default ``cache_dir`` of the pair)."""
    if not on_s3():
        tmp = Path(root) / "blobs" / "tmp"
    elif log_kind() == "file":
        tmp = Path(root) / "blobs" / "cache" / "tmp"
    else:
        tmp = Path(root) / "s3-cache" / "tmp"
    return sorted(os.listdir(tmp)) if tmp.is_dir() else []


class StoredRecord:
    """A record as the backend stores it, read by the tests' own query (not the library's reader)."""

    __slots__ = ("seq", "ts_us", "prev_hash", "hash", "batch_first", "payload")

    def __init__(self, seq: int, ts_us: int, prev_hash: bytes, hash: bytes, batch_first: int, payload: bytes):
        self.seq, self.ts_us, self.prev_hash, self.hash = seq, ts_us, prev_hash, hash
        self.batch_first, self.payload = batch_first, payload


def pg_sql(query: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on the test server in its own connection (autocommit); its rows, if any."""
    import psycopg

    with psycopg.connect(PG_BASE, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def pg_rows(schema: str) -> list[StoredRecord]:
    """Every row of ``schema``.events in seq order, straight from the table."""
    import psycopg

    with psycopg.connect(PG_BASE, connect_timeout=5) as conn:
        rows = conn.execute(f'SELECT seq, ts_us, prev_hash, hash, batch_first, payload FROM "{schema}".events '
                            "ORDER BY seq").fetchall()
    return [StoredRecord(r[0], r[1], bytes(r[2]), bytes(r[3]), r[4], bytes(r[5])) for r in rows]


def stored_records(root: Any) -> list[Any]:
    """Every record of the ledger at directory ``root`` on the current backend, read without the library's log."""
    if log_kind() == "file":
        from logcheck import read_log

        return read_log(Path(root))
    return pg_rows(schema_for(root))


def log_bytes(root: Any) -> int:
    """How many bytes the log of the ledger at ``root`` takes (segment files; the events table)."""
    if log_kind() == "file":
        return sum(p.stat().st_size for p in (Path(root) / "log").glob("*.seg"))
    import psycopg

    with psycopg.connect(PG_BASE, connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (f"{schema_for(root)}.events",)).fetchone()
    return int(row[0]) if row else 0
