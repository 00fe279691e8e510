"""The lifecycle half of the facade: aliases, lineage, retirement and purge, each one event.

Aliases live in a namespace: the one given, else the facade's project id, else ``"all"``.
A name written ``"namespace/name"`` names its namespace itself (names hold no ``/``).
Every check below runs against the caught-up catalogue before anything is appended.
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..ledger.events import RELATIONS, AliasRemoved, AliasSet, Purged, Related, Retired
from ..projections.catalog import Catalog, Row
from ..projections.lifecycle import AliasKey

from .model import Artifact, utc_from_us
from .validation import check_bool, check_id

if TYPE_CHECKING:
    from .ledger import Ledger
    from .view import LedgerView

ALIAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
MAX_REASON_CHARS = 4096
MAX_PARENTS = 1000  # derived_from ids of one artifact
DEFAULT_NAMESPACE = "all"


class ArtifactPurged(FileNotFoundError):
    """The artifact was purged: its record stays in the ledger, its bytes are (or may be) gone."""

    def __init__(self, artifact_id: str, seq: int, when: datetime, reason: str, *, view: int | None = None):
        self.artifact_id, self.seq, self.when, self.reason = artifact_id, seq, when, reason
        if view is None:
            msg = (f"artifact {artifact_id} was purged at seq {seq} ({when.isoformat()}): {reason!r}; "
                   "its record stays in the ledger, its bytes are not loadable any more")
        else:
            msg = (f"artifact {artifact_id} existed at seq {view}, but it was purged later, at seq {seq} "
                   f"({when.isoformat()}): {reason!r}; its bytes are gone from the store")
        super().__init__(msg)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class AliasMove:
    """One change of an alias: where it pointed after event ``seq`` (None: removed)."""

    namespace: str
    name: str
    seq: int
    time: datetime
    artifact_id: str | None
    protected: bool


@dataclass(frozen=True, slots=True)
class AliasInfo:
    """An alias as it points now (or as of a view)."""

    namespace: str
    name: str
    artifact_id: str
    protected: bool
    seq: int
    time: datetime


@dataclass(frozen=True, slots=True)
class LineageStep:
    """An artifact reached by ``lineage()``: how (relation), how far (depth) and from which artifact."""

    artifact: Artifact
    relation: str
    depth: int
    via: str


def check_reason(reason: Any) -> str:
    """A retirement or purge reason: a non-empty string of at most MAX_REASON_CHARS."""
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a string, got {type(reason).__name__}")
    if not reason.strip():
        raise ValueError("reason must say why (a non-empty string)")
    if len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"reason is {len(reason)} characters; at most {MAX_REASON_CHARS} are allowed")
    return check_id("reason", reason)


def _check_artifact_id(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string (an artifact id), got {type(value).__name__}")
    return value


class LifecycleMixin:
    """Aliases, lineage, retire and purge for ArtifactFacade (which supplies ``_src`` and ``_writable``)."""

    _src: "Ledger | LedgerView"
    project_id: str | None

    if TYPE_CHECKING:
        def _writable(self, what: str) -> "Ledger": ...

    # ------------------------------------------------------------ helpers
    def _alias_key(self, name: Any, namespace: Any) -> AliasKey:
        if not isinstance(name, str):
            raise TypeError(f"alias name must be a string, got {type(name).__name__}")
        if "/" in name:
            if namespace is not None:
                raise ValueError(f"alias {name!r} names its namespace already; do not pass namespace= too")
            namespace, name = name.rsplit("/", 1)
            if not namespace:
                raise ValueError(f"alias {name!r} has an empty namespace before '/'")
        if not ALIAS_NAME.fullmatch(name):
            raise ValueError(f"alias name {name!r} is not valid: 1 to 128 characters of letters, digits, '.', '_', "
                             "'+' and '-', starting with a letter or digit")
        if namespace is None:
            namespace = self.project_id if self.project_id is not None else DEFAULT_NAMESPACE
        check_id("namespace", namespace)
        return (namespace, name)

    def _known(self, cat: Catalog, name: str, aid: Any) -> Row:
        aid = _check_artifact_id(name, aid)
        row = cat.rows.get(aid)
        upto = self._src.upto
        if row is None or (upto is not None and row.seq > upto):
            raise KeyError(f"unknown {name} {aid!r}: no such artifact in the ledger at {self._src.where}"
                           + ("" if upto is None or row is None else f" as of seq {upto}"))
        return row

    def _art(self, row: Row) -> Artifact:
        return self._src._to_artifact(row)

    async def _check_parents(self, derived_from: Any) -> builtins.list[str]:
        """Validate ``derived_from`` (known ids, no repeats) before anything is stored."""
        if derived_from is None:
            return []
        if isinstance(derived_from, str) or not isinstance(derived_from, (list, tuple)):
            raise TypeError(f"derived_from must be a list of artifact ids, got {type(derived_from).__name__}")
        if len(derived_from) > MAX_PARENTS:
            raise ValueError(f"derived_from has {len(derived_from)} ids; at most {MAX_PARENTS} are allowed")
        cat = await self._src._refresh()
        seen: set[str] = set()
        for i, aid in enumerate(derived_from):
            self._known(cat, f"derived_from[{i}]", aid)
            if aid in seen:
                raise ValueError(f"derived_from names {aid!r} twice")
            seen.add(aid)
        return list(derived_from)

    def _guard(self, cat: Catalog, row: Row, what: str, force: bool) -> None:
        """Refuse to retire or purge a pinned or aliased artifact unless forced."""
        if force:
            return
        aid = row.artifact_id
        held = []
        if cat.pin_now[row.i]:
            held.append("pinned")
        names = cat.life.aliases_of(aid, None)
        if names:
            held.append("aliased as " + ", ".join(f"{ns}/{n}" for ns, n in names))
        if held:
            raise ValueError(f"artifact {aid} is {' and '.join(held)}; {what} it anyway with force=True, "
                             "or unpin/unalias it first")

    # ------------------------------------------------------------ aliases
    async def alias(self, artifact_id: str, name: str, *, protected: bool = False, force: bool = False,
                    namespace: str | None = None) -> Artifact:
        """Point alias ``name`` at an artifact (moving it if it points elsewhere); returns the artifact.

        A protected alias moves only with ``force=True``; ``protected=True`` protects it from now on.
        """
        led = self._writable("alias")
        key = self._alias_key(name, namespace)
        check_bool("protected", protected)
        check_bool("force", force)
        cat = await led._refresh()
        row = self._known(cat, "artifact_id", artifact_id)
        retired = cat.life.retired_at(artifact_id, None)
        if retired is not None:
            raise ValueError(f"artifact {artifact_id} was retired at seq {retired[0]} ({retired[1]!r}); "
                             "a retired artifact cannot be aliased")
        now = cat.life.alias_at(key, None)
        if now is not None and now[1] is not None and now[2] and not force and now[1] != artifact_id:
            raise ValueError(f"alias {key[0]}/{key[1]} is protected (it points at {now[1]}); "
                             "move it with force=True")
        if now is not None and now[1] is not None and now[2] and not force and not protected:
            raise ValueError(f"alias {key[0]}/{key[1]} is protected; unprotect it with force=True")
        await led._append(AliasSet(namespace=key[0], name=key[1], artifact_id=artifact_id, protected=protected,
                                   force=force))
        return self._art(row)

    async def unalias(self, name: str, *, force: bool = False, namespace: str | None = None) -> str:
        """Remove an alias; returns the artifact id it pointed at (KeyError if it points nowhere)."""
        led = self._writable("unalias")
        key = self._alias_key(name, namespace)
        check_bool("force", force)
        cat = await led._refresh()
        now = cat.life.alias_at(key, None)
        if now is None or now[1] is None:
            raise KeyError(f"alias {key[0]}/{key[1]} does not point at any artifact")
        if now[2] and not force:
            raise ValueError(f"alias {key[0]}/{key[1]} is protected; remove it with force=True")
        await led._append(AliasRemoved(namespace=key[0], name=key[1], force=force))
        return now[1]

    async def resolve(self, name: str, *, namespace: str | None = None) -> Artifact:
        """The artifact an alias points at (now, or as of a past view); KeyError if none or retired."""
        key = self._alias_key(name, namespace)
        cat = await self._src._refresh()
        upto = self._src.upto
        now = cat.life.alias_at(key, upto)
        if now is None or now[1] is None:
            when = "" if upto is None else f" as of seq {upto}"
            raise KeyError(f"alias {key[0]}/{key[1]} does not point at any artifact{when}")
        retired = cat.life.retired_at(now[1], upto)
        if retired is not None:
            raise KeyError(f"alias {key[0]}/{key[1]} points at artifact {now[1]}, which was retired at seq "
                           f"{retired[0]} ({retired[1]!r})")
        return self._art(cat.rows[now[1]])

    async def alias_history(self, name: str, *, namespace: str | None = None) -> builtins.list[AliasMove]:
        """Every move of an alias, oldest first, with its seq and time (up to a view's seq)."""
        key = self._alias_key(name, namespace)
        cat = await self._src._refresh()
        upto = self._src.upto
        return [AliasMove(key[0], key[1], s, utc_from_us(cat.times[s - 1]), a, p)
                for s, a, p in cat.life.alias_hist.get(key, ()) if upto is None or s <= upto]

    async def aliases(self, *, namespace: str | None = None,
                      every_namespace: bool = False) -> builtins.list[AliasInfo]:
        """Aliases that point somewhere (in the facade's namespace, or every one), sorted."""
        check_bool("every_namespace", every_namespace)
        ns = None if every_namespace else self._alias_key("x", namespace)[0]
        cat = await self._src._refresh()
        return [AliasInfo(k[0], k[1], a, p, s, utc_from_us(cat.times[s - 1]))
                for k, a, p, s in cat.life.aliases(self._src.upto, ns)]

    # ------------------------------------------------------------ lineage
    async def relate(self, child: str, parent: str, *, relation: str = "derived_from") -> None:
        """Record that ``child`` came from ``parent`` (``derived_from``, ``consumed`` or ``references``)."""
        led = self._writable("relate")
        if relation not in RELATIONS:
            raise ValueError(f"relation must be one of {sorted(RELATIONS)}, got {relation!r}")
        cat = await led._refresh()
        self._known(cat, "child", child)
        self._known(cat, "parent", parent)
        if child == parent:
            raise ValueError(f"artifact {child} cannot be related to itself")
        life = cat.life
        if any(e.other == parent and e.relation == relation for e in life.parents.get(child, ())):
            raise ValueError(f"{child} is already related to {parent} as {relation}")
        if life.reaches(parent, child, "up"):
            raise ValueError(f"relating {child} to {parent} would make a cycle: {child} is already an ancestor "
                             f"of {parent}")
        await led._append(Related(child=child, parent=parent, relation=relation))

    async def lineage(self, artifact_id: str, *, direction: str = "up",
                      depth: int | None = None) -> builtins.list[LineageStep]:
        """Walk lineage from an artifact: ``up`` to what it came from, ``down`` to what came from it."""
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise ValueError(f"depth must be a positive integer or None (no limit), got {depth!r}")
        cat = await self._src._refresh()
        self._known(cat, "artifact_id", artifact_id)
        rows = cat.rows
        return [LineageStep(self._art(rows[s.artifact_id]), s.relation, s.depth, s.via)
                for s in cat.life.walk(artifact_id, direction, depth, self._src.upto)]

    # ------------------------------------------------------------ retire and purge
    async def retire(self, artifact_id: str, reason: str, *, force: bool = False) -> None:
        """Hide an artifact from list, search, best and resolve from now on (history keeps it)."""
        led = self._writable("retire")
        reason = check_reason(reason)
        check_bool("force", force)
        cat = await led._refresh()
        row = self._known(cat, "artifact_id", artifact_id)
        done = cat.life.retired_at(artifact_id, None)
        if done is not None:
            raise ValueError(f"artifact {artifact_id} was already retired at seq {done[0]} ({done[1]!r})")
        self._guard(cat, row, "retire", force)
        await led._append(Retired(artifact_id=artifact_id, reason=reason, force=force))

    async def purge(self, artifact_id: str, reason: str, *, force: bool = False) -> None:
        """Retire an artifact and let gc collect its bytes once no live artifact needs the blob."""
        led = self._writable("purge")
        reason = check_reason(reason)
        check_bool("force", force)
        cat = await led._refresh()
        row = self._known(cat, "artifact_id", artifact_id)
        done = cat.life.purged_at(artifact_id, None)
        if done is not None:
            raise ValueError(f"artifact {artifact_id} was already purged at seq {done[0]} ({done[1]!r})")
        self._guard(cat, row, "purge", force)
        await led._append(Purged(artifact_id=artifact_id, reason=reason, force=force))

    # ------------------------------------------------------------ used by reads
    def _check_loadable(self, cat: Catalog, row: Row) -> None:
        """Raise ArtifactPurged for a purged artifact (on a past view: only once its bytes are gone)."""
        aid = row.artifact_id
        p = cat.life.purged.get(aid)
        if p is None:
            return
        upto = self._src.upto
        if upto is None or p[0] <= upto:
            raise ArtifactPurged(aid, p[0], utc_from_us(cat.times[p[0] - 1]), p[1])
        if not self._src.store.exists(row.ev.sha256):
            raise ArtifactPurged(aid, p[0], utc_from_us(cat.times[p[0] - 1]), p[1], view=upto)

    def _live(self, cat: Catalog, rows: builtins.list[int]) -> builtins.list[int]:
        """Drop rows (row numbers) retired as of the view."""
        retired = cat.life.retired
        if not retired:
            return rows
        upto = self._src.upto
        ids = cat.ids
        return [i for i in rows if (x := retired.get(ids[i])) is None or (upto is not None and x[0] > upto)]

    def _alias_rows(self, cat: Catalog, alias: Any) -> set[int] | None:
        """Rows an ``alias=`` filter admits (None: no filter)."""
        if alias is None:
            return None
        key = self._alias_key(alias, None)
        now = cat.life.alias_at(key, self._src.upto)
        if now is None or now[1] is None:
            return set()
        return {cat.id_rows[now[1]]}


__all__ = ["AliasInfo", "AliasMove", "ArtifactPurged", "LifecycleMixin", "LineageStep", "check_reason"]
