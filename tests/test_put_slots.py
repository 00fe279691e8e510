"""Concurrent saves run at most ``store.put_concurrency`` blob puts at once, in their own thread slots."""

from __future__ import annotations

import threading
import time

import anyio

from artifact_ledger import open_ledger


def test_concurrent_saves_share_put_concurrency_slots(tmp_path):
    """32 concurrent saves: never more than put_concurrency puts inside the store at once, and that many do
    run together; anyio's default thread pool stays free for other blocking work meanwhile."""
    srcs = []
    for i in range(32):
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(b"%d" % i)
        srcs.append(str(p))

    async def main():
        async with open_ledger(tmp_path / "L", fsync=False) as led:
            store = led.store
            assert store.put_concurrency >= 2
            inside, most = 0, 0
            lock = threading.Lock()
            release = threading.Event()
            real = store.put_file

            def put_file(path, **kw):
                nonlocal inside, most
                with lock:
                    inside += 1
                    most = max(most, inside)
                    full = inside == store.put_concurrency
                if full:
                    release.set()
                # Hold each put until the slots have filled once, so that a missing bound shows.
                release.wait(timeout=30)
                time.sleep(0.001)
                try:
                    return real(path, **kw)
                finally:
                    with lock:
                        inside -= 1

            store.put_file = put_file
            fa = led.artifacts(run_id="r", graph_id="g", node_id="n")
            async with anyio.create_task_group() as tg:
                for src in srcs:
                    tg.start_soon(lambda s=src: fa.save(s, kind="bin"))
                # Blocking work on the default pool is not queued behind the puts.
                await anyio.to_thread.run_sync(lambda: None)
            assert most == store.put_concurrency, most
            assert len(await fa.list()) == 32

    anyio.run(main)
