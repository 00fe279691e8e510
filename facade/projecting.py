"""Running user projections: live handles, past and one-shot folds, and projection checkpoints.

A ``Runner`` holds one projection's state and the seq it reflects. The ledger feeds every
runner the records it applies to its catalogue (its own commits and what it catches up from
other processes), so a live state is never behind the catalogue. A runner whose projection
raises is stopped and remembers the error; nothing else is.

Projection checkpoints (see FORMAT.md) are one file per registered projection, keyed by name
and version, beside the catalogue's; the log wins over them exactly as over the catalogue's.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from itertools import islice
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import anyio
import anyio.to_thread
from crc32c import crc32c

from ..ledger.checkpoints import CheckpointWarning
from ..ledger.events import decode_events
from ..ledger.base import EventLog
from ..ledger.framing import Record
from ..projections.user import ProjectionError, ProjectionWarning, Spec, check, decode_state, encode_state, fold
from ..projections.user import fold_batch
from ..store.durable import atomic_write

from .audit import LedgerEvent
from .model import utc_from_us

if TYPE_CHECKING:
    from .ledger import Ledger

PROJECTION_DIR = "projections"
PMAGIC = b"ALPROJ\x00\x01"
# projection version, seq, record hash at seq, payload length, payload crc32c, name length
_PHEAD = struct.Struct("<IQ32sQIH")
FOLD_BATCH = 2048


class Runner:
    """One projection's state, kept at the seq it reflects."""

    def __init__(self, spec: Spec, state: Any, seq: int, hash: str):
        self.spec = spec
        self.state = state
        self.seq = seq
        self.hash = hash  # hex hash of the record at ``seq`` ("" before any)
        self.error: ProjectionError | None = None
        self.registered = False
        self.ckpt_seq = 0  # seq of its newest checkpoint loaded or written

    def feed(self, events: list[LedgerEvent]) -> None:
        """Apply the events after ``seq``; a raising projection is stopped (and warned about), nothing else."""
        if self.error is not None:
            return
        new = [e for e in events if e.seq > self.seq]
        if not new:
            return
        try:
            self.state = fold_batch(self.spec, self.state, new)
        except ProjectionError as exc:
            self.error = exc
            warnings.warn(str(exc), ProjectionWarning, stacklevel=2)
            return
        self.seq, self.hash = new[-1].seq, new[-1].hash


def to_events(records: list[Record]) -> list[LedgerEvent]:
    """Records as the typed events ``Ledger.events()`` yields (decoded in one call when all are current)."""
    evs = decode_events([r.payload for r in records])
    if evs is None:
        return [LedgerEvent.from_record(r) for r in records]
    return [LedgerEvent(r.seq, utc_from_us(r.ts_us), r.hash.hex(), r.prev_hash.hex(), ev)
            for r, ev in zip(records, evs)]


def fold_log(runner: Runner, log: EventLog, until: int) -> None:
    """Catch ``runner`` up to seq ``until`` from the log (blocking; run in a worker thread)."""
    it = log.read_range(runner.seq + 1, until)
    while runner.error is None:
        batch = list(islice(it, FOLD_BATCH))
        if not batch:
            return
        runner.feed(to_events(batch))


def _event_iter(log: EventLog, since: int, until: int) -> Iterator[LedgerEvent]:
    for rec in log.read_range(since, until):
        yield LedgerEvent.from_record(rec)


# ------------------------------------------------------------ checkpoint files
def checkpoint_path(directory: str, name: str, version: int) -> str:
    """Where the checkpoint of projection ``name`` at ``version`` lives."""
    return os.path.join(directory, PROJECTION_DIR, f"{name}.v{version}.pckpt")


def write_checkpoint(directory: str, spec: Spec, seq: int, hash_hex: str, payload: bytes, *,
                     fsync: bool = True) -> str:
    """Write one projection checkpoint atomically and durably; drop the files of its other versions."""
    folder = os.path.join(directory, PROJECTION_DIR)
    os.makedirs(folder, exist_ok=True)
    name = spec.name.encode()
    head = _PHEAD.pack(spec.version, seq, bytes.fromhex(hash_hex), len(payload), crc32c(payload), len(name)) + name
    path = checkpoint_path(directory, spec.name, spec.version)
    atomic_write(path, PMAGIC + head + struct.pack("<I", crc32c(PMAGIC + head)) + payload, fsync=fsync)
    for other in os.listdir(folder):
        if other.startswith(f"{spec.name}.v") and other.endswith(".pckpt") and other != os.path.basename(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, other))
    return path


class ProjectionCheckpointError(ValueError):
    """A projection checkpoint file is damaged or is not the one asked for."""


def read_checkpoint(path: str, spec: Spec) -> tuple[int, bytes, bytes]:
    """Read and checksum a projection checkpoint; returns (seq, record hash, payload)."""
    with open(path, "rb") as f:
        data = f.read()
    fixed = len(PMAGIC) + _PHEAD.size
    if len(data) < fixed + 4 or data[: len(PMAGIC)] != PMAGIC:
        raise ProjectionCheckpointError("not a projection checkpoint (bad magic or too short)")
    version, seq, rhash, plen, pcrc, nlen = _PHEAD.unpack_from(data, len(PMAGIC))
    end = fixed + nlen
    if len(data) < end + 4:
        raise ProjectionCheckpointError("projection checkpoint header is cut short")
    (hcrc,) = struct.unpack_from("<I", data, end)
    if crc32c(data[:end]) != hcrc:
        raise ProjectionCheckpointError("projection checkpoint header checksum mismatch")
    name = data[fixed:end].decode("utf-8", "replace")
    if (name, version) != spec.key:
        raise ProjectionCheckpointError(f"it holds projection {name!r} version {version}")
    payload = data[end + 4:]
    if len(payload) != plen or crc32c(payload) != pcrc:
        raise ProjectionCheckpointError("projection checkpoint payload checksum mismatch")
    return seq, rhash, payload


def _warn(spec: Spec, path: str, reason: str) -> None:
    warnings.warn(f"ignoring the checkpoint of projection {spec.name!r} version {spec.version} at {path}: {reason}; "
                  "rebuilding it from the log", CheckpointWarning, stacklevel=4)


def load_runner(spec: Spec, directory: str, log: EventLog) -> Runner:
    """A runner at the projection's checkpoint if one matches the log, else at seq 0 (warning why)."""
    fresh = Runner(spec, None, 0, "")
    try:
        fresh.state = fold(spec, ())
    except ProjectionError as exc:
        fresh.error = exc
        warnings.warn(str(exc), ProjectionWarning, stacklevel=3)
        return fresh
    folder = os.path.join(directory, PROJECTION_DIR)
    path = checkpoint_path(directory, spec.name, spec.version)
    if not os.path.exists(path):
        if os.path.isdir(folder):
            old = sorted(n for n in os.listdir(folder) if n.startswith(f"{spec.name}.v") and n.endswith(".pckpt"))
            if old:
                warnings.warn(f"projection {spec.name!r} is now version {spec.version}; its checkpoint "
                              f"{', '.join(old)} is of another version, so it is rebuilt from the log",
                              CheckpointWarning, stacklevel=3)
        return fresh
    if not spec.checkpointable:
        return fresh
    try:
        seq, rhash, payload = read_checkpoint(path, spec)
        if seq > log.head_seq:
            _warn(spec, path, f"it is at seq {seq}, beyond the log's head {log.head_seq}")
            return fresh
        if seq == log.head_seq:  # the usual case (closed cleanly): no need to look the record up
            found = log.head_hash
        else:
            rec = next(iter(log.read_range(seq, seq)), None) if seq else None
            found = rec.hash if rec is not None else b""
        if seq and found != rhash:
            # The hash chain makes the hash at seq stand for the whole prefix up to it.
            _warn(spec, path, f"it does not match the log's record at seq {seq}")
            return fresh
        state = decode_state(spec, payload, seq)
    except (OSError, ProjectionCheckpointError, ProjectionError) as exc:
        _warn(spec, path, str(exc))
        return fresh
    runner = Runner(spec, state, seq, rhash.hex() if seq else "")
    runner.ckpt_seq = seq
    return runner


def check_projections(projections: Any) -> list[Spec]:
    """Check ``open_ledger(projections=...)`` before anything is opened: an iterable of projections, distinct names."""
    if isinstance(projections, (str, bytes)) or not isinstance(projections, Iterable):
        raise TypeError(f"projections must be a list of projections, got {projections!r}")
    specs = [check(p) for p in projections]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"projections names {spec.name!r} twice; each registered projection needs its own name")
        seen.add(spec.name)
    return specs


# ------------------------------------------------------------ the ledger's side
class Projecting:
    """The projections of one open ledger: registered ones (checkpointed) and live handles."""

    def __init__(self, ledger: "Ledger"):
        self._ledger = ledger
        self.runners: list[Runner] = []
        self.registered: dict[tuple[str, int], Runner] = {}

    def on_records(self, records: list[Record]) -> None:
        """Feed the records the catalogue just took in to every runner (decoded once for all)."""
        events = to_events(records)
        for r in self.runners:
            r.feed(events)

    def open_registered(self, specs: Iterable[Spec]) -> None:
        """On open (worker thread): load each registered projection's checkpoint and catch it up."""
        for spec in specs:
            self._add_registered(spec)

    def behind(self) -> bool:
        """Whether a registered projection's state is newer than its checkpoint."""
        return any(r.error is None and r.spec.checkpointable and r.seq > r.ckpt_seq for r in self.registered.values())

    def check_new(self, spec: Spec) -> None:
        """Refuse to register the same (name, version) twice, or two versions of one name."""
        for name, version in self.registered:
            if name == spec.name:
                raise ValueError(f"projection {spec.name!r} is already registered (version {version})")

    def _add_registered(self, spec: Spec) -> Runner:
        self.check_new(spec)
        led = self._ledger
        runner = load_runner(spec, str(led.checkpoint_dir), led._log)
        fold_log(runner, led._log, led.catalog.head_seq)
        runner.registered = True
        self.registered[spec.key] = runner
        self.runners.append(runner)
        return runner

    async def register(self, projection: Any) -> Runner:
        """Register a projection on an open ledger: from its checkpoint, caught up, then kept live."""
        spec = check(projection)
        self.check_new(spec)
        led = self._ledger
        async with led._gc._lock:  # the catalogue's head may not move while the runner catches up
            return await anyio.to_thread.run_sync(self._add_registered, spec)

    async def live(self, projection: Any) -> Runner:
        """A runner for a live handle: the registered one of the same key, or a new one folded from the log."""
        spec = check(projection)
        await self._ledger._refresh()
        if spec.key in self.registered:
            return self.registered[spec.key]
        led = self._ledger
        runner = Runner(spec, None, 0, "")
        runner.state = fold(spec, ())
        # Most of the history is folded without holding up appends; the rest under the lock.
        await anyio.to_thread.run_sync(fold_log, runner, led._log, led.catalog.head_seq)
        async with led._gc._lock:
            await anyio.to_thread.run_sync(fold_log, runner, led._log, led.catalog.head_seq)
            self.runners.append(runner)
        return runner

    def detach(self, runner: Runner) -> None:
        """Stop feeding an unregistered runner (its handle was closed)."""
        if not runner.registered and runner in self.runners:
            self.runners.remove(runner)

    def capture(self) -> list[tuple[Runner, int, str, bytes]]:
        """Encoded states of the registered, checkpointable, healthy projections (taken on the loop's thread)."""
        out = []
        for r in self.registered.values():
            if r.error is None and r.spec.checkpointable and r.seq > 0:
                try:
                    out.append((r, r.seq, r.hash, encode_state(r.spec, r.state, r.seq)))
                except ProjectionError as exc:
                    warnings.warn(f"not checkpointed: {exc}", ProjectionWarning, stacklevel=3)
        return out

    def write(self, caps: list[tuple[Runner, int, str, bytes]], fsync: bool) -> None:
        """Write captured projection checkpoints (worker thread)."""
        for runner, seq, h, payload in caps:
            write_checkpoint(str(self._ledger.checkpoint_dir), runner.spec, seq, h, payload, fsync=fsync)
            runner.ckpt_seq = max(runner.ckpt_seq, seq)


class ProjectionHandle:
    """A projection's state kept live by the ledger: ``state``, ``seq``, ``await refresh()``, ``await wait(seq)``."""

    def __init__(self, ledger: "Ledger", runner: Runner):
        self._ledger = ledger
        self._runner = runner
        self._closed = False

    def __repr__(self) -> str:
        r = self._runner
        return f"ProjectionHandle({r.spec.name!r}, version={r.spec.version}, seq={r.seq})"

    @property
    def name(self) -> str:
        """The projection's name."""
        return self._runner.spec.name

    @property
    def version(self) -> int:
        """The projection's version."""
        return self._runner.spec.version

    @property
    def seq(self) -> int:
        """Seq of the last event the state reflects."""
        return self._runner.seq

    @property
    def error(self) -> ProjectionError | None:
        """The error that stopped the projection, or None."""
        return self._runner.error

    @property
    def state(self) -> Any:
        """The state after event ``seq`` (raises ``ProjectionError`` if the projection failed); do not mutate it."""
        if self._runner.error is not None:
            raise self._runner.error
        return self._runner.state

    async def refresh(self) -> Any:
        """Pick up other processes' commits (as ``list`` and ``search`` do), then return the state."""
        self._check()
        await self._ledger._refresh()
        return self.state

    async def wait(self, seq: int, *, poll: float = 0.05) -> Any:
        """Wait until the state reflects event ``seq`` (read-your-writes; other processes' too), then return it.

        Bound the wait with ``anyio.fail_after``; ``poll`` is the longest pause between looks at the log.
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"wait() needs a seq (an int >= 0), got {seq!r}")
        if isinstance(poll, bool) or not isinstance(poll, (int, float)) or not poll > 0:
            raise ValueError(f"poll must be a positive number of seconds, got {poll!r}")
        pause = min(0.002, poll)
        while True:
            self._check()
            if self._runner.error is not None:
                raise self._runner.error
            if self._runner.seq >= seq:
                return self._runner.state
            await self._ledger._refresh()
            if self._runner.seq >= seq or self._runner.error is not None:
                continue
            await anyio.sleep(pause)
            pause = min(pause * 2, poll)

    def _check(self) -> None:
        if self._closed:
            raise ValueError(f"the handle of projection {self.name!r} is closed")
        self._ledger._check_open()

    def close(self) -> None:
        """Stop keeping this handle's state live (a registered projection stays live for the ledger)."""
        self._closed = True
        self._ledger._projecting.detach(self._runner)

    def __enter__(self) -> "ProjectionHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PastProjection:
    """A projection's state after event ``seq`` of a past view: folded from the first ``seq`` events."""

    def __init__(self, name: str, version: int, seq: int, state: Any):
        self.name = name
        self.version = version
        self.seq = seq
        self._state = state

    def __repr__(self) -> str:
        return f"PastProjection({self.name!r}, version={self.version}, seq={self.seq})"

    @property
    def state(self) -> Any:
        """The state after event ``seq``."""
        return self._state

    @property
    def error(self) -> None:
        """Always None: a failing fold of the past raises ``ProjectionError`` at once."""
        return None

    async def refresh(self) -> Any:
        """The state: the past does not move."""
        return self._state

    async def wait(self, seq: int) -> Any:
        """The state, if ``seq`` is at or before the view's seq; a view never reaches a later one."""
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"wait() needs a seq (an int >= 0), got {seq!r}")
        if seq > self.seq:
            raise ValueError(f"this past view ends at seq {self.seq}; it never reaches seq {seq}")
        return self._state

    def close(self) -> None:
        """Nothing to stop: a past state is not kept live."""


async def fold_range(ledger: "Ledger", projection: Any, since: int, until: int) -> Any:
    """Fold events ``since..until`` (inclusive) of the log into a fresh state (in a worker thread)."""
    spec = check(projection)
    log = ledger._log
    return await anyio.to_thread.run_sync(lambda: fold(spec, _event_iter(log, since, until)))


async def past(ledger: "Ledger", projection: Any, seq: int) -> PastProjection:
    """The state of ``projection`` after event ``seq`` (equal to folding the first ``seq`` events)."""
    spec = check(projection)
    return PastProjection(spec.name, spec.version, seq, await fold_range(ledger, spec.projection, 1, seq))
