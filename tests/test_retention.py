"""Retention policies: the planner against brute force on random histories, and bad policies refused."""

from __future__ import annotations

from itertools import count

import pytest
from hypothesis import given
from hypothesis import strategies as st

from artifact_ledger.facade.gc import check_policy
from artifact_ledger.ledger.events import AliasSet, ArtifactRecorded, PinChanged, Related, Retired
from artifact_ledger.projections.catalog import Catalog, Logged, apply
from artifact_ledger.projections.retention import KeepBest, KeepNewest, RetentionPolicy, Ttl, plan_expiry

RUNS = ["r1", "r2"]
KINDS = ["model", "data"]
SEC = 1_000_000


@st.composite
def histories(draw):
    """Random artifacts (some with acc), pins, aliases, lineage edges and retirements, as folded events."""
    n = draw(st.integers(1, 14))
    arts = []
    for i in range(n):
        arts.append(dict(
            artifact_id=f"{i:032x}", run=draw(st.sampled_from(RUNS)), kind=draw(st.sampled_from(KINDS)),
            acc=draw(st.none() | st.sampled_from([0.1, 0.5, 0.5, 0.9])), pinned=draw(st.booleans()) and
            draw(st.booleans()), parents=draw(st.lists(st.integers(0, max(i - 1, 0)), max_size=2, unique=True))
            if i else [], label=draw(st.sampled_from(["a", "b"]))))
    aliased = draw(st.sets(st.integers(0, n - 1), max_size=2))
    retired = draw(st.sets(st.integers(0, n - 1), max_size=2)) - aliased
    return arts, aliased, retired


def build(history):
    arts, aliased, retired = history
    cat = Catalog()
    seq = count(1)
    for i, a in enumerate(arts):
        ev = ArtifactRecorded(artifact_id=a["artifact_id"], origin="save", kind=a["kind"], sha256=f"{i:064x}",
                              size=1, mime="x", labels={"l": a["label"]},
                              metrics={} if a["acc"] is None else {"acc": a["acc"]}, pinned=a["pinned"],
                              run_id=a["run"], graph_id="g", node_id="n",
                              derived_from=[arts[p]["artifact_id"] for p in a["parents"]])
        s = next(seq)
        apply(cat, Logged(s, s * SEC, ev))
    for i in sorted(aliased):
        s = next(seq)
        apply(cat, Logged(s, s * SEC, AliasSet(namespace="all", name=f"a{i}", artifact_id=arts[i]["artifact_id"])))
    for i in sorted(retired):
        s = next(seq)
        apply(cat, Logged(s, s * SEC, Retired(artifact_id=arts[i]["artifact_id"], reason="x", force=True)))
    return cat


policies = st.builds(
    RetentionPolicy,
    keep_best=st.lists(st.builds(KeepBest, kind=st.sampled_from(KINDS), metric=st.just("acc"),
                                 mode=st.sampled_from(["max", "min"]), k=st.integers(1, 3),
                                 scope=st.sampled_from(["run", "all"])), max_size=1),
    keep_newest=st.lists(st.builds(KeepNewest, n=st.integers(1, 3), kind=st.none() | st.sampled_from(KINDS)),
                         max_size=1),
    ttl=st.lists(st.builds(Ttl, max_age_s=st.sampled_from([2.0, 5.0]), kind=st.none() | st.sampled_from(KINDS),
                           labels=st.sampled_from([{}, {"l": "a"}])), max_size=1),
)


def brute_force(history, policy, now_us):
    """The module doc's rule, restated over plain lists."""
    arts, aliased, retired = history
    n = len(arts)
    live = [i for i in range(n) if i not in retired]
    expired, kept = set(), set()
    for r in policy.keep_best:
        groups: dict = {}
        for i in live:
            if arts[i]["kind"] == r.kind and arts[i]["acc"] is not None:
                groups.setdefault(arts[i]["run"] if r.scope == "run" else None, []).append(i)
        for members in groups.values():
            sign = 1 if r.mode == "max" else -1
            best = sorted(members, key=lambda i: (sign * arts[i]["acc"], i), reverse=True)
            kept |= set(best[:r.k])
            expired |= set(best[r.k:])
    for r in policy.keep_newest:
        groups = {}
        for i in live:
            if r.kind is None or arts[i]["kind"] == r.kind:
                groups.setdefault((arts[i]["run"], arts[i]["kind"]), []).append(i)
        for members in groups.values():
            kept |= set(members[-r.n:])
            expired |= set(members[:-r.n])
    for r in policy.ttl:
        for i in live:
            if (r.kind is None or arts[i]["kind"] == r.kind) and all(arts[i]["label"] == v for v in r.labels.values()):
                if (i + 1) * SEC < now_us - r.max_age_s * SEC:
                    expired.add(i)
                else:
                    kept.add(i)
    selected = {i for i in expired - kept if not arts[i]["pinned"] and i not in aliased}

    def ancestors(i, seen):
        for p in arts[i]["parents"]:
            if p not in seen:
                seen.add(p)
                ancestors(p, seen)
        return seen
    needed = set()
    for i in range(n):
        if i not in selected:
            ancestors(i, needed)
    return {arts[i]["artifact_id"] for i in selected - needed}


@given(histories(), policies, st.integers(0, 20))
def test_planner_matches_brute_force(history, policy, now_s):
    """Exactly the brute-force selection: never pinned, aliased or an ancestor of what stays."""
    cat = build(history)
    got = plan_expiry(cat, policy, now_s * SEC)
    assert set(got) == brute_force(history, policy, now_s * SEC)
    arts, aliased, _ = history
    for aid in got:
        i = int(aid, 16)
        assert not arts[i]["pinned"] and i not in aliased


@given(histories(), st.integers(1, 3), st.sampled_from(["max", "min"]))
def test_keep_best_keeps_exactly_the_best_k(history, k, mode):
    """With one keep_best rule and nothing protected, exactly the best k per run stay among the governed."""
    arts, _, _ = history
    for a in arts:
        a["pinned"], a["parents"] = False, []
    history = (arts, set(), set())
    cat = build(history)
    got = plan_expiry(cat, RetentionPolicy(keep_best=[KeepBest(kind="model", metric="acc", mode=mode, k=k)]), 0)
    for run in RUNS:
        governed = [i for i, a in enumerate(arts) if a["run"] == run and a["kind"] == "model" and a["acc"] is not None]
        sign = 1 if mode == "max" else -1
        best = sorted(governed, key=lambda i: (sign * arts[i]["acc"], i), reverse=True)[:k]
        stays = [i for i in governed if arts[i]["artifact_id"] not in got]
        assert sorted(stays) == sorted(best)


def test_pinned_aliased_and_ancestors_are_never_selected():
    arts = [dict(artifact_id=f"{i:032x}", run="r1", kind="model", acc=0.1 * i, pinned=i == 1, label="a",
                 parents=[0] if i == 4 else []) for i in range(5)]
    cat = build((arts, {2}, set()))
    pol = RetentionPolicy(keep_best=[KeepBest(kind="model", metric="acc", mode="max", k=1)])
    # best is 4 (kept); 0 is its ancestor, 1 pinned, 2 aliased: only 3 goes
    assert list(plan_expiry(cat, pol, 0)) == [f"{3:032x}"]
    cat2 = build((arts, set(), set()))
    apply(cat2, Logged(99, 99 * SEC, PinChanged(artifact_id=f"{3:032x}", pinned=True)))
    apply(cat2, Logged(100, 100 * SEC, Related(child=f"{3:032x}", parent=f"{2:032x}", relation="consumed")))
    assert list(plan_expiry(cat2, pol, 0)) == []


@pytest.mark.parametrize("bad, words", [
    ({"keep_best": [{"kind": "m", "metric": "acc", "mode": "max", "k": 1, "extra": 1}]}, "extra"),
    ({"keep_everything": True}, "keep_everything"),
    ({"keep_best": [{"kind": "m", "metric": "acc", "mode": "best", "k": 1}]}, "mode"),
    ({"keep_best": [{"kind": "m", "metric": "acc", "mode": "max", "k": 0}]}, "k"),
    ({"keep_best": [{"kind": "m", "metric": "acc", "mode": "max", "k": "2"}]}, "k"),
    ({"keep_newest": [{"n": 1, "kind": 3}]}, "kind"),
    ({"ttl": [{"max_age_s": -1}]}, "max_age_s"),
    ({"ttl": [{"max_age_s": float("nan")}]}, "max_age_s"),
])
def test_a_policy_with_unknown_fields_or_bad_values_is_refused(bad, words):
    with pytest.raises(ValueError, match=words):
        check_policy(bad)
    with pytest.raises(TypeError, match="policy must be"):
        check_policy([1])


def test_ttl_boundary_and_labels():
    """Older than max_age_s expires; exactly max_age_s old stays; the labels filter governs."""
    arts = [dict(artifact_id=f"{i:032x}", run="r1", kind="data", acc=None, pinned=False, label=lab, parents=[])
            for i, lab in enumerate(["a", "a", "b"])]  # recorded at 1 s, 2 s, 3 s
    cat = build((arts, set(), set()))
    pol = RetentionPolicy(ttl=[Ttl(max_age_s=2.0, labels={"l": "a"})])
    assert list(plan_expiry(cat, pol, 4 * SEC)) == [f"{0:032x}"]  # 1 s is older than 4 - 2; 2 s is exactly 2 old
    assert list(plan_expiry(cat, pol, 10 * SEC)) == [f"{0:032x}", f"{1:032x}"]  # "b" is not governed
