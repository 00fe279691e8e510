"""The testing kit for projections: hypothesis strategies, law checks and a stateful base class.

Install with the ``testing`` extra (``pip install 'artifact-ledger[testing]'``), which brings hypothesis.

- ``events()``, ``histories()``, ``ledgers()``: strategies that shrink to small histories; also
  registered with hypothesis (``st.from_type(LedgerEvent)``, ``ArtifactRecorded``, ``PinChanged`` and
  every lifecycle event type).
- ``check_projection(P)``: runs the laws every projection must obey as hypothesis tests, and raises
  ``LawViolation`` naming the law with the minimal history that breaks it.
- ``ProjectionMachine``: a ``RuleBasedStateMachine`` driving a real ledger at random (save, ingest,
  writer, pin, alias, unalias, relate, retire, purge, gc, checkpoint, close and reopen); subclass it
  with your projection and a naive model.
"""

from __future__ import annotations

import hashlib
import operator
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import msgspec

from .facade import content
from .facade.audit import LedgerEvent
from .facade.ledger import Ledger, open_ledger
from .facade.model import utc_from_us
from .ledger.events import (RELATIONS, AliasRemoved, AliasSet, ArtifactRecorded, Event, GcPlanned,
                            GcSwept, PinChanged, Purged, Related, Retired, encode_event)
from .ledger.framing import encode_record
from .projections.user import Spec, check, fold, fold_batch


def _hypothesis_setup_hook() -> None:
    """Called by hypothesis (entry point ``hypothesis``): lets ``st.from_type`` build the event types."""
    # Defined before hypothesis is imported: importing this module first imports hypothesis, which
    # calls this hook on the half-imported module; the module then registers them itself, at its end.
    register = globals().get("_register_strategies")
    if register is not None:
        register()


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule  # noqa: E402

__all__ = [
    "BLOBS",
    "TREES",
    "GeneratedLedger",
    "LAWS",
    "LawViolation",
    "ProjectionMachine",
    "check_projection",
    "events",
    "histories",
    "ledgers",
    "write_history",
]

T = TypeVar("T")

# Small pools, so that histories share runs, projects, contents and metric values (ties).
RUNS = ("r1", "r2", "r3")
GRAPHS = ("g1", "g2")
NODES = ("n1", "n2")
PROJECTS = (None, "p1", "p2")
KINDS = ("model", "text", "image")
ORIGINS = ("save", "ingest", "writer")
LABEL_KEYS = ("a", "task", "seed")
METRIC_KEYS = ("loss", "acc", "f1")
#: The contents generated artifacts have (a history's sha256 and size come from these).
BLOBS = (b"", b"a", b"same bytes", b"\x00\xff\xfe", b"x" * 100, b"hello\n")
_SHA = {hashlib.sha256(b).hexdigest(): b for b in BLOBS}
_BLOB_OF = [(hashlib.sha256(b).hexdigest(), len(b)) for b in BLOBS]


def _tree(files: dict[str, bytes], dirs: list[str]) -> bytes:
    entries = [{"path": path, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
               for path, data in sorted(files.items())]
    return content.encode_manifest(entries, sorted(dirs))


#: The trees generated directory artifacts (origin "ingest_dir") have: (files by path, subdirectories),
#: made of ``BLOBS``; an artifact's sha256 is its manifest's and its size the files' total.
TREES: tuple[tuple[dict[str, bytes], list[str]], ...] = (({}, []), ({"a.txt": b"a", "sub/b": b"hello\n"}, ["sub"]),
         ({"copy": b"same bytes", "same": b"same bytes", "empty": b""}, ["nothing-here"]))
_TREE_OF = [(hashlib.sha256(_tree(f, d)).hexdigest(), sum(map(len, f.values()))) for f, d in TREES]
_SHA.update({hashlib.sha256(_tree(f, d)).hexdigest(): _tree(f, d) for f, d in TREES})
_MEMBERS = {hashlib.sha256(_tree(f, d)).hexdigest(): sorted(set(f.values())) for f, d in TREES}
_EXTREMES = (0, 1, 1.0, -1, 0.5, -0.0, 2**53, -(2**63), 2**63 - 1, 1.7976931348623157e308,
             -1.7976931348623157e308, 5e-324)
_T0 = 1_750_000_000_000_000  # microseconds: the first event's commit time in generated histories

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4))
label_values = _scalars | st.lists(_scalars, max_size=3)
label_maps = st.dictionaries(st.sampled_from(LABEL_KEYS), label_values, max_size=3)
metric_values = (st.sampled_from(_EXTREMES) | st.integers(-3, 3)
                 | st.floats(allow_nan=False, allow_infinity=False))
metric_maps = st.dictionaries(st.sampled_from(METRIC_KEYS), metric_values, max_size=3)
# The stateful machine runs few steps: a narrow pool most of the time, so that ties are common.
_tie_values = st.sampled_from((0, 1, 1.0, -1, 0.5))
machine_metric_maps = st.dictionaries(st.sampled_from(METRIC_KEYS[:2]), _tie_values | _tie_values | metric_values,
                                      max_size=2)


@st.composite
def _recorded(draw: st.DrawFn, artifact_id: str | None = None) -> ArtifactRecorded:
    # One draw picks a file's content or a tree (the last few choices): no extra draw for the kind of
    # artifact, so histories shrink as they did before trees were added.
    sha, size = draw(st.sampled_from(_BLOB_OF + _TREE_OF))
    directory = (sha, size) in _TREE_OF
    origin = draw(st.sampled_from(ORIGINS))
    origin = "ingest_dir" if directory else origin
    aid = artifact_id if artifact_id is not None else draw(st.text("0123456789abcdef", min_size=32, max_size=32))
    return ArtifactRecorded(
        artifact_id=aid, origin=origin, kind=draw(st.sampled_from(KINDS)), sha256=sha, size=size,
        mime=content.DIR_MIME if directory else "application/octet-stream", labels=draw(label_maps),
        metrics=draw(metric_maps), pinned=draw(st.booleans()), run_id=draw(st.sampled_from(RUNS)),
        graph_id=draw(st.sampled_from(GRAPHS)), node_id=draw(st.sampled_from(NODES)),
        project_id=draw(st.sampled_from(PROJECTS)))


def _pins() -> st.SearchStrategy[PinChanged]:
    return st.builds(PinChanged, artifact_id=st.text("0123456789abcdef", min_size=32, max_size=32),
                     pinned=st.booleans())


def logged(events: Sequence[Event], *, first_seq: int = 1, prev_hash: bytes = bytes(32)) -> list[LedgerEvent]:
    """Typed events as the ledger logs them: seqs from ``first_seq``, rising times, a real hash chain."""
    out = []
    for i, ev in enumerate(events):
        seq = first_seq + i
        ts = _T0 + seq * 1000
        _, h = encode_record(seq, ts, prev_hash, encode_event(ev))
        out.append(LedgerEvent(seq, utc_from_us(ts), h.hex(), prev_hash.hex(), ev))
        prev_hash = h
    return out


# Lifecycle pools: three aliases in two namespaces, so that aliases collide, move and get removed.
ALIAS_KEYS = (("all", "best"), ("all", "prod"), ("p1", "best"))
ALIAS_NAMESPACES = ("all", "p1")
ALIAS_NAMES = ("best", "prod")
REASONS = ("obsolete", "wrong data")
_RELATIONS = tuple(sorted(RELATIONS))
_which = st.integers(0, 50)  # an index into the artifacts recorded so far, newest first (modulo their number)

# Lifecycle steps of a history, as tagged tuples: turned into valid events by _Lifecycle.event().
_alias_steps = st.tuples(st.just("alias"), _which, st.sampled_from(ALIAS_KEYS), st.booleans(), st.booleans())
_unalias_steps = st.tuples(st.just("unalias"), st.sampled_from(ALIAS_KEYS), st.booleans())
_relate_steps = st.tuples(st.just("relate"), _which, _which, st.sampled_from(_RELATIONS))
_retire_steps = st.tuples(st.just("retire"), _which, st.sampled_from(REASONS), st.booleans())
_purge_steps = st.tuples(st.just("purge"), _which, st.sampled_from(REASONS), st.booleans())
_gc_steps = st.tuples(st.just("gc"), st.lists(_which, max_size=3), st.booleans())
_lifecycle_steps = st.one_of(_alias_steps, _unalias_steps, _relate_steps, _retire_steps, _purge_steps, _gc_steps)


class _Lifecycle:
    """The facade's rules, tracked while a history is generated, so that every lifecycle event applies."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.pinned: dict[str, bool] = {}
        self.aliases: dict[tuple[str, str], tuple[str, bool]] = {}  # key -> (target, protected)
        self.retired: set[str] = set()
        self.purged: set[str] = set()
        self.parents: dict[str, list[tuple[str, str]]] = {}
        self.open_plans: list[str] = []
        self.plans = 0

    def record(self, ev: ArtifactRecorded) -> None:
        self.ids.append(ev.artifact_id)
        self.pinned[ev.artifact_id] = ev.pinned

    def _pick(self, which: int) -> str:
        # Counted from the newest, so that the simplest steps name the artifact just recorded.
        return self.ids[-1 - which % len(self.ids)]

    def _held(self, aid: str) -> bool:
        """Pinned or aliased: retiring or purging it needs force."""
        return self.pinned[aid] or any(t == aid for t, _ in self.aliases.values())

    def _ancestor(self, start: str, target: str) -> bool:
        stack, seen = [start], {start}
        while stack:
            for parent, _ in self.parents.get(stack.pop(), ()):
                if parent == target:
                    return True
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return False

    def event(self, step: tuple[Any, ...]) -> list[Event]:
        """The events of one lifecycle step (none if it cannot apply now); ``self.ids`` is not empty."""
        tag = step[0]
        if tag == "pin":
            aid = self._pick(step[1])
            self.pinned[aid] = step[2]
            return [PinChanged(artifact_id=aid, pinned=step[2])]
        if tag == "alias":
            _, which, (ns, name), protected, force = step
            aid = self._pick(which)
            if aid in self.retired:
                return []  # a retired artifact cannot be aliased
            now = self.aliases.get((ns, name))
            # A protected alias moves, or loses its protection, only with force.
            force = force or (now is not None and now[1] and (now[0] != aid or not protected))
            self.aliases[(ns, name)] = (aid, protected)
            return [AliasSet(namespace=ns, name=name, artifact_id=aid, protected=protected, force=force)]
        if tag == "unalias":
            _, (ns, name), force = step
            now = self.aliases.pop((ns, name), None)
            if now is None:
                return []
            return [AliasRemoved(namespace=ns, name=name, force=force or now[1])]
        if tag == "relate":
            _, a, b, relation = step
            child, parent = self._pick(a), self._pick(a + 1 + b)  # by default the two newest
            if (child == parent or (parent, relation) in self.parents.get(child, ())
                    or self._ancestor(parent, child)):  # no self-edges, repeats or cycles
                return []
            self.parents.setdefault(child, []).append((parent, relation))
            return [Related(child=child, parent=parent, relation=relation)]
        if tag in ("retire", "purge"):
            _, which, reason, force = step
            aid = self._pick(which)
            if aid in (self.retired if tag == "retire" else self.purged):
                return []
            force = force or self._held(aid)
            self.retired.add(aid)
            if tag == "retire":
                return [Retired(artifact_id=aid, reason=reason, force=force)]
            self.purged.add(aid)
            return [Purged(artifact_id=aid, reason=reason, force=force)]
        assert tag == "gc", step
        _, picks, swept = step
        # A policy never selects pinned, aliased or purged artifacts.
        purge = list(dict.fromkeys(a for a in map(self._pick, picks) if a not in self.purged and not self._held(a)))
        self.purged.update(purge)
        self.retired.update(purge)
        self.plans += 1
        plan_id = f"{self.plans:032x}"
        out: list[Event] = [GcPlanned(plan_id=plan_id, purge=purge)]
        if swept:  # else the gc died before its result: the next sweep finishes it
            out.append(GcSwept(plan_id=plan_id, resumes=self.open_plans))
            self.open_plans = []
        else:
            self.open_plans.append(plan_id)
        return out


def _lifecycle_strategies() -> dict[type, st.SearchStrategy[Any]]:
    """One strategy per lifecycle event type (for ``events()`` and ``st.from_type``): artifacts named by id."""
    aid = st.integers(1, 50).map(lambda i: f"{i:032x}")
    reason = st.sampled_from(REASONS)
    ns, name = st.sampled_from(ALIAS_NAMESPACES), st.sampled_from(ALIAS_NAMES)
    return {
        AliasSet: st.builds(AliasSet, namespace=ns, name=name, artifact_id=aid, protected=st.booleans(),
                            force=st.booleans()),
        AliasRemoved: st.builds(AliasRemoved, namespace=ns, name=name, force=st.booleans()),
        Related: st.builds(lambda a, b, r: Related(child=f"{a + b:032x}", parent=f"{a:032x}", relation=r),
                           st.integers(1, 50), st.integers(1, 50), st.sampled_from(_RELATIONS)),
        Retired: st.builds(Retired, artifact_id=aid, reason=reason, force=st.booleans()),
        Purged: st.builds(Purged, artifact_id=aid, reason=reason, force=st.booleans()),
        GcPlanned: st.builds(GcPlanned, plan_id=aid, purge=st.lists(aid, max_size=3, unique=True)),
        GcSwept: st.builds(GcSwept, plan_id=aid, blobs=st.integers(0, 5), bytes=st.integers(0, 500)),
    }


@st.composite
def events(draw: st.DrawFn) -> LedgerEvent:
    """One logged event (a recording, a pin or a lifecycle event) at some seq, as ``Ledger.events()`` yields it."""
    ev = draw(st.one_of(_recorded(), _pins(), *_lifecycle_strategies().values()))
    return logged([ev], first_seq=draw(st.integers(1, 10**6)))[0]


@st.composite
def histories(draw: st.DrawFn, min_size: int = 0, max_size: int = 30) -> list[LedgerEvent]:
    """A valid logged history: seqs 1..n, recordings over several runs, graphs, nodes and projects, pins
    and lifecycle events (aliases, lineage, retire, purge, gc) only of artifacts recorded earlier, each
    one the facade would accept (no lineage cycles, protected aliases moved only with force, ...).
    Shrinks towards short histories of plain saves."""
    # Half recordings (as before lifecycle events existed), a quarter pins, a quarter lifecycle steps.
    steps: list[Any] = draw(st.lists(st.one_of(_recorded(artifact_id=""),
                                               st.tuples(st.just("pin"), _which, st.booleans()) | _lifecycle_steps),
                                     min_size=min_size, max_size=max_size))
    evs: list[Event] = []
    life = _Lifecycle()

    def record(ev: ArtifactRecorded) -> None:
        ev = msgspec.structs.replace(ev, artifact_id=f"{len(life.ids) + 1:032x}")
        life.record(ev)
        evs.append(ev)

    for step in steps:
        if isinstance(step, ArtifactRecorded):
            record(step)
        elif life.ids:
            evs.extend(life.event(step))
        else:  # nothing recorded yet to name: a recording instead, so the size stays as drawn
            record(draw(_recorded(artifact_id="")))
    while len(evs) < min_size:  # lifecycle steps that could not apply made it short
        record(draw(_recorded(artifact_id="")))
    return logged(evs)


# ------------------------------------------------------------ real ledgers
def _blocking(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run an async function to completion from sync code, even inside a running event loop."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append((True, anyio.run(fn, *args)))
        except BaseException as exc:  # handed to the caller's thread
            out.append((False, exc))

    t = threading.Thread(target=run, name="artifact-ledger testing")
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


async def write_history(ledger: Ledger, history: Sequence[LedgerEvent], *, tasks: int = 1) -> None:
    """Append the events of ``history`` to ``ledger`` (contents of ``BLOBS`` and ``TREES`` are stored first), from
    ``tasks`` concurrent tasks; each artifact's recordings and pins stay in one task, in order, and each
    lifecycle event is appended alone, after every event before it, so it applies as it did when generated."""
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise ValueError(f"tasks must be an int >= 1, got {tasks!r}")

    async def append(ev: Event) -> None:
        if isinstance(ev, ArtifactRecorded) and ev.sha256 in _SHA:
            for data in (*_MEMBERS.get(ev.sha256, ()), _SHA[ev.sha256]):  # a tree's files before its manifest
                await anyio.to_thread.run_sync(ledger.store.put_bytes, data)
        await ledger._append(ev)

    async def lane(evs: list[Event]) -> None:
        for ev in evs:
            await append(ev)

    async def concurrently(evs: list[ArtifactRecorded | PinChanged]) -> None:
        lanes: list[list[Event]] = [[] for _ in range(tasks)]
        for ev in evs:
            aid = ev.artifact_id
            lanes[int(aid, 16) % tasks if _is_hex(aid) else 0].append(ev)
        async with anyio.create_task_group() as tg:
            for mine in lanes:
                tg.start_soon(lane, mine)

    # A lifecycle event's rules depend on other artifacts and on aliases (a retirement without force
    # needs its artifact unaliased and unpinned): it is a barrier between concurrent segments.
    segment: list[ArtifactRecorded | PinChanged] = []
    for e in history:
        if isinstance(e.event, (ArtifactRecorded, PinChanged)):
            segment.append(e.event)
        else:
            await concurrently(segment)
            segment = []
            await append(e.event)
    await concurrently(segment)


def _is_hex(s: str) -> bool:
    try:
        int(s, 16)
    except ValueError:
        return False
    return True


@dataclass
class GeneratedLedger:
    """A closed temporary ledger holding a generated history; removed when garbage-collected."""

    path: Path
    generated: list[LedgerEvent]  # the history as drawn
    history: list[LedgerEvent]  # the same events as committed (the ledger's own seqs, times and hashes)
    _tmp: tempfile.TemporaryDirectory[str] = field(repr=False)

    def open(self, **options: Any) -> Any:
        """``open_ledger`` on it (fsync off unless given): await it or use ``async with``."""
        return open_ledger(self.path, **{"fsync": False, **options})


async def _build(history: list[LedgerEvent], tasks: int) -> GeneratedLedger:
    tmp = tempfile.TemporaryDirectory(prefix="artifact-ledger-test-")
    path = Path(tmp.name) / "ledger"
    async with open_ledger(path, fsync=False) as led:
        await write_history(led, history, tasks=tasks)
        committed = [e async for e in led.events()]
    return GeneratedLedger(path, history, committed, tmp)


def ledgers(min_size: int = 0, max_size: int = 30, tasks: int = 1) -> st.SearchStrategy[GeneratedLedger]:
    """A temporary ledger (closed, on disk) holding a generated history, written from ``tasks`` tasks."""
    return histories(min_size=min_size, max_size=max_size).map(lambda h: _blocking(_build, h, tasks))


# ------------------------------------------------------------ law checks
LAWS = ("determinism", "batches", "codec", "past", "live")


class LawViolation(AssertionError):
    """A projection breaks a law; the message names it and shows the (minimal) history."""

    def __init__(self, law: str, name: str, detail: str, history: Sequence[LedgerEvent]):
        self.law = law
        self.projection = name
        self.history = list(history)
        lines = "\n".join(f"  {_describe(e)}" for e in history) or "  (no events)"
        super().__init__(f"projection {name!r} breaks the {law} law: {detail}\nhistory ({len(history)} events):\n"
                         f"{lines}")


def _describe(e: LedgerEvent) -> str:
    ev = msgspec.to_builtins(e.event)
    ev.pop("v", None)
    ev.pop("type", None)
    return f"seq {e.seq} {e.type} {ev}"


def _settings(max_examples: int | None, base: settings | None) -> settings:
    base = base or settings()  # the loaded profile (e.g. the project's bounded ``ci`` one)
    return settings(base, max_examples=max_examples or base.max_examples, deadline=None, report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_projection(projection: Any, *, equal: Callable[[Any, Any], bool] | None = None,
                     laws: Sequence[str] = LAWS, max_examples: int | None = None,
                     hypothesis_settings: settings | None = None) -> None:
    """Check the laws of ``projection`` on generated histories; raises ``LawViolation`` for the first broken one.

    ``equal(a, b)`` compares states (default ``==``); ``laws`` picks from ``LAWS``; the codec law needs
    ``encode``/``decode`` and is skipped without them. ``hypothesis_settings`` replaces the loaded profile.
    """
    spec = check(projection)
    eq = equal or operator.eq
    unknown = [law for law in laws if law not in LAWS]
    if unknown or isinstance(laws, str):
        raise ValueError(f"unknown laws {unknown or laws!r}; choose from {LAWS}")
    cfg = _settings(max_examples, hypothesis_settings)
    for law in laws:
        if law == "codec" and not spec.checkpointable:
            continue
        _LAW_TESTS[law](spec, eq, cfg)


def _violated(law: str, spec: Spec, detail: str, history: Sequence[LedgerEvent]) -> LawViolation:
    return LawViolation(law, spec.name, detail, history)


def _law_determinism(spec: Spec, eq: Callable[[Any, Any], bool], cfg: settings) -> None:
    @cfg
    @given(histories())
    def determinism(history: list[LedgerEvent]) -> None:
        a, b = fold(spec, history), fold(spec, history)
        if not eq(a, b):
            raise _violated("determinism", spec, f"two folds of the same history differ:\n  {a!r}\n  {b!r}", history)

    determinism()


def _law_batches(spec: Spec, eq: Callable[[Any, Any], bool], cfg: settings) -> None:
    @cfg
    @given(histories(), st.data())
    def batches(history: list[LedgerEvent], data: st.DataObject) -> None:
        cuts = sorted(data.draw(st.sets(st.integers(0, len(history)), max_size=4), label="batch cuts"))
        one = fold(spec, history)
        state = fold(spec, ())
        bounds = [0, *cuts, len(history)]
        for lo, hi in zip(bounds, bounds[1:]):
            if hi > lo:
                state = fold_batch(spec, state, history[lo:hi])
        if not eq(one, state):
            raise _violated("batches", spec, f"folding in batches cut at {cuts} gives {state!r}, one event at a "
                            f"time gives {one!r}", history)

    batches()


def _law_codec(spec: Spec, eq: Callable[[Any, Any], bool], cfg: settings) -> None:
    assert spec.encode is not None and spec.decode is not None
    enc, dec = spec.encode, spec.decode

    @cfg
    @given(histories(), st.data())
    def codec(history: list[LedgerEvent], data: st.DataObject) -> None:
        # Drawn as the tail's length, so that shrinking the history keeps the checkpoint at its end.
        k = len(history) - data.draw(st.integers(0, len(history)), label="events after the checkpoint")
        whole = fold(spec, history)
        blob = enc(fold(spec, history[:k]))
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise _violated("codec", spec, f"encode() returned {type(blob).__name__}, not bytes", history)
        resumed = fold(spec, history[k:], dec(bytes(blob)), fresh=False)
        if not eq(whole, resumed):
            raise _violated("codec", spec, f"encode/decode after {k} events then the tail gives {resumed!r}, a full "
                            f"fold gives {whole!r}", history)

    codec()


def _law_past(spec: Spec, eq: Callable[[Any, Any], bool], cfg: settings) -> None:
    async def run(history: list[LedgerEvent], n: int, span: tuple[int, int]) -> None:
        gen = await _build(history, tasks=1)
        async with gen.open() as led:
            committed = gen.history
            view = await led.as_of(seq=n)
            past = (await view.project(spec.projection)).state
            want = fold(spec, committed[:n])
            if not eq(past, want):
                raise _violated("past", spec, f"as_of(seq={n}).project() is {past!r}, folding the first {n} events "
                                f"gives {want!r}", committed)
            lo, hi = span
            got = await led.fold(spec.projection, since=lo, until=hi)
            want = fold(spec, committed[lo - 1:hi])
            if not eq(got, want):
                raise _violated("past", spec, f"fold(since={lo}, until={hi}) is {got!r}, folding those events "
                                f"gives {want!r}", committed)

    @cfg
    @given(histories(min_size=1), st.data())
    def past(history: list[LedgerEvent], data: st.DataObject) -> None:
        n = data.draw(st.integers(1, len(history)), label="as_of seq")
        lo = data.draw(st.integers(1, len(history)), label="since")
        hi = data.draw(st.integers(lo, len(history)), label="until")
        _blocking(run, history, n, (lo, hi))

    past()


def _law_live(spec: Spec, eq: Callable[[Any, Any], bool], cfg: settings) -> None:
    async def run(history: list[LedgerEvent], k: int, tasks: int) -> None:
        with tempfile.TemporaryDirectory(prefix="artifact-ledger-test-") as tmp:
            path = Path(tmp) / "ledger"
            async with open_ledger(path, fsync=False) as led:
                await write_history(led, history[:k], tasks=tasks)
                handle = await led.project(spec.projection)
                await write_history(led, history[k:], tasks=tasks)
                committed = [e async for e in led.events()]
                want = fold(spec, committed)
                if not eq(handle.state, want):
                    raise _violated("live", spec, f"the live state after appends from {tasks} tasks is "
                                    f"{handle.state!r}, a fresh fold gives {want!r}", committed)
                await led.register(spec.projection)
            # Reopened: the registered projection comes back from its checkpoint.
            async with open_ledger(path, fsync=False, projections=[spec.projection]) as led:
                got = (await led.project(spec.projection)).state
                if not eq(got, want):
                    raise _violated("live", spec, f"registered and reopened from its checkpoint, the state is "
                                    f"{got!r}, a fresh fold gives {want!r}", committed)

    @cfg
    @given(histories(), st.data())
    def live(history: list[LedgerEvent], data: st.DataObject) -> None:
        k = data.draw(st.integers(0, len(history)), label="events before project()")
        tasks = data.draw(st.integers(1, 4), label="appending tasks")
        _blocking(run, history, k, tasks)

    live()


_LAW_TESTS: dict[str, Callable[[Spec, Callable[[Any, Any], bool], settings], None]] = {
    "determinism": _law_determinism, "batches": _law_batches, "codec": _law_codec,
    "past": _law_past, "live": _law_live,
}


# ------------------------------------------------------------ stateful base class
CONTEXTS = [(r, g, n, p) for r, p in zip(RUNS, PROJECTS) for g in GRAPHS for n in NODES]


class ProjectionMachine(RuleBasedStateMachine):
    """Drives a real ledger at random (lifecycle calls too) and compares ``projection``'s live state with
    ``expected(events)``; a lifecycle call the ledger refuses must append nothing.

    Subclass it: set ``projection`` and define ``expected(self, events)``, your naive model computed
    from every committed ``LedgerEvent``; override ``same(actual, expected)`` to compare otherwise.
    Run it with ``TestX = MyMachine.TestCase``.
    """

    projection: Any = None
    artifacts = Bundle("artifacts")

    def __init__(self) -> None:
        super().__init__()
        if self.projection is None:
            raise TypeError(f"{type(self).__name__} must set the class attribute projection")
        self._spec = check(self.projection)
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self._tmp = tempfile.mkdtemp(prefix="artifact-ledger-machine-")
        self.root = Path(self._tmp) / "ledger"
        self.ledger: Ledger = self.portal.call(self._open)
        self.history: list[LedgerEvent] = []
        self._n = 0

    def expected(self, events: list[LedgerEvent]) -> Any:
        """The naive model: what the projection's state must be after ``events``."""
        raise NotImplementedError(f"{type(self).__name__} must define expected(self, events)")

    def same(self, actual: Any, expected: Any) -> bool:
        """Whether the projection's state matches the model (default ``==``)."""
        return bool(actual == expected)

    async def _open(self) -> Ledger:
        return await open_ledger(self.root, fsync=False, projections=[self.projection])

    def _facade(self, ctx: tuple[str, str, str, str | None]) -> Any:
        r, g, n, p = ctx
        return self.ledger.artifacts(run_id=r, graph_id=g, node_id=n, project_id=p)

    def _content(self, blob: bytes) -> Path:
        self._n += 1
        src = Path(self._tmp) / f"src{self._n}"
        src.write_bytes(blob)
        return src

    @rule(target=artifacts, ctx=st.sampled_from(CONTEXTS), kind=st.sampled_from(KINDS),
          blob=st.sampled_from(BLOBS), labels=label_maps, metrics=machine_metric_maps, pin=st.booleans())
    def save(self, ctx: Any, kind: str, blob: bytes, labels: dict[str, Any], metrics: dict[str, Any],
             pin: bool) -> str:
        """Save a file."""
        src = self._content(blob)
        art = self.portal.call(lambda: self._facade(ctx).save(str(src), kind=kind, labels=labels, metrics=metrics,
                                                             pin=pin))
        return str(art.artifact_id)

    @rule(target=artifacts, ctx=st.sampled_from(CONTEXTS), kind=st.sampled_from(KINDS),
          blob=st.sampled_from(BLOBS), metrics=machine_metric_maps)
    def ingest(self, ctx: Any, kind: str, blob: bytes, metrics: dict[str, Any]) -> str:
        """Stage a file and ingest it."""
        arts = self._facade(ctx)

        async def go() -> str:
            staged = await arts.stage(".bin")
            Path(staged).write_bytes(blob)
            return str((await arts.ingest(staged, kind=kind, metrics=metrics)).artifact_id)

        return self.portal.call(go)

    @rule(target=artifacts, ctx=st.sampled_from(CONTEXTS), kind=st.sampled_from(KINDS),
          blob=st.sampled_from(BLOBS), labels=label_maps)
    def writer(self, ctx: Any, kind: str, blob: bytes, labels: dict[str, Any]) -> str:
        """Write an artifact through the streaming writer."""
        arts = self._facade(ctx)

        async def go() -> str:
            async with arts.writer(kind=kind, labels=labels) as f:
                f.write(blob)
            return str(arts.last_artifact.artifact_id)

        return self.portal.call(go)

    @rule(artifact=artifacts, pinned=st.booleans())
    def pin(self, artifact: str, pinned: bool) -> None:
        """Pin or unpin a recorded artifact."""
        self.portal.call(lambda: self._facade(CONTEXTS[0]).pin(artifact, pinned))

    def _maybe_refused(self, what: str, call: Callable[[], Awaitable[Any]]) -> None:
        """Run a lifecycle call; a refusal (ValueError, KeyError: a rule does not hold) must append nothing."""
        async def go() -> None:
            before = (await self.ledger._refresh()).head_seq
            try:
                await call()
            except (ValueError, KeyError) as exc:
                after = (await self.ledger._refresh()).head_seq
                assert after == before, f"{what} was refused ({exc}) but appended events {before + 1}..{after}"

        self.portal.call(go)

    @rule(artifact=artifacts, key=st.sampled_from(ALIAS_KEYS), protected=st.booleans(), force=st.booleans())
    def alias(self, artifact: str, key: tuple[str, str], protected: bool, force: bool) -> None:
        """Point an alias at an artifact (refused for a retired one, or a protected alias without force)."""
        self._maybe_refused("alias", lambda: self._facade(CONTEXTS[0]).alias(
            artifact, f"{key[0]}/{key[1]}", protected=protected, force=force))

    @rule(key=st.sampled_from(ALIAS_KEYS), force=st.booleans())
    def unalias(self, key: tuple[str, str], force: bool) -> None:
        """Remove an alias (refused if it points nowhere, or is protected and not forced)."""
        self._maybe_refused("unalias", lambda: self._facade(CONTEXTS[0]).unalias(f"{key[0]}/{key[1]}", force=force))

    @rule(child=artifacts, parent=artifacts, relation=st.sampled_from(_RELATIONS))
    def relate(self, child: str, parent: str, relation: str) -> None:
        """Record a lineage edge (refused for a self-edge, a repeat or a cycle)."""
        self._maybe_refused("relate", lambda: self._facade(CONTEXTS[0]).relate(child, parent, relation=relation))

    @rule(artifact=artifacts, reason=st.sampled_from(REASONS), force=st.booleans())
    def retire(self, artifact: str, reason: str, force: bool) -> None:
        """Retire an artifact (refused if retired already, or pinned or aliased and not forced)."""
        self._maybe_refused("retire", lambda: self._facade(CONTEXTS[0]).retire(artifact, reason, force=force))

    @rule(artifact=artifacts, reason=st.sampled_from(REASONS), force=st.booleans())
    def purge(self, artifact: str, reason: str, force: bool) -> None:
        """Purge an artifact (refused if purged already, or pinned or aliased and not forced)."""
        self._maybe_refused("purge", lambda: self._facade(CONTEXTS[0]).purge(artifact, reason, force=force))

    @rule()
    def gc(self) -> None:
        """Run a garbage collection (no policy): the blobs of purged artifacts go, a plan and a result are logged."""
        self.portal.call(lambda: self.ledger.gc(None, dry_run=False))

    @rule()
    def checkpoint(self) -> None:
        """Write a checkpoint now (the catalogue's and the registered projection's)."""
        self.portal.call(self.ledger.checkpoint)

    @rule()
    def close_and_reopen(self) -> None:
        """Close the ledger and open it again: the projection comes back from its checkpoint."""
        self.portal.call(self.ledger.aclose)
        self.ledger = self.portal.call(self._open)

    @invariant()
    def projection_matches_model(self) -> None:
        """The live state equals the naive model and a fresh fold of every committed event."""
        async def read() -> tuple[Any, list[LedgerEvent], Any]:
            handle = await self.ledger.project(self.projection)
            return handle.state, [e async for e in self.ledger.events()], await self.ledger.fold(self.projection)

        state, self.history, fresh = self.portal.call(read)
        want = self.expected(self.history)
        assert self.same(state, want), f"projection {self._spec.name!r}: live state {state!r}, model {want!r}"
        assert self.same(fresh, want), f"projection {self._spec.name!r}: fresh fold {fresh!r}, model {want!r}"

    def teardown(self) -> None:
        """Close the ledger and remove its directory."""
        try:
            if not self.ledger.closed:
                self.portal.call(self.ledger.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)
            shutil.rmtree(self._tmp, ignore_errors=True)


# ------------------------------------------------------------ hypothesis entry point
def _register_strategies() -> None:
    """Register the strategies with hypothesis for ``st.from_type`` (idempotent)."""
    st.register_type_strategy(LedgerEvent, events())
    st.register_type_strategy(ArtifactRecorded, _recorded())
    st.register_type_strategy(PinChanged, _pins())
    for cls, strategy in _lifecycle_strategies().items():
        st.register_type_strategy(cls, strategy)


_register_strategies()
