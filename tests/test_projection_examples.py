"""The shipped example projections (issue 10): leaderboard and storage accounting, proved with the kit."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given

from artifact_ledger import open_ledger
from artifact_ledger.ledger.events import ArtifactRecorded, Purged, Retired
from artifact_ledger.projections.leaderboard import Lead, Leaderboard
from artifact_ledger.projections.storage import StorageAccounting
from artifact_ledger.testing import ProjectionMachine, check_projection, histories

MODES = {"loss": "min"}


def naive_leads(events, modes=MODES, default="max"):
    """Brute force: after each event, every board's leader is the best live artifact (ties: the newest);
    each change of leader is a Lead naming the one it replaced."""
    out: dict = {}
    leader: dict = {}
    recorded: dict = {}  # artifact id -> (seq, event), first recording only
    gone: set = set()
    for e in events:
        ev = e.event
        if isinstance(ev, ArtifactRecorded):
            if ev.artifact_id in recorded:
                continue
            recorded[ev.artifact_id] = (e.seq, ev)
        elif isinstance(ev, (Retired, Purged)):
            if ev.artifact_id not in recorded or ev.artifact_id in gone:
                continue
            gone.add(ev.artifact_id)
        else:
            continue
        keys = {(r.project_id, r.kind, m) for _, r in recorded.values() for m in r.metrics}
        for key in keys:
            p, kind, m = key
            cands = [(r.metrics[m], s, a) for a, (s, r) in recorded.items()
                     if a not in gone and (r.project_id, r.kind) == (p, kind) and m in r.metrics]
            if not cands:
                new = (None, None)
            elif modes.get(m, default) == "min":
                best = min(cands, key=lambda c: (c[0], -c[1]))
                new = (best[2], best[0])
            else:
                best = max(cands, key=lambda c: (c[0], c[1]))
                new = (best[2], best[0])
            old = leader.get(key)
            if new[0] != old:
                out.setdefault(key, []).append(Lead(e.seq, new[0], new[1], old))
                leader[key] = new[0]
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


def test_leaderboard_follows_best_through_ties_retirements_and_purges(root, tmp_path):
    """At every step the board's leader is what best(scope="project") answers: a tie goes to the newer
    artifact, a retired or purged leader hands over to the next best, and an emptied board has none."""
    async def main():
        async with open_ledger(root, fsync=False, projections=[Leaderboard(MODES)]) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n", project_id="p")

            async def agree() -> None:
                board = (await led.project(Leaderboard(MODES))).state
                best = await arts.best(kind="model", metric="loss", mode="min", scope="project")
                lead = board.leader("p", "model", "loss")
                assert (None if lead is None else lead.artifact_id) == (None if best is None else best.artifact_id)

            saved = []
            for i, loss in enumerate([3, 2, 2.0, 5, 1]):
                src = tmp_path / f"m{i}"
                src.write_bytes(b"%d" % i)
                saved.append(await arts.save(str(src), kind="model", metrics={"loss": loss}))
                await agree()
            ids = [a.artifact_id for a in saved]
            await arts.retire(ids[4], reason="leaked test data")
            await agree()
            await arts.purge(ids[2], reason="pii")
            await agree()
            for i in (1, 0, 3):
                await arts.retire(ids[i], reason="old")
                await agree()
            board = (await led.project(Leaderboard(MODES))).state
            assert board.leader("p", "model", "loss") is None and board.boards() == []
            assert [(c.artifact_id, c.value, c.previous) for c in board.history("p", "model", "loss")] == [
                (ids[0], 3, None), (ids[1], 2, ids[0]), (ids[2], 2.0, ids[1]), (ids[4], 1, ids[2]),
                (ids[2], 2.0, ids[4]), (ids[1], 2, ids[2]), (ids[0], 3, ids[1]), (ids[3], 5, ids[0]),
                (None, None, ids[3])]

        # The registered projection's checkpoint (written on close) gives the same board on reopen.
        async with open_ledger(root, fsync=False, projections=[Leaderboard(MODES)]) as led:
            again = (await led.project(Leaderboard(MODES))).state
            assert again.history("p", "model", "loss")[-1] == Lead(again.history("p", "model", "loss")[-1].seq,
                                                                   None, None, ids[3])

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
