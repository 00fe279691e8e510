"""Cancelling a save(): while it is queued for the group commit it is never written (no phantom
artifact); once its batch is being written it waits for that write, then raises the cancellation,
and the artifact is then durable and visible like any other."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import anyio.to_thread

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger import filelog
from logcheck import check_chain, recorded_ids

RUN = dict(run_id="r", graph_id="g", node_id="n")
TIMEOUT = 60


class BlockedFlushes:
    """Blocks each real fdatasync of a segment (or, with one flush per batch, each batch's syncfs), while
    armed, until the test releases it."""

    def __init__(self, monkeypatch):
        self.armed = False
        self.entered: list[threading.Event] = [threading.Event() for _ in range(4)]
        self.release: list[threading.Event] = [threading.Event() for _ in range(4)]
        self.calls = 0
        real = os.fdatasync

        def fdatasync(fd):
            if self.armed and os.readlink(f"/proc/self/fd/{fd}").endswith(".seg"):
                n = self.calls
                self.calls += 1
                self.entered[n].set()
                assert self.release[n].wait(TIMEOUT)
            return real(fd)

        real_syncfs = filelog._syncfs_fd

        def syncfs_fd(fd, what):
            if self.armed:
                n = self.calls
                self.calls += 1
                self.entered[n].set()
                assert self.release[n].wait(TIMEOUT)
            return real_syncfs(fd, what)

        monkeypatch.setattr(filelog.os, "fdatasync", fdatasync)
        monkeypatch.setattr(filelog, "_syncfs_fd", syncfs_fd)

    async def wait_entered(self, n: int) -> None:
        """Wait until the ``n``-th blocked fdatasync (from 0) has been called."""
        assert await anyio.to_thread.run_sync(self.entered[n].wait, TIMEOUT)


def src(d: Path, name: str) -> str:
    """A small source file to save."""
    p = d / name
    p.write_bytes(name.encode() * 10)
    return str(p)


async def _queued(led, n: int) -> None:
    """Wait until ``n`` appends are queued for the next batch (their blob work runs in threads)."""
    with anyio.fail_after(TIMEOUT):  # a guard against hanging, not a timed assertion
        while len(led._gc._pending) < n:
            await anyio.sleep(0)
    await anyio.wait_all_tasks_blocked()


def test_save_cancelled_while_queued_is_never_written(root, tmp_path, monkeypatch):
    """B is queued behind a batch that is being flushed and is cancelled there: no later batch writes it."""
    flushes = BlockedFlushes(monkeypatch)

    async def main():
        async with open_ledger(root) as led:
            fa = led.artifacts(**RUN)
            first = await fa.save(src(tmp_path, "first"), kind="blob")
            flushes.armed = True
            done = {}
            b_scope = anyio.CancelScope()

            async def save(name: str, scope: anyio.CancelScope | None = None) -> None:
                with scope or anyio.CancelScope():
                    done[name] = await fa.save(src(tmp_path, name), kind="blob", labels={"name": name})

            async with anyio.create_task_group() as tg:
                tg.start_soon(save, "a")
                await flushes.wait_entered(0)
                tg.start_soon(save, "b", b_scope)
                await _queued(led, 1)
                b_scope.cancel()
                await anyio.wait_all_tasks_blocked()
                still_queued = len(led._gc._pending)
                flushes.armed = False
                flushes.release[0].set()
            assert still_queued == 0, "the cancelled save is still queued"
            assert "b" not in done and b_scope.cancelled_caught
            c = await fa.save(src(tmp_path, "c"), kind="blob")
            listed = await fa.list(scope="all")
            return [first.artifact_id, done["a"].artifact_id, c.artifact_id], c.seq, listed

    ids, c_seq, listed = anyio.run(main)
    assert c_seq == 3
    assert sorted(a.artifact_id for a in listed) == sorted(ids)
    assert recorded_ids(check_chain(root)) == ids


def test_save_cancelled_while_its_batch_is_written_waits_and_is_recorded(root, tmp_path, monkeypatch):
    """C is taken into a batch whose fdatasync is blocked, then cancelled: its save() does not return
    before that write finished; it then raises the cancellation, and its artifact is durable and
    already in the catalogue (no artifact appears later that nobody was told about)."""
    flushes = BlockedFlushes(monkeypatch)

    async def main():
        async with open_ledger(root) as led:
            fa = led.artifacts(**RUN)
            await fa.save(src(tmp_path, "first"), kind="blob")
            flushes.armed = True
            done: dict = {}
            c_scope = anyio.CancelScope()

            async def save(name: str, scope: anyio.CancelScope | None = None) -> None:
                with scope or anyio.CancelScope():
                    done[name] = await fa.save(src(tmp_path, name), kind="blob", labels={"name": name})
                if scope is not None:
                    done["c ended at head"] = led.head[0]

            async with anyio.create_task_group() as tg:
                tg.start_soon(save, "a")
                await flushes.wait_entered(0)
                tg.start_soon(save, "b")
                # b waits for the log's lock before c does, so b writes the batch and c only waits
                # for it: the path under test (the writer's own cancellation is another path).
                await _queued(led, 1)
                tg.start_soon(save, "c", c_scope)
                await _queued(led, 2)
                flushes.release[0].set()
                await flushes.wait_entered(1)  # the batch [b, c] is being flushed
                assert led._gc._pending == []
                c_scope.cancel()
                await anyio.wait_all_tasks_blocked()
                returned_early = "c ended at head" in done
                flushes.release[1].set()
            assert not returned_early, "the cancelled save returned while its batch was being written"
            assert c_scope.cancelled_caught and "c" not in done
            assert done["c ended at head"] == 4
            names = {a.labels.get("name") for a in await fa.list(scope="all")}
            return names

    assert anyio.run(main) == {None, "a", "b", "c"}
    assert len(check_chain(root)) == 4
