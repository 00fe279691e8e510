"""Several worker processes, each with its own cache (no shared blob files), save concurrently into one
ledger whose blobs live in S3; one is SIGKILLed mid-save. Nothing acknowledged is lost, no event names
a missing object, and verify() passes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio

from artifact_ledger.facade import open_ledger
from artifact_ledger.ledger.events import ArtifactRecorded

WORKER = str(Path(__file__).with_name("s3_worker.py"))
PART = 5 << 20


def test_workers_share_only_the_urls_and_a_killed_one_loses_nothing(s3_env, s3_place, tmp_path):
    bucket, prefix = s3_place
    url = f"s3://{bucket}/{prefix}?part_size={PART}&multipart_threshold={PART}&max_concurrency=1"
    root = tmp_path / "L"

    async def create():
        async with open_ledger(root, blobs=url, cache_dir=tmp_path / "c0"):
            pass

    anyio.run(create)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [subprocess.Popen([sys.executable, WORKER, str(root), url, str(tmp_path / f"c{i + 1}"), "60", "0"],
                                stdout=subprocess.PIPE, text=True, env=env) for i in range(3)]
    # The victim saves 12 MiB files in 5 MiB parts: a kill after its first acknowledgement lands mid-upload.
    victim = subprocess.Popen([sys.executable, WORKER, str(root), url, str(tmp_path / "victim"), "50",
                               str(12 << 20)], stdout=subprocess.PIPE, text=True, env=env)
    assert victim.stdout is not None
    first = victim.stdout.readline()
    assert first.startswith("ack "), first
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim_out, _ = victim.communicate(timeout=60)
    acked = {first.split()[1]} | {line.split()[1] for line in victim_out.splitlines() if line.startswith("ack ")}
    for w in workers:
        out, _ = w.communicate(timeout=600)
        assert w.returncode == 0
        acked |= {line.split()[1] for line in out.splitlines() if line.startswith("ack ")}

    async def check():
        async with open_ledger(root, cache_dir=tmp_path / "checker") as led:
            ids = set()
            async for ev in led.events():
                if isinstance(ev.event, ArtifactRecorded):
                    ids.add(ev.event.artifact_id)
            assert acked <= ids  # every acknowledged artifact is recorded
            res = await led.verify()
            assert res.ok, res.problems  # and every recorded one has its object, intact
            assert res.records >= 3 * 60

    anyio.run(check)
