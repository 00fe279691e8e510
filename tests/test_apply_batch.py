"""The batched fold equals applying events one at a time, for any event sequence and batch split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from artifact_ledger.ledger.events import ArtifactRecorded, PinChanged
from artifact_ledger.projections.catalog import Catalog, Logged, apply, apply_batch
from artifact_ledger.projections.query import Filter, best, rank, select

IDS = [f"{i:032x}" for i in range(12)]
label_values = st.one_of(
    st.sampled_from(["a", "b", "1", "A", ""]), st.integers(-2, 2), st.sampled_from([1.0, 2.5]),
    st.booleans(), st.none(), st.lists(st.sampled_from(["x", "y", 1]), max_size=2),
)
artifact = st.builds(
    lambda aid, kind, labels, metrics, pinned, run, graph, node, project, name, sugg, sha: ArtifactRecorded(
        artifact_id=aid, origin="save", kind=kind, sha256=f"{sha:064x}", size=sha, mime="text/plain",
        labels=labels, metrics=metrics, pinned=pinned, run_id=run, graph_id=graph, node_id=node,
        project_id=project, name=name, suggested_uri=sugg,
    ),
    st.sampled_from(IDS), st.sampled_from(["model", "image"]),
    st.dictionaries(st.sampled_from(["split", "seed", "tag"]), label_values, max_size=3),
    st.dictionaries(st.sampled_from(["acc", "loss"]), st.one_of(st.integers(-3, 3), st.floats(-2, 2)), max_size=2),
    st.booleans(), st.sampled_from(["r1", "r2"]), st.sampled_from(["g1", "g2"]), st.sampled_from(["n1", "n2"]),
    st.sampled_from([None, "p1"]), st.sampled_from([None, "f.txt"]), st.sampled_from([None, "a/b"]),
    st.integers(0, 5),
)
pin = st.builds(lambda aid, p: PinChanged(artifact_id=aid, pinned=p), st.sampled_from(IDS), st.booleans())
events = st.lists(st.one_of(artifact, artifact, pin), max_size=40)


def _logged(evs):
    return [Logged(seq, 1_000 + seq * 7, ev) for seq, ev in enumerate(evs, 1)]


@given(events, st.lists(st.integers(1, 8), max_size=10))
def test_batched_fold_equals_one_at_a_time(evs, cuts):
    """Any split of the sequence into batches gives the same state as apply() per event."""
    logged = _logged(evs)
    one = Catalog()
    for lg in logged:
        apply(one, lg)
    many = Catalog()
    pos = 0
    for c in cuts:
        apply_batch(many, logged[pos : pos + c])
        pos += c
    apply_batch(many, logged[pos:])
    assert many == one
    for kind in ("model", "image"):
        f = Filter.build({"run_id": "r1"}, None, kind)
        assert [r.seq for r in select(many, f)] == [r.seq for r in select(one, f)]
        assert [r.seq for r in rank(many, f, "acc", "max")] == [r.seq for r in rank(one, f, "acc", "max")]
        a, b = best(many, f, "loss", "min"), best(one, f, "loss", "min")
        assert (a and a.seq) == (b and b.seq)


@given(events, events)
def test_batch_after_best_tables_are_live(first, second):
    """Once best tables are filled by a query, later batches keep them equal to a fresh scan."""
    logged = _logged(first + second)
    cat = Catalog()
    apply_batch(cat, logged[: len(first)])
    f = Filter.build({"run_id": "r1"}, None, "model")
    best(cat, f, "acc", "max")  # fills the table for (model, acc, run r1)
    apply_batch(cat, logged[len(first):])
    fresh = Catalog()
    apply_batch(fresh, logged)
    for mode in ("max", "min"):
        a, b = best(cat, f, "acc", mode), rank(fresh, f, "acc", mode)
        assert (a and a.seq) == (b[0].seq if b else None)


def _plain_events():
    import random

    rnd = random.Random(7)
    evs = []
    for i in range(600):
        if i % 50 == 49:
            evs.append(PinChanged(artifact_id=f"{rnd.randrange(i):032x}", pinned=rnd.random() < 0.5))
            continue
        evs.append(ArtifactRecorded(
            artifact_id=f"{i:032x}", origin="save", kind=rnd.choice(["model", "image", "table"]),
            sha256=f"{rnd.randrange(40):064x}", size=i, mime="text/plain",
            labels={"split": rnd.choice(["train", "val"]), "seed": rnd.randrange(3),
                    "x": rnd.choice([1, 1.0, 2.5, None])},
            metrics={"acc": rnd.random(), "n": rnd.randrange(5)} if i % 3 else {},
            pinned=rnd.random() < 0.1, run_id=f"r{i % 4}", graph_id=rnd.choice(["g1", "g2"]),
            node_id=rnd.choice(["n1", "n2"]), project_id=rnd.choice([None, "p"]),
            name=rnd.choice([None, "a.txt"]), suggested_uri=None,
        ))
    return _logged(evs)


def test_column_path_on_plain_events_equals_one_at_a_time():
    """Distinct ids and plain labels take the column-wise path; it must still equal apply()."""
    import artifact_ledger.projections.catalog as catalog

    logged = _plain_events()
    one = Catalog()
    for lg in logged:
        apply(one, lg)
    calls = []
    real = catalog._add_run

    def spy(state, seqs, tss, evs):
        calls.append(len(evs))
        return real(state, seqs, tss, evs)

    catalog._add_run = spy
    try:
        many = apply_batch(Catalog(), logged)
    finally:
        catalog._add_run = real
    assert sum(calls) == 588 and max(calls) == 49
    assert many == one


@given(events)
def test_apply_decoded_equals_apply_batch(evs):
    """The parallel-list form replay uses folds exactly like apply_batch (and so like apply)."""
    from artifact_ledger.projections.catalog import apply_decoded

    logged = _logged(evs)
    a = apply_batch(Catalog(), logged)
    b = apply_decoded(Catalog(), [lg.seq for lg in logged], [lg.ts_us for lg in logged], [lg.event for lg in logged])
    assert a == b


@given(events, st.lists(st.integers(1, 8), max_size=10), st.integers(0, 40), st.sampled_from([1, 3, 16384]))
def test_deferred_indexes_equal_one_at_a_time(evs, cuts, indexed, chunk):
    """A full replay's fold (indexes deferred, then built once, in chunks of any size) equals apply() per event,
    from any prefix state."""
    import artifact_ledger.projections.catalog as catalog

    catalog.INDEX_CHUNK_ROWS, saved = chunk, catalog.INDEX_CHUNK_ROWS
    try:
        check_deferred(evs, cuts, indexed)
    finally:
        catalog.INDEX_CHUNK_ROWS = saved


def check_deferred(evs, cuts, indexed):
    logged = _logged(evs)
    one = Catalog()
    for lg in logged:
        apply(one, lg)
    many = Catalog()
    apply_batch(many, logged[:indexed])  # rows already indexed, as after a checkpoint load
    many.defer_indexes()
    pos = indexed
    for c in cuts:
        apply_batch(many, logged[pos : pos + c])
        pos += c
    apply_batch(many, logged[pos:])
    many.build_indexes()
    assert many.unindexed is None
    assert many == one
    for kind in ("model", "image"):
        f = Filter.build({"run_id": "r1"}, None, kind)
        assert [r.seq for r in select(many, f)] == [r.seq for r in select(one, f)]
        assert [r.seq for r in rank(many, f, "acc", "max")] == [r.seq for r in rank(one, f, "acc", "max")]


def test_deferred_batch_takes_the_column_path_and_orders_pins_by_seq():
    """Plain batches are folded without splitting at pins; a pin before its artifact's record is ignored."""
    import artifact_ledger.projections.catalog as catalog

    def art(i: int, pinned: bool = False) -> ArtifactRecorded:
        return ArtifactRecorded(
            artifact_id=IDS[i], origin="save", kind="model", sha256=f"{i:064x}", size=i, mime="text/plain",
            labels={"split": ["train", "val"][i % 2], "seed": i}, metrics={"acc": i / 10}, pinned=pinned,
            run_id="r1", graph_id="g1", node_id="n1")

    evs = [art(0), PinChanged(artifact_id=IDS[1], pinned=True),  # names an artifact recorded only later
           art(1), PinChanged(artifact_id=IDS[0], pinned=True), art(2, pinned=True),
           PinChanged(artifact_id=IDS[2], pinned=False), PinChanged(artifact_id=IDS[0], pinned=False),
           PinChanged(artifact_id=IDS[0], pinned=True), art(3)]
    logged = _logged(evs)
    one = Catalog()
    for lg in logged:
        apply(one, lg)
    taken = []
    real = catalog._append_deferred

    def spy(*a):
        taken.append(real(*a))
        return taken[-1]

    catalog._append_deferred = spy
    try:
        many = Catalog()
        many.defer_indexes()
        apply_batch(many, logged)
        many.build_indexes()
    finally:
        catalog._append_deferred = real
    assert taken == [True]
    assert many == one
    assert dict(many.pinned) == {IDS[0]: True, IDS[1]: False, IDS[2]: False, IDS[3]: False}
    assert many.pin_history == one.pin_history and IDS[1] not in many.pin_history


@pytest.mark.parametrize("chunk", [1, 3, 7, 100, 16384])
def test_deferred_build_in_chunks_on_plain_events_equals_one_at_a_time(chunk, monkeypatch):
    """600 plain events folded with indexes deferred (batches of 128), then indexed in chunks, equal apply()."""
    import artifact_ledger.projections.catalog as catalog

    monkeypatch.setattr(catalog, "INDEX_CHUNK_ROWS", chunk)
    logged = _plain_events()
    one = Catalog()
    for lg in logged:
        apply(one, lg)
    many = Catalog()
    apply_batch(many, logged[:50])
    many.defer_indexes()
    for k in range(50, len(logged), 128):
        apply_batch(many, logged[k : k + 128])
    assert many.unindexed == 49 and not many.by_kind.keys() - one.by_kind.keys()
    many.build_indexes()
    assert many == one
