"""Garbage collection: the plan, the sweep, crashes between them, and writers saving the bytes being deleted."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import anyio
import pytest

import gccampaign
from artifact_ledger.facade import open_ledger
from artifact_ledger.facade.gc import GcPlan
from artifact_ledger.ledger.errors import ReadOnlyError
from artifact_ledger.ledger.events import GcPlanned

P1 = {"run_id": "r1", "graph_id": "g1", "node_id": "n1", "project_id": "p1"}
CI_KILLS = 30
CI_SEED = 20261201


def go(tmp_path, fn, **open_kw):
    async def main():
        async with await open_ledger(tmp_path / "ledger", fsync=False, **open_kw) as led:
            fa = led.artifacts(**P1)

            async def save(data: bytes, **kw):
                p = tmp_path / f"f{os.urandom(6).hex()}.bin"
                p.write_bytes(data)
                kw.setdefault("kind", "model")
                return await fa.save(str(p), **kw)

            return await fn(led, fa, save)
    return anyio.run(main)


def blobs(led) -> set[str]:
    return set(led.store.iter_blobs())


def test_dry_run_plans_without_writing(tmp_path):
    async def t(led, fa, save):
        a = await save(b"old", metrics={"acc": 0.1})
        b = await save(b"new", metrics={"acc": 0.9})
        await fa.purge(a.artifact_id, "x")
        head, before = led.head, blobs(led)
        plan = await led.gc()  # dry_run=True is the default
        assert isinstance(plan, GcPlan)
        assert plan.blobs == [a.sha256] and plan.collectable == 1 and plan.bytes == 3
        assert led.head == head and blobs(led) == before
        pol = {"keep_best": [{"kind": "model", "metric": "acc", "mode": "max", "k": 1}]}
        c = await save(b"mid", metrics={"acc": 0.5})
        plan = await led.gc(pol)
        assert list(plan.purge) == [c.artifact_id] and set(plan.blobs) == {a.sha256, c.sha256}
        assert b.artifact_id not in plan.purge
        assert led.head[0] == head[0] + 1
    go(tmp_path, t)


def test_gc_records_plan_and_result_and_applies_the_policy(tmp_path):
    async def t(led, fa, save):
        arts = [await save(f"v{i}".encode(), metrics={"acc": i}) for i in range(5)]
        pol = {"keep_best": [{"kind": "model", "metric": "acc", "mode": "max", "k": 2}]}
        res = await led.gc(pol, dry_run=False, grace=0)
        assert res.blobs == 3 and res.bytes == 6 and res.kept == 0
        assert [a.artifact_id for a in await fa.list()] == [arts[4].artifact_id, arts[3].artifact_id]
        evs = [e async for e in led.events(since=res.plan_seq)]
        assert [e.type for e in evs] == ["gc.planned", "gc.swept"]
        assert evs[0].event.policy["keep_best"][0]["k"] == 2 and len(evs[0].event.purge) == 3
        assert evs[1].event.blobs == 3
        for a in arts[:3]:
            assert (await led.history(a.artifact_id))[-1].type == "gc.planned"
        d = await led.diff(res.plan_seq - 1, res.result_seq)
        assert sorted(d.purged) == sorted(a.artifact_id for a in arts[:3])
        past = (await led.as_of(seq=res.plan_seq - 1)).artifacts(**P1)
        assert len(await past.list()) == 5
        v = await led.verify()
        assert v.ok and len(v.collected) == 3
    go(tmp_path, t)


def test_orphans_wait_for_the_grace_period_and_staging_and_materialized_go(tmp_path):
    async def t(led, fa, save):
        orphan = led.store.put_bytes(b"a crashed save's blob").sha256
        led.store.make_durable()
        plan = await led.gc(grace=3600)
        assert plan.blobs == [] and plan.spared == 1
        old = time.time() - 7200
        os.utime(led.store.path(orphan), (old, old))
        plan = await led.gc(grace=3600)
        assert plan.blobs == [orphan] and plan.orphans == 1
        # staging left by a dead writer, and materialised trees of a purged directory
        stale = Path(await fa.stage(".bin"))
        os.utime(stale, (old - 8 * 24 * 3600,) * 2)
        fresh = Path(await fa.stage(".bin"))
        sd = Path(await fa.stage_dir())
        (sd / "x").write_bytes(b"in a dir")
        d = await fa.ingest_dir(str(sd))
        tree = await fa.load_artifact(d.uri)
        sd2 = Path(await fa.stage_dir())
        (sd2 / "y").write_bytes(b"kept dir")
        d2 = await fa.ingest_dir(str(sd2))
        tree2 = await fa.load_artifact(d2.uri)
        await fa.purge(d.artifact_id, "x")
        res = await led.gc(dry_run=False)
        assert not led.store.exists(orphan)
        assert not stale.exists() and fresh.exists() and len(res.staging) == 1
        assert not tree.exists() and tree2.exists() and res.materialized == [d.sha256]
        assert not led.store.exists(d.sha256)
        fresh.unlink()
    go(tmp_path, t)


def test_a_gc_killed_between_plan_and_sweep_is_finished_by_the_next(tmp_path):
    async def t(led, fa, save):
        a = await save(b"doomed")
        keep = await save(b"kept")
        # what a gc killed right after recording its plan leaves: the plan, its purge, no result
        await led._append(GcPlanned(plan_id="d" * 32, purge=[a.artifact_id], blobs=1, bytes=6))
        assert led.catalog.life.open_plans() == [(led.head[0], "d" * 32)]
        assert led.store.exists(a.sha256)
        res = await led.gc(dry_run=False, grace=0)
        assert res.plan.open_plans == ["d" * 32] and res.blobs == 1
        assert led.catalog.life.open_plans() == []
        assert not led.store.exists(a.sha256) and await fa.load_artifact_bytes(keep.uri) == b"kept"
        assert (await led.verify()).ok
    go(tmp_path, t)


def test_a_plan_purge_spares_what_became_pinned_before_it_was_recorded(tmp_path):
    async def t(led, fa, save):
        a = await save(b"x")
        await fa.pin(a.artifact_id)
        await led._append(GcPlanned(plan_id="e" * 32, purge=[a.artifact_id]))
        assert a.artifact_id not in led.catalog.life.purged
        res = await led.gc(dry_run=False, grace=0)
        assert res.blobs == 0 and await fa.load_artifact_bytes(a.uri) == b"x"
    go(tmp_path, t)


def test_a_writer_whose_blob_a_gc_deletes_before_its_append_stores_it_again(tmp_path, monkeypatch):
    """The race of the protocol, made to happen: the blob is found present, then collected, then appended."""
    async def t(led, fa, save):
        a = await save(b"shared bytes")
        await fa.purge(a.artifact_id, "x")
        real = led.store.put_file
        fired = []

        def put_then_collected(path, adopt=False):
            info = real(path, adopt=adopt)
            if not fired:
                fired.append(info.sha256)
                led.store.delete(info.sha256)  # what a gc of another process may do right now
            return info

        monkeypatch.setattr(led.store, "put_file", put_then_collected)
        b = await save(b"shared bytes")
        assert fired == [b.sha256]
        assert await fa.load_artifact_bytes(b.uri) == b"shared bytes"
        staged = await fa.stage(".bin")
        Path(staged).write_bytes(b"shared bytes")
        fired.clear()
        await fa.purge(b.artifact_id, "x")
        c = await fa.ingest(staged, kind="model")
        assert fired and await fa.load_artifact_bytes(c.uri) == b"shared bytes"
        assert (await led.verify()).ok
    go(tmp_path, t)


def test_gc_bad_inputs(tmp_path):
    async def t(led, fa, save):
        await save(b"x")
        head = led.head
        with pytest.raises(ValueError, match="invalid retention policy.*bogus"):
            await led.gc({"bogus": 1}, dry_run=False)
        with pytest.raises(TypeError, match="dry_run must be"):
            await led.gc(dry_run="no")
        with pytest.raises(ValueError, match="grace must be"):
            await led.gc(grace=-1)
        with pytest.raises(ValueError, match="grace must be"):
            await led.gc(grace=float("nan"))
        assert led.head == head
    go(tmp_path, t)


def test_read_only_ledger_plans_but_does_not_collect(tmp_path):
    go(tmp_path, lambda led, fa, save: save(b"x"))

    async def main():
        async with await open_ledger(tmp_path / "ledger", read_only=True) as led:
            assert isinstance(await led.gc(), GcPlan)
            with pytest.raises(ReadOnlyError, match="read-only"):
                await led.gc(dry_run=False)
    anyio.run(main)


def test_du_counts_logical_and_deduplicated_bytes(tmp_path):
    async def t(led, fa, save):
        await save(b"1234", kind="a")
        await save(b"1234", kind="a")
        x = await save(b"12", kind="b")
        await fa.purge(x.artifact_id, "x")
        du = await led.du()
        assert du.by_kind["a"].logical_bytes == 8 and du.by_kind["a"].unique_bytes == 4
        assert "b" not in du.by_kind and du.total.artifacts == 2
        assert du.by_run["r1"].unique_bytes == 4 and du.by_project["p1"].logical_bytes == 8
        assert du.store_blobs == 2  # the purged blob stays until a gc
    go(tmp_path, t)


@pytest.fixture
def campaign_dir(tmp_path):
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="gccampaign-", dir=shm))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


def test_gc_under_concurrent_writers_and_sigkill_never_deletes_a_needed_blob(campaign_dir):
    """Writers save identical and distinct bytes (and purge some) while gc runs in a loop and is SIGKILLed
    30 times: every acknowledged artifact not purged loads with its exact bytes, verify passes."""
    tally = gccampaign.run_campaign(campaign_dir, CI_KILLS, CI_SEED)
    print(f"\ngc campaign: {tally.line()}")
    assert tally.failures == [], "\n".join(tally.failures[:10])
    assert tally.kills == CI_KILLS and tally.checked > 0 and tally.purged > 0
    assert tally.collected > 0  # the gc did delete things meanwhile


def test_verify_after_a_gc_killed_between_a_purged_directorys_members_and_its_manifest(tmp_path):
    """Members deleted, manifest not yet: the purged directory is collected, not damaged; a live one sharing
    a member still needs it."""
    async def t(led, fa, save):
        sd = Path(await fa.stage_dir())
        (sd / "only").write_bytes(b"only in the purged dir")
        (sd / "both").write_bytes(b"shared member")
        d = await fa.ingest_dir(str(sd))
        live = await save(b"shared member")
        await fa.purge(d.artifact_id, "x")
        manifest = (await led.history(d.artifact_id))[0].event.sha256
        only = [s for s in led.store.iter_blobs() if s not in (manifest, live.sha256)]
        assert len(only) == 1
        led.store.delete(only[0])  # a gc killed after this member, before the manifest
        v = await led.verify()
        assert v.ok and only[0] in v.collected
        led.store.delete(live.sha256)
        v = await led.verify()
        assert not v.ok and "missing" in v.problems[0]
    go(tmp_path, t)
