"""Dogfood (issue 10): the ledger's own catalogue is checked with the public testing kit."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given

from artifact_ledger.ledger.events import (AliasRemoved, AliasSet, ArtifactRecorded, GcPlanned, PinChanged, Purged,
                                           Retired)
from artifact_ledger.projections import snapshot
from artifact_ledger.projections.catalog import Catalog, apply_decoded
from artifact_ledger.projections.query import Filter, best, pinned_at, runs, select
from artifact_ledger.testing import ProjectionMachine, check_projection, histories

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def us(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)


class CatalogProjection:
    """The catalogue as a user projection: replay's own batch fold and the checkpoint snapshot codec."""

    name = "catalog"
    version = snapshot.SNAPSHOT_SCHEMA

    def initial(self):
        return Catalog()

    def apply(self, state, event):
        return apply_decoded(state, [event.seq], [us(event.time)], [event.event])

    def apply_batch(self, state, events):
        return apply_decoded(state, [e.seq for e in events], [us(e.time) for e in events], [e.event for e in events])

    def encode(self, state):
        return snapshot.encode(snapshot.capture(state))

    def decode(self, data):
        return snapshot.decode(data)


def test_the_catalogue_obeys_every_projection_law():
    check_projection(CatalogProjection())


@given(histories())
def test_catalogue_of_generated_histories_matches_a_naive_model(history):
    cat = CatalogProjection().apply_batch(Catalog(), history)
    recorded = [e for e in history if isinstance(e.event, ArtifactRecorded)]
    # Every recording, newest first, and pins as last set (the recording's own pinned flag first).
    assert [r.artifact_id for r in select(cat, Filter.build({}, None, None))] == \
        [e.event.artifact_id for e in reversed(recorded)]
    pins = {e.event.artifact_id: e.event.pinned for e in history if isinstance(e.event, (ArtifactRecorded, PinChanged))}
    for row in select(cat, Filter.build({}, None, None)):
        assert pinned_at(cat, row, None) == pins[row.artifact_id]
    per_run: dict[str, int] = {}
    for e in recorded:
        per_run[e.event.run_id] = per_run.get(e.event.run_id, 0) + 1
    assert {r: n for r, n, _, _ in runs(cat)} == per_run
    # The lifecycle (every generated lifecycle event is valid, so each applies): aliases as last set,
    # retirements (a purge or a gc plan retires too) and purges, each at its seq.
    aliases, retired, purged = {}, {}, {}
    for e in history:
        ev = e.event
        if isinstance(ev, AliasSet):
            aliases[(ev.namespace, ev.name)] = (ev.artifact_id, ev.protected)
        elif isinstance(ev, AliasRemoved):
            del aliases[(ev.namespace, ev.name)]
        elif isinstance(ev, (Retired, Purged, GcPlanned)):
            for aid in ev.purge if isinstance(ev, GcPlanned) else [ev.artifact_id]:
                retired.setdefault(aid, e.seq)
                if not isinstance(ev, Retired):
                    purged[aid] = e.seq
    assert {k: (a, p) for k, a, p, _ in cat.life.aliases(None)} == aliases
    assert {a: s for a, (s, _) in cat.life.retired.items()} == retired
    assert {a: s for a, (s, _) in cat.life.purged.items()} == purged
    # Best by metric, ties to the earliest recording (as the facade's best() documents).
    for metric in ("loss", "acc"):
        having = [e for e in recorded if metric in e.event.metrics]
        top = best(cat, Filter.build({}, None, None), metric, "max")
        if not having:
            assert top is None
            continue
        high = max(e.event.metrics[metric] for e in having)
        assert top is not None and cat.metrics(top.i)[metric] == high


class CatalogueMachine(ProjectionMachine):
    """The real ledger driven at random; the catalogue as a projection against the facade's own answers."""

    projection = CatalogProjection()

    def expected(self, events):
        return CatalogProjection().apply_batch(Catalog(), events)


TestCatalogueMachine = CatalogueMachine.TestCase
