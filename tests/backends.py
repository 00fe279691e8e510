"""The log backends the conformance suite runs over, and a PostgreSQL schema per test.

Conformance modules import ``open_ledger`` from here instead of the package and take the
``backend`` fixture (parametrised in conftest over ``BACKENDS``). Under ``file`` it is the real
``open_ledger``; under ``postgres`` a ledger directory argument ``D`` becomes the log URL of a
schema of its own (named from ``D``) with ``cache_dir=D``, so ``ledger.root`` still holds the
blobs, staging and materialised copies the tests look at. Every schema made is dropped after
the test. PostgreSQL: ``$ARTIFACT_LEDGER_TEST_PG`` (default the loopback server, database
``test``); unreachable, postgres tests skip, or fail when ``$ARTIFACT_LEDGER_REQUIRE_POSTGRES`` is set
(CI sets it).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from artifact_ledger.facade import open_ledger as _real_open_ledger

BACKENDS = ("file", "postgres")
PG_BASE = os.environ.get("ARTIFACT_LEDGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_ENV = "ARTIFACT_LEDGER_REQUIRE_POSTGRES"

_reachable: str | None = None  # "" once reached; the error text once not


class _Current:
    name = "file"
    schemas: set[str] = set()


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


def open_ledger(root: Any, **kw: Any) -> Any:
    """``open_ledger`` on the current backend: a directory stays a directory under ``file``; under
    ``postgres`` it names a schema of its own and becomes the ``cache_dir``."""
    if CURRENT.name == "file" or "://" in os.fspath(root):
        return _real_open_ledger(root, **kw)
    return _real_open_ledger(url_for(schema_for(root)), cache_dir=root, **kw)


file_only = pytest.mark.file_only  # a conformance test about the segment files themselves


class StoredRecord:
    """A record as the backend stores it, read by the tests' own query (not the library's reader)."""

    __slots__ = ("seq", "ts_us", "prev_hash", "hash", "batch_first", "payload")

    def __init__(self, seq: int, ts_us: int, prev_hash: bytes, hash: bytes, batch_first: int, payload: bytes):
        self.seq, self.ts_us, self.prev_hash, self.hash = seq, ts_us, prev_hash, hash
        self.batch_first, self.payload = batch_first, payload


def pg_rows(schema: str) -> list[StoredRecord]:
    """Every row of ``schema``.events in seq order, straight from the table."""
    import psycopg

    with psycopg.connect(PG_BASE, connect_timeout=5) as conn:
        rows = conn.execute(f'SELECT seq, ts_us, prev_hash, hash, batch_first, payload FROM "{schema}".events '
                            "ORDER BY seq").fetchall()
    return [StoredRecord(r[0], r[1], bytes(r[2]), bytes(r[3]), r[4], bytes(r[5])) for r in rows]


def stored_records(root: Any) -> list[Any]:
    """Every record of the ledger at directory ``root`` on the current backend, read without the library's log."""
    if CURRENT.name == "file":
        from logcheck import read_log

        return read_log(Path(root))
    return pg_rows(schema_for(root))


def log_bytes(root: Any) -> int:
    """How many bytes the log of the ledger at ``root`` takes (segment files; the events table)."""
    if CURRENT.name == "file":
        return sum(p.stat().st_size for p in (Path(root) / "log").glob("*.seg"))
    import psycopg

    with psycopg.connect(PG_BASE, connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (f"{schema_for(root)}.events",)).fetchone()
    return int(row[0]) if row else 0
