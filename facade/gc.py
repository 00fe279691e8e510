"""Garbage collection: plan (pure, from the catalogue and the store's listing), record, sweep, record.

The protocol against concurrent writers is in ledger/FORMAT.md ("Garbage collection"):
a blob is deleted only under the exclusive log lock, after catching up with every
committed record and finding no live artifact that names it; a writer checks,
under the same lock, that the blobs its events name are still there. So a blob an
acknowledged artifact needs is never deleted, whichever process saves it.
"""

from __future__ import annotations

import os
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import anyio
import anyio.to_thread
from pydantic import ValidationError

from ..ledger.events import ArtifactRecorded, GcPlanned, GcSwept, decode_event
from ..ledger.framing import Record
from ..projections.catalog import Catalog
from ..projections.retention import RetentionPolicy, plan_expiry
from ..store.durable import remove_tree, unique_hex

from . import content
from .sweep import sweep_root

if TYPE_CHECKING:
    from .ledger import Ledger

# Blobs the event being appended names, each with a way to store it again from its source (or None),
# set by the facade around Ledger._append (task-local, so concurrent saves never see each other's).
# Under the log lock the ledger checks each is present, storing a missing one again (FORMAT.md).
Need = tuple[str, Optional[Callable[[], str]]]
BLOB_NEEDS: ContextVar[tuple[Need, ...]] = ContextVar("artifact_ledger_blob_needs", default=())

DEFAULT_GRACE = 3600.0  # seconds an unreferenced blob no event ever named is spared (a save may be under way)
SWEEP_BATCH = 256  # blobs deleted per hold of the log lock, so writers wait for one batch at most
PURGE_IDS_PER_EVENT = 20_000  # artifact ids per gc.planned event (each well under MAX_EVENT_BYTES)


@dataclass(frozen=True)
class GcPlan:
    """What a gc would do: artifacts the policy purges, blobs to delete, and the bytes that frees."""

    plan_id: str
    policy: dict[str, Any] | None
    purge: dict[str, str]  # artifact id -> why the policy selected it
    blobs: list[str]  # blobs to delete: no live artifact needs them
    collectable: int  # of those, blobs of purged artifacts
    orphans: int  # of those, blobs no event names (crashed saves, members of purged directories)
    bytes: int
    spared: int  # unreferenced orphans younger than the grace period, kept for now
    open_plans: list[str]  # earlier plans without a result (a gc that died): this one finishes them
    grace: float
    head_seq: int
    started: float = 0.0  # wall-clock time the plan began (blobs written or touched since are spared)


@dataclass(frozen=True)
class GcResult:
    """What a gc did."""

    plan: GcPlan
    plan_seq: int
    result_seq: int
    blobs: int
    bytes: int
    kept: int  # planned blobs found needed again at deletion time
    staging: list[str] = field(default_factory=list)
    materialized: list[str] = field(default_factory=list)


def check_policy(policy: Any) -> RetentionPolicy | None:
    """A policy given as a RetentionPolicy, a dict (unknown fields refused) or None."""
    if policy is None or isinstance(policy, RetentionPolicy):
        return policy
    if not isinstance(policy, dict):
        raise TypeError(f"policy must be a RetentionPolicy, a dict or None, got {type(policy).__name__}")
    try:
        return RetentionPolicy.model_validate(policy)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid retention policy: {problems} (fields: keep_best, keep_newest, ttl; see the "
                         "README, 'Retention policies')") from None


def _members(store: Any, sha: str) -> list[str]:
    """Blobs a directory manifest names; raises if the manifest cannot be read."""
    return [e["sha256"] for e in content.decode_manifest(store.read_bytes(sha))["files"]]


def needed_blobs(cat: Catalog, store: Any, rows: Iterable[int], dropped: set[str]) -> set[str]:
    """Blobs the given rows need (directory members included), skipping purged and ``dropped`` artifacts.

    A live directory whose manifest cannot be read is an error: its members are unknown, so
    nothing could be deleted safely.
    """
    purged = cat.life.purged
    dir_id = cat.str_ids.get(content.DIR_MIME, -1)
    out: set[str] = set()
    for i in rows:
        aid = cat.ids[i]
        if aid in purged or aid in dropped:
            continue
        sha = cat.sha_hex(i)
        out.add(sha)
        if cat.mime_s[i] == dir_id:
            try:
                out.update(_members(store, sha))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise RuntimeError(f"gc refused: the manifest of live directory artifact {aid} ({sha}) cannot be "
                                   f"read ({exc}); its files are unknown, so no blob can be deleted safely. "
                                   "Run verify and restore it first") from exc
    return out


def make_plan(cat: Catalog, store: Any, policy: RetentionPolicy | None, *, grace: float, now: float) -> GcPlan:
    """Compute a plan (blocking: lists the store and reads live directory manifests)."""
    purge = {} if policy is None else plan_expiry(cat, policy, int(now * 1_000_000))
    needed = needed_blobs(cat, store, range(cat.n), set(purge))
    named = {cat.sha_hex(i) for i in range(cat.n)}
    blobs: list[str] = []
    collectable = orphans = spared = total = 0
    for sha in store.iter_blobs():
        if sha in needed:
            continue
        try:
            size, mtime = store.blob_stat(sha)
        except FileNotFoundError:
            continue
        if sha not in named and mtime > now - grace:
            spared += 1
            continue
        blobs.append(sha)
        total += size
        if sha in named:
            collectable += 1
        else:
            orphans += 1
    return GcPlan(unique_hex(), None if policy is None else policy.model_dump(mode="json"), purge, blobs,
                  collectable, orphans, total, spared, [p for _, p in cat.life.open_plans()], grace, cat.head_seq,
                  now)


def _stale_materialized(root: Any, cat: Catalog) -> list[str]:
    """Materialised directory copies no live directory artifact has (purged ones included)."""
    mat = root / "materialized"
    try:
        names = os.listdir(mat)
    except FileNotFoundError:
        return []
    purged = cat.life.purged
    dir_id = cat.str_ids.get(content.DIR_MIME, -1)
    live = {cat.sha_hex(i) for i in range(cat.n) if cat.mime_s[i] == dir_id and cat.ids[i] not in purged}
    return [n for n in sorted(names) if not n.startswith(".") and n not in live]


async def plan(led: "Ledger", policy: Any, grace: float) -> GcPlan:
    """Plan a gc of the caught-up catalogue without writing anything."""
    pol = check_policy(policy)
    await led._refresh()
    now = time.time()
    # Held so that no append of this process changes the catalogue while the worker thread walks it.
    async with led._gc._lock:
        cat = led.catalog
        return await anyio.to_thread.run_sync(lambda: make_plan(cat, led.store, pol, grace=grace, now=now))


async def run(led: "Ledger", policy: Any, grace: float, staging_age: float) -> GcResult:
    """Record a plan, sweep what it found (re-checked under the log lock), record the result."""
    p = await plan(led, policy, grace)
    ids = list(p.purge)
    parts = max(1, -(-len(ids) // PURGE_IDS_PER_EVENT))
    plan_seq = 0
    for k in range(parts):
        chunk = ids[k * PURGE_IDS_PER_EVENT:(k + 1) * PURGE_IDS_PER_EVENT]
        seq = await led._append(GcPlanned(plan_id=p.plan_id, policy=p.policy if k == 0 else None, purge=chunk,
                                          part=k + 1, parts=parts, blobs=len(p.blobs), bytes=p.bytes,
                                          grace_s=float(grace)))
        plan_seq = plan_seq or seq
    deleted = freed = kept = 0
    store = led.store
    p_rows = led.catalog.n
    # The plan's events are applied now: an artifact it meant to purge that became pinned or aliased
    # meanwhile was spared by them. What every artifact not purged needs is the floor of what is kept;
    # later rows and other processes' records only add to it (nothing is ever un-purged).
    async with led._gc._lock:
        cat = led.catalog
        extra = await anyio.to_thread.run_sync(needed_blobs, cat, store, range(cat.n), set())
        rows_seen = cat.n
    named_at_plan = p.blobs
    for start in range(0, len(named_at_plan), SWEEP_BATCH):
        batch = named_at_plan[start:start + SWEEP_BATCH]
        async with led._gc._lock:  # no append or refresh of this process runs meanwhile
            seen: list[Record] = []
            try:
                d, f, k, rows_seen = await anyio.to_thread.run_sync(
                    _sweep_batch, led, batch, extra, rows_seen, p_rows, grace, p.started, seen)
            finally:
                if seen:
                    led._apply_records(seen)
        deleted += d
        freed += f
        kept += k
    cat = await led._refresh()
    removed = await anyio.to_thread.run_sync(lambda: sweep_root(led.root, staging_age=staging_age))
    stale = await anyio.to_thread.run_sync(_stale_materialized, led.root, cat)
    for name in stale:
        await anyio.to_thread.run_sync(remove_tree, str(led.root / "materialized" / name))
    staging = [r for r in removed if "staging" in r]
    result_seq = await led._append(GcSwept(plan_id=p.plan_id, blobs=deleted, bytes=freed, kept=kept,
                                           staging=len(staging), materialized=len(stale),
                                           resumes=p.open_plans))
    return GcResult(p, plan_seq, result_seq, deleted, freed, kept, staging, stale)


def _sweep_batch(led: "Ledger", batch: list[str], extra: set[str], rows_seen: int, plan_rows: int, grace: float,
                 started: float, seen: list[Record]) -> tuple[int, int, int, int]:
    """Delete the blobs of one batch still unneeded, holding the exclusive log lock (blocking).

    Returns (deleted, bytes freed, kept, rows of this process's catalogue now accounted for).
    """
    cat, store = led.catalog, led.store
    deleted = freed = kept = 0
    with led._log.holding(seen.append):
        # Everything committed is read now: the artifacts of other processes (``seen``) and the
        # rows this process applied since the last batch; none of their blobs may go.
        extra.update(needed_blobs(cat, store, range(rows_seen, cat.n), set()))
        rows_seen = cat.n
        for rec in seen:
            ev = decode_event(rec.payload)
            if type(ev) is ArtifactRecorded:
                extra.add(ev.sha256)
                if ev.mime == content.DIR_MIME:
                    extra.update(_members(store, ev.sha256))
        now = time.time()
        for sha in batch:
            if sha in extra:
                kept += 1
                continue
            try:
                size, mtime = store.blob_stat(sha)
            except FileNotFoundError:
                continue  # another gc took it
            if mtime >= started or (mtime > now - grace and not _named(cat, sha, plan_rows)):
                # Written (or found present and touched) by a save since the plan: a save is under way.
                # Sparing it is not what keeps it safe (the writers' check under the lock is); it keeps a
                # gc that loops from starving that save, which would have to store it again and again.
                kept += 1
                continue
            store.delete(sha)
            deleted += 1
            freed += size
    return deleted, freed, kept, rows_seen


def _named(cat: Catalog, sha: str, rows: int) -> bool:
    """Whether any of the first ``rows`` artifacts named the blob (its bytes were in the ledger at plan time)."""
    row = cat.row_of_sha(sha)
    return row is not None and row < rows


@dataclass(frozen=True)
class Usage:
    """Bytes of a group of artifacts: as recorded (logical) and once deduplicated by blob."""

    artifacts: int = 0
    logical_bytes: int = 0
    unique_bytes: int = 0


@dataclass(frozen=True)
class DiskUsage:
    """``du()``: usage per run, project and kind, the total, and what the store holds on disk."""

    by_run: dict[str, Usage]
    by_project: dict[str | None, Usage]
    by_kind: dict[str, Usage]
    total: Usage
    store_blobs: int
    store_bytes: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        def u(x: Usage) -> dict[str, int]:
            return {"artifacts": x.artifacts, "logical_bytes": x.logical_bytes, "unique_bytes": x.unique_bytes}
        return {"by_run": {k: u(v) for k, v in self.by_run.items()},
                "by_project": {str(k): u(v) for k, v in self.by_project.items()},
                "by_kind": {k: u(v) for k, v in self.by_kind.items()},
                "total": u(self.total), "store": {"blobs": self.store_blobs, "bytes": self.store_bytes}}


def disk_usage(cat: Catalog, store: Any) -> DiskUsage:
    """Usage of every artifact not purged (blocking: sizes the store's files)."""
    purged = cat.life.purged
    s = cat.strs
    groups: dict[tuple[str, Any], list[int]] = {}
    rows = [i for i in range(cat.n) if cat.ids[i] not in purged]
    for i in rows:
        for g in (("run", s[cat.run_s[i]]), ("project", s[cat.project_s[i]]), ("kind", s[cat.kind_s[i]])):
            groups.setdefault(g, []).append(i)

    def usage(members: list[int]) -> Usage:
        shas: dict[str, int] = {}
        for i in members:
            shas.setdefault(cat.sha_hex(i), cat.size[i])
        return Usage(len(members), sum(cat.size[i] for i in members), sum(shas.values()))

    out: dict[str, dict[Any, Usage]] = {"run": {}, "project": {}, "kind": {}}
    for (kind, key), members in groups.items():
        out[kind][key] = usage(members)
    n = size = 0
    for sha in store.iter_blobs():
        try:
            size += store.blob_stat(sha)[0]
            n += 1
        except FileNotFoundError:
            pass
    return DiskUsage(out["run"], out["project"], out["kind"], usage(rows), n, size)


__all__ = ["DEFAULT_GRACE", "DiskUsage", "GcPlan", "GcResult", "Usage", "check_policy", "disk_usage",
           "make_plan", "run"]
