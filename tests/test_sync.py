"""The blocking API (artifact_ledger.sync): same answers as the async core, safe from many threads."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import anyio
import pytest

import artifact_ledger.facade.sync as sync_mod
from artifact_ledger import LedgerClosed, open_ledger
from artifact_ledger.sync import SyncLedger
from artifact_ledger.sync import open_ledger as open_sync

BIND = {"run_id": "r1", "graph_id": "g", "node_id": "n", "project_id": "p"}


@pytest.fixture
def src(tmp_path):
    p = tmp_path / "note.txt"
    p.write_text("hello")
    return str(p)


def test_every_kind_of_call_works_without_await_and_matches_the_async_core(root, src, tmp_path):
    with open_sync(root) as led:
        assert isinstance(led, SyncLedger)
        arts = led.context(**BIND).artifacts()
        a = arts.save(src, kind="text", labels={"k": 1}, metrics={"acc": 0.5})
        assert arts.last_artifact == a
        with arts.writer(kind="bin", planned_ext=".bin", metrics={"acc": 0.9}) as f:
            f.write(b"\x00\x01")
        w = arts.last_artifact
        staged = arts.stage_dir()
        (tmp_path / "x").mkdir()
        with open(f"{staged}/f.txt", "w") as fh:
            fh.write("in a dir")
        d = arts.ingest_dir(staged, labels={"k": 2})
        arts.pin(a.artifact_id)
        assert arts.load_artifact(a.uri) == "hello"
        assert arts.load_artifact_bytes(w.uri) == b"\x00\x01"
        assert (arts.load_artifact(d.uri) / "f.txt").read_text() == "in a dir"
        best = arts.best(kind="bin", metric="acc", mode="max")
        listed = [x.artifact_id for x in arts.list()]
        found = [x.artifact_id for x in arts.search(labels={"k": 1})]
        past = led.as_of(seq=1).artifacts(**BIND).list()
        events = [(e.seq, e.hash) for e in led.events()]
        history = [e.seq for e in led.history(a.artifact_id)]
        diff = led.diff(0, led.head[0])
        verified = led.verify()
        head = led.head
    assert led.closed
    assert best == w and found == [a.artifact_id] and [x.artifact_id for x in past] == [a.artifact_id]
    assert verified.ok and verified.head == head

    async def the_async_answers():
        async with open_ledger(root) as aled:
            aarts = aled.context(**BIND).artifacts()
            return ([x.artifact_id for x in await aarts.list()], [(e.seq, e.hash) async for e in aled.events()],
                    [e.seq for e in await aled.history(a.artifact_id)], await aled.diff(0, head[0]))

    alisted, aevents, ahistory, adiff = anyio.run(the_async_answers)
    assert (listed, events, history) == (alisted, aevents, ahistory)
    assert [x.artifact_id for x in diff.added] == [x.artifact_id for x in adiff.added]


def test_many_threads_save_at_once_and_every_save_is_recorded_once(root, src):
    with open_sync(root) as led:
        arts = led.artifacts(**BIND)
        results: list = []
        errors: list = []

        def work(t: int) -> None:
            try:
                for i in range(15):
                    results.append(arts.save(src, kind="text", metrics={"t": t, "i": i}))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len({a.artifact_id for a in results}) == len({a.seq for a in results}) == 120
        assert sorted(a.artifact_id for a in arts.list()) == sorted(a.artifact_id for a in results)
        assert led.verify().ok


def test_calls_inside_a_running_event_loop_are_refused_before_anything_is_written(root, src):
    with open_sync(root) as led:
        arts = led.artifacts(**BIND)

        async def misuse():
            with pytest.raises(RuntimeError, match="running asyncio event loop.*async API"):
                arts.save(src, kind="text")
            with pytest.raises(RuntimeError, match="running asyncio event loop"):
                arts.writer(kind="text")
            with pytest.raises(RuntimeError, match="running asyncio event loop"):
                next(iter(led.events()))
            with pytest.raises(RuntimeError, match="running asyncio event loop"):
                open_sync(root)

        asyncio.run(misuse())
        assert arts.list() == [] and led.head[0] == 0


def test_errors_keep_their_types_and_a_failed_writer_records_nothing(root, src):
    with open_sync(root) as led:
        arts = led.artifacts(**BIND)
        with pytest.raises(KeyError):
            arts.pin("0" * 32)
        with pytest.raises(ValueError, match="loss"):
            arts.save(src, kind="text", metrics={"loss": float("nan")})
        with pytest.raises(ZeroDivisionError), arts.writer(kind="bin") as f:
            f.write(b"partial")
            _ = 1 / 0
        assert arts.list() == []
    led.close()  # idempotent
    with pytest.raises(LedgerClosed):
        arts.list()


def test_events_are_streamed_in_chunks_without_losing_or_repeating_one(root, src, monkeypatch):
    monkeypatch.setattr(sync_mod, "_EVENTS_PER_CALL", 3)
    with open_sync(root) as led:
        arts = led.artifacts(**BIND)
        for _ in range(10):
            arts.save(src, kind="text")
        assert [e.seq for e in led.events()] == list(range(1, 11))
        assert [e.seq for e in led.events(since=4, until=8)] == [4, 5, 6, 7, 8]
        it = led.events()
        assert next(it).seq == 1
        it.close()  # an abandoned iteration releases its generator on the loop
        assert led.verify().ok


def test_a_program_that_never_closes_still_exits_and_leaves_a_sound_ledger(root, src):
    code = (
        "import sys\n"
        "from artifact_ledger.sync import open_ledger\n"
        "led = open_ledger(sys.argv[1])\n"
        "a = led.artifacts(run_id='r', graph_id='g', node_id='n').save(sys.argv[2], kind='text')\n"
        "print(a.artifact_id)\n"
    )
    # The timeout only guards against a hang at interpreter exit; it measures nothing.
    proc = subprocess.run([sys.executable, "-c", code, str(root), src], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    aid = proc.stdout.strip()
    assert list((root / "checkpoints").glob("*.ckpt")), "the exit hook closes the ledger, writing its checkpoint"
    with open_sync(root) as led:
        assert [a.artifact_id for a in led.artifacts(run_id="r", graph_id="g", node_id="n").list()] == [aid]


def test_the_blocking_ledger_offers_every_public_method_of_the_async_one():
    """Nothing a user can await is missing without await (aclose is close; upto/materialized are internals)."""
    import inspect

    from artifact_ledger import ArtifactFacade, Ledger
    from artifact_ledger.sync import SyncFacade

    pairs = ((Ledger, SyncLedger, {"aclose", "upto", "materialized"}), (ArtifactFacade, SyncFacade, set()))
    for a, s, internal in pairs:
        public = {n for n, _ in inspect.getmembers(a) if not n.startswith("_")}
        assert public - internal - set(dir(s)) == set()


def test_sweep_without_await(root, src):
    with open_sync(root) as led:
        led.artifacts(**BIND).save(src, kind="text")
        assert led.sweep() == []
