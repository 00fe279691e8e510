"""Large results: the shortcuts that make them cheap agree with brute force and never serve stale rows.

Covers the per-metric column (built once, extended as rows arrive), every path
of the ranked selection (whole catalogue, few candidates, many candidates,
bounded heap for small limits), the trivial-plan cut of ``select``, and the
facade's shared, read-only Artifacts (dropped from the cache when a pin changes).
"""

from __future__ import annotations

import copy
import pickle
import random

import anyio
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_projections import (KINDS, METRICS, event_lists, label_filters, naive_rank, naive_select, scope_labels,
                              tie_heavy)

from artifact_ledger.facade import open_ledger
from artifact_ledger.facade.model import Artifact
from artifact_ledger.ledger.events import ArtifactRecorded, PinChanged
from artifact_ledger.projections import catalog as catalog_mod
from artifact_ledger.projections.catalog import Logged, apply_batch, replay
from artifact_ledger.projections.query import Filter, rank, select


def check_all_queries(state, events, limits=(None, 1, 3)) -> None:
    for labels in scope_labels():
        for extra in (None, {"a": 1}, {"project_id": None}):
            for kind in [None] + KINDS:
                f = Filter.build(labels, extra, kind)
                want_sel = naive_select(events, labels, kind, extra)
                for limit in limits:
                    assert [r.seq for r in select(state, f, limit)] == want_sel[:limit]
                for metric in METRICS:
                    for mode in ("max", "min"):
                        want = naive_rank(events, labels, kind, metric, mode, extra)
                        for limit in limits:
                            assert [r.seq for r in rank(state, f, metric, mode, limit)] == want[:limit]


@given(st.one_of(event_lists, tie_heavy), st.data())
def test_metric_columns_extend_as_rows_arrive(events, data):
    """Ranking, then folding more events (one by one or in a batch), then ranking again equals brute force."""
    k = data.draw(st.integers(0, len(events)))
    state = replay(events[:k])
    check_all_queries(state, events[:k], limits=(None,))  # fills the metric columns and caches
    if data.draw(st.booleans()):
        apply_batch(state, events[k:])
    else:
        replay(events[k:], state)
    check_all_queries(state, events)


def big_events(n: int, seed: int) -> list[Logged]:
    """Enough rows that every ranking path is taken: few candidates in many metric rows, and the reverse."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        metrics = {}
        if rng.random() < 0.8:
            metrics["m"] = rng.choice([0, 1, 1.0, 2, rng.random()])
        if rng.random() < 0.3:
            metrics["n"] = rng.randrange(5)
        ev = ArtifactRecorded(
            artifact_id=f"a{i}", origin="save", kind=KINDS[i % 2], sha256=f"{i % 16:x}" * 64, size=i,
            mime="application/octet-stream",
            labels={"a": rng.choice([1, "1", 1.0]), **({"rare": 1} if i % 37 == 0 else {})},
            metrics=metrics, run_id=rng.choice(["r1", "r2"]), graph_id="g1", node_id=rng.choice(["n1", "n2"]),
            project_id=rng.choice([None, "p1"]))
        out.append(Logged(len(out) + 1, 1_700_000_000_000_000 + i, ev))
        if i % 11 == 0:
            out.append(Logged(len(out) + 1, 1_700_000_000_000_000 + i, PinChanged(artifact_id=f"a{i // 2}",
                                                                                  pinned=i % 3 == 0)))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_ranked_paths_equal_brute_force_on_a_larger_catalogue(seed):
    """On 400 artifacts (rare labels, common labels, all rows), rank and select equal brute force, with limits."""
    events = big_events(400, seed)
    state = replay(events)
    for labels in ({}, {"rare": 1}, {"a": 1}, {"a": "1"}, {"run_id": "r1"}, {"rare": 1, "a": 1.0},
                   {"run_id": "r2", "graph_id": "g1", "node_id": "n1"}, {"project_id": None}):
        for kind in [None] + KINDS:
            f = Filter.build({}, labels, kind)
            want_sel = naive_select(events, labels, kind)
            for limit in (None, 1, 5, 1000):
                assert [r.seq for r in select(state, f, limit)] == want_sel[:limit]
            for metric in ("m", "n", "absent"):
                for mode in ("max", "min"):
                    want = naive_rank(events, labels, kind, metric, mode)
                    for limit in (None, 1, 7, 1000):
                        assert [r.seq for r in rank(state, f, metric, mode, limit)] == want[:limit]
                    for upto in (1, 150, 399):
                        cut = events[:upto]
                        want_then = naive_rank(cut, labels, kind, metric, mode)
                        assert [r.seq for r in rank(state, f, metric, mode, upto=upto)] == want_then


@given(st.one_of(event_lists, tie_heavy), label_filters)
def test_select_cut_equals_brute_force_at_every_upto(events, labels):
    """The index cut (no per-row check) and the checked scan both honour upto."""
    state = replay(events)
    f = Filter.build({}, labels, None)
    for upto in range(0, len(events) + 1):
        assert [r.seq for r in select(state, f, upto=upto)] == naive_select(events[:upto], labels, None)


# ---------------------------------------------------------------- the facade's shared Artifacts
async def _saved(root, tmp_path, n: int = 6):
    led = await open_ledger(root, fsync=False)
    fac = led.artifacts(run_id="r", graph_id="g", node_id="n")
    src = tmp_path / "x.bin"
    arts = []
    for i in range(n):
        src.write_bytes(bytes([i]))
        arts.append(await fac.save(str(src), kind="k", labels={"i": i, "l": [1, "x"]}, metrics={"m": i}))
    return led, fac, arts


def test_artifacts_are_shared_and_read_only(root, tmp_path):
    """Two searches return the same instances; their labels, lists and metrics refuse mutation; copies are plain."""
    async def main():
        led, fac, _ = await _saved(root, tmp_path)
        try:
            a = await fac.search(labels={"i": 2})
            b = await fac.search(labels={"i": 2})
            assert a[0] is b[0]
            art = a[0]
            for mutate in (lambda: art.labels.__setitem__("i", 3), lambda: art.labels.pop("i"),
                           lambda: art.labels.update(x=1), lambda: art.labels.clear(),
                           lambda: art.labels["l"].append(2), lambda: art.labels["l"].__setitem__(0, 5),
                           lambda: art.metrics.__setitem__("m", 9), lambda: art.metrics.setdefault("z", 1)):
                with pytest.raises(TypeError, match="read-only"):
                    mutate()
            with pytest.raises(pydantic.ValidationError):
                art.kind = "other"  # type: ignore[misc]
            assert art.labels == {"i": 2, "l": [1, "x"]} and art.metrics == {"m": 2}
            assert (await fac.get(art.artifact_id)).labels == {"i": 2, "l": [1, "x"]}
            assert type(copy.copy(art.labels)) is dict and type(dict(art.labels)) is dict  # shallow copies
            for twin in (copy.deepcopy(art), pickle.loads(pickle.dumps(art))):
                assert twin == art and type(twin.labels) is dict and type(twin.labels["l"]) is list
            dumped = art.model_dump()
            assert type(dumped["labels"]) is dict and type(dumped["labels"]["l"]) is list
            assert Artifact.model_validate_json(art.model_dump_json()) == art
            # The fields-set is shared between Artifacts: copies must not reach it.
            changed = art.model_copy(update={"pinned": True})
            assert changed.pinned and not art.pinned and art.model_fields_set == set(Artifact.model_fields)
            assert changed.model_fields_set is not art.model_fields_set
        finally:
            await led.aclose()

    anyio.run(main)


def test_pin_change_replaces_the_shared_artifact(root, tmp_path):
    """After a pin, every path (list, search, ranked search, get, best) shows it; a past view shows the old state."""
    async def main():
        led, fac, arts = await _saved(root, tmp_path)
        try:
            target = arts[3].artifact_id
            before = await fac.list()
            await fac.search(metric="m", mode="max")
            seq_before = led.catalog.head_seq
            await fac.pin(target)
            for got in (await fac.list(), await fac.search(labels={"i": 3}), await fac.search(metric="m", mode="min"),
                        [await fac.get(target)]):
                assert [a.pinned for a in got if a.artifact_id == target] == [True]
            assert all(not a.pinned for a in before)
            past = await led.as_of(seq=seq_before)
            assert not (await past.artifacts(run_id="r", graph_id="g", node_id="n").get(target)).pinned
            await fac.pin(target, False)
            assert not (await fac.get(target)).pinned
            assert (await fac.best(kind="k", metric="m", mode="max")).pinned is False
        finally:
            await led.aclose()

    anyio.run(main)


def test_row_cache_stays_bounded(root, tmp_path, monkeypatch):
    """With a cache of 4 rows, results over 6 artifacts stay right and the cache never exceeds its bound."""
    monkeypatch.setattr(catalog_mod, "ROW_CACHE_LIMIT", 4)

    async def main():
        led, fac, arts = await _saved(root, tmp_path)
        try:
            want = [a.artifact_id for a in reversed(arts)]
            for _ in range(3):
                assert [a.artifact_id for a in await fac.list()] == want
                assert len(led.catalog.row_cache) <= 4
        finally:
            await led.aclose()

    anyio.run(main)


@pytest.mark.parametrize("seed", [3, 4])
def test_few_candidates_before_any_column_equal_brute_force(seed):
    """A narrow ranked query on a fresh catalogue scans its candidates (no column yet); it must agree too."""
    events = big_events(400, seed)
    for labels in ({"rare": 1}, {"rare": 1, "a": 1.0}, {"run_id": "r2", "rare": 1}):
        for metric in ("m", "n"):
            for mode in ("max", "min"):
                state = replay(events)
                f = Filter.build({}, labels, None)
                got = [r.seq for r in rank(state, f, metric, mode)]
                assert not state.metric_cols, "the narrow query must not build a column"
                assert got == naive_rank(events, labels, None, metric, mode)
