"""Time travel: ``as_of`` views answer exactly as a ledger holding only the first N events would."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import artifact_ledger.ledger.filelog as filelog
from artifact_ledger.facade import ReadOnlyError
from artifact_ledger.facade.ledger import row_to_artifact
from artifact_ledger.ledger.events import decode_event
from artifact_ledger.projections.catalog import Catalog, Logged, apply
from artifact_ledger.projections.query import Filter, best, rank, select
from backends import open_ledger, stored_records

# The conformance suite: every test here runs once per log backend (tests/backends.py).
pytestmark = pytest.mark.usefixtures("backend")


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# (run, graph, node, project): overlapping ids so that every scope groups differently.
CTXS = [
    ("r1", "g1", "n1", None),
    ("r1", "g1", "n2", "p1"),
    ("r1", "g2", "n1", "p1"),
    ("r2", "g1", "n1", "p2"),
    ("r2", "g1", "n1", None),
]
QUERY_CTXS = [CTXS[0], CTXS[2], CTXS[3]]
KINDS = ("a", "b")
METRICS = ("m", "k")
MODES = ("max", "min")
# JSON-equality corner cases: 1 and 1.0 are equal, True and 1 are not, lists are values.
LABEL_VALUES = ("x", 1, 1.0, True, [1, "x"])
FILES = {"alpha.bin": b"alpha", "beta.txt": b"beta text", "gamma.json": b'{"x": 1}'}


def ids_of(ctx):
    """Keyword ids for a context tuple."""
    run, graph, node, project = ctx
    return {"run_id": run, "graph_id": graph, "node_id": node, "project_id": project}


def scopes_of(ctx):
    """Scopes a facade bound to ``ctx`` may query."""
    return ("node", "graph", "run", "all") + (("project",) if ctx[3] is not None else ())


def scope_constraints(ctx, scope):
    """The id equalities a scope stands for (written out independently of the facade)."""
    run, graph, node, project = ctx
    return {
        "node": {"run_id": run, "graph_id": graph, "node_id": node},
        "graph": {"run_id": run, "graph_id": graph},
        "run": {"run_id": run},
        "project": {"project_id": project},
        "all": {},
    }[scope]


labels_st = st.fixed_dictionaries(
    {},
    optional={"t": st.sampled_from(LABEL_VALUES), "u": st.sampled_from(("x", "y"))},
)
# Few distinct values so that metric ties are common.
metrics_st = st.fixed_dictionaries(
    {},
    optional={"m": st.sampled_from((0, 1, 2, 1.5, 2.0)), "k": st.integers(0, 2)},
)
save_st = st.tuples(
    st.just("save"),
    st.integers(0, len(CTXS) - 1),
    st.sampled_from(KINDS),
    labels_st,
    metrics_st,
    st.booleans(),
    st.sampled_from(sorted(FILES)),
)
# Small indexes so that one artifact is often pinned, unpinned and pinned again.
pin_st = st.tuples(st.just("pin"), st.integers(0, 2), st.booleans())
# A live best() query fills the live catalogue's best tables, which views must not use.
probe_st = st.tuples(st.just("probe"), st.integers(0, len(CTXS) - 1), st.sampled_from(KINDS), st.sampled_from(METRICS))
ops_st = st.lists(st.one_of(save_st, save_st, pin_st, pin_st, probe_st), min_size=1, max_size=14)


async def run_ops(led, src: Path, ops) -> list[str]:
    """Apply generated ops to a live ledger; returns the recorded artifact ids in order."""
    ids: list[str] = []
    for op in ops:
        if op[0] == "save":
            _, ci, kind, labels, metrics, pin, fname = op
            fac = led.artifacts(**ids_of(CTXS[ci]))
            art = await fac.save(str(src / fname), kind=kind, labels=labels, metrics=metrics, pin=pin)
            ids.append(art.artifact_id)
        elif op[0] == "pin":
            if ids:
                await led.artifacts(**ids_of(CTXS[0])).pin(ids[op[1] % len(ids)], op[2])
        else:
            _, ci, kind, metric = op
            fac = led.artifacts(**ids_of(CTXS[ci]))
            for scope in scopes_of(CTXS[ci]):
                for mode in MODES:
                    await fac.best(kind=kind, metric=metric, mode=mode, scope=scope)
    return ids


def logged_events(root: Path) -> list[Logged]:
    """Every event stored, read straight from the segment files (or the events table)."""
    return [Logged(r.seq, r.ts_us, decode_event(r.payload)) for r in stored_records(root)]


def make_sources(tmp: Path) -> Path:
    """Source files that saves copy from."""
    src = tmp / "src"
    src.mkdir()
    for name, data in FILES.items():
        (src / name).write_bytes(data)
    return src


def ref_art(ref: Catalog, store, row):
    """The Artifact a ledger holding exactly ``ref``'s events would return for ``row``."""
    return row_to_artifact(row, ref.pinned[row.ev.artifact_id])


async def compare_view(view, ref: Catalog, store) -> int:
    """Assert every query through ``view`` matches the reference; returns how many were checked."""
    checked = 0

    def arts(rows):
        return [ref_art(ref, store, r) for r in rows]

    for ctx in QUERY_CTXS:
        fac = view.artifacts(**ids_of(ctx))
        for scope in scopes_of(ctx):
            cons = scope_constraints(ctx, scope)
            f_all = Filter.build(cons, None, None)
            assert await fac.list(scope=scope) == arts(select(ref, f_all)), (ctx, scope)
            assert await fac.search(scope=scope, limit=2) == arts(select(ref, f_all, 2)), (ctx, scope)
            for kind in KINDS:
                f = Filter.build(cons, None, kind)
                assert await fac.search(kind=kind, scope=scope) == arts(select(ref, f)), (ctx, scope, kind)
                for metric in METRICS:
                    for mode in MODES:
                        got = await fac.best(kind=kind, metric=metric, mode=mode, scope=scope)
                        want = best(ref, f, metric, mode)
                        assert got == (None if want is None else ref_art(ref, store, want)), (
                            ctx, scope, kind, metric, mode)
                fu = Filter.build(cons, {"u": "x"}, kind)
                got = await fac.best(kind=kind, metric="m", mode="max", scope=scope, filters={"u": "x"})
                want = best(ref, fu, "m", "max")
                assert got == (None if want is None else ref_art(ref, store, want)), (ctx, scope, kind)
            for metric in METRICS:
                for mode in MODES:
                    got = await fac.search(metric=metric, mode=mode, scope=scope)
                    assert got == arts(rank(ref, f_all, metric, mode)), (ctx, scope, metric, mode)
            checked += 1
        for value in LABEL_VALUES:
            f = Filter.build({}, {"t": value}, None)
            assert await fac.search(labels={"t": value}, scope="all") == arts(select(ref, f)), value
            f = Filter.build(scope_constraints(ctx, "run"), {"t": value, "u": "x"}, "a")
            got = await fac.search(labels={"t": value, "u": "x"}, kind="a", metric="m", mode="min")
            assert got == arts(rank(ref, f, "m", "min")), value
    return checked


@example(ops=[
    ("save", 0, "a", {"t": 1}, {"m": 1}, False, "alpha.bin"),
    ("pin", 0, True),
    ("save", 1, "a", {"t": 1.0}, {"m": 1}, True, "alpha.bin"),
    ("pin", 0, False),
    ("probe", 0, "a", "m"),
    ("pin", 0, True),
    ("save", 4, "a", {"t": True, "u": "x"}, {"m": 1.0, "k": 2}, False, "beta.txt"),
])
@given(ops=ops_st)
def test_as_of_seq_matches_replay_of_prefix(ops):
    """For every N, as_of(seq=N) answers list/search/best in every scope as a replay of the first N events."""

    async def main(tmp: Path):
        src = make_sources(tmp)
        root = tmp / "ledger"
        async with open_ledger(root, fsync=False) as led:
            await run_ops(led, src, ops)
            head = led.catalog.head_seq
            if head == 0:
                return
            events = logged_events(root)
            assert [e.seq for e in events] == list(range(1, head + 1))
            ref = Catalog()
            for n in range(1, head + 1):
                apply(ref, events[n - 1])
                view = await led.as_of(seq=n)
                assert view.seq == n
                assert view.time == EPOCH + timedelta(microseconds=events[n - 1].ts_us)
                await compare_view(view, ref, led.store)
            # The live ledger at the head is the same state as the replay.
            await compare_view(led, ref, led.store)

    with tempfile.TemporaryDirectory() as d:
        anyio.run(main, Path(d))


def utc(ts_us: int) -> datetime:
    """An aware UTC datetime from epoch microseconds."""
    return EPOCH + timedelta(microseconds=ts_us)


async def save_n(led, src: Path, n: int, *, ctx=CTXS[0]):
    """Record ``n`` small artifacts with distinct bytes; returns them."""
    fac = led.artifacts(**ids_of(ctx))
    out = []
    for i in range(n):
        p = src / f"f{i}.txt"
        p.write_bytes(f"payload {i}".encode())
        out.append(await fac.save(str(p), kind="a", metrics={"m": i % 3}))
    return out


def test_as_of_time_picks_last_event_at_or_before(tmp_path, monkeypatch):
    """as_of(time=t) is the last event committed at or before t, including times between commits."""
    clock = iter(range(10**15, 10**16, 7_000))  # ns; 7 µs apart so gaps exist

    monkeypatch.setattr(filelog.time, "time_ns", lambda: next(clock))

    async def main():
        src = make_sources(tmp_path)
        async with open_ledger(tmp_path / "ledger", fsync=False) as led:
            await save_n(led, src, 5)
            await led.artifacts(**ids_of(CTXS[0])).pin((await save_n(led, src, 1))[0].artifact_id)
            times = [e.ts_us for e in logged_events(tmp_path / "ledger")]
            head = led.catalog.head_seq
            assert len(times) == head == 7
            for k, t in enumerate(times, start=1):
                view = await led.as_of(time=utc(t))
                assert view.seq == k
                assert view.time == utc(t)
                if k < head:
                    assert times[k] - t > 1
                    assert (await led.as_of(time=utc(t + 1))).seq == k
                    assert (await led.as_of(time=utc(times[k] - 1))).seq == k
            assert (await led.as_of(time=utc(times[-1] + 10**9))).seq == head
            # Another timezone names the same instant.
            tz = timezone(timedelta(hours=-5))
            assert (await led.as_of(time=utc(times[2]).astimezone(tz))).seq == 3
            with pytest.raises(ValueError, match="before the first event"):
                await led.as_of(time=utc(times[0] - 1))

    anyio.run(main)


def test_timestamps_strictly_increase_when_clock_steps_back(tmp_path, monkeypatch):
    """Each record's commit time is after the previous one even if time.time_ns goes backwards."""
    state = {"now": 2 * 10**18}

    def backwards() -> int:
        state["now"] -= 10**9  # one second back on every call
        return state["now"]

    async def main():
        src = make_sources(tmp_path)
        root = tmp_path / "ledger"
        async with open_ledger(root, fsync=False) as led:
            arts = await save_n(led, src, 4)
            fac = led.artifacts(**ids_of(CTXS[0]))
            # Concurrent appends share a batch; each record still needs its own time.
            async with anyio.create_task_group() as tg:
                for a in arts:
                    tg.start_soon(fac.pin, a.artifact_id)
        monkeypatch.setattr(filelog.time, "time_ns", lambda: 0)  # a clock at the epoch
        # Reopen (from the close-time checkpoint) and append more: still after the old head.
        async with open_ledger(root, fsync=False) as led:
            await save_n(led, src, 2)
        times = [e.ts_us for e in logged_events(root)]
        assert len(times) == 10
        assert all(b > a for a, b in zip(times, times[1:])), times
        async with open_ledger(root, fsync=False) as led:
            for k, t in enumerate(times, start=1):
                assert (await led.as_of(time=utc(t))).seq == k

    monkeypatch.setattr(filelog.time, "time_ns", backwards)
    anyio.run(main)


def test_as_of_rejects_bad_positions(tmp_path):
    """Out-of-range seq, a time before the first event, a naive datetime and bad argument mixes raise ValueError."""

    async def main():
        src = make_sources(tmp_path)
        async with open_ledger(tmp_path / "ledger", fsync=False) as led:
            with pytest.raises(ValueError):
                await led.as_of(seq=1)  # nothing recorded yet
            await save_n(led, src, 3)
            for bad in (0, -1, 4, 10**9):
                with pytest.raises(ValueError, match=r"1\.\.3"):
                    await led.as_of(seq=bad)
            first = led.catalog.times[0]
            with pytest.raises(ValueError, match="before the first event") as exc:
                await led.as_of(time=utc(first - 1))
            assert utc(first).isoformat() in str(exc.value)
            with pytest.raises(ValueError, match="naive"):
                await led.as_of(time=datetime(2030, 1, 1))
            with pytest.raises(ValueError, match="exactly one"):
                await led.as_of()
            with pytest.raises(ValueError, match="exactly one"):
                await led.as_of(seq=1, time=utc(first))
            assert (await led.as_of(seq=3)).seq == 3

    anyio.run(main)


def test_view_refuses_every_mutation(tmp_path):
    """save, ingest, writer, ingest_dir, pin, stage, stage_dir and tmp_path on a past view raise ReadOnlyError."""

    async def main():
        src = make_sources(tmp_path)
        async with open_ledger(tmp_path / "ledger", fsync=False) as led:
            (art,) = await save_n(led, src, 1)
            live = led.artifacts(**ids_of(CTXS[0]))
            staged = await live.stage(".txt")
            Path(staged).write_bytes(b"staged")
            staged_dir = await live.stage_dir()
            (Path(staged_dir) / "x.txt").write_bytes(b"x")
            view = await led.as_of(seq=1)
            for ro in (view.artifacts(**ids_of(CTXS[0])), view.context(**ids_of(CTXS[1])).artifacts()):
                with pytest.raises(ReadOnlyError):
                    await ro.save(str(src / "alpha.bin"), kind="a")
                with pytest.raises(ReadOnlyError):
                    await ro.ingest(staged, kind="a")
                with pytest.raises(ReadOnlyError):
                    async with ro.writer(kind="a") as f:
                        f.write(b"never")
                with pytest.raises(ReadOnlyError):
                    await ro.ingest_dir(staged_dir)
                with pytest.raises(ReadOnlyError):
                    await ro.pin(art.artifact_id)
                with pytest.raises(ReadOnlyError):
                    await ro.stage()
                with pytest.raises(ReadOnlyError):
                    await ro.stage_dir()
                with pytest.raises(ReadOnlyError):
                    await ro.tmp_path()
            # Refused calls wrote nothing and consumed nothing.
            assert led.catalog.head_seq == 1
            assert Path(staged).read_bytes() == b"staged"
            assert (Path(staged_dir) / "x.txt").exists()
            assert sorted(os.listdir(led.staging)) == sorted([Path(staged).name, Path(staged_dir).name])

    anyio.run(main)


def test_past_view_loads_same_bytes_and_hides_later_artifacts(tmp_path):
    """Loading through a past view returns the bytes of then; artifacts recorded later are FileNotFoundError."""

    async def main():
        src = make_sources(tmp_path)
        async with open_ledger(tmp_path / "ledger", fsync=False) as led:
            live = led.artifacts(**ids_of(CTXS[0]))
            a = await live.save(str(src / "gamma.json"), kind="json")
            b = await live.save(str(src / "beta.txt"), kind="text")
            await live.pin(a.artifact_id)
            # Same bytes as ``a``: one blob, but each occurrence keeps its own URI (artifact://<id>, or file URI + #id);
            # the bare blob URI now resolves to ``c``, the newest artifact over it, in the live ledger.
            (src / "gamma.bin").write_bytes(FILES["gamma.json"])
            c = await live.save(str(src / "gamma.bin"), kind="blob", labels={"copy": True})
            blob_uri = led.store.uri(a.sha256)
            assert c.sha256 == a.sha256 and a.uri != c.uri
            a_file, b_file, c_file = (f"{led.store.uri(x.sha256)}#{x.artifact_id}" for x in (a, b, c))
            v1 = await led.as_of(seq=1)
            ro = v1.artifacts(**ids_of(CTXS[0]))
            assert await ro.load_artifact_bytes(a.uri) == FILES["gamma.json"]
            assert await ro.load_artifact_bytes(f"artifact://{a.artifact_id}") == FILES["gamma.json"]
            assert await ro.load_artifact(a.uri) == {"x": 1}
            assert await ro.load_artifact(a_file) == {"x": 1}
            assert await ro.load_artifact(f"artifact://{a.artifact_id}") == {"x": 1}
            for uri in (f"artifact://{b.artifact_id}", f"artifact://{c.artifact_id}", b.uri, c.uri, b_file, c_file):
                with pytest.raises(FileNotFoundError):
                    await ro.load_artifact_bytes(uri)
                with pytest.raises(FileNotFoundError):
                    await ro.load_artifact(uri)
            v2 = (await led.as_of(seq=2)).artifacts(**ids_of(CTXS[0]))
            assert await v2.load_artifact(b.uri) == "beta text"
            assert await v2.load_artifact_bytes(f"artifact://{b.artifact_id}") == FILES["beta.txt"]
            assert [x.pinned for x in await v2.list()] == [False, False]
            v3 = (await led.as_of(seq=3)).artifacts(**ids_of(CTXS[0]))
            assert [(x.artifact_id, x.pinned) for x in await v3.list()] == [(b.artifact_id, False),
                                                                           (a.artifact_id, True)]
            # The live ledger sees ``c`` over the shared blob (kind "blob", .bin name: raw bytes),
            # while at seq 1 the bare blob URI can only mean ``a`` (JSON).
            assert await live.load_artifact(c.uri) == FILES["gamma.json"]
            assert await live.load_artifact(c_file) == FILES["gamma.json"]
            assert await live.load_artifact(blob_uri) == FILES["gamma.json"]
            assert await live.load_artifact(a.uri) == {"x": 1}
            assert await ro.load_artifact(blob_uri) == {"x": 1}

    anyio.run(main)
