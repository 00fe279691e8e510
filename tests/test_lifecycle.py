"""The artifact lifecycle (issue 9): aliases, lineage, retire, purge, each an event seen everywhere.

One test (or more) per rule, bad inputs included; every rule is also checked on a past view.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from artifact_ledger.facade import open_ledger
from artifact_ledger.facade.lifecycle import ArtifactPurged
from artifact_ledger.ledger.events import AliasSet, Purged, Related, Retired

P1 = {"run_id": "r1", "graph_id": "g1", "node_id": "n1", "project_id": "p1"}
NOPROJ = {"run_id": "r1", "graph_id": "g1", "node_id": "n1"}


def run(fn):
    """Run ``fn(ledger, facade, save)`` on a fresh ledger; ``save(data, **kw)`` records a file."""
    async def main(tmp):
        async with await open_ledger(tmp / "ledger", fsync=False) as led:
            fa = led.artifacts(**P1)

            async def save(data: bytes, fa=fa, **kw):
                p = tmp / f"f{os.urandom(6).hex()}.bin"
                p.write_bytes(data)
                kw.setdefault("kind", "model")
                return await fa.save(str(p), **kw)

            return await fn(led, fa, save)
    return main


def go(tmp_path, fn):
    return anyio.run(run(fn), tmp_path)


def log_types(led):
    async def collect():
        return [e.type async for e in led.events()]
    return collect()


# ---------------------------------------------------------------- aliases
def test_alias_points_moves_and_resolves_now_and_then(tmp_path):
    async def t(led, fa, save):
        a, b = await save(b"a"), await save(b"b")
        assert (await fa.alias(a.artifact_id, "production")).aliases == ["p1/production"]
        first = led.head[0]
        await fa.alias(b.artifact_id, "production")  # moves it
        assert (await fa.resolve("production")).artifact_id == b.artifact_id
        assert (await fa.get(a.artifact_id)).aliases == []
        assert (await fa.get(b.artifact_id)).aliases == ["p1/production"]
        past = (await led.as_of(seq=first)).artifacts(**P1)
        assert (await past.resolve("production")).artifact_id == a.artifact_id
        assert (await past.get(a.artifact_id)).aliases == ["p1/production"]
        hist = await fa.alias_history("production")
        assert [(m.seq, m.artifact_id) for m in hist] == [(first, a.artifact_id), (first + 1, b.artifact_id)]
        assert hist[0].time < hist[1].time
        assert [m.artifact_id for m in await past.alias_history("production")] == [a.artifact_id]
        # search filters on an alias, now and then
        assert [x.artifact_id for x in await fa.search(alias="production")] == [b.artifact_id]
        assert [x.artifact_id for x in await past.search(alias="production")] == [a.artifact_id]
        assert await fa.search(alias="nothing") == []
        assert (await log_types(led))[-2:] == ["alias.set", "alias.set"]
    go(tmp_path, t)


def test_unalias_removes_and_an_unaliased_name_is_a_key_error(tmp_path):
    async def t(led, fa, save):
        a = await save(b"a")
        await fa.alias(a.artifact_id, "best-val")
        assert await fa.unalias("best-val") == a.artifact_id
        with pytest.raises(KeyError, match="p1/best-val does not point"):
            await fa.resolve("best-val")
        head = led.head
        with pytest.raises(KeyError, match="does not point"):
            await fa.unalias("best-val")
        with pytest.raises(KeyError, match="does not point"):
            await fa.unalias("never-set")
        assert led.head == head  # nothing written
        past = (await led.as_of(seq=head[0] - 1)).artifacts(**P1)
        assert (await past.resolve("best-val")).artifact_id == a.artifact_id
        assert [m.artifact_id for m in await fa.alias_history("best-val")] == [a.artifact_id, None]
    go(tmp_path, t)


def test_protected_alias_moves_only_with_force(tmp_path):
    async def t(led, fa, save):
        a, b = await save(b"a"), await save(b"b")
        await fa.alias(a.artifact_id, "production", protected=True)
        head = led.head
        with pytest.raises(ValueError, match="protected.*force=True"):
            await fa.alias(b.artifact_id, "production")
        with pytest.raises(ValueError, match="protected"):
            await fa.unalias("production")
        with pytest.raises(ValueError, match="protected"):
            await fa.alias(a.artifact_id, "production")  # unprotecting is a change too
        assert led.head == head
        await fa.alias(b.artifact_id, "production", force=True)
        assert (await fa.resolve("production")).artifact_id == b.artifact_id
        await fa.unalias("production")  # the forced move dropped the protection
    go(tmp_path, t)


def test_namespaces_default_to_the_project_else_all(tmp_path):
    async def t(led, fa, save):
        other = led.artifacts(**NOPROJ)
        a, b = await save(b"a"), await save(b"b")
        await fa.alias(a.artifact_id, "production")
        await other.alias(b.artifact_id, "production")
        assert (await fa.resolve("production")).artifact_id == a.artifact_id
        assert (await other.resolve("production")).artifact_id == b.artifact_id
        assert (await other.resolve("p1/production")).artifact_id == a.artifact_id
        assert (await fa.resolve("production", namespace="all")).artifact_id == b.artifact_id
        assert [(i.namespace, i.name) for i in await fa.aliases()] == [("p1", "production")]
        assert [(i.namespace, i.name) for i in await fa.aliases(every_namespace=True)] == [
            ("all", "production"), ("p1", "production")]
    go(tmp_path, t)


def test_alias_bad_inputs_write_nothing(tmp_path):
    async def t(led, fa, save):
        a = await save(b"a")
        head = led.head
        with pytest.raises(KeyError, match="'0+'"):
            await fa.alias("0" * 32, "production")
        with pytest.raises(TypeError, match="artifact_id must be a string"):
            await fa.alias(7, "production")
        for bad in ("", "has space", "-lead", "x" * 200, "a/", "/b"):
            with pytest.raises((ValueError, TypeError)):
                await fa.alias(a.artifact_id, bad)
        with pytest.raises(TypeError, match="protected must be"):
            await fa.alias(a.artifact_id, "ok", protected="yes")
        with pytest.raises(ValueError, match="names its namespace"):
            await fa.alias(a.artifact_id, "ns/ok", namespace="other")
        with pytest.raises(TypeError, match="alias name must be a string"):
            await fa.resolve(None)
        assert led.head == head
    go(tmp_path, t)


# ---------------------------------------------------------------- lineage
def test_derived_from_on_every_write_path_and_walks_up_and_down(tmp_path):
    async def t(led, fa, save):
        a = await save(b"raw")
        b = await save(b"clean", derived_from=[a.artifact_id])
        staged = await fa.stage(".bin")
        Path(staged).write_bytes(b"feat")
        c = await fa.ingest(staged, kind="features", derived_from=[b.artifact_id])
        async with fa.writer(kind="model", derived_from=[c.artifact_id, a.artifact_id]) as w:
            w.write(b"weights")
        d = fa.last_artifact
        sd = Path(await fa.stage_dir())
        (sd / "x.txt").write_text("report")
        e = await fa.ingest_dir(str(sd), derived_from=[d.artifact_id])
        up = await fa.lineage(e.artifact_id)
        assert [(s.artifact.artifact_id, s.depth) for s in up] == [
            (d.artifact_id, 1), (c.artifact_id, 2), (a.artifact_id, 2), (b.artifact_id, 3)]
        assert all(s.relation == "derived_from" for s in up)
        assert [s.artifact.artifact_id for s in await fa.lineage(e.artifact_id, depth=1)] == [d.artifact_id]
        down = await fa.lineage(a.artifact_id, direction="down")
        assert {s.artifact.artifact_id for s in down} == {b.artifact_id, c.artifact_id, d.artifact_id, e.artifact_id}
        # the recorded events carry it
        hist = await led.history(d.artifact_id)
        assert hist[0].event.derived_from == [c.artifact_id, a.artifact_id]
        # a past view sees only the lineage recorded by then
        past = (await led.as_of(seq=c.seq)).artifacts(**P1)
        assert [s.artifact.artifact_id for s in await past.lineage(a.artifact_id, direction="down")] == [
            b.artifact_id, c.artifact_id]
        with pytest.raises(KeyError, match="as of seq"):
            await past.lineage(e.artifact_id)
    go(tmp_path, t)


def test_relate_records_an_edge_and_rejects_cycles_and_unknown_ids_before_writing(tmp_path):
    async def t(led, fa, save):
        a, b, c = await save(b"a"), await save(b"b"), await save(b"c")
        await fa.relate(b.artifact_id, a.artifact_id, relation="consumed")
        await fa.relate(c.artifact_id, b.artifact_id)
        assert [(s.artifact.artifact_id, s.relation) for s in await fa.lineage(c.artifact_id)] == [
            (b.artifact_id, "derived_from"), (a.artifact_id, "consumed")]
        head = led.head
        with pytest.raises(ValueError, match="cycle"):
            await fa.relate(a.artifact_id, c.artifact_id)
        with pytest.raises(ValueError, match="itself"):
            await fa.relate(a.artifact_id, a.artifact_id)
        with pytest.raises(ValueError, match="already related"):
            await fa.relate(b.artifact_id, a.artifact_id, relation="consumed")
        with pytest.raises(ValueError, match="relation must be one of"):
            await fa.relate(b.artifact_id, a.artifact_id, relation="likes")
        with pytest.raises(KeyError, match="unknown parent 'nope'"):
            await fa.relate(b.artifact_id, "nope")
        with pytest.raises(KeyError, match="unknown child"):
            await fa.relate("nope", b.artifact_id)
        with pytest.raises(KeyError, match="derived_from\\[1\\]"):
            await save(b"d", derived_from=[a.artifact_id, "nope"])
        with pytest.raises(ValueError, match="twice"):
            await save(b"d", derived_from=[a.artifact_id, a.artifact_id])
        with pytest.raises(TypeError, match="list of artifact ids"):
            await save(b"d", derived_from=a.artifact_id)
        with pytest.raises(ValueError, match="direction"):
            await fa.lineage(a.artifact_id, direction="sideways")
        with pytest.raises(ValueError, match="depth"):
            await fa.lineage(a.artifact_id, depth=0)
        with pytest.raises(KeyError):
            await fa.lineage("nope")
        assert led.head == head
        diff = await led.diff(head[0] - 2, head[0])
        assert diff.related == [(b.artifact_id, a.artifact_id, "consumed"), (c.artifact_id, b.artifact_id,
                                                                             "derived_from")]
    go(tmp_path, t)


def test_a_cycle_that_races_past_the_check_has_no_effect_on_replay(tmp_path):
    """Two processes can each pass the check; the log wins and the second edge is folded without effect."""
    async def t(led, fa, save):
        a, b = await save(b"a"), await save(b"b")
        await led._append(Related(child=b.artifact_id, parent=a.artifact_id, relation="derived_from"))
        await led._append(Related(child=a.artifact_id, parent=b.artifact_id, relation="derived_from"))
        assert [s.artifact.artifact_id for s in await fa.lineage(a.artifact_id)] == []
        await led._append(AliasSet(namespace="p1", name="x", artifact_id="f" * 32))
        with pytest.raises(KeyError):
            await fa.resolve("x")
        # a protected alias another process moved without force, having checked before it was protected
        await fa.alias(a.artifact_id, "prod", protected=True)
        await led._append(AliasSet(namespace="p1", name="prod", artifact_id=b.artifact_id))
        assert (await fa.resolve("prod")).artifact_id == a.artifact_id
        await fa.pin(b.artifact_id)
        await led._append(Retired(artifact_id=b.artifact_id, reason="raced"))  # pinned: no effect without force
        assert [x.artifact_id for x in await fa.list()] == [b.artifact_id, a.artifact_id]
    go(tmp_path, t)


# ---------------------------------------------------------------- retire
def test_retire_hides_from_list_search_best_resolve_but_not_history_and_past(tmp_path):
    async def t(led, fa, save):
        a = await save(b"a", metrics={"acc": 0.9})
        b = await save(b"b", metrics={"acc": 0.1})
        await fa.alias(a.artifact_id, "production")
        before = led.head[0]
        await fa.retire(a.artifact_id, "superseded", force=True)
        assert [x.artifact_id for x in await fa.list()] == [b.artifact_id]
        assert [x.artifact_id for x in await fa.search(kind="model", limit=1)] == [b.artifact_id]
        assert [x.artifact_id for x in await fa.search(metric="acc", mode="max", limit=1)] == [b.artifact_id]
        assert (await fa.best(kind="model", metric="acc", mode="max")).artifact_id == b.artifact_id
        assert await fa.count() == 1
        with pytest.raises(KeyError, match="retired"):
            await fa.resolve("production")
        assert (await fa.get(a.artifact_id)).artifact_id == a.artifact_id  # still there, by id
        assert await fa.load_artifact_bytes(a.uri) == b"a"  # retired, not purged: bytes stay
        assert [e.type for e in await led.history(a.artifact_id)] == ["artifact.recorded", "alias.set",
                                                                        "artifact.retired"]
        assert isinstance((await led.history(a.artifact_id))[-1].event, Retired)
        d = await led.diff(before, led.head[0])
        assert d.retired == [a.artifact_id] and d.purged == []
        past = (await led.as_of(seq=before)).artifacts(**P1)
        assert {x.artifact_id for x in await past.list()} == {a.artifact_id, b.artifact_id}
        assert (await past.best(kind="model", metric="acc", mode="max")).artifact_id == a.artifact_id
        assert (await past.resolve("production")).artifact_id == a.artifact_id
    go(tmp_path, t)


def test_retiring_pinned_or_aliased_is_refused_unless_forced(tmp_path):
    async def t(led, fa, save):
        a = await save(b"a", pin=True)
        b = await save(b"b")
        await fa.alias(b.artifact_id, "candidate")
        head = led.head
        with pytest.raises(ValueError, match="pinned.*force=True"):
            await fa.retire(a.artifact_id, "x")
        with pytest.raises(ValueError, match="aliased as p1/candidate"):
            await fa.retire(b.artifact_id, "x")
        with pytest.raises(ValueError, match="pinned"):
            await fa.purge(a.artifact_id, "x")
        with pytest.raises(KeyError, match="unknown artifact_id 'nope'"):
            await fa.retire("nope", "x")
        with pytest.raises(ValueError, match="reason must say why"):
            await fa.retire(a.artifact_id, " ")
        with pytest.raises(TypeError, match="reason must be a string"):
            await fa.purge(a.artifact_id, None)
        with pytest.raises(TypeError, match="force must be"):
            await fa.retire(a.artifact_id, "x", force=1)
        assert led.head == head
        await fa.retire(a.artifact_id, "x", force=True)
        with pytest.raises(ValueError, match="already retired"):
            await fa.retire(a.artifact_id, "again", force=True)
        with pytest.raises(ValueError, match="retired artifact cannot be aliased"):
            await fa.alias(a.artifact_id, "prod")
    go(tmp_path, t)


# ---------------------------------------------------------------- purge
def test_purge_load_error_says_when_and_why_and_verify_tells_collected_from_missing(tmp_path):
    async def t(led, fa, save):
        a = await save(b"secret")
        keep = await save(b"shared")
        twin = await save(b"shared")  # same blob as keep
        before = led.head[0]
        await fa.purge(a.artifact_id, "GDPR request 17")
        await fa.purge(twin.artifact_id, "duplicate")
        with pytest.raises(ArtifactPurged, match=r"purged at seq \d+ .*'GDPR request 17'") as info:
            await fa.load_artifact_bytes(a.uri)
        assert info.value.reason == "GDPR request 17" and info.value.seq == before + 1
        assert isinstance(info.value, FileNotFoundError)
        past = (await led.as_of(seq=before)).artifacts(**P1)
        assert await past.load_artifact_bytes(a.uri) == b"secret"  # not collected yet
        res = await led.gc(dry_run=False, grace=0)
        assert res.blobs == 1 and res.bytes == len(b"secret")
        assert not led.store.exists(a.sha256) and led.store.exists(keep.sha256)
        assert await fa.load_artifact_bytes(keep.uri) == b"shared"
        assert (await past.get(a.artifact_id)).sha256 == a.sha256  # the metadata stays visible then
        with pytest.raises(ArtifactPurged, match="purged later.*bytes are gone"):
            await past.load_artifact_bytes(a.uri)
        v = await led.verify()
        assert v.ok and v.collected == [a.sha256]
        # a missing blob of an artifact not purged is still damage
        os.chmod(led.store.path(keep.sha256), 0o644)
        os.unlink(led.store.path(keep.sha256))
        v = await led.verify()
        assert not v.ok and "missing" in v.problems[0] and v.collected == [a.sha256]
        assert [e.type for e in await led.history(a.artifact_id)] == ["artifact.recorded", "artifact.purged"]
        assert isinstance((await led.history(a.artifact_id))[-1].event, Purged)
    go(tmp_path, t)


def test_lifecycle_state_survives_checkpoints_and_reopening(tmp_path):
    async def main():
        root = tmp_path / "ledger"
        async with await open_ledger(root, fsync=False, checkpoint_every=3) as led:
            fa = led.artifacts(**P1)
            p = tmp_path / "f.bin"
            p.write_bytes(b"x")
            a = await fa.save(str(p), kind="m")
            b = await fa.save(str(p), kind="m", derived_from=[a.artifact_id])
            await fa.alias(b.artifact_id, "prod", protected=True)
            await fa.purge(a.artifact_id, "old")
            await fa.relate(b.artifact_id, a.artifact_id, relation="references")
            await led.checkpoint()
            want = led.catalog.fingerprint()
        async with await open_ledger(root, fsync=False) as led:
            assert led._ckpt_seq == 5  # loaded from the checkpoint
            assert led.catalog.fingerprint() == want
            fa = led.artifacts(**P1)
            assert (await fa.resolve("prod")).artifact_id == b.artifact_id
            assert len(await fa.lineage(b.artifact_id)) == 1
        # a full replay from the log agrees with the checkpoint
        for f in (root / "checkpoints").iterdir():
            f.unlink()
        async with await open_ledger(root, fsync=False) as led:
            assert led.catalog.fingerprint() == want
    anyio.run(main)


def test_every_new_event_is_in_events_and_the_cli_log(tmp_path):
    from artifact_ledger.facade.cli import main as cli

    async def t(led, fa, save):
        a, b = await save(b"a"), await save(b"b")
        await fa.alias(a.artifact_id, "x")
        await fa.unalias("x")
        await fa.relate(b.artifact_id, a.artifact_id)
        await fa.retire(a.artifact_id, "r")
        await fa.purge(b.artifact_id, "p")
        await led.gc(dry_run=False, grace=0)
        return await log_types(led)
    types = go(tmp_path, t)
    assert types[2:] == ["alias.set", "alias.removed", "lineage.related", "artifact.retired", "artifact.purged",
                         "gc.planned", "gc.swept"]
    assert cli(["-C", str(tmp_path / "ledger"), "log"]) == 0
