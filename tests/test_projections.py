"""The catalogue projection is a pure fold, and its indexed queries agree with brute force."""

from __future__ import annotations

import anyio
from hypothesis import given
from hypothesis import strategies as st

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger.events import ArtifactRecorded, PinChanged, decode_event
from artifact_ledger.ledger.filelog import SegmentLog
from artifact_ledger.projections.catalog import Catalog, Logged, apply, replay
from artifact_ledger.projections.query import Filter, best, by_blob, rank, select

IDS = [f"a{i}" for i in range(8)]
RUNS, GRAPHS, NODES, PROJECTS = ["r1", "r2"], ["g1", "g2"], ["n1", "n2"], [None, "p1", "p2"]
KINDS = ["k1", "k2"]
METRICS = ["m", "n"]
LABEL_VALUES = [1, "1", 1.0, True, False, 0, "v", "V", None, [1, "1"], ["1", 1], []]
_MISSING = object()

# Mostly a small pool (ties, int/float equal values, -0.0), sometimes anything finite.
metric_values = st.one_of(
    *[st.sampled_from([0, 1, 1.0, -0.0, 2, 0.5])] * 4,
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False, allow_infinity=False),
)


def recorded(values: st.SearchStrategy) -> st.SearchStrategy[ArtifactRecorded]:
    return st.builds(
        ArtifactRecorded,
        artifact_id=st.sampled_from(IDS),  # repeats model a replayed event, which must be ignored
        origin=st.sampled_from(["save", "ingest", "writer", "ingest_dir"]),
        kind=st.sampled_from(KINDS),
        sha256=st.sampled_from(["0" * 64, "1" * 64, "2" * 64]),
        size=st.integers(0, 10),
        mime=st.just("application/octet-stream"),
        labels=st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(LABEL_VALUES), max_size=2),
        metrics=st.dictionaries(st.sampled_from(METRICS), values, max_size=2),
        pinned=st.booleans(),
        run_id=st.sampled_from(RUNS),
        graph_id=st.sampled_from(GRAPHS),
        node_id=st.sampled_from(NODES),
        project_id=st.sampled_from(PROJECTS),
    )


# Pins may name ids never recorded (or recorded only later); the fold must ignore them.
pins = st.builds(PinChanged, artifact_id=st.sampled_from(IDS + ["ghost"]), pinned=st.booleans())


def logged(values: st.SearchStrategy, min_size: int) -> st.SearchStrategy[list[Logged]]:
    """Event lists with gap-free seqs and commit times that never go backwards (equal ones allowed)."""
    evs = st.lists(st.one_of(recorded(values), recorded(values), pins), min_size=min_size, max_size=30)
    return evs.flatmap(lambda es: st.lists(st.integers(0, 3), min_size=len(es), max_size=len(es)).map(
        lambda gaps: [Logged(i + 1, 1_700_000_000_000_000 + sum(gaps[: i + 1]), ev) for i, ev in enumerate(es)]
    ))


event_lists = logged(metric_values, 0)
# Three metric values (1 == 1.0) over many events: ties at the top and bottom in nearly every example.
tie_heavy = logged(st.sampled_from([1, 1.0, 2, -1]), 12)
label_filters = st.dictionaries(
    st.sampled_from(["a", "b", "run_id", "graph_id", "node_id", "project_id"]),
    st.sampled_from(LABEL_VALUES + RUNS + GRAPHS + NODES + PROJECTS),
    max_size=3,
)
# Few keys and values, so two maps often overlap, agree or conflict.
narrow_filters = st.dictionaries(
    st.sampled_from(["a", "run_id", "project_id"]), st.sampled_from([1, "1", 1.0, True, "r1", "r2", None, "p1"]),
    max_size=2,
)


def json_eq(a, b) -> bool:
    """Exact JSON equality: bools are not numbers, 1 == 1.0, lists compare in order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is bool and type(b) is bool and a == b
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(json_eq, a, b))
    return type(a) is type(b) and a == b


def naive_rows(events: list[Logged]) -> list[Logged]:
    """The recorded artifacts in log order, the first record of each id winning."""
    seen, out = set(), []
    for lg in events:
        if type(lg.event) is ArtifactRecorded and lg.event.artifact_id not in seen:
            seen.add(lg.event.artifact_id)
            out.append(lg)
    return out


def naive_pins(events: list[Logged]) -> dict[str, bool]:
    pins: dict[str, bool] = {}
    for lg in events:
        ev = lg.event
        if type(ev) is ArtifactRecorded:
            pins.setdefault(ev.artifact_id, ev.pinned)
        elif ev.artifact_id in pins:
            pins[ev.artifact_id] = ev.pinned
    return pins


def view(ev: ArtifactRecorded) -> dict:
    return {**ev.labels, "run_id": ev.run_id, "graph_id": ev.graph_id, "node_id": ev.node_id,
            "project_id": ev.project_id}


def naive_select(events, labels: dict, kind: str | None, also: dict | None = None) -> list[int]:
    """Seqs of the artifacts matching kind and every pair of ``labels`` and ``also``, newest first."""
    pairs = list(labels.items()) + list((also or {}).items())
    rows = [lg for lg in naive_rows(events)
            if (kind is None or lg.event.kind == kind)
            and all(json_eq(view(lg.event).get(k, _MISSING), v) for k, v in pairs)]
    return [lg.seq for lg in reversed(rows)]


def naive_rank(events, labels: dict, kind: str | None, metric: str, mode: str, also: dict | None = None) -> list[int]:
    by_seq = {lg.seq: lg.event for lg in events}
    seqs = [s for s in naive_select(events, labels, kind, also) if metric in by_seq[s].metrics]
    # naive_select is newest first, and the stable sort keeps that order among ties.
    return sorted(seqs, key=lambda s: by_seq[s].metrics[metric], reverse=(mode == "max"))


def scope_labels():
    """Every scope's constraints over the id pools, present in the events or not."""
    yield {}
    for r in RUNS:
        yield {"run_id": r}
        for g in GRAPHS:
            yield {"run_id": r, "graph_id": g}
            for n in NODES:
                yield {"run_id": r, "graph_id": g, "node_id": n}
    for p in PROJECTS:
        if p is not None:
            yield {"project_id": p}


@given(event_lists)
def test_replay_of_every_prefix_equals_applying_one_at_a_time(events):
    """replay(events[:n]) == applying events[0..n) one by one to a fresh Catalog, for every n."""
    stepwise = Catalog()
    assert replay([]) == stepwise
    for n, lg in enumerate(events, start=1):
        assert apply(stepwise, lg) is stepwise
        prefix = replay(events[:n])
        assert prefix == stepwise
        assert prefix.fingerprint() == stepwise.fingerprint()
        # Folding the rest onto a prefix's state is the same as folding everything.
        assert replay(events[n:], replay(events[:n])) == replay(events)
    assert sorted(stepwise.pinned.items()) == sorted(naive_pins(events).items())
    assert [r.seq for r in stepwise.ordered] == [lg.seq for lg in naive_rows(events)]
    if events:
        assert (stepwise.head_seq, stepwise.head_ts) == (events[-1].seq, events[-1].ts_us)
    for sha in ("0" * 64, "1" * 64, "2" * 64):
        # A blob URI resolves to the newest artifact over those bytes.
        newest = [lg.seq for lg in naive_rows(events) if lg.event.sha256 == sha][-1:]
        assert [r.seq for r in filter(None, [by_blob(stepwise, sha)])] == newest


@given(event_lists, st.data())
def test_catalog_equality_sees_differences(events, data):
    """Dropping the head event, or shifting the time of the head or of a recorded artifact, breaks equality."""
    if not events:
        return
    full = replay(events)
    assert replay(events[:-1]) != full
    mattering = [i for i, lg in enumerate(events) if lg in naive_rows(events)] + [len(events) - 1]
    i = data.draw(st.sampled_from(mattering))
    lg = events[i]
    shifted = events[:i] + [Logged(lg.seq, lg.ts_us + 1, lg.event)] + events[i + 1:]
    assert replay(shifted) != full


@given(event_lists)
def test_best_tables_equal_first_of_rank(events):
    """best() (O(1) tables for plain scopes, a scan otherwise) is rank()[0] for every scope/kind/metric/mode."""
    check_best_is_first_of_rank(events)


@given(tie_heavy)
def test_best_tables_equal_first_of_rank_under_ties(events):
    """With many equal metric values, best() and rank() both pick the newest of the tied artifacts."""
    check_best_is_first_of_rank(events)


def check_best_is_first_of_rank(events):
    state = replay(events)
    for labels in scope_labels():
        # Extras that are not plain scopes force best() off its tables onto the scan.
        for extra in (None, {"graph_id": "g1"}, {"node_id": "n1"}, {"project_id": None}, {"a": 1}):
            for kind in KINDS:
                f = Filter.build(labels, extra, kind)
                for metric in METRICS:
                    for mode in ("max", "min"):
                        ranked = rank(state, f, metric, mode)
                        got = best(state, f, metric, mode)
                        # Row handles are made per query: the same row compares equal (same catalogue, same index).
                        assert got == (ranked[0] if ranked else None)
                        for limit in (0, 1, 2):
                            assert rank(state, f, metric, mode, limit) == ranked[:limit]
                        want = naive_rank(events, labels, kind, metric, mode, extra)
                        assert [r.seq for r in ranked] == want


@given(st.one_of(tie_heavy, event_lists), label_filters, st.sampled_from([None] + KINDS), st.none() | st.integers(0, 4),
       st.sampled_from([None] + [(m, mode) for m in METRICS for mode in ("max", "min")]))
def test_select_and_rank_equal_brute_force(events, labels, kind, limit, ranking):
    """select() and rank() return exactly the brute-force matches, in order, cut at limit."""
    state = replay(events)
    f = Filter.build({}, labels, kind)
    want = naive_select(events, labels, kind)
    assert [r.seq for r in select(state, f, limit)] == want[:limit]
    if ranking is not None:
        want = naive_rank(events, labels, kind, *ranking)
        assert [r.seq for r in rank(state, f, *ranking, limit)] == want[:limit]


@given(event_lists, narrow_filters, narrow_filters)
def test_conflicting_constraints_match_like_a_conjunction(events, scope, labels):
    """Filter.build(scope, labels) matches what satisfies both maps (a conflict matches nothing)."""
    state = replay(events)
    f = Filter.build(scope, labels, None)
    assert [r.seq for r in select(state, f)] == naive_select(events, scope, None, labels)


def test_replaying_the_real_log_reproduces_the_ledger_catalog(root, tmp_path):
    """Events read back with SegmentLog.read_from replay to exactly ledger.catalog (across segments)."""
    src = tmp_path / "x.bin"

    async def main():
        led = await open_ledger(root, fsync=False, segment_bytes=1024)
        facades = [led.artifacts(run_id=r, graph_id=g, node_id="n", project_id=p)
                   for r, g, p in [("r1", "g1", "p1"), ("r2", "g1", None), ("r2", "g2", "p1")]]
        ids = []
        for i in range(40):
            src.write_bytes(bytes([i % 5]))
            art = await facades[i % 3].save(str(src), kind=KINDS[i % 2], labels={"a": [1, "1"][i % 2], "i": i},
                                            metrics={"m": i % 4, "n": 0.5 * (i % 3)}, pin=i % 7 == 0)
            ids.append(art.artifact_id)
            if i % 4 == 3:
                await facades[0].pin(ids[i // 2], i % 8 == 3)
        live = led.catalog
        await led.aclose()
        async with open_ledger(root, fsync=False) as again:
            return live, again.catalog

    live, reopened = anyio.run(main)
    log = SegmentLog(str(root / "log"), fsync=False)
    try:
        assert len(log.segments()) > 1, "the test means to cross segment boundaries"
        events = [Logged(rec.seq, rec.ts_us, decode_event(rec.payload)) for rec in log.read_from(1)]
        tail = [Logged(rec.seq, rec.ts_us, decode_event(rec.payload)) for rec in log.read_from(23)]
    finally:
        log.close()
    assert [lg.seq for lg in events] == list(range(1, live.head_seq + 1))
    assert replay(events) == live
    assert reopened == live
    assert tail == events[22:]
    assert replay(tail, replay(events[:22])) == live
