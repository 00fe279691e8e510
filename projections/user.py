"""User projections: the contract a user's fold meets, and the pure machinery that runs one.

A projection is any object with

- ``name``: a non-empty str of letters, digits, ``.``, ``_`` and ``-`` (it names checkpoint files);
- ``version``: an int >= 1, bumped whenever ``apply`` or the state's shape changes (a new version
  rebuilds the state from the log instead of trusting an old checkpoint);
- ``initial() -> state``: a fresh empty state on every call;
- ``apply(state, event) -> state``: the new state after one ``LedgerEvent`` (seq, time, hash,
  prev_hash and the typed, upcast ``event``, exactly as ``Ledger.events()`` yields it);

and optionally

- ``apply_batch(state, events) -> state``: the same as applying ``events`` one by one, faster;
- ``encode(state) -> bytes`` and ``decode(bytes) -> state``: both or neither; with them a registered
  projection is checkpointed, without them it is rebuilt from the log on every open.

``apply`` is a pure function of its arguments: no I/O, no clock, no randomness, no state kept on
the projection object. It may update ``state`` in place and return it: the runner owns every state
it folds and never hands one state to two folds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from ..facade.audit import LedgerEvent

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@runtime_checkable
class Projection(Protocol):
    """The contract of a user projection (see the module docstring for the rules)."""

    name: str
    version: int

    def initial(self) -> Any:
        """A fresh, empty state."""

    def apply(self, state: Any, event: "LedgerEvent") -> Any:
        """The state after ``event``."""


class ProjectionError(RuntimeError):
    """A projection's ``apply`` (or codec) raised; names the projection and the seq of the event."""

    def __init__(self, name: str, version: int, seq: int, cause: BaseException):
        self.name = name
        self.version = version
        self.seq = seq
        self.cause = cause
        where = f"at seq {seq}" if seq else "before any event"
        super().__init__(f"projection {name!r} (version {version}) raised {where}: {cause!r}; it is stopped "
                         "there, while the ledger and other projections go on")


class ProjectionWarning(UserWarning):
    """A projection failed (its handle raises ``ProjectionError``) or its checkpoint was not used."""


@dataclass(frozen=True, slots=True)
class Spec:
    """A checked projection: the object and what it offers."""

    projection: Any
    name: str
    version: int
    batch: Callable[[Any, Sequence[Any]], Any] | None
    encode: Callable[[Any], bytes] | None
    decode: Callable[[bytes], Any] | None

    @property
    def key(self) -> tuple[str, int]:
        """(name, version): what identifies a projection's state and its checkpoint."""
        return (self.name, self.version)

    @property
    def checkpointable(self) -> bool:
        """Whether the projection has a codec, so its state can be checkpointed."""
        return self.encode is not None


def check(projection: Any) -> Spec:
    """Check that ``projection`` meets the contract (a class is instantiated without arguments)."""
    p = projection() if isinstance(projection, type) else projection
    what = f"projection {p!r}"
    name = getattr(p, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TypeError(f"{what} needs a name: a str of 1-100 letters, digits, '.', '_' or '-' starting with a "
                        f"letter or digit, got {name!r}")
    version = getattr(p, "version", None)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TypeError(f"projection {name!r} needs a version: an int >= 1, got {version!r}")
    for method in ("initial", "apply"):
        if not callable(getattr(p, method, None)):
            raise TypeError(f"projection {name!r} has no {method}() method")
    enc, dec = getattr(p, "encode", None), getattr(p, "decode", None)
    if (enc is None) != (dec is None) or (enc is not None and not (callable(enc) and callable(dec))):
        raise TypeError(f"projection {name!r} must define both encode(state) -> bytes and decode(bytes) -> state, "
                        "or neither")
    batch = getattr(p, "apply_batch", None)
    if batch is not None and not callable(batch):
        raise TypeError(f"projection {name!r}: apply_batch must be a method, got {batch!r}")
    return Spec(p, name, version, batch, enc, dec)


def fold(spec: Spec, events: Iterable["LedgerEvent"], state: Any = None, *, fresh: bool = True) -> Any:
    """Fold ``events`` into ``state`` (``initial()`` if ``fresh``); raises ``ProjectionError`` naming the seq."""
    p = spec.projection
    if fresh:
        try:
            state = p.initial()
        except Exception as exc:
            raise ProjectionError(spec.name, spec.version, 0, exc) from exc
    seq = 0
    try:
        for ev in events:
            seq = ev.seq
            state = p.apply(state, ev)
    except Exception as exc:
        raise ProjectionError(spec.name, spec.version, seq, exc) from exc
    return state


def fold_batch(spec: Spec, state: Any, events: Sequence["LedgerEvent"]) -> Any:
    """Apply a batch with ``apply_batch`` when offered, else one by one; raises ``ProjectionError``."""
    if spec.batch is None:
        return fold(spec, events, state, fresh=False)
    try:
        return spec.batch(state, events)
    except Exception as exc:
        # Which event of the batch broke it is unknown: name the batch's first seq.
        raise ProjectionError(spec.name, spec.version, events[0].seq if events else 0, exc) from exc


def encode_state(spec: Spec, state: Any, seq: int) -> bytes:
    """The projection's encoding of ``state``, checked to be bytes."""
    assert spec.encode is not None
    try:
        data = spec.encode(state)
    except Exception as exc:
        raise ProjectionError(spec.name, spec.version, seq, exc) from exc
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProjectionError(spec.name, spec.version, seq,
                              TypeError(f"encode() returned {type(data).__name__}, not bytes"))
    return bytes(data)


def decode_state(spec: Spec, data: bytes, seq: int) -> Any:
    """The projection's decoding of a checkpointed state."""
    assert spec.decode is not None
    try:
        return spec.decode(data)
    except Exception as exc:
        raise ProjectionError(spec.name, spec.version, seq, exc) from exc
