"""Retirement in the summaries: ``runs()`` (and the CLI ``runs``) and ``diff().best`` count only live artifacts.

A retired artifact is hidden from list, search, best and resolve; every summary of the catalogue follows,
as of the view it is asked on (a view before the retirement still counts the artifact).
"""

from __future__ import annotations

import json
import os

import anyio

from artifact_ledger.facade import open_ledger
from artifact_ledger.facade.cli import main

R1 = {"run_id": "r1", "graph_id": "g", "node_id": "n", "project_id": "p1"}
R2 = {"run_id": "r2", "graph_id": "g", "node_id": "n", "project_id": "p1"}


def go(tmp_path, fn):
    async def main_(tmp):
        async with await open_ledger(tmp / "ledger", fsync=False) as led:
            async def save(ids, data: bytes, **kw):
                p = tmp / f"f{os.urandom(6).hex()}.bin"
                p.write_bytes(data)
                kw.setdefault("kind", "model")
                return await led.artifacts(**ids).save(str(p), **kw)
            return await fn(led, save)
    return anyio.run(main_, tmp_path)


def summary(runs):
    return [(r.run_id, r.artifacts, r.first_at, r.last_at) for r in runs]


def test_runs_do_not_count_retired_artifacts_but_past_views_do(tmp_path):
    async def t(led, save):
        a = await save(R1, b"a")
        b = await save(R1, b"b")
        c = await save(R1, b"c")
        only = await save(R2, b"d")
        before = led.head[0]
        fa = led.artifacts(**R1)
        await fa.retire(c.artifact_id, "bad run")  # the newest of r1: its last time moves back
        await fa.retire(a.artifact_id, "bad run")  # the oldest: its first time moves on
        await led.artifacts(**R2).purge(only.artifact_id, "gdpr")  # a purge retires too
        got = await led.runs()
        assert summary(got) == [("r1", 1, b.created_at, b.created_at)]
        assert summary(await led.runs(project_id="p1")) == summary(got)
        assert len(await fa.list()) == got[0].artifacts
        past = await led.as_of(seq=before)
        assert summary(await past.runs()) == [("r2", 1, only.created_at, only.created_at),
                                              ("r1", 3, a.created_at, c.created_at)]
        assert summary(await past.runs(project_id="p1")) == summary(await past.runs())
        mid = await led.as_of(seq=before + 1)  # c retired, a not yet
        assert summary(await mid.runs()) == [("r2", 1, only.created_at, only.created_at),
                                             ("r1", 2, a.created_at, b.created_at)]
    go(tmp_path, t)


def test_cli_runs_does_not_count_retired_artifacts(tmp_path, capsys):
    async def t(led, save):
        a = await save(R1, b"a")
        await save(R1, b"b")
        await led.artifacts(**R1).retire(a.artifact_id, "bad")
    go(tmp_path, t)
    root = str(tmp_path / "ledger")
    assert main(["-C", root, "--json", "runs"]) == 0
    assert [(r["run_id"], r["artifacts"]) for r in json.loads(capsys.readouterr().out)] == [("r1", 1)]
    assert main(["-C", root, "--json", "as-of", "--seq", "2", "runs"]) == 0
    assert [(r["run_id"], r["artifacts"]) for r in json.loads(capsys.readouterr().out)] == [("r1", 2)]


def test_diff_best_skips_artifacts_retired_at_either_end(tmp_path):
    async def t(led, save):
        fa = led.artifacts(**R1)
        old = await save(R1, b"a", metrics={"acc": 0.5})
        top = await save(R1, b"b", metrics={"acc": 0.9})
        await fa.retire(top.artifact_id, "leaked test data")
        a = led.head[0]
        new = await save(R1, b"c", metrics={"acc": 0.7})
        d = await led.diff(a, led.head[0])
        run_max = [c for c in d.best if c.scope == "run" and c.mode == "max"]
        # At a the best live artifact was old (top was retired already); at b it is new.
        assert [(c.old.artifact_id, c.new.artifact_id) for c in run_max] == [(old.artifact_id, new.artifact_id)]
        assert (await fa.best(kind="model", metric="acc", mode="max")).artifact_id == new.artifact_id
        # Retiring the best changes the best without any artifact added.
        b0 = led.head[0]
        await fa.retire(new.artifact_id, "bad")
        d = await led.diff(b0, led.head[0])
        run_max = [c for c in d.best if c.scope == "run" and c.mode == "max"]
        assert [(c.old.artifact_id, c.new.artifact_id) for c in run_max] == [(new.artifact_id, old.artifact_id)]
        assert {c.scope for c in d.best if c.mode == "max"} == {"node", "graph", "run", "project", "all"}
        # The min table's winner (old, 0.5) did not change: no entry for it.
        assert not [c for c in d.best if c.mode == "min"]
        await fa.retire(old.artifact_id, "bad", force=False)
        last = await led.diff(b0, led.head[0])
        run_max = [c for c in last.best if c.scope == "run" and c.mode == "max"]
        assert [(c.old.artifact_id, c.new) for c in run_max] == [(new.artifact_id, None)]
        assert (await fa.best(kind="model", metric="acc", mode="max")) is None
        # A diff over the whole history never reports a retired artifact as the best at b.
        whole = await led.diff(0, led.head[0])
        assert all(c.new is None for c in whole.best)
    go(tmp_path, t)


def test_best_count_and_search_look_past_retired_rows_without_losing_any(tmp_path):
    async def t(led, save):
        fa = led.artifacts(**R1)
        arts = [await save(R1, bytes([i]), metrics={"acc": i / 10}, labels={"even": i % 2 == 0}) for i in range(8)]
        ids = [a.artifact_id for a in arts]

        async def check(view, live):
            v = view.artifacts(**R1)
            by_acc = sorted(live, key=lambda i: -i)
            assert [x.artifact_id for x in await v.search(metric="acc", mode="max", limit=3)] == \
                [ids[i] for i in by_acc[:3]]
            assert [x.artifact_id for x in await v.search(limit=3)] == [ids[i] for i in sorted(live)[::-1][:3]]
            assert [x.artifact_id for x in await v.search(labels={"even": True}, limit=2)] == \
                [ids[i] for i in sorted(live)[::-1] if i % 2 == 0][:2]
            assert await v.count() == len(live)
            assert await v.count(metric="acc", labels={"even": True}) == len([i for i in live if i % 2 == 0])
            assert await v.count(kind="model", scope="all") == len(live)
            for scope in ("run", "all"):
                got = await v.best(kind="model", metric="acc", mode="max", scope=scope)
                assert (got and got.artifact_id) == (ids[by_acc[0]] if live else None)
                got = await v.best(kind="model", metric="acc", mode="min", scope=scope)
                assert (got and got.artifact_id) == (ids[by_acc[-1]] if live else None)

        live = set(range(8))
        await check(led, live)
        seqs = []
        for i in (7, 6, 0, 4):  # the top twice, the bottom, one in the middle: each answer must look past them
            await fa.retire(ids[i], "bench")
            live.discard(i)
            seqs.append((led.head[0], set(live)))
            await check(led, live)
        # A new best after the retirements (the cached live winner must not hide it), then its retirement.
        arts.append(await save(R1, b"new", metrics={"acc": 0.65}, labels={"even": True}))
        ids.append(arts[-1].artifact_id)
        live.add(8)
        await check(led, live)
        await fa.retire(ids[8], "bench")
        live.discard(8)
        await check(led, live)
        for seq, was in seqs:  # every past view answers as of its seq
            await check(await led.as_of(seq=seq), was)
        # A retired artifact without the metric takes nothing off a count by that metric.
        with_acc = await fa.count(metric="acc", labels={"even": True})
        bare = await save(R1, b"bare", labels={"even": True})
        await fa.retire(bare.artifact_id, "no metrics")
        assert await fa.count(metric="acc", labels={"even": True}) == with_acc
        assert await fa.count(labels={"even": True}) == with_acc
    go(tmp_path, t)


def test_search_limit_looks_past_many_retired_leaders(tmp_path):
    """With far more retired rows at the top than the limit, search(limit=) still returns the first live
    rows of the full order, ranked and newest first, now and in a view older than some retirements."""
    async def t(led, save):
        fa = led.artifacts(**R1)
        arts = [await save(R1, b"%d" % i, metrics={"loss": float(i % 70)}) for i in range(90)]
        by_loss = sorted(arts, key=lambda a: (a.metrics["loss"], -a.seq))  # ties: the newer first
        newest = sorted(arts, key=lambda a: -a.seq)
        doomed = [a.artifact_id for a in by_loss[:40]] + [a.artifact_id for a in newest[:30]]
        doomed = list(dict.fromkeys(doomed))
        for aid in doomed[:25]:
            await fa.retire(aid, reason="bench")
        mid = led.head[0]
        for aid in doomed[25:]:
            await fa.retire(aid, reason="bench")

        async def check(src, gone):
            for limit in (1, 3, 10):
                ranked = await src.search(metric="loss", mode="min", limit=limit, scope="run")
                full = [a.artifact_id for a in await src.search(metric="loss", mode="min", scope="run")]
                want = [a.artifact_id for a in by_loss if a.artifact_id not in gone][:limit]
                assert [a.artifact_id for a in ranked] == want == full[:limit]
                recent = await src.search(limit=limit, scope="run")
                want = [a.artifact_id for a in newest if a.artifact_id not in gone][:limit]
                assert [a.artifact_id for a in recent] == want
            everything = await src.search(limit=1000, scope="run")
            assert len(everything) == 90 - len(gone)

        await check(fa, set(doomed))
        view = await led.as_of(seq=mid)
        await check(view.artifacts(**R1), set(doomed[:25]))

    go(tmp_path, t)
