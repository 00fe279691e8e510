"""Issue 8's multi-machine simulation: four worker processes that share no filesystem (each its own cache
directory) and only the two URLs, the log in PostgreSQL and the blobs in S3 (SeaweedFS on loopback), record
hundreds to thousands of artifacts at once, mixing save, writer, ingest_dir and pin; a fifth process tails the log.
One worker is SIGKILLed mid-save, with one of its saves stopped mid-multipart-upload and another between
its upload and its append while its other calls go on.

Afterwards: the tailer saw seq 1..head with no gap and an unbroken chain, every acknowledged artifact among
them exactly once, in the order each task was told; nothing acknowledged is lost; every recorded object is in
the bucket (directory manifests and their members too); verify() passes; and a fresh machine loads every
artifact with its exact bytes. The count is ``$ARTIFACT_LEDGER_MANY_MACHINES`` artifacts (default 2,000).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import boto3
import botocore.exceptions

import backends
import machine_worker as mw
from artifact_ledger import open_ledger
from artifact_ledger.ledger.events import ArtifactRecorded, PinChanged

WORKER = str(Path(__file__).with_name("machine_worker.py"))
# Issue 8's 2,000 by default: 3-4 minutes on a loaded 2-core machine, most of it verify() fetching every
# object; ARTIFACT_LEDGER_MANY_MACHINES=500 is a quicker run (about a minute) while working.
TOTAL = int(os.environ.get("ARTIFACT_LEDGER_MANY_MACHINES", "2000"))
SURVIVORS = 3
PER_SURVIVOR = -(-TOTAL * 3 // 10)  # 30% each; the victim is killed after 20% of its own
HOLD_AFTER = max(1, TOTAL // 5)
AFTER_HOLD = 5  # the victim's other tasks must go on acknowledging this many after both holds began
PART = 5 << 20
GENESIS = "0" * 64
LOADS = 500  # at most about this many artifacts of the survivors are loaded back (all of the victim's)
WAIT = 300.0  # seconds any one phase may take before the test gives up (never reached when all is well)


def _acks(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for_holds(victim: subprocess.Popen[bytes], path: Path) -> list[list[str]]:
    """Wait until both held saves stopped and the victim's other tasks acknowledged AFTER_HOLD more."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert victim.poll() is None, f"the victim exited ({victim.returncode}) before it was killed"
        lines = _acks(path)
        held = [n for n, x in enumerate(lines) if x[0] == "held"]
        if len(held) == 2 and sum(1 for x in lines[held[-1]:] if x[0] == "art") >= AFTER_HOLD:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"the victim did not reach both hold points within {WAIT}s: {_acks(path)[-5:]}")


def _right_after_an_ack(victim: subprocess.Popen[bytes], path: Path) -> None:
    """Return as soon as the victim acknowledges one more call: the moment an acknowledgement given before
    its event was durable would be lost by the kill."""
    size = path.stat().st_size
    deadline = time.monotonic() + WAIT
    while path.stat().st_size == size:
        assert victim.poll() is None and time.monotonic() < deadline, "the victim stopped acknowledging"
        time.sleep(0.0005)


def _expected_bytes(tag: str, op: str, i: int) -> bytes | dict[str, bytes]:
    return mw.tree(tag, i) if op == "dir" else mw.content(tag, op, i)


def test_four_machines_share_only_two_urls_and_a_killed_one_loses_nothing(pg_url, s3_place, tmp_path):
    bucket, prefix = s3_place
    schema = pg_url.rsplit("schema=", 1)[1]
    blobs = f"s3://{bucket}/{prefix}"
    victim_blobs = f"{blobs}?part_size={PART}&multipart_threshold={PART}&max_concurrency=1"
    t0 = time.monotonic()

    async def create() -> None:
        async with open_ledger(pg_url, blobs=blobs, cache_dir=tmp_path / "m-creator"):
            pass

    anyio.run(create)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the AWS variables point at the test server
    tail_out = tmp_path / "tail.txt"
    tailer = subprocess.Popen([sys.executable, WORKER, "tail", pg_url, str(tmp_path / "m-tail"), str(tail_out)],
                              stdin=subprocess.PIPE, stderr=open(tmp_path / "tail.err", "wb"), env=env)
    tags = [f"w{n}" for n in range(SURVIVORS)] + ["victim"]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for tag in tags:
        args = ([victim_blobs, str(tmp_path / f"m-{tag}"), tag, "0", str(tmp_path / f"{tag}.acks"), str(HOLD_AFTER)]
                if tag == "victim" else
                [blobs, str(tmp_path / f"m-{tag}"), tag, str(PER_SURVIVOR), str(tmp_path / f"{tag}.acks")])
        procs[tag] = subprocess.Popen([sys.executable, WORKER, "work", pg_url, *args],
                                      stderr=open(tmp_path / f"{tag}.err", "wb"), env=env)
    try:
        _wait_for_holds(procs["victim"], tmp_path / "victim.acks")
        _right_after_an_ack(procs["victim"], tmp_path / "victim.acks")
        os.kill(procs["victim"].pid, signal.SIGKILL)
        assert procs["victim"].wait(60) == -signal.SIGKILL
        for tag in tags[:SURVIVORS]:
            rc = procs[tag].wait(WAIT)
            assert rc == 0, (tmp_path / f"{tag}.err").read_text()[-3000:]
        head = backends.pg_rows(schema)[-1].seq
        assert tailer.stdin is not None
        tailer.stdin.write(f"{head}\n".encode())
        tailer.stdin.close()
        assert tailer.wait(WAIT) == 0, (tmp_path / "tail.err").read_text()[-3000:]
    finally:
        for p in [*procs.values(), tailer]:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    written = time.monotonic() - t0

    # ------------------------------------------------ what each worker was told
    arts: dict[str, tuple[str, str, int]] = {}  # artifact id -> (tag, op, i)
    pins: dict[str, int] = {}  # artifact id -> the pin state last acknowledged for it
    order: dict[tuple[str, int], list[str]] = {}  # (tag, task) -> artifact ids in acknowledgement order
    held: dict[str, list[str]] = {}
    for tag in tags:
        for x in _acks(tmp_path / f"{tag}.acks"):
            if x[0] == "art":
                assert x[1] not in arts
                arts[x[1]] = (tag, x[2], int(x[3]))
                order.setdefault((tag, int(x[3]) % mw.TASKS), []).append(x[1])
            elif x[0] == "pin":
                pins[x[1]] = int(x[2])
            else:
                held[x[1]] = x[2:]
    assert len(arts) >= TOTAL
    assert set(held) == {"multipart", "uploaded"}

    # ------------------------------------------------ the tailer: gap-free, chained, every ack once
    seen = [line.split() for line in tail_out.read_text().splitlines()]
    assert [int(x[0]) for x in seen] == list(range(1, head + 1))  # in seq order, none skipped or repeated
    prev = GENESIS
    for x in seen:
        assert x[1] == prev, f"seq {x[0]}: prev_hash {x[1]} is not the hash of seq {int(x[0]) - 1} ({prev})"
        prev = x[2]
    assert [r.hash.hex() for r in backends.pg_rows(schema)] == [x[2] for x in seen]  # what the table holds
    recorded = [x[4] for x in seen if x[3] == "artifact.recorded"]
    assert len(set(recorded)) == len(recorded)
    assert set(arts) <= set(recorded)
    seq_of = {x[4]: int(x[0]) for x in seen if x[3] == "artifact.recorded"}
    for ids in order.values():  # a call acknowledged before the next started has the smaller seq
        assert [seq_of[a] for a in ids] == sorted(seq_of[a] for a in ids)

    # ------------------------------------------------ a fresh machine: catalogue, objects, verify, bytes
    s3 = boto3.client("s3")

    def key(sha: str) -> str:
        return f"{prefix}/sha256/{sha[:2]}/{sha}"

    def head_size(sha: str) -> int | None:
        try:
            return int(s3.head_object(Bucket=bucket, Key=key(sha))["ContentLength"])
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    async def check() -> dict[str, float]:
        figures: dict[str, float] = {}
        async with open_ledger(pg_url, blobs=blobs, cache_dir=tmp_path / "m-fresh") as led:
            events: dict[str, ArtifactRecorded] = {}
            pin_events: list[PinChanged] = []
            async for ev in led.events():
                if isinstance(ev.event, ArtifactRecorded):
                    events[ev.event.artifact_id] = ev.event
                else:
                    pin_events.append(ev.event)
            assert set(arts) <= set(events)  # nothing acknowledged is lost
            fa = led.artifacts(run_id="any", graph_id="g", node_id="n")
            for aid, (tag, _op, _i) in arts.items():
                art = await fa.get(aid)
                assert art.run_id == tag
                if aid in pins:  # each artifact is pinned or unpinned at most once, after it is recorded
                    assert art.pinned == bool(pins[aid])
                elif tag != "victim":  # the victim may have had a pin in flight when it died
                    assert not art.pinned
            assert {p.artifact_id for p in pin_events} <= set(events)

            # Every event names objects that exist: the blob of a file, a directory's manifest and members.
            t = time.monotonic()
            dirs = [e for e in events.values() if e.origin == "ingest_dir"]
            with ThreadPoolExecutor(8) as pool:
                manifests = list(pool.map(
                    lambda e: json.loads(s3.get_object(Bucket=bucket, Key=key(e.sha256))["Body"].read()), dirs))
                want = {e.sha256: e.size for e in events.values() if e.origin != "ingest_dir"}
                want.update({m["sha256"]: m["bytes"] for doc in manifests for m in doc["files"]})
                shas = sorted(want) + sorted({e.sha256 for e in dirs})
                sizes = dict(zip(shas, pool.map(head_size, shas)))
            missing = [s for s in shas if sizes[s] is None]
            assert not missing, f"{len(missing)} recorded objects are missing from the bucket, e.g. {missing[:3]}"
            assert all(sizes[s] == n for s, n in want.items())
            for doc, e in zip(manifests, dirs):
                assert sum(m["bytes"] for m in doc["files"]) == e.size
            figures["head objects"] = time.monotonic() - t

            # The kill: the save stopped mid-multipart left no object and no event; the one stopped between
            # upload and append left an object that no event names (unreferenced bytes, never the reverse).
            part_sha, upload_id = held["multipart"]
            assert head_size(part_sha) is None
            uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=key(part_sha)).get("Uploads", [])
            assert upload_id in {u["UploadId"] for u in uploads}  # the kill did land mid-upload
            s3.abort_multipart_upload(Bucket=bucket, Key=key(part_sha), UploadId=upload_id)
            (uploaded_sha,) = held["uploaded"]
            assert head_size(uploaded_sha) == len(mw.content("victim", "held", 0))
            assert not {part_sha, uploaded_sha} & {e.sha256 for e in events.values()}

            t = time.monotonic()
            res = await led.verify()
            figures["verify"] = time.monotonic() - t
            assert res.ok, res.problems[:5]
            assert res.head == (head, seen[-1][2]) and res.records == head

            # The acknowledged artifacts load with their exact bytes on this machine, fetched from S3: all of
            # the victim's, and of the others every k-th, so that at most about LOADS are fetched.
            t = time.monotonic()
            others = [a for a, (tag, _, _) in arts.items() if tag != "victim"]
            sample = [a for a, (tag, _, _) in arts.items() if tag == "victim"] + others[::max(1, len(others) // LOADS)]
            for aid in sample:
                tag, op, i = arts[aid]
                expected = _expected_bytes(tag, op, i)
                if isinstance(expected, dict):
                    root = Path(await fa.load_artifact(f"artifact://{aid}"))
                    got = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
                    assert got == expected, aid
                else:
                    assert await fa.load_artifact_bytes(f"artifact://{aid}") == expected, aid
                    assert events[aid].sha256 == hashlib.sha256(expected).hexdigest()
            figures[f"load {len(sample)}"] = time.monotonic() - t
        return figures

    figures = anyio.run(check)
    print(f"\n{len(arts)} acknowledged artifacts, {head} events; written and tailed in {written:.1f}s; "
          + ", ".join(f"{k} {v:.1f}s" for k, v in figures.items()))
