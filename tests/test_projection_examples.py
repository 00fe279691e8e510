"""The shipped example projections (issue 10): leaderboard and storage accounting, proved with the kit."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given

from artifact_ledger import open_ledger
from artifact_ledger.ledger.events import ArtifactRecorded
from artifact_ledger.projections.leaderboard import Lead, Leaderboard
from artifact_ledger.projections.storage import StorageAccounting
from artifact_ledger.testing import ProjectionMachine, check_projection, histories

MODES = {"loss": "min"}


def naive_leads(events, modes=MODES, default="max"):
    """Brute force: a board's leads are the recordings strictly better than every earlier one on it."""
    out: dict = {}
    recs = [e for e in events if isinstance(e.event, ArtifactRecorded)]
    keys = {(e.event.project_id, e.event.kind, m) for e in recs for m in e.event.metrics}
    for key in keys:
        p, kind, m = key
        on = [e for e in recs if (e.event.project_id, e.event.kind) == (p, kind) and m in e.event.metrics]
        leads = []
        for i, e in enumerate(on):
            v = e.event.metrics[m]
            earlier = [x.event.metrics[m] for x in on[:i]]
            if modes.get(m, default) == "min":
                wins = all(v < x for x in earlier)
            else:
                wins = all(v > x for x in earlier)
            if wins:
                leads.append(Lead(e.seq, e.event.artifact_id, v, leads[-1].artifact_id if leads else None))
        out[key] = leads
    return out


def naive_usage(events):
    """Brute force: per run and project, the artifacts, their sizes summed, and summed over distinct contents."""
    recs = [e.event for e in events if isinstance(e.event, ArtifactRecorded)]

    def usage(group):
        distinct = {ev.sha256: ev.size for ev in group}
        return (len(group), sum(ev.size for ev in group), sum(distinct.values()))

    runs = {r: usage([ev for ev in recs if ev.run_id == r]) for r in {ev.run_id for ev in recs}}
    projects = {p: usage([ev for ev in recs if ev.project_id == p]) for p in {ev.project_id for ev in recs}}
    return runs, projects, usage(recs)


def usage_of(state):
    def t(u):
        return (u.artifacts, u.logical, u.deduplicated)

    return ({r: t(u) for r, u in state.runs.items()}, {p: t(u) for p, u in state.projects.items()}, t(state.total))


def test_leaderboard_obeys_the_laws():
    check_projection(Leaderboard(MODES))


def test_storage_accounting_obeys_the_laws():
    check_projection(StorageAccounting())


@given(histories())
def test_leaderboard_matches_brute_force(history):
    state = Leaderboard(MODES).apply_batch(Leaderboard(MODES).initial(), history)
    assert state.leads == naive_leads(history)
    for key in state.boards():
        assert state.leader(*key) == state.history(*key)[-1]


@given(histories())
def test_storage_accounting_matches_brute_force(history):
    p = StorageAccounting()
    assert usage_of(p.apply_batch(p.initial(), history)) == naive_usage(history)


def test_leaderboard_refuses_bad_modes():
    with pytest.raises(ValueError, match="'loss' must be 'max' or 'min'"):
        Leaderboard({"loss": "lowest"})
    with pytest.raises(ValueError, match="'default'"):
        Leaderboard(default="up")


def test_leaderboard_ties_keep_the_earlier_leader_and_history_is_kept(root, tmp_path):
    async def main():
        async with open_ledger(root, fsync=False, projections=[Leaderboard(MODES)]) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n", project_id="p")
            saved = []
            for i, loss in enumerate([3, 2, 2.0, 5, 1]):
                src = tmp_path / f"m{i}"
                src.write_bytes(b"%d" % i)
                saved.append(await arts.save(str(src), kind="model", metrics={"loss": loss}))
            board = (await led.project(Leaderboard(MODES))).state
            ids = [a.artifact_id for a in saved]
            assert board.leader("p", "model", "loss").artifact_id == ids[4]
            assert [(c.artifact_id, c.value, c.previous) for c in board.history("p", "model", "loss")] == [
                (ids[0], 3, None), (ids[1], 2, ids[0]), (ids[4], 1, ids[1])]
            # Agrees with the facade's own best().
            best = await arts.best(kind="model", metric="loss", mode="min", scope="project")
            assert best.artifact_id == board.leader("p", "model", "loss").artifact_id

    anyio.run(main)


class LeaderboardMachine(ProjectionMachine):
    projection = Leaderboard(MODES)

    def expected(self, events):
        return naive_leads(events)

    def same(self, actual, expected):
        return actual.leads == expected


class StorageMachine(ProjectionMachine):
    projection = StorageAccounting()

    def expected(self, events):
        return naive_usage(events)

    def same(self, actual, expected):
        return usage_of(actual) == expected


TestLeaderboardMachine = LeaderboardMachine.TestCase
TestStorageMachine = StorageMachine.TestCase
