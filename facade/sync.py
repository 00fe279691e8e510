"""The same API without ``await``: a blocking front over the async core.

Each ``SyncLedger`` runs its async ``Ledger`` on an event loop in a thread of its
own (an anyio blocking portal); every method submits the coroutine to that loop
and waits for it. Calls from several threads run concurrently on that loop, so
concurrent saves still share one fsync (group commit). Calling from inside a
running event loop is refused: there, ``await`` the async API instead.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from datetime import datetime
from types import TracebackType
from typing import Any, BinaryIO, Concatenate, ParamSpec, TypeVar, cast

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .artifacts import ArtifactFacade
from ..ledger.errors import LedgerClosed

from .audit import LedgerEvent
from .ledger import Ledger
from .ledger import open_ledger as _open_ledger
from .model import Artifact
from .view import LedgerView

P = ParamSpec("P")
R = TypeVar("R")
_EVENTS_PER_CALL = 1024  # events fetched per trip to the loop thread


def _running_loop() -> str | None:
    """The async library whose event loop runs in this thread, if any."""
    try:
        asyncio.get_running_loop()
        return "asyncio"
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
            return "trio"
        except RuntimeError:
            pass
    return None


def _outside_event_loop(what: str) -> None:
    """Refuse a blocking call made from inside a running event loop (it would stall that loop)."""
    lib = _running_loop()
    if lib is None:
        return
    raise RuntimeError(
        f"artifact_ledger.sync: {what}() was called inside a running {lib} event loop, where a blocking call "
        f"would stall the loop; use the async API there (from artifact_ledger import open_ledger; await ...)"
    )


class _Loop:
    """A ledger's event-loop thread, shared by everything reached through it."""

    def __init__(self, portal: BlockingPortal, where: str):
        self.portal = portal
        self.where = where  # what messages call the ledger
        self.closed = False


class _Bound:
    """Something async reached through a ledger's loop thread."""

    def __init__(self, loop: _Loop, target: Any):
        self._loop = loop
        self._async = target

    def _call(self, what: str, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        _outside_event_loop(what)
        if self._loop.closed:
            # The loop thread is gone; say what the async API would have said.
            raise LedgerClosed(f"the ledger at {self._loop.where} is closed")
        return self._loop.portal.call(functools.partial(fn, *args, **kwargs))


_B = TypeVar("_B", bound=_Bound)


def _blocking(method: Callable[Concatenate[Any, P], Awaitable[R]]) -> Callable[Concatenate[_B, P], R]:
    """Turn an async method of the wrapped class into a blocking one with the same signature."""
    name = method.__name__

    @functools.wraps(method)
    def call(self: _B, /, *args: P.args, **kwargs: P.kwargs) -> R:
        bound: Callable[P, Awaitable[R]] = getattr(self._async, name)
        return self._call(name, bound, *args, **kwargs)

    return call


class SyncFacade(_Bound):
    """The ArtifactFacade without ``await``; every method blocks until the async one is done."""

    _async: ArtifactFacade

    def __repr__(self) -> str:
        return f"Sync{self._async!r}"

    @property
    def run_id(self) -> str:
        """The run this facade is bound to."""
        return self._async.run_id

    @property
    def graph_id(self) -> str:
        """The graph this facade is bound to."""
        return self._async.graph_id

    @property
    def node_id(self) -> str:
        """The node this facade is bound to."""
        return self._async.node_id

    @property
    def project_id(self) -> str | None:
        """The project this facade is bound to, if any."""
        return self._async.project_id

    @property
    def last_artifact(self) -> Artifact | None:
        """The artifact most recently recorded through this facade."""
        return self._async.last_artifact

    stage = _blocking(ArtifactFacade.stage)
    tmp_path = _blocking(ArtifactFacade.tmp_path)
    stage_dir = _blocking(ArtifactFacade.stage_dir)
    save = _blocking(ArtifactFacade.save)
    ingest = _blocking(ArtifactFacade.ingest)
    pin = _blocking(ArtifactFacade.pin)
    load_artifact_bytes = _blocking(ArtifactFacade.load_artifact_bytes)
    load_artifact = _blocking(ArtifactFacade.load_artifact)
    list = _blocking(ArtifactFacade.list)
    search = _blocking(ArtifactFacade.search)
    best = _blocking(ArtifactFacade.best)
    get = _blocking(ArtifactFacade.get)
    count = _blocking(ArtifactFacade.count)
    local_path = _blocking(ArtifactFacade.local_path)
    export_files = _blocking(ArtifactFacade.export_files)
    alias = _blocking(ArtifactFacade.alias)
    unalias = _blocking(ArtifactFacade.unalias)
    resolve = _blocking(ArtifactFacade.resolve)
    alias_history = _blocking(ArtifactFacade.alias_history)
    aliases = _blocking(ArtifactFacade.aliases)
    relate = _blocking(ArtifactFacade.relate)
    lineage = _blocking(ArtifactFacade.lineage)
    retire = _blocking(ArtifactFacade.retire)
    purge = _blocking(ArtifactFacade.purge)

    def ingest_dir(self, staged_dir: str, **kw: Any) -> Artifact:
        """Store every file of a staged directory plus a manifest, as one artifact."""
        return self._call("ingest_dir", self._async.ingest_dir, staged_dir, **kw)

    def writer(self, **kwargs: Any) -> AbstractContextManager[BinaryIO]:
        """``with arts.writer(kind=...) as f:`` yields a real binary file, recorded on clean exit."""
        _outside_event_loop("writer")
        return self._loop.portal.wrap_async_context_manager(self._async.writer(**kwargs))


class SyncContext:
    """What a graph node sees: ``context.artifacts()`` gives its bound blocking facade."""

    def __init__(self, facade: SyncFacade):
        self._facade = facade

    def artifacts(self) -> SyncFacade:
        """The blocking ArtifactFacade bound to this context's ids."""
        return self._facade


class SyncProjection(_Bound):
    """A projection handle (live, or of a past view) without ``await``."""

    def __repr__(self) -> str:
        return f"Sync{self._async!r}"

    @property
    def name(self) -> str:
        """The projection's name."""
        return str(self._async.name)

    @property
    def version(self) -> int:
        """The projection's version."""
        return int(self._async.version)

    @property
    def seq(self) -> int:
        """Seq of the last event the state reflects."""
        return int(self._async.seq)

    @property
    def error(self) -> Any:
        """The ``ProjectionError`` that stopped the projection, or None."""
        return self._async.error

    @property
    def state(self) -> Any:
        """The state after event ``seq`` (raises the ``ProjectionError`` that stopped the projection)."""
        return self._async.state

    def refresh(self) -> Any:
        """Pick up other processes' commits, then return the state."""
        return self._call("refresh", self._async.refresh)

    def wait(self, seq: int, **kwargs: Any) -> Any:
        """Block until the state reflects event ``seq``, then return it (see ``ProjectionHandle.wait``)."""
        return self._call("wait", self._async.wait, seq, **kwargs)

    def close(self) -> None:
        """Stop keeping this handle's state live."""
        self._async.close()


class SyncView(_Bound):
    """A read-only past view (``SyncLedger.as_of``), without ``await``."""

    _async: LedgerView

    def __repr__(self) -> str:
        return f"Sync{self._async!r}"

    @property
    def seq(self) -> int:
        """The seq this view shows the ledger right after."""
        return self._async.seq

    @property
    def time(self) -> datetime:
        """Commit time of event ``seq``."""
        return self._async.time

    def artifacts(self, *, run_id: str, graph_id: str, node_id: str, project_id: str | None = None) -> SyncFacade:
        """A read-only blocking facade bound to these ids, answering as of ``seq``."""
        return SyncFacade(self._loop, self._async.artifacts(run_id=run_id, graph_id=graph_id, node_id=node_id,
                                                              project_id=project_id))

    def context(self, *, run_id: str, graph_id: str, node_id: str, project_id: str | None = None) -> SyncContext:
        """A context whose ``.artifacts()`` is the read-only blocking facade."""
        return SyncContext(self.artifacts(run_id=run_id, graph_id=graph_id, node_id=node_id, project_id=project_id))

    runs = _blocking(LedgerView.runs)
    export_files = _blocking(LedgerView.export_files)

    def project(self, projection: Any) -> SyncProjection:
        """The projection's state after event ``seq`` (see ``LedgerView.project``)."""
        return SyncProjection(self._loop, self._call("project", self._async.project, projection))


class SyncLedger(_Bound):
    """An open ledger with a blocking API; create with ``artifact_ledger.sync.open_ledger(root)``."""

    _async: Ledger

    def __init__(self, loop: _Loop, ledger: Ledger, stack: ExitStack):
        super().__init__(loop, ledger)
        self._stack: ExitStack | None = stack
        self._close_lock = threading.Lock()
        _open_ledgers.add(self)

    def __repr__(self) -> str:
        return f"SyncLedger(root={str(self._async.root)!r})"

    def __enter__(self) -> SyncLedger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Finish in-flight writes, checkpoint, release the files and stop the loop thread (idempotent)."""
        _outside_event_loop("close")
        with self._close_lock:
            if self._stack is None:
                return
            stack, self._stack = self._stack, None
            _open_ledgers.discard(self)
            with stack:
                try:
                    self._loop.portal.call(self._async.aclose)
                finally:
                    self._loop.closed = True

    @property
    def async_ledger(self) -> Ledger:
        """The async ``Ledger`` underneath, for code running on this ledger's own loop."""
        return self._async

    @property
    def root(self) -> Any:
        """The ledger directory."""
        return self._async.root

    @property
    def closed(self) -> bool:
        """Whether ``close`` has been called."""
        return self._stack is None

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hex hash) of the newest record the catalogue reflects."""
        return self._async.head

    def artifacts(self, *, run_id: str, graph_id: str, node_id: str, project_id: str | None = None) -> SyncFacade:
        """A blocking ArtifactFacade bound to (run, graph, node, project)."""
        return SyncFacade(self._loop, self._async.artifacts(run_id=run_id, graph_id=graph_id, node_id=node_id,
                                                              project_id=project_id))

    def context(self, *, run_id: str, graph_id: str, node_id: str, project_id: str | None = None) -> SyncContext:
        """A context whose ``.artifacts()`` is the blocking facade bound to these ids."""
        return SyncContext(self.artifacts(run_id=run_id, graph_id=graph_id, node_id=node_id, project_id=project_id))

    def as_of(self, *, seq: int | None = None, time: datetime | None = None) -> SyncView:
        """A read-only view of the catalogue right after event ``seq`` (or the last at or before ``time``)."""
        view = self._call("as_of", self._async.as_of, seq=seq, time=time)
        return SyncView(self._loop, view)

    def events(self, since: int | datetime | None = None, until: int | datetime | None = None) -> Iterator[LedgerEvent]:
        """Iterate recorded events in order (bounds inclusive), fetched from the loop in chunks."""
        _outside_event_loop("events")
        if self._loop.closed:
            raise LedgerClosed(f"the ledger at {self._loop.where} is closed")
        portal = self._loop.portal
        agen = cast(AsyncGenerator[LedgerEvent, None], self._async.events(since, until))

        async def chunk() -> list[LedgerEvent]:
            out: list[LedgerEvent] = []
            async for e in agen:
                out.append(e)
                if len(out) >= _EVENTS_PER_CALL:
                    break
            return out

        try:
            while batch := portal.call(chunk):
                yield from batch
        finally:
            portal.call(agen.aclose)

    def project(self, projection: Any) -> SyncProjection:
        """A live projection handle (see ``Ledger.project``)."""
        return SyncProjection(self._loop, self._call("project", self._async.project, projection))

    def register(self, projection: Any) -> SyncProjection:
        """Register a projection, kept live and checkpointed (see ``Ledger.register``)."""
        return SyncProjection(self._loop, self._call("register", self._async.register, projection))

    checkpoint = _blocking(Ledger.checkpoint)
    fold = _blocking(Ledger.fold)
    history = _blocking(Ledger.history)
    gc = _blocking(Ledger.gc)
    du = _blocking(Ledger.du)
    diff = _blocking(Ledger.diff)
    verify = _blocking(Ledger.verify)
    sweep = _blocking(Ledger.sweep)
    runs = _blocking(Ledger.runs)
    export_files = _blocking(Ledger.export_files)


_open_ledgers: weakref.WeakSet[SyncLedger] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    # The loop threads are daemons; close what the program left open so its
    # final checkpoint is written and no file descriptor is left to the kernel.
    for led in list(_open_ledgers):
        try:
            led.close()
        except Exception:  # noqa: BLE001 - exiting anyway; the log is already durable
            pass


def open_ledger(root: Any, **options: Any) -> SyncLedger:
    """Open (or create) a ledger and return its blocking API; takes ``open_ledger``'s options.

    Close it with ``close()`` or use ``with``. Safe to share between threads.
    """
    _outside_event_loop("open_ledger")
    stack = ExitStack()
    portal = stack.enter_context(start_blocking_portal(name=f"artifact-ledger {root}"))
    async def opened() -> Ledger:
        return await _open_ledger(root, **options)

    try:
        ledger = portal.call(opened)
    except BaseException:
        stack.close()
        raise
    return SyncLedger(_Loop(portal, ledger.where), ledger, stack)
