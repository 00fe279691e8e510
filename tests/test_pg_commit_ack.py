"""The PostgreSQL log acknowledges a save only once its COMMIT has returned (DESIGN.md rule 5).

Both tests act on the real server: a deferred constraint trigger runs inside the writer's COMMIT, where it
either raises (the COMMIT fails) or waits on an advisory lock the test holds (the COMMIT is in progress).
"""

from __future__ import annotations

import hashlib
import threading
import time

import anyio
import psycopg
import pytest

import backends
from artifact_ledger import open_ledger
from artifact_ledger.ledger.errors import AppendNotRecorded

R = {"run_id": "r", "graph_id": "g", "node_id": "n"}
LOCK_KEY = 7_340_011  # the advisory lock a waiting COMMIT queues on


sql = backends.pg_sql


def install_commit_trigger(name: str) -> None:
    """A trigger deferred to COMMIT that, per the row of ``commit_mode``, refuses the commit or waits."""
    sql(f'CREATE TABLE "{name}".commit_mode (mode text NOT NULL)')
    sql(f"INSERT INTO \"{name}\".commit_mode VALUES ('pass')")
    sql(f'''CREATE FUNCTION "{name}".at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE m text;
            BEGIN
                SELECT mode INTO m FROM "{name}".commit_mode;
                IF m = 'refuse' THEN RAISE EXCEPTION 'refused at commit by the test'; END IF;
                IF m = 'wait' THEN PERFORM pg_advisory_xact_lock({LOCK_KEY}); END IF;
                RETURN NULL;
            END $$''')
    sql(f'''CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON "{name}".events
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{name}".at_commit()''')


def set_mode(name: str, mode: str) -> None:
    sql(f'UPDATE "{name}".commit_mode SET mode = %s', (mode,))


async def save(led, tmp_path, data: bytes):
    src = tmp_path / f"src-{hashlib.sha256(data).hexdigest()[:8]}.bin"
    src.write_bytes(data)
    return await led.artifacts(**R).save(str(src), kind="k")


def test_a_commit_that_fails_acknowledges_nothing_and_the_ledger_works_on(schema, tmp_path):
    """The rows were copied and the COMMIT failed: the save raises, nothing is listed, the head stays, and
    the next save takes the same seq; a fresh process sees exactly the committed records."""
    url, name = schema

    async def main():
        async with open_ledger(url, cache_dir=tmp_path / "c") as led:
            first = await save(led, tmp_path, b"first")
            install_commit_trigger(name)
            head = led.head
            set_mode(name, "refuse")
            with pytest.raises(AppendNotRecorded, match="refused at commit"):
                await save(led, tmp_path, b"refused")
            assert led.head == head
            assert [a.artifact_id for a in await led.artifacts(**R).list()] == [first.artifact_id]
            set_mode(name, "pass")
            after = await save(led, tmp_path, b"after")
            assert after.seq == 2
            return [first.artifact_id, after.artifact_id]

    ids = anyio.run(main)
    assert [r.seq for r in backends.pg_rows(name)] == [1, 2]

    async def fresh():
        async with open_ledger(url, cache_dir=tmp_path / "c") as led:
            assert (await led.verify()).ok
            return [a.artifact_id for a in sorted(await led.artifacts(**R).list(), key=lambda a: a.seq)]

    assert anyio.run(fresh) == ids


def _waiting_on_the_test_lock() -> bool:
    rows = sql("SELECT locktype, objid::text, granted FROM pg_locks WHERE locktype = 'advisory'")
    return any(not granted and objid == str(LOCK_KEY) for _, objid, granted in rows)


def test_a_save_returns_only_after_its_commit_has_returned(schema, tmp_path):
    """While the writer's COMMIT waits (inside it, on a lock the test holds), the save has not returned and
    its artifact is not listed; once the COMMIT can finish, the save returns and the artifact is there."""
    url, name = schema
    blocker = psycopg.connect(backends.PG_BASE, autocommit=True, connect_timeout=5)
    try:
        async def main():
            async with open_ledger(url, cache_dir=tmp_path / "c") as led:
                await save(led, tmp_path, b"warm")
                head = led.head
                install_commit_trigger(name)
                set_mode(name, "wait")
                blocker.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
                done: list = []

                async def saving():
                    done.append(await save(led, tmp_path, b"held at commit"))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(saving)
                    deadline = time.monotonic() + 60
                    while not await anyio.to_thread.run_sync(_waiting_on_the_test_lock):
                        assert time.monotonic() < deadline, "the writer's COMMIT never reached the trigger"
                        await anyio.sleep(0.02)
                    # The COMMIT is in progress on the server: nothing may be acknowledged yet. (A read
                    # would wait for the append, which holds the log, so the state is looked at directly.)
                    await anyio.sleep(0.2)
                    assert done == [] and led.head == head and len(led.catalog.rows) == 1
                    released = threading.Event()

                    def release():
                        blocker.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
                        released.set()

                    await anyio.to_thread.run_sync(release)
                assert released.is_set() and len(done) == 1 and done[0].seq == 2
                assert sorted(a.seq for a in await led.artifacts(**R).list()) == [1, 2]

        anyio.run(main)
    finally:
        blocker.close()
    assert [r.seq for r in backends.pg_rows(name)] == [1, 2]
