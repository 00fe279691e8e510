"""The PostgreSQL backend behind the log contract: an events table is the source of truth.

Records are hash-chained exactly like the segment log's (the same record hash over the same body
fields, see FORMAT.md). seq is gap-free and in commit order: every append takes ``LOCK TABLE events
IN EXCLUSIVE MODE`` (readers' plain SELECTs are not blocked by it), reads the head under it, computes
seq, commit time and chain under it, and holds it until COMMIT. So a reader tailing by seq never sees
N+1 before N. A batch carries a random token; when the connection drops with the outcome unknown,
the writer reconnects, takes the same lock (which waits out a still-running old transaction), and
finds its batch by token: committed records are acknowledged, never written again.

psycopg 3's blocking API is used on purpose: the group committer already runs every log call in a
worker thread, one at a time.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import psycopg
from psycopg import sql

from ..store.base import OneFlushBlobs
from .base import LastBatchCheck, LogCheck, OnRecord, Restore
from .checkpoints import CheckpointWarning
from .errors import (AppendNotRecorded, LedgerCorruption, LedgerForked, LedgerNotFound, LedgerUnreachable,
                     LockTimeout, ReadOnlyError, SchemaTooNew)
from .framing import GENESIS_HASH, Record, record_hash
from .lockfile import DEFAULT_LOCK_TIMEOUT

# The version of the tables this library writes; MIGRATIONS[v] takes a schema from v-1 to v.
SCHEMA_VERSION = 3
KEEP_CHECKPOINTS = 2  # newest snapshots kept in the checkpoints table
DEFAULT_SCHEMA = "artifact_ledger"
DEFAULT_CONNECT_TIMEOUT = 10  # seconds; a URL's own connect_timeout=... wins
RECONNECTS = 3  # attempts to resolve an unknown outcome (each bounded by connect_timeout)
READ_CHUNK = 4096  # rows fetched per query while catching up or reading ranges
BODY_HEAD = 56  # bytes of fixed fields in a record body (seq, time, previous hash, batch start)
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE {s}.events (
            seq bigint PRIMARY KEY CHECK (seq >= 1),
            ts_us bigint NOT NULL,
            prev_hash bytea NOT NULL CHECK (length(prev_hash) = 32),
            hash bytea NOT NULL CHECK (length(hash) = 32),
            batch_first bigint NOT NULL CHECK (batch_first >= 1 AND batch_first <= seq),
            payload bytea NOT NULL,
            artifact_id text,
            batch_token uuid NOT NULL
        )""",
        "CREATE UNIQUE INDEX events_artifact_id ON {s}.events (artifact_id) WHERE artifact_id IS NOT NULL",
        "CREATE INDEX events_batch_token ON {s}.events (batch_token)",
    ],
    # 2: projection snapshots shared by every process of the ledger (a cache, like checkpoint files).
    2: [
        """CREATE TABLE {s}.checkpoints (
            seq bigint PRIMARY KEY CHECK (seq >= 1),
            hash bytea NOT NULL CHECK (length(hash) = 32),
            snapshot_schema integer NOT NULL,
            snapshot bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
    ],
    # 3: settings of the ledger shared by every process (the blob place). A ledger migrated with events
    # in it records how far its blob place is unknown: version 2 let any open name any place.
    3: [
        """CREATE TABLE {s}.settings (
            name text PRIMARY KEY,
            value text NOT NULL,
            set_at timestamptz NOT NULL DEFAULT now()
        )""",
        """INSERT INTO {s}.settings (name, value)
            SELECT 'blob_place_unknown_through', max(seq)::text FROM {s}.events HAVING count(*) > 0""",
    ],
}
BLOB_PLACE = "blob_place"  # settings row: the s3://bucket/prefix every process keeps this ledger's blobs in
UNKNOWN_THROUGH = "blob_place_unknown_through"  # settings row: seq up to which a migrated ledger names no place


class _Id(msgspec.Struct):
    """The one field the log itself reads from a payload: an artifact.recorded event's id."""

    type: str = ""
    artifact_id: str | None = None


_id_decoder = msgspec.msgpack.Decoder(_Id)


def _artifact_id(payload: bytes) -> str | None:
    """The id of an ``artifact.recorded`` payload (kept unique by the table), else None."""
    try:
        ev = _id_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # the facade never appends such a payload; the reader refuses it by seq
    return ev.artifact_id if ev.type == "artifact.recorded" else None


class PostgresCorruption(LedgerCorruption):
    """A row of the events table breaks an invariant (seq, chain, hash): reported, never skipped."""

    def __init__(self, table: str, seq: int, reason: str):
        super().__init__(table, 0, seq, reason)
        Exception.__init__(self, f"ledger damaged in table {table} at seq {seq}: {reason}. The events table is the "
                                 "source of truth, so nothing after this record is trusted; restore the table from "
                                 "a backup (or delete the rows from this seq on to accept losing them).")


def parse_url(url: str) -> tuple[str, str, str, int | None]:
    """Split a ``postgresql://`` URL into (libpq URL without our options, schema, URL safe to print, timeout).

    Raises ValueError naming what is wrong (scheme, schema name).
    """
    if not isinstance(url, str):
        raise TypeError(f"a PostgreSQL log URL must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"unsupported log URL scheme {parts.scheme!r} in {url!r}; use postgresql://user@host:5432/db")
    if not parts.hostname:
        raise ValueError(f"the log URL {url!r} names no host; use postgresql://user@host:5432/db")
    if not parts.path.strip("/"):
        raise ValueError(f"the log URL {url!r} names no database; use postgresql://user@host:5432/db")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"the log URL {url!r} has a bad port: {exc}") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    timeout: int | None = None
    rest = []
    for k, v in query:
        if k == "schema":
            schema = v
        elif k == "connect_timeout":
            if not v.isdigit() or int(v) < 1:
                raise ValueError(f"connect_timeout={v!r} in the log URL must be a whole number of seconds >= 1")
            timeout = int(v)
        else:
            rest.append((k, v))
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema={schema!r} in the log URL is not a valid schema name: use 1 to 63 lower-case "
                         "letters, digits and underscores, not starting with a digit")
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), ""))
    netloc = parts.hostname if parts.username is None else f"{parts.username}@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    safe = urlunsplit((parts.scheme, netloc, parts.path, f"schema={schema}", ""))
    return conninfo, schema, safe, timeout


class PostgresEventLog:
    """The log in a PostgreSQL schema: ``<schema>.events`` plus ``<schema>.ledger_version`` (see FORMAT.md)."""

    def __init__(self, url: str, *, create: bool = True, fsync: bool = True, read_only: bool = False,
                 lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT, connect_timeout: int | None = None):
        self._conninfo, self.schema, self._safe_url, url_timeout = parse_url(url)
        self.connect_timeout = url_timeout or connect_timeout or DEFAULT_CONNECT_TIMEOUT
        self.read_only = read_only
        self._fsync = fsync
        self._lock_timeout = lock_timeout
        self._pid = os.getpid()
        self._table = f"{self.schema}.events"
        self._s = sql.Identifier(self.schema)
        self.head_seq = 0
        self.head_hash = GENESIS_HASH
        self.head_ts = 0
        self._head_batch = 0
        # The blob place this process stores blobs in, checked under the lock by every append (see
        # expect_blob_place); False: not told, nothing checked.
        self._expected_place: str | None | bool = False
        self._conn: psycopg.Connection[Any] | None = None
        # Reads outside the group committer (events(), history(), verify()) run in other threads
        # while an append may hold a transaction open on _conn: they get a connection of their own.
        self._reader: psycopg.Connection[Any] | None = None
        self._reader_lock = threading.Lock()
        self.check_before_write: Callable[[list[bytes]], None] | None = None
        self._conn = self._connect()
        try:
            self._prepare(create)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- connection
    @property
    def location(self) -> str:
        """The URL without its password."""
        return self._safe_url

    @property
    def lock_timeout(self) -> float | None:
        """Seconds an append may wait for the table lock."""
        return self._lock_timeout

    def check_process(self) -> None:
        """Raise LedgerForked in a fork() child: the connection's socket belongs to the parent."""
        if os.getpid() != self._pid:
            raise LedgerForked(
                f"this ledger was opened by process {self._pid} and cannot be used in process {os.getpid()}, a "
                "fork() child of it: both would talk over one PostgreSQL connection. Open the ledger in the child "
                "instead (pass the URL, not the Ledger).")

    def _connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection; LedgerUnreachable naming the URL and the server's reason."""
        options = "-c default_transaction_read_only=on" if self.read_only else ""
        try:
            # TCP keepalives: a server that vanished without a FIN is noticed in about 20 s, not never.
            return psycopg.connect(self._conninfo, autocommit=True, connect_timeout=self.connect_timeout,
                                   application_name="artifact-ledger", options=options, keepalives=1,
                                   keepalives_idle=10, keepalives_interval=3, keepalives_count=3)
        except psycopg.Error as exc:
            reason = str(exc).strip().replace("\n", "; ")
            raise LedgerUnreachable(
                f"cannot open the PostgreSQL log at {self._safe_url} (connect_timeout {self.connect_timeout} s): "
                f"{reason}") from None

    def _live(self) -> psycopg.Connection[Any]:
        """The connection, reconnecting once if it broke (reads are safe to repeat)."""
        self.check_process()
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._connect()
        return self._conn

    def _read_cursor(self) -> psycopg.Cursor[Any]:
        """A cursor on the reader connection (autocommit, never inside an append's transaction)."""
        self.check_process()
        with self._reader_lock:
            r = self._reader
            if r is None or r.closed or r.broken:
                if r is not None:
                    r.close()
                r = self._reader = self._connect()
            return r.cursor()

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._s)

    def _prepare(self, create: bool) -> None:
        """Create the schema and tables on first open, apply migrations, refuse a newer schema."""
        conn = self._live()
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
            exists = cur.fetchone() is not None
            if exists:
                cur.execute("SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'ledger_version'",
                            (self.schema,))
                exists = cur.fetchone() is not None
            if exists:
                cur.execute(self._q("SELECT coalesce(max(version), 0) FROM {s}.ledger_version"))
                row = cur.fetchone()
                have = int(row[0]) if row else 0
                self._refuse_newer(have)
                if have == SCHEMA_VERSION:
                    return
            if self.read_only or not create:
                what = "open it without read_only=True to create it" if self.read_only else "pass create=True"
                raise LedgerNotFound(f"no ledger at {self._safe_url} (schema {self.schema} holds no ledger tables "
                                  f"of version {SCHEMA_VERSION}); {what}")
        with conn.transaction(), conn.cursor() as cur:
            # Concurrent first opens serialise here, so exactly one creates the tables.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"artifact_ledger:{self.schema}",))
            cur.execute(self._q("CREATE SCHEMA IF NOT EXISTS {s}"))
            cur.execute(self._q("CREATE TABLE IF NOT EXISTS {s}.ledger_version (version integer PRIMARY KEY, "
                                "applied_at timestamptz NOT NULL DEFAULT now(), library text NOT NULL)"))
            cur.execute(self._q("SELECT coalesce(max(version), 0) FROM {s}.ledger_version"))
            row = cur.fetchone()
            have = int(row[0]) if row else 0
            self._refuse_newer(have)
            for v in range(have + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[v]:
                    cur.execute(self._q(stmt))
                cur.execute(self._q("INSERT INTO {s}.ledger_version (version, library) VALUES (%s, %s)"),
                            (v, "artifact-ledger"))

    def _refuse_newer(self, have: int) -> None:
        if have > SCHEMA_VERSION:
            raise SchemaTooNew(f"the ledger at {self._safe_url} has schema version {have}, newer than this "
                               f"library's {SCHEMA_VERSION}; upgrade artifact-ledger to open it")

    # ----------------------------------------------------------------- reading
    def _rows_after(self, cur: psycopg.Cursor[Any], after: int, until: int | None) -> list[tuple[Any, ...]]:
        if until is None:
            cur.execute(self._q("SELECT seq, ts_us, prev_hash, hash, batch_first, payload FROM {s}.events "
                                "WHERE seq > %s ORDER BY seq LIMIT %s"), (after, READ_CHUNK))
        else:
            cur.execute(self._q("SELECT seq, ts_us, prev_hash, hash, batch_first, payload FROM {s}.events "
                                "WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s"), (after, until, READ_CHUNK))
        return cur.fetchall()

    def _check_row(self, row: tuple[Any, ...], seq: int, prev: bytes, prev_batch: int) -> Record:
        """Check one row against the chain (seq, previous hash, record hash, batch start)."""
        s, ts, ph, h, bf, payload = row
        ph, h, payload = bytes(ph), bytes(h), bytes(payload)
        if s != seq:
            raise PostgresCorruption(self._table, seq, f"seq {seq} is missing (the next row has seq {s})")
        if ph != prev:
            raise PostgresCorruption(self._table, seq, "its previous hash is not the hash of the record before it")
        if not (bf == s or (prev_batch and bf == prev_batch)):
            raise PostgresCorruption(self._table, seq, f"batch start {bf} is neither its own seq nor its "
                                                       "predecessor's batch start")
        if record_hash(s, ts, ph, bf, payload) != h:
            raise PostgresCorruption(self._table, seq, "its stored hash is not the SHA-256 of its body")
        return Record(s, ts, ph, h, payload, self._table, s, BODY_HEAD + len(payload), bf)

    def _catch_up_on(self, cur: psycopg.Cursor[Any], on_record: OnRecord, until: int | None = None) -> None:
        """Read and check every row after the head (up to ``until``), moving the head along."""
        while True:
            rows = self._rows_after(cur, self.head_seq, until)
            for row in rows:
                rec = self._check_row(row, self.head_seq + 1, self.head_hash, self._head_batch)
                on_record(rec)
                self.head_seq, self.head_hash, self.head_ts, self._head_batch = rec.seq, rec.hash, rec.ts_us, \
                    rec.batch_first
            if len(rows) < READ_CHUNK:
                return

    def open(self, on_record: OnRecord, restore: Restore | None, *, accept_loss: bool = False,
             progress: Callable[[int, int], None] | None = None) -> int:
        """Load the newest shared checkpoint whose seq and hash match the table, then read the rows after it."""
        loaded = self._load_checkpoint(restore) if restore is not None else 0
        total = self.size_bytes() if progress is not None else 0
        done = 0

        def counted(rec: Record) -> None:
            nonlocal done
            on_record(rec)
            done += rec.length
            if progress is not None and rec.seq % 4096 == 0:
                progress(min(done, total), max(total, done))

        with self._live().cursor() as cur:
            self._catch_up_on(cur, counted)
        if progress is not None:
            progress(max(total, done), max(total, done))
        return loaded

    def _load_checkpoint(self, restore: Restore) -> int:
        """Try the checkpoints newest first; the first that matches its events row and restores wins."""
        with self._live().cursor() as cur:
            cur.execute(self._q("SELECT c.seq, c.hash, c.snapshot_schema, e.hash, e.ts_us, e.batch_first "
                                "FROM {s}.checkpoints c LEFT JOIN {s}.events e ON e.seq = c.seq "
                                "ORDER BY c.seq DESC"))
            candidates = cur.fetchall()
            for seq, h, schema, row_hash, ts, batch_first in candidates:
                where = f"checkpoint seq {seq} in {self.schema}.checkpoints"
                if row_hash is None or bytes(row_hash) != bytes(h):
                    # The log wins: a snapshot of a history the table no longer holds is not used.
                    warn_checkpoint(where, f"it does not match the events row at seq {seq}")
                    continue
                snapshot = self._fetch_snapshot(int(seq))
                if snapshot is None:
                    continue  # pruned by another process meanwhile
                try:
                    restore(int(schema), memoryview(snapshot), int(seq))
                except ValueError as exc:
                    warn_checkpoint(where, str(exc))
                    continue
                self.head_seq, self.head_hash, self.head_ts, self._head_batch = int(seq), bytes(h), int(ts), \
                    int(batch_first)
                return int(seq)
        return 0

    def _fetch_snapshot(self, seq: int) -> bytes | None:
        """A checkpoint's snapshot bytes, or None if it is gone.

        Fetched in binary (text mode sends bytea as hex, twice its size, held by libpq while it is
        decoded) on a cursor closed before returning, so only one copy is alive when it is restored.
        """
        with self._live().cursor(binary=True) as cur:
            cur.execute(self._q("SELECT snapshot FROM {s}.checkpoints WHERE seq = %s"), (seq,))
            row = cur.fetchone()
        return None if row is None else bytes(row[0])

    def has_news(self) -> bool:
        """Always True: this is called on the event loop, where no network round trip may run; the
        catch-up that follows (in a worker thread) is the one index lookup that finds out."""
        return True

    def catch_up(self, on_record: OnRecord) -> None:
        """Read the rows other processes committed since we last looked."""
        with self._live().cursor() as cur:
            self._catch_up_on(cur, on_record)

    def prefetch(self, on_record: OnRecord) -> None:
        """Readers are never blocked by the table lock, so there is nothing to read ahead of it."""

    def read_range(self, since: int = 1, until: int | None = None) -> Iterator[Record]:
        """Committed rows with since <= seq <= until (default: this process's head), checked as they come."""
        last = self.head_seq if until is None else min(until, self.head_seq)
        since = max(since, 1)
        if since > last:
            return
        # The chain is checked from the row before ``since``: its hash is the first one's previous hash.
        with self._read_cursor() as cur:
            prev, prev_batch = GENESIS_HASH, 0
            if since > 1:
                cur.execute(self._q("SELECT hash, batch_first FROM {s}.events WHERE seq = %s"), (since - 1,))
                row = cur.fetchone()
                if row is None:
                    raise PostgresCorruption(self._table, since - 1, "the row is missing")
                prev, prev_batch = bytes(row[0]), int(row[1])
            seq = since
            while seq <= last:
                rows = self._rows_after(cur, seq - 1, last)
                if not rows:
                    raise PostgresCorruption(self._table, seq, "the row is missing")
                for row in rows:
                    rec = self._check_row(row, seq, prev, prev_batch)
                    yield rec
                    prev, prev_batch, seq = rec.hash, rec.batch_first, seq + 1

    # ----------------------------------------------------------------- writing
    def append_batch(self, payloads: list[bytes], on_record: OnRecord) -> list[Record]:
        """Append in one transaction under the table lock; an unknown outcome is resolved by the batch's token."""
        if self.read_only:
            raise ReadOnlyError(f"the ledger at {self._safe_url} is open read-only; nothing was recorded")
        if not payloads:
            return []
        token = uuid.uuid4()
        ids = [_artifact_id(p) for p in payloads]
        resolving = False  # set once a connection dropped with this batch possibly committed
        cause: BaseException | None = None
        for attempt in range(RECONNECTS + 1):
            if attempt:
                time.sleep(min(0.05 * 2 ** attempt, 1.0))
            try:
                return self._append_once(payloads, ids, token, on_record, resolving)
            except psycopg.errors.LockNotAvailable:
                raise LockTimeout(f"the table lock of {self._table} was not granted within {self._lock_timeout} s "
                                  "(another process holds it); nothing was recorded", []) from None
            except LedgerUnreachable as exc:
                if not resolving:
                    raise AppendNotRecorded(f"{exc}; nothing was recorded") from exc
                cause = exc  # still unknown: try again to reach the server and look
            except psycopg.Error as exc:
                conn = self._conn
                if conn is not None and not conn.broken and not conn.closed:
                    # The server refused a statement and rolled the transaction back: nothing was recorded.
                    raise AppendNotRecorded(f"the log at {self._safe_url} refused the batch, nothing of it was "
                                            f"recorded: {str(exc).strip()}") from exc
                # The connection dropped: the COMMIT may or may not have happened. Reconnect and look.
                resolving, cause = True, exc
        raise LedgerUnreachable(
            f"the connection to the PostgreSQL log at {self._safe_url} was lost during an append, and again on "
            f"each of {RECONNECTS} attempts to learn its outcome (last: {cause}); the batch may or may not be "
            "recorded: reopen the ledger and look for the artifact by id before saving it again") from cause

    @contextmanager
    def holding(self, on_record: OnRecord) -> Iterator[None]:
        """A transaction holding the table lock (as appends take it), caught up: no process appends meanwhile."""
        if self.read_only:
            raise ReadOnlyError(f"the ledger at {self._safe_url} is open read-only")
        conn = self._live()
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT set_config('lock_timeout', %s, true)",
                            (f"{max(1, int(self._lock_timeout * 1000))}ms" if self._lock_timeout is not None
                             else "0",))
                cur.execute(self._q("LOCK TABLE {s}.events IN EXCLUSIVE MODE"))
                self._catch_up_on(cur, on_record)
                yield
        except psycopg.errors.LockNotAvailable:
            raise LockTimeout(f"the table lock of {self._table} was not granted within {self._lock_timeout} s "
                              "(another process holds it)", []) from None

    def _append_once(self, payloads: list[bytes], ids: list[str | None], token: uuid.UUID, on_record: OnRecord,
                     resolving: bool) -> list[Record]:
        conn = self._live()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT set_config('lock_timeout', %s, true), set_config('synchronous_commit', %s, true)",
                        (f"{max(1, int(self._lock_timeout * 1000))}ms" if self._lock_timeout is not None else "0",
                         "on" if self._fsync else "off"))
            # Held until COMMIT: seq and chain are assigned by one writer at a time, in commit order.
            # Plain SELECTs (readers) are not blocked by EXCLUSIVE mode.
            cur.execute(self._q("LOCK TABLE {s}.events IN EXCLUSIVE MODE"))
            if resolving:
                # Under the lock, the transaction that lost its connection is over (the server
                # ended it, or it still held the lock until now): its rows are there or never will be.
                cur.execute(self._q("SELECT min(seq), count(*) FROM {s}.events WHERE batch_token = %s"), (token,))
                row = cur.fetchone()
                if row is not None and row[0] is not None:
                    first, n = int(row[0]), int(row[1])
                    self._catch_up_on(cur, on_record, until=first - 1)
                    if self.head_seq >= first:  # already read as news (never, unless read concurrently)
                        return list(self.read_range(first, first + n - 1))
                    mine: list[Record] = []
                    self._catch_up_on(cur, mine.append, until=first + n - 1)
                    return mine
            self._catch_up_on(cur, on_record)
            # The place is read under the lock in the same round trip as the clock: a process that chose its
            # blob store before another recorded a different place must not append events naming its blobs.
            cur.execute(self._q("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, "
                                "(SELECT value FROM {s}.settings WHERE name = %s)"), (BLOB_PLACE,))
            now_row = cur.fetchone()
            now = int(now_row[0]) if now_row else 0
            recorded = now_row[1] if now_row else None
            if self._expected_place is not False and recorded != self._expected_place:
                used = self._expected_place or "this machine's local blob directory"
                raise AppendNotRecorded(
                    f"the ledger at {self._safe_url} now keeps its blobs in {recorded}, but this process stores them "
                    f"in {used} (another process recorded the place after this one opened); nothing was recorded: "
                    f"reopen the ledger (without blobs=, or with blobs={recorded!r}) and save again")
            if self.check_before_write is not None:
                self.check_before_write(payloads)  # raising rolls the transaction back: nothing written
            first = self.head_seq + 1
            prev, ts = self.head_hash, self.head_ts
            out: list[Record] = []
            for i, payload in enumerate(payloads):
                seq = first + i
                # Strictly increasing, as in the file log: max(server clock, previous + 1 µs).
                ts = now if now > ts else ts + 1
                h = record_hash(seq, ts, prev, first, payload)
                out.append(Record(seq, ts, prev, h, payload, self._table, seq, BODY_HEAD + len(payload), first))
                prev = h
            with cur.copy(self._q("COPY {s}.events (seq, ts_us, prev_hash, hash, batch_first, payload, "
                                  "artifact_id, batch_token) FROM STDIN")) as copy:
                for rec, aid in zip(out, ids):
                    copy.write_row((rec.seq, rec.ts_us, rec.prev_hash, rec.hash, first, rec.payload, aid, token))
            cur.execute(sql.SQL("NOTIFY {}, {}").format(sql.Identifier(f"artifact_ledger_{self.schema}"),
                                                        sql.Literal(str(out[-1].seq))))
        # COMMIT returned: durable (synchronous_commit=on) and visible to every reader.
        last = out[-1]
        self.head_seq, self.head_hash, self.head_ts, self._head_batch = last.seq, last.hash, last.ts_us, first
        return out

    # ----------------------------------------------------------------- one flush per batch
    def check_last_batch_with(self, check: LastBatchCheck) -> None:
        """Nothing to check: a batch's rows commit in one transaction, after its blobs are durable."""

    @property
    def flush_device(self) -> None:
        """None: no local syncfs flushes a server's COMMIT."""
        return None

    def flush_batches_with(self, blobs: OneFlushBlobs) -> None:
        """Refused: a batch's blobs are flushed before its transaction commits (three flushes)."""
        raise ValueError("the PostgreSQL log commits each batch on its server; one flush per batch needs a "
                         "segment-file log on the blobs' filesystem")

    # ----------------------------------------------------------------- the blob place
    def blob_place(self) -> str | None:
        """The blob place recorded in ``settings`` (None: none, the blobs are each machine's own)."""
        with self._live().cursor() as cur:
            cur.execute(self._q("SELECT value FROM {s}.settings WHERE name = %s"), (BLOB_PLACE,))
            row = cur.fetchone()
            return None if row is None else str(row[0])

    def expect_blob_place(self, place: str | None) -> None:
        """Make every later append check, under the table lock, that the recorded place is still ``place``."""
        self._expected_place = place

    def adopt_blob_place(self, place: str) -> str:
        """Record ``place`` unless another is recorded (ValueError naming both) or events already name
        blobs of no recorded place (ValueError); returns the place now recorded."""
        if self.read_only:
            raise ReadOnlyError(f"the ledger at {self._safe_url} is open read-only; its blob place was not recorded")
        try:
            return self._adopt_once(place)
        except psycopg.errors.LockNotAvailable:
            raise LockTimeout(f"the table lock of {self._table} was not granted within {self._lock_timeout} s "
                              "(another process holds it); the blob place was not recorded", []) from None

    def _adopt_once(self, place: str) -> str:
        conn = self._live()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT set_config('lock_timeout', %s, true)",
                        (f"{max(1, int(self._lock_timeout * 1000))}ms" if self._lock_timeout is not None else "0",))
            # The appenders' lock: no event can be appended between the emptiness check and the insert,
            # and two first opens naming different places are serialised (the second sees the first's row).
            cur.execute(self._q("LOCK TABLE {s}.events IN EXCLUSIVE MODE"))
            cur.execute(self._q("SELECT name, value FROM {s}.settings WHERE name IN (%s, %s)"),
                        (BLOB_PLACE, UNKNOWN_THROUGH))
            rows = dict(cur.fetchall())
            recorded = rows.get(BLOB_PLACE)
            if recorded is not None:
                if recorded != place:
                    raise ValueError(blob_place_conflict(self._safe_url, recorded, place))
                return str(recorded)
            cur.execute(self._q("SELECT coalesce(max(seq), 0) FROM {s}.events"))
            row = cur.fetchone()
            head = int(row[0]) if row else 0
            unknown = int(rows.get(UNKNOWN_THROUGH) or 0)
            if head > unknown:
                raise ValueError(
                    f"the ledger at {self._safe_url} already holds {head} event(s) and records no blob place, so "
                    f"their blobs are in the local blob directories of the machines that saved them; it cannot move "
                    f"them to {place} (open it without blobs=, or start a new schema for S3 blobs)")
            # Empty, or migrated from version 2 with nothing appended since: the place is taken on trust,
            # as version 2 did on every open.
            cur.execute(self._q("INSERT INTO {s}.settings (name, value) VALUES (%s, %s)"), (BLOB_PLACE, place))
            return place

    # ----------------------------------------------------------------- checkpoints, verification
    @property
    def shared_checkpoints(self) -> bool:
        """Checkpoints live in the server, for every process: one on close only when many events are due."""
        return True

    def checkpoint_cut(self) -> Any:
        """(seq, hash) of the head record."""
        return (self.head_seq, self.head_hash)

    def write_checkpoint(self, cut: Any, schema: int, parts: Iterable[bytes]) -> None:
        """Insert the snapshot into ``checkpoints`` (its own short connection: this runs in a background
        thread beside appends), then keep only the newest KEEP_CHECKPOINTS."""
        seq, h = cut
        data = b"".join(parts)
        with self._connect() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(self._q("INSERT INTO {s}.checkpoints (seq, hash, snapshot_schema, snapshot) "
                                "VALUES (%s, %s, %s, %s) ON CONFLICT (seq) DO NOTHING"), (seq, h, schema, data))
            cur.execute(self._q("DELETE FROM {s}.checkpoints WHERE seq NOT IN "
                                "(SELECT seq FROM {s}.checkpoints ORDER BY seq DESC LIMIT %s)"), (KEEP_CHECKPOINTS,))

    def known_head(self) -> tuple[int, str]:
        """Nothing outside the table records a head: (0, "")."""
        return (0, "")

    def size_bytes(self) -> int:
        """The events table's size on the server."""
        with self._read_cursor() as cur:
            cur.execute("SELECT pg_total_relation_size(%s::regclass)", (f"{self.schema}.events",))
            row = cur.fetchone()
            return int(row[0]) if row else 0

    def verify(self, on_record: OnRecord, known: tuple[int, str]) -> LogCheck:
        """Re-read every row from seq 1 with every check, independently of this object's head."""
        walker = _Walker(self)
        problems: list[str] = []
        lost: tuple[int, int] | None = None
        records = 0

        def counted(rec: Record) -> None:
            nonlocal records
            on_record(rec)
            records += 1

        try:
            with self._read_cursor() as cur:
                walker.walk(cur, counted)
        except LedgerCorruption as exc:
            problems.append(f"record: {exc}")
        else:
            if walker.head_seq < known[0]:
                lost = (walker.head_seq + 1, known[0])
                problems.append(f"lost records: the table ends at seq {walker.head_seq}, but {known[1]} "
                                f"records seq {known[0]}")
        return LogCheck((walker.head_seq, walker.head_hash.hex()), records, problems, lost)

    def close(self) -> None:
        """Close the connection (in a fork child, leave the parent's socket alone)."""
        for conn in (self._conn, self._reader):
            if conn is not None and os.getpid() == self._pid:
                conn.close()
        self._conn = self._reader = None


def blob_place_conflict(where: str, recorded: str, asked: str) -> str:
    """The message for an open naming another blob place than the ledger records."""
    return (f"the ledger at {where} keeps its blobs in {recorded}, not {asked}; open it with blobs={recorded!r} "
            "(or without blobs=)")


def warn_checkpoint(where: str, reason: str) -> None:
    """Report an ignored checkpoint (a cache: the state is rebuilt from the events instead)."""
    warnings.warn(f"ignoring {where}: {reason}; rebuilding from the log", CheckpointWarning, stacklevel=4)


class _Walker:
    """A fresh head that re-reads the table from seq 1 (for verify)."""

    def __init__(self, log: PostgresEventLog):
        self._log = log
        self.head_seq = 0
        self.head_hash = GENESIS_HASH
        self._batch = 0

    def walk(self, cur: psycopg.Cursor[Any], on_record: OnRecord) -> None:
        log = self._log
        while True:
            rows = log._rows_after(cur, self.head_seq, None)
            for row in rows:
                rec = log._check_row(row, self.head_seq + 1, self.head_hash, self._batch)
                on_record(rec)
                self.head_seq, self.head_hash, self._batch = rec.seq, rec.hash, rec.batch_first
            if len(rows) < READ_CHUNK:
                return
