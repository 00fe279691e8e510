"""Retention policies as data, and the pure planner that says what they expire.

A policy is a list of rules. Each rule *governs* some artifacts and splits them
into kept and expired:

- ``keep_best``: of the artifacts of ``kind`` that have ``metric``, per scope key
  (``scope``: node, graph, run, project or all), keep the best ``k`` (ties: the
  newer wins, as in ``best()``); the rest of them expire;
- ``keep_newest``: of the artifacts (of ``kind``, or of every kind), per (run,
  kind), keep the newest ``n``; the rest expire;
- ``ttl``: artifacts (of ``kind`` and carrying every label of ``labels``) recorded
  more than ``max_age_s`` seconds before the plan expire; younger ones are kept.

Only live artifacts (not retired) are governed. An artifact is selected when some
rule expires it and no rule keeps it, and it is neither pinned nor aliased nor an
ancestor (through any lineage relation) of an artifact that stays (every
artifact not purged and not selected).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .catalog import Catalog
from .labels import canon

_StrictStr = Annotated[str, Field(strict=True, min_length=1)]
_Count = Annotated[int, Field(strict=True, ge=1)]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeepBest(_Rule):
    """Keep the best ``k`` of a kind by a metric per scope key."""

    kind: _StrictStr
    metric: _StrictStr
    mode: Literal["max", "min"]
    k: _Count
    scope: Literal["node", "graph", "run", "project", "all"] = "run"


class KeepNewest(_Rule):
    """Keep the newest ``n`` per run and kind (of one kind, or of every kind when ``kind`` is None)."""

    n: _Count
    kind: _StrictStr | None = None


class Ttl(_Rule):
    """Expire artifacts (of a kind, carrying these labels) older than ``max_age_s`` seconds."""

    max_age_s: Annotated[float, Field(strict=False, gt=0, allow_inf_nan=False)]
    kind: _StrictStr | None = None
    labels: dict[str, Any] = {}


class RetentionPolicy(_Rule):
    """A retention policy: rules, all optional; unknown fields are refused."""

    keep_best: list[KeepBest] = []
    keep_newest: list[KeepNewest] = []
    ttl: list[Ttl] = []


def _scope_key(cat: Catalog, i: int, scope: str) -> Any:
    s = cat.strs
    run, graph, node = cat.run_s[i], cat.graph_s[i], cat.node_s[i]
    if scope == "all":
        return None
    if scope == "project":
        return s[cat.project_s[i]]
    if scope == "run":
        return run
    if scope == "graph":
        return (run, graph)
    return (run, graph, node)


def _matches_labels(cat: Catalog, i: int, labels: dict[str, Any]) -> bool:
    if not labels:
        return True
    have = {k: canon(v) for k, v in cat.labels(i).items()}
    return all(k in have and have[k] == canon(v) for k, v in labels.items())


def plan_expiry(cat: Catalog, policy: RetentionPolicy, now_us: int) -> dict[str, str]:
    """Artifacts the policy selects, each with the rule that expired it (pure; see the module doc)."""
    life = cat.life
    retired = life.retired
    ids = cat.ids
    live = [i for i in range(cat.n) if ids[i] not in retired]
    expired: dict[int, str] = {}
    kept: set[int] = set()
    str_ids = cat.str_ids
    for n_rule, rule in enumerate(policy.keep_best):
        kind_id = str_ids.get(rule.kind, -1)
        metric_id = str_ids.get(rule.metric, -1)
        groups: dict[Any, list[tuple[Any, int]]] = {}
        for i in live:
            if cat.kind_s[i] != kind_id:
                continue
            v = cat.metric(i, metric_id) if metric_id >= 0 else None
            if v is None:
                continue
            groups.setdefault(_scope_key(cat, i, rule.scope), []).append((v, i))
        for members in groups.values():
            # best first; ties go to the newer (higher row) artifact
            if rule.mode == "max":
                members.sort(key=lambda vi: (vi[0], vi[1]), reverse=True)
            else:
                members.sort(key=lambda vi: (-vi[0], vi[1]), reverse=True)
            kept.update(i for _, i in members[: rule.k])
            for _, i in members[rule.k:]:
                expired.setdefault(i, f"keep_best[{n_rule}]: not among the best {rule.k} by "
                                      f"{rule.mode} {rule.metric}")
    for n_rule, nrule in enumerate(policy.keep_newest):
        kind_id = -2 if nrule.kind is None else str_ids.get(nrule.kind, -1)
        ngroups: dict[tuple[int, int], list[int]] = {}
        for i in live:
            if kind_id != -2 and cat.kind_s[i] != kind_id:
                continue
            ngroups.setdefault((cat.run_s[i], cat.kind_s[i]), []).append(i)
        for rows in ngroups.values():
            kept.update(rows[-nrule.n:])
            for i in rows[: -nrule.n]:
                expired.setdefault(i, f"keep_newest[{n_rule}]: not among the newest {nrule.n} of its run and kind")
    for n_rule, trule in enumerate(policy.ttl):
        kind_id = -2 if trule.kind is None else str_ids.get(trule.kind, -1)
        limit = now_us - int(trule.max_age_s * 1_000_000)
        for i in live:
            if kind_id != -2 and cat.kind_s[i] != kind_id:
                continue
            if not _matches_labels(cat, i, trule.labels):
                continue
            if cat.ts[i] < limit:
                expired.setdefault(i, f"ttl[{n_rule}]: older than {trule.max_age_s:g} s")
            else:
                kept.add(i)
    selected = {i for i in expired if i not in kept}
    pinned = cat.pin_now
    selected = {i for i in selected if not pinned[i] and not life.aliases_of(ids[i], None)}
    # Ancestors of what stays are needed to explain it: they stay too.
    stays = [ids[i] for i in range(cat.n) if i not in selected and ids[i] not in life.purged]
    needed: set[str] = set()
    stack = list(stays)
    while stack:
        for e in life.parents.get(stack.pop(), ()):
            if e.other not in needed:
                needed.add(e.other)
                stack.append(e.other)
    return {ids[i]: expired[i] for i in sorted(selected) if ids[i] not in needed}


__all__ = ["KeepBest", "KeepNewest", "RetentionPolicy", "Ttl", "plan_expiry"]
