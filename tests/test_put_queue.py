"""PutQueue: puts run in at most ``slots`` threads, each caller gets its own result or error, none is lost,
and a cancelled caller's put either never runs or has finished when the cancellation is reported."""

from __future__ import annotations

import contextvars
import random
import threading
import time

import anyio
import anyio.lowlevel
import pytest

from artifact_ledger.facade.put_queue import RUN_AT_MOST, PutQueue

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


@pytest.mark.parametrize("slots", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_every_caller_gets_its_own_outcome_and_slots_bound_the_threads(slots, seed):
    rng = random.Random(seed)
    n = rng.choice([1, 5, RUN_AT_MOST + 7, 150])
    inside, most = 0, 0
    lock = threading.Lock()
    threads: set[int] = set()

    def work(i: int, pause: float, fail: bool) -> int:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
            threads.add(threading.get_ident())
        try:
            time.sleep(pause)
            assert VAR.get() == f"caller {i}"  # the caller's context, not the runner's
            if fail:
                raise ValueError(i)
            return i * 7
        finally:
            with lock:
                inside -= 1

    async def main() -> None:
        q = PutQueue(slots, anyio.CapacityLimiter(slots))
        outcomes: dict[int, object] = {}

        async def caller(i: int) -> None:
            VAR.set(f"caller {i}")
            await anyio.sleep(rng.random() * 0.002)
            fail = i % 5 == 3
            try:
                outcomes[i] = await q.run(lambda: work(i, rng.random() * 0.0005, fail))
            except ValueError as exc:
                outcomes[i] = ("error", exc.args[0])

        with anyio.fail_after(60):  # a lost wake-up shows as a failure, not a hang
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(caller, i)
        assert outcomes == {i: ("error", i) if i % 5 == 3 else i * 7 for i in range(n)}
        assert q._runners == 0 and not q._queue
        assert threading.get_ident() not in threads

    anyio.run(main)
    assert 1 <= most <= slots


def test_a_cancelled_queued_put_never_runs_and_a_running_one_finishes_first():
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def blocking() -> str:
        started.set()
        release.wait(timeout=30)
        ran.append("first")
        return "first"

    async def main() -> None:
        q = PutQueue(1, anyio.CapacityLimiter(1))
        results: dict[str, object] = {}

        async def first() -> None:
            results["first"] = await q.run(blocking)

        async def second(scope_box: list[anyio.CancelScope]) -> None:
            with anyio.CancelScope() as scope:
                scope_box.append(scope)
                await q.run(lambda: ran.append("second"))
                results["second"] = "ran"

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.to_thread.run_sync(started.wait, 30)
            box: list[anyio.CancelScope] = []
            tg.start_soon(second, box)
            await anyio.sleep(0.01)
            box[0].cancel()  # queued behind the running put: removed, never run
            await anyio.sleep(0.01)
            third_done = anyio.Event()

            async def third() -> None:
                results["third"] = await q.run(lambda: "third")
                third_done.set()

            tg.start_soon(third)
            await anyio.sleep(0.01)
            assert "third" not in results  # the only slot is busy
            release.set()
            await third_done.wait()
        assert results == {"first": "first", "third": "third"}
        assert ran == ["first"]

    anyio.run(main)


def test_cancelling_the_caller_of_a_running_put_reports_it_after_the_put_finished():
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def blocking() -> None:
        started.set()
        release.wait(timeout=30)
        time.sleep(0.01)
        finished.append(True)

    async def main() -> None:
        q = PutQueue(1, anyio.CapacityLimiter(1))
        seen: list[bool] = []
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                async def cancel_when_started() -> None:
                    await anyio.to_thread.run_sync(started.wait, 30)
                    scope.cancel()
                    release.set()

                tg.start_soon(cancel_when_started)
                try:
                    # Like run_sync: the put finishes, and the cancellation is delivered (at the latest at
                    # the next checkpoint) only after it.
                    await q.run(blocking)
                    seen.append(bool(finished))
                    await anyio.lowlevel.checkpoint()
                finally:
                    seen.append(bool(finished))
        assert scope.cancelled_caught
        assert seen in ([True], [True, True])
        assert q._runners == 0 and not q._queue

    anyio.run(main)


def test_a_long_put_hands_back_the_puts_its_runner_finished_before_it(monkeypatch):
    """In one runner turn a small put finishes, then a long one calls release_finished(): the small put's
    caller has its result while the long one still runs (without the call it would wait for it)."""
    from artifact_ledger.facade import put_queue

    monkeypatch.setattr(put_queue, "RUN_FOR_AT_MOST_S", 60.0)  # the gated first put must not end the turn
    gate, started, release = threading.Event(), threading.Event(), threading.Event()

    def first() -> str:
        gate.wait(timeout=30)  # held until the other two are queued, so one turn takes all three
        return "first"

    def small() -> str:
        return "small"

    def long() -> str:
        PutQueue.release_finished()
        started.set()
        release.wait(timeout=30)
        return "long"

    async def main() -> None:
        q = PutQueue(1, anyio.CapacityLimiter(1))
        got: dict[str, str] = {}

        async def call(name: str, fn) -> None:
            got[name] = await q.run(fn)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "first", first)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(call, "small", small)
                tg.start_soon(call, "long", long)
                await anyio.wait_all_tasks_blocked()
                assert len(q._queue) == 2  # both wait behind the running turn
                gate.set()
                await anyio.to_thread.run_sync(started.wait, 30)
                while "small" not in got:  # woken by release_finished, while "long" still runs
                    await anyio.sleep(0.001)
                assert "long" not in got and "first" not in got  # the runner's own put: at the turn's end
                release.set()
        assert got == {"first": "first", "small": "small", "long": "long"}

    anyio.run(main)


def test_release_finished_outside_a_runner_turn_does_nothing():
    PutQueue.release_finished()
