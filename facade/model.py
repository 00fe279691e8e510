"""The Artifact record users receive."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ARTIFACT_URI_SCHEME = "artifact://"


def artifact_uri(artifact_id: str) -> str:
    """The stable URI of an artifact, ``artifact://<id>``: it names the occurrence, not a place on disk."""
    return f"{ARTIFACT_URI_SCHEME}{artifact_id}"


def utc_from_us(ts_us: int) -> datetime:
    """A timezone-aware UTC datetime from microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=ts_us)


class Artifact(BaseModel):
    """One recorded artifact: identity, content address, metadata and ledger position."""

    model_config = ConfigDict(frozen=True)

    artifact_id: str
    uri: str
    kind: str
    sha256: str
    bytes: int
    mime: str
    labels: dict[str, Any]
    metrics: dict[str, float | int]
    pinned: bool
    run_id: str
    graph_id: str
    node_id: str
    project_id: str | None
    created_at: datetime
    seq: int
    suggested_uri: str | None
    # Aliases pointing at the artifact (as of the view), each "namespace/name", sorted.
    aliases: list[str] = []

    @property
    def id(self) -> str:
        """Alias of ``artifact_id`` (the reference's pin example uses ``art.id``)."""
        return self.artifact_id


class ReadOnlyDict(dict[str, Any]):
    """A dict that refuses mutation: the labels and metrics of an Artifact, which the ledger shares
    between calls. Copy it (``dict(art.labels)``) to get one you can change."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("an Artifact's labels and metrics are read-only (shared between calls); "
                        "copy them with dict(...) to change them")

    __setitem__ = __delitem__ = __ior__ = _refuse
    update = pop = popitem = clear = setdefault = _refuse

    def __reduce__(self) -> Any:
        # Copies and pickles become plain dicts: only the ledger's shared instances need protecting.
        return (dict, (dict(self),))

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(dict(self), memo)


class ReadOnlyList(list[Any]):
    """A list that refuses mutation: a list-valued label of a shared Artifact."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("an Artifact's label lists are read-only (shared between calls); copy with list(...)")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __reduce__(self) -> Any:
        return (list, (list(self),))

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return copy.deepcopy(list(self), memo)


_FIELDS = frozenset(Artifact.model_fields)
_ALL_FIELDS_SET = set(_FIELDS)
_new = object.__new__
_set = object.__setattr__


def _build_fast(fields: dict[str, Any]) -> Artifact:
    # What model_construct does, minus its per-call bookkeeping: the values come
    # from the ledger's own columns, already of the declared types.
    art = _new(Artifact)
    _set(art, "__dict__", fields)
    # One set shared by all (it is half an Artifact's memory): pydantic changes it only on
    # attribute assignment, which the frozen model refuses, and model_copy copies it first.
    _set(art, "__pydantic_fields_set__", _ALL_FIELDS_SET)
    _set(art, "__pydantic_extra__", None)
    _set(art, "__pydantic_private__", None)
    return art


def _build_checked(fields: dict[str, Any]) -> Artifact:
    return Artifact.model_construct(**fields)


def _pick_builder() -> Callable[[dict[str, Any]], Artifact]:
    sample = {
        "artifact_id": "0" * 32, "uri": "file:///x#0", "kind": "k", "sha256": "0" * 64, "bytes": 1, "mime": "m",
        "labels": {"a": 1}, "metrics": {"m": 1.0}, "pinned": False, "run_id": "r", "graph_id": "g", "node_id": "n",
        "project_id": None, "created_at": utc_from_us(0), "seq": 1, "suggested_uri": None, "aliases": ["all/x"],
    }
    try:
        fast, slow = _build_fast(dict(sample)), _build_checked(dict(sample))
        if fast == slow and fast.model_dump() == slow.model_dump() and repr(fast) == repr(slow):
            return _build_fast
    except Exception:  # a pydantic whose internals differ: use the public constructor
        pass
    return _build_checked


build_artifact = _pick_builder()
"""Build an Artifact from trusted field values (4x cheaper than model_construct where safe)."""


class RunSummary(BaseModel):
    """One run as ``runs()`` reports it: its id, how many artifacts it has, and when the first and last
    were recorded."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    artifacts: int
    first_at: datetime
    last_at: datetime
