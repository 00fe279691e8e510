"""Audit: typed event listings, diffs between positions, and full verification."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator

import msgspec

from ..ledger.base import EventLog
from ..ledger.errors import LedgerCorruption
from ..ledger.events import ArtifactRecorded, Event, EventDecodeError, PinChanged, decode_event
from ..ledger.framing import Record
from ..projections.catalog import Catalog, Row, scope_keys_of
from ..projections.query import Filter, _scan_best, pinned_at, retired_rows
from ..store.base import BlobStore

from . import content
from .model import Artifact, utc_from_us


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One recorded event with its position, commit time and hash-chain links."""

    seq: int
    time: datetime
    hash: str
    prev_hash: str
    event: Event

    @classmethod
    def from_record(cls, rec: Record) -> "LedgerEvent":
        """Decode a log record into a typed event."""
        try:
            ev = decode_event(rec.payload)
        except EventDecodeError as exc:
            raise LedgerCorruption(rec.segment, rec.offset, rec.seq, str(exc)) from exc
        return cls(rec.seq, utc_from_us(rec.ts_us), rec.hash.hex(), rec.prev_hash.hex(), ev)

    @property
    def type(self) -> str:
        """The event's type tag (e.g. ``artifact.recorded``)."""
        return type(self.event).__struct_config__.tag  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: position, time, hashes and the event's fields."""
        return {
            "seq": self.seq,
            "time": self.time.isoformat(),
            "hash": self.hash,
            "prev_hash": self.prev_hash,
            "type": self.type,
            "event": msgspec.to_builtins(self.event),
        }


@dataclass(frozen=True, slots=True)
class PinChange:
    """An existing artifact whose pin state differs between the two positions."""

    artifact_id: str
    before: bool
    after: bool


@dataclass(frozen=True, slots=True)
class BestChange:
    """A best-by-metric table whose winner changed."""

    scope: str
    scope_key: dict[str, str]
    kind: str
    metric: str
    mode: str
    old: Artifact | None
    new: Artifact | None


@dataclass(frozen=True, slots=True)
class AliasChange:
    """An alias that points elsewhere (None: nowhere) at ``b`` than at ``a``."""

    namespace: str
    name: str
    before: str | None
    after: str | None


@dataclass(frozen=True, slots=True)
class Diff:
    """What changed between seq ``a`` and seq ``b``."""

    a: int
    b: int
    added: list[Artifact]
    pins: list[PinChange]
    best: list[BestChange]
    aliases: list[AliasChange] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)  # artifact ids retired (purges included) in (a, b]
    purged: list[str] = field(default_factory=list)
    related: list[tuple[str, str, str]] = field(default_factory=list)  # (child, parent, relation) recorded

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole diff."""
        def art(x: Artifact | None) -> dict[str, Any] | None:
            return None if x is None else x.model_dump(mode="json")
        return {
            "a": self.a,
            "b": self.b,
            "added": [art(x) for x in self.added],
            "pins": [{"artifact_id": p.artifact_id, "before": p.before, "after": p.after} for p in self.pins],
            "best": [
                {"scope": c.scope, "scope_key": c.scope_key, "kind": c.kind, "metric": c.metric, "mode": c.mode,
                 "old": art(c.old), "new": art(c.new)}
                for c in self.best
            ],
            "aliases": [{"namespace": c.namespace, "name": c.name, "before": c.before, "after": c.after}
                        for c in self.aliases],
            "retired": self.retired,
            "purged": self.purged,
            "related": [{"child": c, "parent": p, "relation": r} for c, p, r in self.related],
        }


_SCOPE_IDS = {
    "node": ("run_id", "graph_id", "node_id"),
    "graph": ("run_id", "graph_id"),
    "run": ("run_id",),
    "project": ("project_id",),
    "all": (),
}


def _scope_dict(scope: str, key: Any) -> dict[str, str]:
    names = _SCOPE_IDS[scope]
    if not names:
        return {}
    values = key if isinstance(key, tuple) else (key,)
    return dict(zip(names, values))


def diff(cat: Catalog, a: int, b: int, to_artifact: Callable[[Row, int], Artifact]) -> Diff:
    """Compare the catalogue after seq ``a`` with the catalogue after seq ``b`` (a <= b)."""
    added_rows = [Row(cat, i) for i in range(cat.rows_at(a), cat.rows_at(b))]
    pins: list[PinChange] = []
    touched = sorted({aid for s, aid, _ in cat.pin_events if a < s <= b})
    for aid in touched:
        row = cat.rows[aid]
        if row.seq > a:
            continue  # new since a: reported among the added artifacts, with its pin state at b
        before, after = pinned_at(cat, row, a), pinned_at(cat, row, b)
        if before != after:
            pins.append(PinChange(aid, before, after))
    life = cat.life
    # A best table changes when an artifact is added to it or its winner is retired: the tables of
    # artifacts retired in (a, b] are compared too, each end without the artifacts retired by then.
    hidden_a = retired_rows(cat, a) if life.retired else set()
    hidden_b = retired_rows(cat, b) if life.retired else set()
    keys: dict[tuple[str, Any, str, str], None] = {}
    for r in added_rows + [Row(cat, i) for i in sorted(hidden_b - hidden_a) if i < cat.rows_at(a)]:
        ev = r.ev
        for metric in ev.metrics:
            for scope, key in scope_keys_of(ev):
                keys[(scope, key, ev.kind, metric)] = None
    changes: list[BestChange] = []
    for scope, key, kind, metric in keys:
        f = Filter.build(_scope_dict(scope, key), None, kind)
        old = _scan_best(cat, f, metric, a, hidden_a)
        new = _scan_best(cat, f, metric, b, hidden_b)
        for i, mode in enumerate(("max", "min")):
            o, n = old[i], new[i]
            if (o is None) != (n is None) or (o is not None and n is not None and o.seq != n.seq):
                changes.append(BestChange(
                    scope, _scope_dict(scope, key), kind, metric, mode,
                    None if o is None else to_artifact(o, a), None if n is None else to_artifact(n, b),
                ))
    aliases = []
    for key in sorted(life.alias_hist):
        old_a, new_a = life.alias_at(key, a), life.alias_at(key, b)
        was = None if old_a is None else old_a[1]
        now = None if new_a is None else new_a[1]
        if was != now:
            aliases.append(AliasChange(key[0], key[1], was, now))
    retired = sorted((s, aid) for aid, (s, _) in life.retired.items() if a < s <= b)
    purged = sorted((s, aid) for aid, (s, _) in life.purged.items() if a < s <= b)
    related = sorted((e.seq, child, e.other, e.relation) for child, es in life.parents.items() for e in es
                     if a < e.seq <= b)
    return Diff(a, b, [to_artifact(r, b) for r in added_rows], pins, changes, aliases,
                [x for _, x in retired], [x for _, x in purged], [(c, p, r) for _, c, p, r in related])


@dataclass
class VerifyResult:
    """Outcome of a full verification: chain, records and blobs."""

    ok: bool
    head: tuple[int, str]
    records: int = 0
    blobs: int = 0
    bytes: int = 0
    problem: str | None = None
    problems: list[str] = field(default_factory=list)
    lost: tuple[int, int] | None = None  # (first, last) seq known committed but missing from the log
    collected: list[str] = field(default_factory=list)  # blobs of purged artifacts a gc deleted (not damage)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the result."""
        return {"ok": self.ok, "head": {"seq": self.head[0], "hash": self.head[1]}, "records": self.records,
                "blobs": self.blobs, "bytes": self.bytes, "problem": self.problem, "problems": self.problems,
                "lost": None if self.lost is None else {"first": self.lost[0], "last": self.lost[1]},
                "collected": self.collected}


def referenced_blobs(cat: Catalog) -> list[tuple[str, str, bool]]:
    """(sha256, first artifact id naming it, is a directory manifest) for every artifact."""
    dir_id = cat.str_ids.get(content.DIR_MIME, -1)
    return [(cat.sha_hex(i), cat.ids[i], cat.mime_s[i] == dir_id) for i in range(cat.n)]


def collectable_blobs(cat: Catalog) -> set[str]:
    """Blobs every artifact naming them was purged: gc may have deleted them, and that is no damage."""
    purged = cat.life.purged
    if not purged:
        return set()
    alive: set[str] = set()
    dead: set[str] = set()
    for i in range(cat.n):
        (dead if cat.ids[i] in purged else alive).add(cat.sha_hex(i))
    return dead - alive


def _size_and_members(store: BlobStore, sha: str, is_dir: bool) -> tuple[int, list[str]]:
    """A blob's size and, for a directory manifest, its members; (0, []) if either cannot be read
    (the checking pass reports what is wrong)."""
    try:
        size = store.size(sha)
        if not is_dir:
            return size, []
        return size, [e["sha256"] for e in content.decode_manifest(store.read_bytes(sha))["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return 0, []


def _check_blob(store: BlobStore, sha: str, is_dir: bool) -> tuple[str, int, list[str] | str | None]:
    """Re-hash one blob: ("missing" | "changed" | "ok", its size, its manifest's members or why the
    manifest is invalid, for a directory)."""
    try:
        if not store.verify(sha):
            return "changed", 0, None
        size = store.size(sha)
    except FileNotFoundError:
        return "missing", 0, None
    if not is_dir:
        return "ok", size, None
    try:
        return "ok", size, [e["sha256"] for e in content.decode_manifest(store.read_bytes(sha))["files"]]
    except (ValueError, KeyError) as exc:
        return "ok", size, str(exc)


@contextmanager
def _reads(store: BlobStore) -> Iterator[Callable[[Callable[[Any], Any], list[Any]], Iterable[Any]]]:
    """A map over blobs that keeps ``store.read_concurrency`` reads in flight, results in input order."""
    width = store.read_concurrency
    if width <= 1:
        yield lambda fn, items: map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="verify") as pool:
        yield pool.map


def verify(log: EventLog, store: BlobStore, referenced: list[tuple[str, str, bool]], *,
           expect_head: tuple[int, str] | None = None,
           progress: Callable[[int, int], None] | None = None,
           known: tuple[int, str] | None = None,
           collectable: set[str] | None = None) -> VerifyResult:
    """Walk the hash chain of every record (``log.verify``) and re-hash every referenced blob (blocking).

    ``known`` is (seq, what says so): a seq the log must reach; if it ends before, the
    missing seqs are reported as lost records.
    """
    shas: dict[str, str] = {}
    for sha, owner, _ in referenced:
        shas.setdefault(sha, owner)
    seg_bytes = log.size_bytes()
    dir_shas = {sha for sha, _, is_dir in referenced if is_dir}
    blob_bytes = 0
    sized: set[str] = set()
    level = list(shas)
    with _reads(store) as read_all:
        while level:
            level = [sha for sha in dict.fromkeys(level) if sha not in sized]
            sized.update(level)
            nxt: list[str] = []
            for size, members in read_all(lambda sha: _size_and_members(store, sha, sha in dir_shas), level):
                blob_bytes += size
                nxt.extend(members)
            level = nxt
    total = seg_bytes + blob_bytes
    done = 0
    problems: list[str] = []
    seen_hash: dict[int, bytes] = {}
    want_seq = expect_head[0] if expect_head else None
    records = 0

    def on_record(rec: Record) -> None:
        nonlocal done, records
        try:
            decode_event(rec.payload)
        except EventDecodeError as exc:
            raise LedgerCorruption(rec.segment, rec.offset, rec.seq, str(exc)) from exc
        if rec.seq == want_seq:
            seen_hash[rec.seq] = rec.hash
        records += 1
        done += rec.length
        if progress is not None and records % 4096 == 0:
            progress(done, total)

    check = log.verify(on_record, known if known is not None else (0, ""))
    problems.extend(check.problems)
    head, lost = check.head, check.lost
    if expect_head is not None:
        seq, digest = expect_head
        got = seen_hash.get(seq)
        if got is None:
            problems.append(f"expected head: the log no longer contains seq {seq} (it ends at seq {head[0]})")
        elif got.hex() != digest.lower():
            problems.append(f"expected head: record seq {seq} has hash {got.hex()}, not {digest}")
    done = seg_bytes
    blobs = 0
    checked: set[str] = set()
    collected: list[str] = []
    soft = collectable or set()
    # Blobs some artifact not purged needs first (with their directory members), then those only purged
    # artifacts name: missing, those (and members of their manifests no one else needs) were collected.
    with _reads(store) as read_all:
        for gone_ok in (False, True):
            # Breadth first, one level of manifests at a time; each level's reads run together and are
            # reported in order, so the problems come out as a one-at-a-time walk would list them.
            queue = [(sha, owner) for sha, owner in shas.items() if (sha in soft) == gone_ok]
            while queue:
                batch: list[tuple[str, str]] = []
                for sha, owner in queue:
                    if sha not in checked:
                        checked.add(sha)
                        batch.append((sha, owner))
                queue = []
                for (sha, owner), (state, size, manifest) in zip(
                        batch, read_all(lambda item: _check_blob(store, item[0], item[0] in dir_shas), batch)):
                    blobs += 1
                    if state == "missing":
                        if gone_ok:
                            collected.append(sha)
                        else:
                            problems.append(f"blob {sha} (artifact {owner}) is missing from the store")
                        continue
                    if state == "changed":
                        problems.append(f"blob {sha} (artifact {owner}) does not match its SHA-256: "
                                        "its bytes changed")
                        continue
                    done += size
                    if progress is not None:
                        progress(min(done, total), total)
                    if isinstance(manifest, str):
                        problems.append(f"blob {sha} (artifact {owner}) is not a valid directory manifest: "
                                        f"{manifest}")
                    elif manifest is not None:
                        queue.extend((m, owner) for m in manifest)
    if progress is not None:
        progress(total, total)
    return VerifyResult(not problems, head, records, blobs, done, problems[0] if problems else None, problems, lost,
                        sorted(collected))


__all__ = ["AliasChange", "ArtifactRecorded", "BestChange", "Diff", "LedgerEvent", "PinChange", "PinChanged",
           "VerifyResult", "collectable_blobs", "diff", "verify"]
