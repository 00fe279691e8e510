"""The PostgreSQL log's own rules (issue 8): chain, gap-free seq under concurrency, visibility, unknown
outcomes, schema versions, URLs and faults. The facade's semantics on it are in the conformance suite."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import struct
import threading
import time
from pathlib import Path

import anyio
import psycopg
import pytest

import backends
import pg_workers
from artifact_ledger import ReadOnlyError, open_ledger
from artifact_ledger.ledger import postgres
from artifact_ledger.ledger.errors import (LedgerCorruption, LedgerNotFound, LedgerPoisoned, LedgerUnreachable,
                                           LockTimeout, SchemaTooNew)

SPAWN = multiprocessing.get_context("spawn")
GENESIS = "0" * 64
R = {"run_id": "r", "graph_id": "g", "node_id": "n"}


sql = backends.pg_sql


async def save(led, tmp_path: Path, data: bytes, **kw):
    src = tmp_path / f"src-{hashlib.sha256(data).hexdigest()[:8]}.bin"
    src.write_bytes(data)
    return await led.artifacts(**R).save(str(src), kind="k", **kw)


def independent_hash(seq: int, ts: int, prev: bytes, batch_first: int, payload: bytes) -> bytes:
    """The record hash re-derived from FORMAT.md (not from ledger.framing): SHA-256 of the v2 body."""
    return hashlib.sha256(struct.pack("<Qq32sQ", seq, ts, prev, batch_first) + payload).digest()


# ---------------------------------------------------------------- the chain
def test_rows_are_hash_chained_exactly_like_the_file_log(schema, tmp_path):
    """Every row's hash is SHA-256 of the v2 record body; prev_hash links rows; seq 1.. with no gap; commit
    times strictly increase; events() reports exactly the stored hashes."""
    url, name = schema

    async def main():
        async with open_ledger(url, cache_dir=tmp_path / "c") as led:
            fac = led.artifacts(**R)
            for i in range(5):
                art = await save(led, tmp_path, b"x%d" % i)
                await fac.pin(art.artifact_id, i % 2 == 0)
            evs = [e async for e in led.events()]
            return led.head, evs

    head, evs = anyio.run(main)
    rows = backends.pg_rows(name)
    assert [r.seq for r in rows] == list(range(1, 11))
    prev = bytes(32)
    for r in rows:
        assert r.prev_hash == prev
        assert r.hash == independent_hash(r.seq, r.ts_us, r.prev_hash, r.batch_first, r.payload)
        prev = r.hash
    assert all(a.ts_us < b.ts_us for a, b in zip(rows, rows[1:]))
    assert [e.hash for e in evs] == [r.hash.hex() for r in rows]
    assert head == (10, rows[-1].hash.hex())


def test_a_changed_row_is_found_by_verify_and_refused_on_open(schema, tmp_path):
    """A payload changed in place breaks the stored hash: verify names the seq, and opening refuses the log."""
    url, name = schema

    async def build():
        async with open_ledger(url, cache_dir=tmp_path / "c") as led:
            for i in range(4):
                await save(led, tmp_path, b"y%d" % i)
            assert (await led.verify()).ok
            return led.head

    head = anyio.run(build)
    sql(f'UPDATE "{name}".events SET payload = payload || \'\\x00\'::bytea WHERE seq = 3')

    async def check():
        with pytest.raises(LedgerCorruption, match=r"seq 3: its stored hash is not the SHA-256 of its body"):
            await open_ledger(url, cache_dir=tmp_path / "c")

    anyio.run(check)
    sql(f'UPDATE "{name}".events SET payload = substring(payload from 1 for length(payload) - 1) WHERE seq = 3')

    async def verify_tail_cut():
        sql(f'DELETE FROM "{name}".events WHERE seq = 4')
        async with open_ledger(url, cache_dir=tmp_path / "c") as led:
            res = await led.verify(expect_head=head)
            assert not res.ok and "no longer contains seq 4" in res.problem

    anyio.run(verify_tail_cut)


def test_a_missing_middle_row_is_damage_not_a_gap_to_skip(schema, tmp_path):
    """A deleted row in the middle: opening raises LedgerCorruption naming the missing seq."""
    url, name = schema

    async def build():
        async with open_ledger(url, cache_dir=tmp_path / "c") as led:
            for i in range(4):
                await save(led, tmp_path, b"z%d" % i)

    anyio.run(build)
    sql(f'DELETE FROM "{name}".events WHERE seq = 2')

    async def check():
        with pytest.raises(LedgerCorruption, match="seq 2 is missing"):
            await open_ledger(url, cache_dir=tmp_path / "c")

    anyio.run(check)


# ---------------------------------------------------------------- group commit and visibility
def test_concurrent_appends_of_one_process_share_transactions(schema, tmp_path):
    """Concurrent saves in one process are committed in shared batches (rows carry their batch's first seq)."""
    url, name = schema

    async def main():
        async with open_ledger(url, cache_dir=tmp_path / "c") as led:
            art = await save(led, tmp_path, b"one")
            fac = led.artifacts(**R)
            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(fac.pin, art.artifact_id, i % 2 == 0)

    anyio.run(main)
    rows = backends.pg_rows(name)
    assert len(rows) == 41
    batches = {r.batch_first for r in rows}
    assert len(batches) < len(rows) - 10  # many records per transaction, not one each


def test_another_process_commit_is_seen_by_the_next_read(schema, tmp_path):
    """Ledger B (its own connection) sees what ledger A committed at its very next read, no reopen."""
    url, _ = schema

    async def main():
        async with open_ledger(url, cache_dir=tmp_path / "a") as a, \
                open_ledger(url, cache_dir=tmp_path / "b") as b:
            assert await b.artifacts(**R).list() == []
            art = await save(a, tmp_path, b"seen")
            listed = await b.artifacts(**R).list()
            assert [x.artifact_id for x in listed] == [art.artifact_id]
            assert b.head == a.head
            await b.artifacts(**R).pin(art.artifact_id)
            assert (await a.artifacts(**R).get(art.artifact_id)).pinned

    anyio.run(main)


def test_processes_append_at_once_and_a_tailer_sees_every_ack_in_order(schema, tmp_path):
    """4 writer processes (each its own cache directory) save, ingest_dir, write and pin at once; a read-only
    tailer process sees seq 1..N with no gap and an unbroken chain, including every artifact a writer was told
    was recorded, exactly once; the ledger verifies afterwards."""
    url, name = schema
    writers, saves = 4, 30
    expect = writers * saves
    tail_out = tmp_path / "tail.txt"
    anyio.run(lambda: _create(url, tmp_path / "t"))
    tail = SPAWN.Process(target=pg_workers.tailer, args=(url, str(tmp_path / "t"), expect, str(tail_out), 120))
    tail.start()
    procs = []
    for w in range(writers):
        (tmp_path / f"w{w}").mkdir()
        procs.append(SPAWN.Process(target=pg_workers.writer,
                                   args=(url, str(tmp_path / f"w{w}"), saves, f"w{w}", str(tmp_path / f"ack{w}"))))
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    tail.join(120)
    assert tail.exitcode == 0
    acks = [line.split()[0] for w in range(writers) for line in (tmp_path / f"ack{w}").read_text().splitlines()]
    assert len(acks) == expect
    acked = [a for a in acks if a != "writer"]
    lines = [line.split() for line in tail_out.read_text().splitlines()]
    seqs = [int(x[0]) for x in lines]
    assert seqs == list(range(1, len(seqs) + 1))  # in seq order, none skipped
    prev = GENESIS
    for x in lines:
        assert x[1] == prev
        prev = x[2]
    recorded = [x[4] for x in lines if x[3] == "artifact.recorded"]
    assert set(acked) <= set(recorded) and len(set(recorded)) == len(recorded) == expect
    assert [r.hash.hex() for r in backends.pg_rows(name)][: len(lines)] == [x[2] for x in lines]

    async def verify():
        async with open_ledger(url, cache_dir=tmp_path / "t") as led:
            res = await led.verify()
            # The whole chain checks out; the bytes are in each writer's own cache, not this one.
            rows = backends.pg_rows(name)
            assert res.records == len(rows) and res.head == (rows[-1].seq, rows[-1].hash.hex())
            assert res.problems and all("missing from the store" in p for p in res.problems)

    anyio.run(verify)


async def _create(url: str, cache: Path) -> None:
    async with open_ledger(url, cache_dir=cache):
        pass


def test_a_sigkilled_writer_loses_nothing_acknowledged(schema, tmp_path):
    """SIGKILL a writer process mid-stream: every id it acknowledged is in the log, the chain verifies,
    and the ledger takes appends afterwards."""
    url, _ = schema
    cache, acks = tmp_path / "v", tmp_path / "acks"
    cache.mkdir()
    p = SPAWN.Process(target=pg_workers.forever_writer, args=(url, str(cache), str(acks)))
    p.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not acks.exists() or len(acks.read_text().splitlines()) < 25):
            time.sleep(0.01)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
    assert p.exitcode == -signal.SIGKILL
    acked = acks.read_text().split()
    assert len(acked) >= 25

    async def check():
        async with open_ledger(url, cache_dir=cache) as led:
            ids = [a.artifact_id for a in await led.artifacts(run_id="victim", graph_id="g", node_id="n").list()]
            assert set(acked) <= set(ids) and len(set(ids)) == len(ids)
            assert (await led.verify()).ok
            await save(led, tmp_path, b"after the kill")

    anyio.run(check)


# ---------------------------------------------------------------- unknown outcomes and faults
def _backend_pid(led) -> int:
    return led._log._conn.info.backend_pid


def test_lost_acknowledgement_of_a_commit_is_resolved_without_a_duplicate(schema, tmp_path, monkeypatch):
    """The COMMIT happened but the connection died before the client heard it: the retry finds the batch by
    its token under the table lock and acknowledges it; the artifact is recorded once."""
    url, name = schema
    real = postgres.PostgresEventLog._append_once
    fired = []

    def lose_ack(self, payloads, ids, token, on_record, resolving):
        before = (self.head_seq, self.head_hash, self.head_ts, self._head_batch)
        out = real(self, payloads, ids, token, on_record, resolving)
        if not fired:
            fired.append(token)
            # The client never learned the outcome, so it never moved its head.
            self.head_seq, self.head_hash, self.head_ts, self._head_batch = before
            # Really kill the session after its COMMIT, and let the client find out like it would.
            sql("SELECT pg_terminate_backend(%s)", (self._conn.info.backend_pid,))
            with pytest.raises(psycopg.OperationalError):
                self._conn.execute("SELECT 1")
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return out

    monkeypatch.setattr(postgres.PostgresEventLog, "_append_once", lose_ack)

    async def main():
        async with open_ledger(url, cache_dir=tmp_path / "c") as led:
            art = await save(led, tmp_path, b"once")
            assert fired and art.seq == 1
            assert [a.artifact_id for a in await led.artifacts(**R).list()] == [art.artifact_id]
            nxt = await save(led, tmp_path, b"twice")  # the ledger works on after the fault
            assert nxt.seq == 2
            assert (await led.verify()).ok
            return art

    art = anyio.run(main)
    rows = backends.pg_rows(name)
    assert [r.seq for r in rows] == [1, 2]
    assert sql(f'SELECT count(*) FROM "{name}".events WHERE artifact_id = %s', (art.artifact_id,)) == [(1,)]


def test_terminating_the_writers_backend_mid_append_never_duplicates(schema, tmp_path):
    """pg_terminate_backend of the writer's session while its append waits for the table lock (held by
    another session): the call succeeds exactly once or fails cleanly; no half record; the ledger works on."""
    url, name = schema

    async def main():
        async with open_ledger(url, cache_dir=tmp_path / "c") as led:
            await save(led, tmp_path, b"first")
            victim = _backend_pid(led)
            holder = psycopg.connect(backends.PG_BASE, connect_timeout=5)
            holder.execute(f'LOCK TABLE "{name}".events IN EXCLUSIVE MODE')

            def kill_then_release():
                # Wait until the writer is blocked on the lock, then kill it and let go.
                for _ in range(500):
                    waiting = sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                                  (victim,))
                    if waiting:
                        break
                    time.sleep(0.01)
                sql("SELECT pg_terminate_backend(%s)", (victim,))
                time.sleep(0.05)
                holder.rollback()
                holder.close()

            t = threading.Thread(target=kill_then_release)
            t.start()
            try:
                art = await save(led, tmp_path, b"second")
            finally:
                await anyio.to_thread.run_sync(t.join)
            assert art.seq == 2
            assert _backend_pid(led) != victim  # it reconnected
            third = await save(led, tmp_path, b"third")
            assert third.seq == 3
            assert (await led.verify()).ok

    anyio.run(main)
    rows = backends.pg_rows(name)
    assert [r.seq for r in rows] == [1, 2, 3]


def test_killing_the_session_at_random_moments_records_each_save_once(schema, tmp_path):
    """A killer thread terminates the writer's session at random moments (12 times) while it saves: every save
    that returned is recorded exactly once, the table has no gap or duplicate, and the chain verifies. A call
    whose every retry was killed too says its outcome is unknown (it is then recorded at most once) and the
    writer, as a user would, reopens the ledger and goes on."""
    url, name = schema
    ok_ids: list[str] = []
    kills = []
    unknown = 0
    current: dict = {}

    async def main():
        nonlocal unknown
        current["led"] = await open_ledger(url, cache_dir=tmp_path / "c")
        stop = threading.Event()
        rnd = random.Random(8)

        def killer():
            while not stop.is_set() and len(kills) < 12:
                time.sleep(rnd.uniform(0.005, 0.04))
                conn = current["led"]._log._conn
                try:
                    pid = None if conn is None else conn.info.backend_pid
                except psycopg.Error:  # closed at this very moment: try the next one
                    continue
                if pid is not None and sql("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]:
                    kills.append(pid)

        t = threading.Thread(target=killer)
        t.start()
        try:
            # Until the killer is done (however slow the machine) and then some: the saves after it must work.
            for i in range(5000):
                if not t.is_alive() and len(ok_ids) >= 20:
                    break
                try:
                    art = await save(current["led"], tmp_path, b"k%d" % i)
                except LedgerPoisoned as exc:  # every retry killed as well: the outcome is unknown
                    assert "may or may not be recorded" in str(exc)
                    unknown += 1
                    await current["led"].aclose()
                    current["led"] = await open_ledger(url, cache_dir=tmp_path / "c")
                    continue
                ok_ids.append(art.artifact_id)
        finally:
            stop.set()
            await anyio.to_thread.run_sync(t.join)
            await current["led"].aclose()

    anyio.run(main)
    assert len(kills) == 12 and len(ok_ids) >= 20
    rows = backends.pg_rows(name)
    ids = [r[0] for r in sql(f'SELECT artifact_id FROM "{name}".events ORDER BY seq')]
    assert len(ids) == len(set(ids))
    assert set(ok_ids) <= set(ids) and len(ids) - len(ok_ids) <= unknown
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))

    async def again():
        async with open_ledger(url, cache_dir=tmp_path / "c") as led:
            assert (await led.verify()).ok
            await save(led, tmp_path, b"afterwards")

    anyio.run(again)


def test_a_held_table_lock_times_out_cleanly(schema, tmp_path):
    """Another session holds the table lock: the append gives up after lock_timeout with LockTimeout, records
    nothing, and the next append (lock released) works."""
    url, name = schema

    async def main():
        async with open_ledger(url, cache_dir=tmp_path / "c", lock_timeout=0.2) as led:
            await save(led, tmp_path, b"a")
            with psycopg.connect(backends.PG_BASE, connect_timeout=5) as holder:
                holder.execute(f'LOCK TABLE "{name}".events IN EXCLUSIVE MODE')
                with pytest.raises(LockTimeout):
                    await save(led, tmp_path, b"b")
                holder.rollback()
            art = await save(led, tmp_path, b"c")
            assert art.seq == 2

    anyio.run(main)
    assert [r.seq for r in backends.pg_rows(name)] == [1, 2]


def test_a_duplicate_artifact_id_is_refused_and_the_ledger_works_on(schema, tmp_path):
    """Artifact ids are unique in the table: a second row with an id already there is refused whole."""
    url, name = schema

    async def main():
        async with open_ledger(url, cache_dir=tmp_path / "c") as led:
            art = await save(led, tmp_path, b"a")
            (row,) = backends.pg_rows(name)
            with pytest.raises(Exception, match="refused the batch"):
                await anyio.to_thread.run_sync(led._log.append_batch, [row.payload], lambda r: None)
            assert (await save(led, tmp_path, b"b")).seq == 2
            return art

    anyio.run(main)
    assert [r.seq for r in backends.pg_rows(name)] == [1, 2]


# ---------------------------------------------------------------- schema, versions, URLs
def test_first_open_creates_the_schema_with_its_version_and_concurrent_opens_agree(schema, tmp_path):
    """Several processes' first opens at once: all succeed, one set of tables, one version row."""
    url, name = schema

    def opener(i):
        anyio.run(lambda: _create(url, tmp_path / f"o{i}"))

    threads = [threading.Thread(target=opener, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = sql(f'SELECT version FROM "{name}".ledger_version ORDER BY version')
    assert versions == [(v,) for v in range(1, postgres.SCHEMA_VERSION + 1)]


def test_a_schema_newer_than_the_library_is_a_clear_error(schema, tmp_path):
    """A ledger_version row newer than the library: opening raises SchemaTooNew naming both versions."""
    url, name = schema
    anyio.run(lambda: _create(url, tmp_path / "c"))
    sql(f'INSERT INTO "{name}".ledger_version (version, library) VALUES (%s, %s)', (postgres.SCHEMA_VERSION + 1, "x"))

    async def check():
        with pytest.raises(SchemaTooNew, match=f"schema version {postgres.SCHEMA_VERSION + 1}, newer than this "
                                               f"library's {postgres.SCHEMA_VERSION}"):
            await open_ledger(url, cache_dir=tmp_path / "c")

    anyio.run(check)


def test_schema_parameter_selects_separate_ledgers(pg_url, tmp_path):
    """?schema=a and ?schema=b are two ledgers in one database."""
    other = backends.url_for(backends.new_schema())

    async def main():
        async with open_ledger(pg_url, cache_dir=tmp_path / "a") as a, \
                open_ledger(other, cache_dir=tmp_path / "b") as b:
            await save(a, tmp_path, b"in a")
            assert await b.artifacts(**R).list() == []
            assert a.head[0] == 1 and b.head[0] == 0

    anyio.run(main)


@pytest.mark.parametrize("url, message", [
    ("mysql://u@127.0.0.1/db", "unsupported log URL scheme 'mysql'"),
    ("postgresql:///test", "names no host"),
    ("postgresql://postgres@127.0.0.1:5432/", "names no database"),
    ("postgresql://postgres@127.0.0.1:5432/test?schema=Team-A", "not a valid schema name"),
    ("postgresql://postgres@127.0.0.1:5432/test?connect_timeout=soon", "connect_timeout='soon'"),
])
def test_a_malformed_url_is_refused_before_connecting(url, message, tmp_path):
    """Bad scheme, host, database, schema name or timeout: ValueError naming it; no cache directory made."""

    async def main():
        with pytest.raises(ValueError, match=message):
            await open_ledger(url, cache_dir=tmp_path / "c")

    anyio.run(main)
    assert not (tmp_path / "c").exists()


def test_an_unreachable_server_fails_fast_naming_what_is_wrong(tmp_path):
    """A closed port and an unknown database: LedgerUnreachable with the URL and the server's reason."""
    with socket_closed_port() as port:
        async def closed():
            with pytest.raises(LedgerUnreachable, match=rf"127\.0\.0\.1:{port}/test.*connect_timeout 2 s.*refused"):
                await open_ledger(f"postgresql://postgres:secret@127.0.0.1:{port}/test?connect_timeout=2",
                                  cache_dir=tmp_path / "c")

        anyio.run(closed)
    backends.need_postgres()

    async def no_db():
        with pytest.raises(LedgerUnreachable, match='database "no_such_db_x" does not exist') as info:
            await open_ledger(backends.PG_BASE.rsplit("/", 1)[0] + "/no_such_db_x", cache_dir=tmp_path / "c")
        assert "secret" not in str(info.value)

    anyio.run(no_db)
    assert not (tmp_path / "c").exists()


class socket_closed_port:
    """A loopback port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def __exit__(self, *exc: object) -> None:
        return None


def test_read_only_and_create_false_never_create_a_schema(pg_url, tmp_path):
    """Opening a schema that holds no ledger with read_only=True or create=False raises LedgerNotFound
    (a FileNotFoundError) and creates nothing; read-only opens refuse appends."""
    name = pg_url.rsplit("schema=", 1)[1]

    async def main():
        for kw in ({"read_only": True}, {"create": False}):
            with pytest.raises(LedgerNotFound, match="no ledger at"):
                await open_ledger(pg_url, cache_dir=tmp_path / "c", **kw)
        assert sql("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)) == []
        await _create(pg_url, tmp_path / "c")
        async with open_ledger(pg_url, cache_dir=tmp_path / "c", read_only=True) as led:
            with pytest.raises(Exception, match="read-only"):
                await save(led, tmp_path, b"no")

    anyio.run(main)
    assert backends.pg_rows(name) == []


# ---------------------------------------------------------------- the command-line tool
def _cli(*args: str, env_extra: dict[str, str] | None = None):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTIFACT_LEDGER_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "artifact_ledger", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_cli_reads_a_postgres_ledger_by_log_url_or_environment(schema, tmp_path):
    """--log URL --cache-dir DIR and $ARTIFACT_LEDGER_LOG / $ARTIFACT_LEDGER_CACHE_DIR open the ledger;
    --root with --log, a closed port and a missing schema fail with one clear line and their exit codes."""
    import json

    url, _ = schema
    cache = tmp_path / "c"

    async def build():
        async with open_ledger(url, cache_dir=cache) as led:
            return (await save(led, tmp_path, b"cli")).artifact_id

    aid = anyio.run(build)
    res = _cli("--log", url, "--cache-dir", str(cache), "list", "--all", "--json")
    assert res.returncode == 0, res.stderr
    assert [a["artifact_id"] for a in json.loads(res.stdout)] == [aid]
    res = _cli("verify", "--json", env_extra={"ARTIFACT_LEDGER_LOG": url, "ARTIFACT_LEDGER_CACHE_DIR": str(cache)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ok"] is True
    res = _cli("--log", url, "-C", str(tmp_path), "list")
    assert res.returncode == 2 and "not both" in res.stderr
    with socket_closed_port() as port:
        res = _cli("--log", f"postgresql://postgres@127.0.0.1:{port}/test?connect_timeout=2", "list")
    assert res.returncode == 3 and "cannot open the PostgreSQL log" in res.stderr and "Traceback" not in res.stderr
    res = _cli("--log", backends.url_for("t_never_made_here"), "list")
    assert res.returncode == 2 and "no ledger at" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------- shared checkpoints and migrations
def test_a_checkpoint_is_shared_with_every_process_and_only_the_tail_is_replayed(schema, tmp_path):
    """checkpoint() stores the snapshot in the server; another process (another cache) opens from it and
    reads only the rows after it, with the same answers as a full replay."""
    url, name = schema

    async def main():
        async with open_ledger(url, cache_dir=tmp_path / "a") as a:
            for i in range(6):
                await save(a, tmp_path, b"c%d" % i, metrics={"m": i})
            assert await a.checkpoint() == 6
            await save(a, tmp_path, b"after", metrics={"m": 99})
            want = [x.artifact_id for x in await a.artifacts(**R).list()]
            best = (await a.artifacts(**R).best(kind="k", metric="m", mode="max")).artifact_id
        assert sql(f'SELECT seq FROM "{name}".checkpoints') == [(6,)]
        async with open_ledger(url, cache_dir=tmp_path / "b") as b:
            assert b._ckpt_seq == 6 and b.head[0] == 7
            assert [x.artifact_id for x in await b.artifacts(**R).list()] == want
            assert (await b.artifacts(**R).best(kind="k", metric="m", mode="max")).artifact_id == best
        # Given a's blob directory, b verifies the whole chain and every blob.
        async with open_ledger(url, cache_dir=tmp_path / "b", blobs=tmp_path / "a" / "blobs") as b:
            res = await b.verify()
            assert res.ok and res.head == (7, res.head[1]) and res.records == 7

    anyio.run(main)


@pytest.mark.parametrize("damage", ["hash", "snapshot"])
def test_a_checkpoint_that_does_not_match_is_ignored_with_a_warning(schema, tmp_path, damage):
    """A checkpoint whose hash is not the events row's, or whose snapshot does not decode: CheckpointWarning,
    full replay, the same catalogue."""
    from artifact_ledger import CheckpointWarning

    url, name = schema

    async def build():
        async with open_ledger(url, cache_dir=tmp_path / "a") as a:
            for i in range(4):
                await save(a, tmp_path, b"d%d" % i)
            await a.checkpoint()
            return [x.artifact_id for x in await a.artifacts(**R).list()]

    want = anyio.run(build)
    if damage == "hash":
        sql(f'UPDATE "{name}".checkpoints SET hash = %s', (bytes(32),))
    else:
        sql(f'UPDATE "{name}".checkpoints SET snapshot = %s', (b"not a snapshot",))

    async def check():
        with pytest.warns(CheckpointWarning, match="ignoring checkpoint seq 4"):
            led = await open_ledger(url, cache_dir=tmp_path / "b")
        try:
            assert led._ckpt_seq == 0
            assert [x.artifact_id for x in await led.artifacts(**R).list()] == want
        finally:
            await led.aclose()

    anyio.run(check)


def test_closing_writes_a_shared_checkpoint_only_when_checkpoint_every_events_are_due(schema, tmp_path):
    """A worker that saved a little does not upload a snapshot on close; one that saw checkpoint_every events
    does."""
    url, name = schema

    async def main():
        async with open_ledger(url, cache_dir=tmp_path / "a", checkpoint_every=50) as a:
            await save(a, tmp_path, b"one")
        assert sql(f'SELECT count(*) FROM "{name}".checkpoints') == [(0,)]
        async with open_ledger(url, cache_dir=tmp_path / "a", checkpoint_every=3) as a:
            for i in range(3):
                await save(a, tmp_path, b"e%d" % i)
        assert sql(f'SELECT count(*) FROM "{name}".checkpoints') == [(1,)]

    anyio.run(main)


def test_a_version_1_schema_is_migrated_on_open_keeping_every_record(schema, tmp_path):
    """A schema an older library made (version 1: no checkpoints table) is migrated to the current version on
    open, in one transaction, and its records stay as they were."""
    url, name = schema

    async def build():
        async with open_ledger(url, cache_dir=tmp_path / "a") as a:
            for i in range(3):
                await save(a, tmp_path, b"v%d" % i)
            return a.head

    head = anyio.run(build)
    sql(f'DROP TABLE "{name}".checkpoints')
    sql(f'DROP TABLE "{name}".settings')
    sql(f'DELETE FROM "{name}".ledger_version WHERE version > 1')

    async def reopen():
        async with open_ledger(url, cache_dir=tmp_path / "a") as a:
            assert a.head == head
            assert await a.checkpoint() == 3
            assert (await a.verify()).head == head

    anyio.run(reopen)
    assert sql(f'SELECT version FROM "{name}".ledger_version ORDER BY version') == [
        (v,) for v in range(1, postgres.SCHEMA_VERSION + 1)]


def test_messages_name_the_ledgers_url_not_its_cache_directory(schema, tmp_path):
    """A ledger opened by URL is "the ledger at <URL>" in its errors; the cache directory is only scratch."""
    url, _ = schema
    cache = tmp_path / "cache"

    async def main():
        async with open_ledger(url, cache_dir=cache) as led:
            await save(led, tmp_path, b"named by url")
            with pytest.raises(FileNotFoundError) as unknown:
                await led.artifacts(**R).load_artifact_bytes("artifact://" + "0" * 32)
        async with open_ledger(url, cache_dir=cache, read_only=True) as ro:
            with pytest.raises(ReadOnlyError) as refused:
                await save(ro, tmp_path, b"refused")
        return [str(unknown.value), str(refused.value)]

    for text in anyio.run(main):
        assert f"the ledger at {url}" in text and str(cache) not in text, text
