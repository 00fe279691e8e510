"""Blob puts of concurrent writes, run by a few worker threads that each take every queued put in turn.

One ``anyio.to_thread.run_sync`` per put hands each one to a thread and back: a wake-up of a worker and
one of the event loop, which under many concurrent saves cost more than the puts' own Python. Here a
put is queued; while fewer than ``slots`` runners are active, the caller becomes one and runs, in one
worker thread, every put it finds queued (its own and others'), up to ``RUN_AT_MOST`` of them or for
``RUN_FOR_AT_MOST_S``, then wakes their callers. So at most ``slots`` puts run at once, as with a
limiter of that many threads, and a burst of puts costs a few thread hand-offs instead of two per put.
The price: a put's result reaches its caller only when its runner's turn ends. So a put that will take
long (a large file) calls ``release_finished()`` first, which hands the results of the puts its runner
already finished this turn to their callers before it starts.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from typing import Any, Callable

import anyio
import anyio.from_thread
import anyio.to_thread

# A runner goes back to the event loop after this many puts, or once it has run puts for this long,
# handing the queue to a waiting caller: the callers of the puts it ran hear of them only then, so the
# budget bounds how long a finished put's result waits (beyond the one put running when it runs out).
RUN_AT_MOST = 32
RUN_FOR_AT_MOST_S = 0.002
# A put of a file this large calls release_finished() first: copying and hashing it takes milliseconds.
LONG_PUT_BYTES = 1 << 20


_turn = threading.local()  # .ran: the puts of the runner turn this worker thread is in (else absent)


class _Put:
    __slots__ = ("fn", "ctx", "done", "result", "error", "wake")

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.ctx = contextvars.copy_context()  # run in its caller's context, as run_sync would
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.wake: anyio.Event | None = None  # made only when its caller waits for another runner

    def run(self) -> None:
        try:
            self.result = self.ctx.run(self.fn)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's task
            self.error = exc
        self.done = True  # last: a caller that sees it set sees the result


class PutQueue:
    """Runs blocking puts in at most ``slots`` worker threads (of ``limiter``), batching hand-offs."""

    def __init__(self, slots: int, limiter: anyio.CapacityLimiter):
        self.slots = slots
        self._limiter = limiter
        self._queue: deque[_Put] = deque()  # appended in the event loop, taken by worker threads
        self._runners = 0  # active runners; changed only in the event loop's thread

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in a worker thread and return (or raise) what it did, as ``run_sync`` would."""
        put = _Put(fn)
        self._queue.append(put)
        try:
            while not put.done:
                # An empty queue means another runner's thread has this put: wait for it, not spin.
                if self._queue and self._runners < self.slots:
                    await self._run_queued()
                    continue
                if put.wake is None:
                    put.wake = anyio.Event()
                await put.wake.wait()
                put.wake = None
        except BaseException:
            try:
                self._queue.remove(put)  # still queued: never run
            except ValueError:
                # A runner's thread has it: like run_sync, report the cancellation once it has finished.
                with anyio.CancelScope(shield=True):
                    while not put.done:
                        put.wake = anyio.Event()
                        await put.wake.wait()
            raise
        if put.error is not None:
            raise put.error
        return put.result

    async def _run_queued(self) -> None:
        """Be a runner: one worker thread runs queued puts; then wake their callers, and a waiting caller
        to take over if puts are left and no runner would otherwise take them."""
        self._runners += 1
        ran: list[_Put] = []
        try:
            await anyio.to_thread.run_sync(self._drain, ran, limiter=self._limiter)
        finally:
            self._runners -= 1
            for p in ran:
                if p.wake is not None:
                    p.wake.set()
            if self._queue and self._runners < self.slots:
                for p in self._queue:
                    if p.wake is not None:
                        p.wake.set()  # it finds a free runner slot and runs the queue
                        break

    def _drain(self, ran: list[_Put]) -> None:
        queue = self._queue
        stop = time.monotonic() + RUN_FOR_AT_MOST_S
        _turn.ran = ran
        try:
            while len(ran) < RUN_AT_MOST and (not ran or time.monotonic() < stop):
                try:
                    put = queue.popleft()
                except IndexError:
                    return
                ran.append(put)
                put.run()
        finally:
            del _turn.ran

    @staticmethod
    def release_finished() -> None:
        """From inside a put that will take long: wake now the callers of the puts its runner has already
        finished this turn (a no-op outside a runner's turn, or with none finished)."""
        ran: list[_Put] | None = getattr(_turn, "ran", None)
        if not ran:
            return
        finished = [p for p in ran if p.done and p.wake is not None]
        if finished:
            anyio.from_thread.run_sync(_wake, finished)


def _wake(puts: list[_Put]) -> None:
    for p in puts:
        if p.wake is not None:
            p.wake.set()
