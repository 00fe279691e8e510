#!/usr/bin/env python3
"""Benchmarks of checkpoints, time travel and verification on a 1,000,000-event ledger (a script).

Prints, for the machine it runs on:
  * open time of a ledger with a checkpoint at its head (fresh processes);
  * full rebuild rate from the log (events/s), checkpoints moved aside, with the C speedups and
    with the pure-Python path (ARTIFACT_LEDGER_PURE_PYTHON=1, the previous implementation) in
    alternated fresh processes, and the replay's phases (scan, decode, fold) for both;
  * ``as_of(seq=random)`` latency, alone and followed by one query through the view,
    with every answer checked against the recipe that generated the ledger;
  * ``verify()`` throughput (log bytes + blob bytes per second) on the big ledger,
    on its log alone, and on a smaller ledger where every artifact has its own blob;
  * peak RSS (VmHWM) of each process that opened the big ledger.

Usage: ``python benchmarks/bench_history.py [--quick] [--profile] [--rebuild]``.
The ledgers are cached under the system temp dir, keyed by a recipe version and
the log, event and snapshot format versions, so reruns skip building them.
"""

from __future__ import annotations

import argparse
import cProfile
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_facade import loadavg, print_machine, print_profile, verdict  # noqa: E402

from artifact_ledger.facade import open_ledger  # noqa: E402
from artifact_ledger.ledger.events import SCHEMA_VERSION, ArtifactRecorded, PinChanged, encode_event  # noqa: E402
from artifact_ledger.ledger.base import RecordSink  # noqa: E402
from artifact_ledger.ledger.filelog import SegmentLog  # noqa: E402
from artifact_ledger.ledger.framing import FORMAT_VERSION  # noqa: E402
from artifact_ledger.ledger.speedups import PURE_ENV  # noqa: E402
from artifact_ledger.ledger import speedups  # noqa: E402
from artifact_ledger.projections import snapshot  # noqa: E402
from artifact_ledger.projections.snapshot import SNAPSHOT_SCHEMA  # noqa: E402
from artifact_ledger.ledger.checkpoints import MAGIC as CHECKPOINT_MAGIC  # noqa: E402
from artifact_ledger.store.local import LocalBlobStore  # noqa: E402

# Bump when the synthetic ledgers' contents change; the format versions are part
# of the key so a change to the log, events or snapshots rebuilds the cache.
# 2: the recorded state digest sorts index keys (older caches recorded an unsorted one).
RECIPE = 2
CACHE_KEY = f"h{RECIPE}-fmt{FORMAT_VERSION}-ev{SCHEMA_VERSION}-snap{SNAPSHOT_SCHEMA}-ck{CHECKPOINT_MAGIC[-1]}"

EVENTS_PER_RUN = 1000
PIN_EVERY = 100  # every 100th event of a run is a pin change: 1% of the log
ARTS_PER_RUN = EVENTS_PER_RUN - EVENTS_PER_RUN // PIN_EVERY
POOL = 1000  # distinct real blobs the big ledger's artifacts share
KINDS = ("model", "metrics", "plot", "dataset")
SPLITS = ("train", "val", "test")
MIMES = {"model": "application/octet-stream", "metrics": "application/json",
         "plot": "image/png", "dataset": "application/octet-stream"}

TARGETS = {"open": "< 1 s", "rebuild": ">= 300,000 events/s", "as_of": "< 300 ms", "rss": "< 1 GB"}

FULL = dict(runs=1000, opens=5, rebuilds=3, asof=50, verify_reps=3, blob_artifacts=10_000)
QUICK = dict(runs=100, opens=3, rebuilds=2, asof=20, verify_reps=2, blob_artifacts=2_000)

ASIDE = "checkpoints.bench-aside"


# --------------------------------------------------------------------------- recipe
def artifact_id(run: int, j: int) -> str:
    # Derived, not drawn, so a pin can name an artifact of an earlier run
    # without regenerating that run.
    return hashlib.blake2b(f"{RECIPE}:{run}:{j}".encode(), digest_size=16).hexdigest()


def pool_blob(p: int) -> bytes:
    size = 1 << 20 if p % 100 == 0 else 64 << 10 if p % 10 == 0 else 4 << 10
    return random.Random(f"pool-{RECIPE}-{p}").randbytes(size)


def run_events(run: int, pool: list[tuple[str, int]] | None) -> list:
    """The events of one run, in log order (seqs run*1000+1 .. run*1000+1000).

    Without ``pool`` the blob fields are blank; everything else is identical,
    which is all that checking answers needs.
    """
    rng = random.Random(f"history-{RECIPE}-run-{run}")
    out: list = []
    ids: list[str] = []
    for k in range(EVENTS_PER_RUN):
        if k % PIN_EVERY == PIN_EVERY - 1:
            if run and rng.random() < 0.2:
                target = artifact_id(rng.randrange(run), rng.randrange(ARTS_PER_RUN))
            else:
                target = rng.choice(ids)
            out.append(PinChanged(artifact_id=target, pinned=rng.random() < 0.75))
            continue
        j = len(ids)
        aid = artifact_id(run, j)
        ids.append(aid)
        kind = KINDS[rng.randrange(len(KINDS))]
        p = rng.randrange(POOL)
        sha, size = pool[p] if pool is not None else ("", 0)
        metrics = {"loss": round(rng.random(), 6)}
        if j % 2 == 0:
            metrics["acc"] = round(rng.random(), 6)
        out.append(ArtifactRecorded(
            artifact_id=aid, origin="save", kind=kind, sha256=sha, size=size, mime=MIMES[kind],
            labels={"split": SPLITS[j % 3], "seed": rng.randrange(5), "tag": f"t{j % 100}"},
            metrics=metrics, pinned=rng.random() < 0.005,
            run_id=run_name(run), graph_id=f"g{j % 5}", node_id=f"n{j % 20}", project_id="bench",
            name=f"a{j}.bin",
        ))
    return out


def run_name(run: int) -> str:
    return f"run{run:04d}"


# --------------------------------------------------------------------------- helpers
def hwm_kb() -> int:
    # VmHWM is this process's own high-water mark; ru_maxrss would include
    # the parent's, which Linux carries across fork + exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def state_digest(cat) -> str:
    """SHA-256 of the catalogue's snapshot encoding: equal states give equal digests."""
    h = hashlib.sha256()
    cap = snapshot.capture(cat)
    for entries in cap.indexes.values():
        # Index keys are in insertion order, which depends on how events were batched, not on the state.
        entries.sort(key=lambda kv: repr(kv[0]))
    for part in snapshot.encode_parts(cap):
        h.update(part)
    return h.hexdigest()


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def ms(s: float) -> str:
    return f"{s * 1000:.1f} ms"


def spread(xs: list[float], scale: float = 1000, fmt: str = "{:.0f}") -> str:
    return ", ".join(fmt.format(x * scale) for x in xs)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


# --------------------------------------------------------------------------- building
def build_big(root: Path, runs: int) -> None:
    """Write the events straight into the log (fsync off, big batches), then open once to checkpoint."""
    from artifact_ledger.facade.ledger import _prepare_root

    t0 = time.perf_counter()
    _prepare_root(root, True)
    store = LocalBlobStore(root / "blobs", fsync=False)
    pool = []
    for p in range(POOL):
        data = pool_blob(p)
        pool.append((store.put_bytes(data).sha256, len(data)))
    log = SegmentLog(str(root / "log"), fsync=False)
    pinned: dict[str, bool] = {}
    batch: list[bytes] = []
    for run in range(runs):
        for ev in run_events(run, pool):
            if type(ev) is ArtifactRecorded:
                pinned[ev.artifact_id] = ev.pinned
            elif ev.artifact_id in pinned:
                pinned[ev.artifact_id] = ev.pinned
            batch.append(encode_event(ev))
        if len(batch) >= 20_000 or run == runs - 1:
            log.append_batch(batch, lambda rec: None)
            batch = []
    head = log.head_seq
    log.close()
    t_log = time.perf_counter() - t0

    async def first_open() -> dict:
        t = time.perf_counter()
        async with open_ledger(root, fsync=False) as led:
            replay_s = time.perf_counter() - t
            cat = led.catalog
            assert cat.head_seq == head == runs * EVENTS_PER_RUN, (cat.head_seq, head)
            assert cat.n == runs * ARTS_PER_RUN, cat.n
            assert cat.pin_now.count(1) == sum(pinned.values()), (cat.pin_now.count(1), sum(pinned.values()))
        return {"replay_s": replay_s, "digest": state_digest(cat)}

    first = anyio.run(first_open)
    expect = {"head": head, "artifacts": runs * ARTS_PER_RUN, "pinned_now": sum(pinned.values()),
              "digest": first["digest"], "write_log_s": t_log, "first_replay_s": first["replay_s"]}
    (root / "bench-expect.json").write_text(json.dumps(expect))


def build_blobs(root: Path, n: int) -> None:
    """A smaller ledger where every artifact has its own random blob (4 KiB .. 1 MiB)."""
    from artifact_ledger.facade.ledger import _prepare_root

    _prepare_root(root, True)
    store = LocalBlobStore(root / "blobs", fsync=False)
    log = SegmentLog(str(root / "log"), fsync=False)
    rng = random.Random(f"blob-ledger-{RECIPE}")
    batch: list[bytes] = []
    for i in range(n):
        u = rng.random()
        size = 1 << 20 if u < 0.02 else 64 << 10 if u < 0.27 else 4 << 10
        data = rng.randbytes(size)
        kind = KINDS[i % len(KINDS)]
        ev = ArtifactRecorded(
            artifact_id=f"{rng.getrandbits(128):032x}", origin="save", kind=kind,
            sha256=store.put_bytes(data).sha256, size=size, mime=MIMES[kind],
            labels={"split": SPLITS[i % 3]}, metrics={"loss": round(rng.random(), 6)},
            run_id=run_name(i // 1000), graph_id="g0", node_id="n0", project_id="bench",
        )
        batch.append(encode_event(ev))
        if len(batch) >= 1000:
            log.append_batch(batch, lambda rec: None)
            batch = []
    if batch:
        log.append_batch(batch, lambda rec: None)
    log.close()

    async def first_open() -> None:
        async with open_ledger(root, fsync=False) as led:
            assert led.catalog.n == n

    anyio.run(first_open)


def cached(label: str, build_args: list[str], rebuild: bool) -> tuple[Path, float | None]:
    base = Path(tempfile.gettempdir()) / "artifact-ledger-bench"
    root = base / f"history-{CACHE_KEY}-{label}"
    if rebuild and root.exists():
        shutil.rmtree(root)
    if root.exists():
        return root, None
    building = base / f".building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", build_args[0], str(building), *build_args[1:]], check=True)
    # Only a finished build gets the real name, so an interrupted one is never reused.
    os.rename(building, root)
    return root, time.perf_counter() - t0


# --------------------------------------------------------------------------- children
def spy_checkpoint_loads() -> list:
    """Record what each open's checkpoint load returned (a seq, or None for a full rebuild)."""
    from artifact_ledger.ledger.file import FileEventLog

    loads: list = []
    orig = FileEventLog._load_checkpoint

    def spy(log, restore):
        info = orig(log, restore)
        loads.append(None if info is None else info.position.seq)
        return info

    FileEventLog._load_checkpoint = spy  # type: ignore[method-assign]
    return loads


def child_open(root: str, digest: bool) -> dict:
    loads = spy_checkpoint_loads()
    out: dict = {"hwm_import_kb": hwm_kb(), "path": speedups.why}

    async def main() -> None:
        t, c = time.perf_counter(), time.process_time()
        led = await open_ledger(root)
        out["open_s"] = time.perf_counter() - t
        # CPU seconds of every thread: less sensitive than wall time to other load on the machine.
        out["open_cpu_s"] = time.process_time() - c
        out["hwm_open_kb"] = hwm_kb()
        cat = led.catalog
        out.update(head=cat.head_seq, artifacts=cat.n, pinned_now=cat.pin_now.count(1), ckpt=loads[0])
        t = time.perf_counter()
        await led.aclose()
        out["close_s"] = time.perf_counter() - t
        out["hwm_end_kb"] = hwm_kb()
        if digest:
            out["digest"] = state_digest(cat)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        anyio.run(main)
    out["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    return out


def child_profile(root: str, top: int) -> dict:
    import artifact_ledger.facade.ledger as fl

    loads = spy_checkpoint_loads()

    async def inline(fn, *a, **k):
        return fn(*a, **k)

    prof = cProfile.Profile()
    out: dict = {}

    async def main() -> None:
        # Replay runs in a worker thread, which cProfile does not follow; run it inline.
        real = fl.anyio.to_thread.run_sync
        fl.anyio.to_thread.run_sync = inline
        try:
            t = time.perf_counter()
            prof.enable()
            led = await open_ledger(root)
            prof.disable()
            out["open_s"] = time.perf_counter() - t
        finally:
            fl.anyio.to_thread.run_sync = real
        out["head"] = led.catalog.head_seq
        await led.aclose()

    anyio.run(main)
    out["ckpt"] = loads[0]
    out["phases"] = [phase_breakdown(root, drop_pins) for drop_pins in (False, True)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_profile(f"full rebuild of {out['head']:,} events, open_ledger (wall under profiling "
                      f"{out['open_s']:.2f} s)", prof, top)
    out["text"] = buf.getvalue()
    return out


def phase_breakdown(root: str, drop_pins: bool, defer: bool = True) -> dict:
    """Time the replay's parts in one pass: log scan (framing, CRC, SHA-256), decoding, apply_decoded.

    ``defer=False`` is the previous implementation: indexes extended batch by batch.
    """
    import gc

    from artifact_ledger.facade.ledger import REPLAY_BATCH, _decode, _payload, _seq, _ts
    from artifact_ledger.ledger.events import decode_event_array, decode_events
    from artifact_ledger.projections.catalog import Catalog, append_payloads, apply_decoded

    cat = Catalog()
    log = SegmentLog(str(Path(root) / "log"), fsync=False)
    pending: list = []
    spent = {"decode": 0.0, "apply": 0.0}
    pc = time.perf_counter

    def flush() -> None:
        t = pc()
        events = decode_events(list(map(_payload, pending))) or [_decode(r) for r in pending]
        seqs, tss = list(map(_seq, pending)), list(map(_ts, pending))
        if drop_pins:
            rows = [(q, t, ev) for q, t, ev in zip(seqs, tss, events) if type(ev) is ArtifactRecorded]
            seqs, tss, events = [x[0] for x in rows], [x[1] for x in rows], [x[2] for x in rows]
        t2 = pc()
        apply_decoded(cat, seqs, tss, events)
        spent["decode"] += t2 - t
        spent["apply"] += pc() - t2
        pending.clear()

    def on_record(rec) -> None:
        pending.append(rec)
        if len(pending) >= REPLAY_BATCH:
            flush()

    def on_records(recs) -> None:  # the segment log's chunks, as open_ledger takes them
        pending.extend(recs)
        if len(pending) >= REPLAY_BATCH:
            flush()

    def on_payloads(joined, seqs, tss) -> bool:  # a chunk as one msgpack array, as open_ledger takes it
        if not drop_pins and defer:
            flush()
            t = pc()
            if append_payloads(cat, seqs=seqs, tss=tss, joined=joined):  # read straight into the columns (C)
                spent["apply"] += pc() - t  # no decode phase of its own: counted as fold
                return True
            spent["apply"] += pc() - t
        t = pc()
        events = decode_event_array(joined, len(seqs))
        if events is None:
            spent["decode"] += pc() - t
            return False
        if drop_pins:
            rows = [(q, ts, ev) for q, ts, ev in zip(seqs, tss, events) if type(ev) is ArtifactRecorded]
            seqs, tss, events = [x[0] for x in rows], [x[1] for x in rows], [x[2] for x in rows]
        flush()
        t2 = pc()
        apply_decoded(cat, seqs, tss, events)
        spent["decode"] += t2 - t
        spent["apply"] += pc() - t2
        return True

    gc.disable()  # as open_ledger does during replay
    try:
        t0 = pc()
        if defer:
            cat.defer_indexes()  # as open_ledger does: indexes built once at the end (counted in apply)
        log.recover(RecordSink(on_record, on_records, on_payloads))
        flush()
        t2 = pc()
        cat.build_indexes()
        spent["apply"] += pc() - t2
        total = pc() - t0
    finally:
        gc.enable()
        log.close()
    return {"total": total, "scan": total - spent["decode"] - spent["apply"], **spent, "events": log.head_seq,
            "drop_pins": drop_pins, "defer": defer}


def expected_at(run: int, seq: int, kind: str, memo: dict) -> dict:
    """What the view at ``seq`` must answer for run ``run``, from the recipe alone."""
    evs = memo.get(run)
    if evs is None:
        evs = memo[run] = run_events(run, None)
    base = run * EVENTS_PER_RUN
    arts: list[tuple[int, ArtifactRecorded]] = []
    pins: dict[str, bool] = {}
    for k, ev in enumerate(evs[: seq - base]):
        if type(ev) is ArtifactRecorded:
            arts.append((base + k + 1, ev))
            pins[ev.artifact_id] = ev.pinned
        elif ev.artifact_id in pins:
            pins[ev.artifact_id] = ev.pinned
    of_kind = [(ev.metrics["loss"], -s, ev.artifact_id) for s, ev in arts if ev.kind == kind]
    return {
        "list": [(ev.artifact_id, pins[ev.artifact_id]) for _, ev in reversed(arts)],
        "best": min(of_kind)[2] if of_kind else None,
        "pins": pins,
    }


def child_asof(root: str, n: int) -> dict:
    out: dict = {"hwm_import_kb": hwm_kb(), "wrong": []}
    pc = time.perf_counter

    async def main() -> None:
        t = pc()
        led = await open_ledger(root)
        out["open_s"] = pc() - t
        head = led.catalog.head_seq
        rng = random.Random(f"asof-{RECIPE}")
        memo: dict = {}
        rows = []
        for _ in range(n):
            seq = rng.randrange(1, head + 1)
            run = (seq - 1) // EVENTS_PER_RUN
            kind = rng.choice(KINDS)
            ids = dict(run_id=run_name(run), graph_id="g0", node_id="n0", project_id="bench")
            t0 = pc()
            view = await led.as_of(seq=seq)
            t1 = pc()
            best = await view.artifacts(**ids).best(kind=kind, metric="loss", mode="min", scope="run")
            t2 = pc()
            view2 = await led.as_of(seq=seq)
            listed = await view2.artifacts(**ids).list(scope="run")
            t3 = pc()
            when = view.time
            t4 = pc()
            by_time = await led.as_of(time=when)
            t5 = pc()
            rows.append((t1 - t0, t2 - t0, t3 - t2, t5 - t4))
            exp = expected_at(run, seq, kind, memo)
            got_list = [(a.artifact_id, a.pinned) for a in listed]
            if got_list != exp["list"]:
                out["wrong"].append(f"as_of({seq}).list(run {run}): {len(got_list)} artifacts "
                                    f"(pinned {sum(p for _, p in got_list)}), expected {len(exp['list'])} "
                                    f"(pinned {sum(p for _, p in exp['list'])})")
            got_best = None if best is None else best.artifact_id
            if got_best != exp["best"]:
                out["wrong"].append(f"as_of({seq}).best({kind}, loss, min, run {run}): {got_best}, "
                                    f"expected {exp['best']}")
            elif best is not None and best.pinned != exp["pins"][got_best]:
                out["wrong"].append(f"as_of({seq}).best(...).pinned = {best.pinned}, expected the opposite")
            if view.seq != seq or by_time.seq != seq:
                out["wrong"].append(f"as_of(seq={seq}).seq = {view.seq}; as_of(time={when}).seq = {by_time.seq}")
        out["rows"] = rows
        out["hwm_end_kb"] = hwm_kb()
        await led.aclose()

    anyio.run(main)
    return out


def child_verify(root: str, blob_root: str, reps: int) -> dict:
    from artifact_ledger.facade import audit

    out: dict = {"full": [], "log": [], "blobs": []}

    async def run_verify(led, dest: list, first_expect_head: bool) -> None:
        for r in range(reps):
            calls = []
            expect = led.head if (first_expect_head and r == 0) else None
            t = time.perf_counter()
            res = await led.verify(expect_head=expect, progress=lambda d, tot: calls.append((d, tot)))  # noqa: B023
            dt = time.perf_counter() - t
            dest.append({"s": dt, "ok": res.ok, "records": res.records, "blobs": res.blobs, "bytes": res.bytes,
                         "problem": res.problem, "n_problems": len(res.problems), "progress_calls": len(calls),
                         "progress_last": calls[-1] if calls else None, "expect_head": expect is not None,
                         "head_matches": list(res.head) == list(led.head)})

    async def main() -> None:
        async with open_ledger(root) as led:
            await run_verify(led, out["full"], True)
            for _ in range(reps):
                t = time.perf_counter()
                # The same walk verify() does, handed no blobs: the hash chain alone.
                res = await anyio.to_thread.run_sync(lambda: audit.verify(led._log, led.store, []))
                out["log"].append({"s": time.perf_counter() - t, "ok": res.ok, "records": res.records,
                                   "bytes": res.bytes, "problem": res.problem})
        async with open_ledger(blob_root) as led:
            await run_verify(led, out["blobs"], False)

    anyio.run(main)
    return out


def in_child(mode: str, *args: str, pure: bool = False) -> dict:
    """Run a child mode in a fresh process; ``pure``: with the C speedups switched off."""
    env = dict(os.environ)
    env.pop(PURE_ENV, None)
    if pure:
        env[PURE_ENV] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", mode, *args], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {mode} {' '.join(args)} failed with exit code {proc.returncode}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


def child_main(mode: str, args: list[str]) -> None:
    if mode == "build-big":
        build_big(Path(args[0]), int(args[1]))
        return
    if mode == "build-blobs":
        build_blobs(Path(args[0]), int(args[1]))
        return
    if mode == "open":
        res = child_open(args[0], args[1] == "digest")
    elif mode == "profile":
        res = child_profile(args[0], int(args[1]))
    elif mode == "asof":
        res = child_asof(args[0], int(args[1]))
    elif mode == "phases":
        # Alternate the two folds so that both see the same load.
        runs = [phase_breakdown(args[0], False, defer) for _ in range(int(args[1])) for defer in (True, False)]
        res = {name: {k: statistics.median(r[k] for r in runs if r["defer"] == d) for k in ("total", "scan",
                                                                                         "decode", "apply")}
               for name, d in (("now", True), ("previous", False))}
        res["events"] = runs[0]["events"]
        res["path"] = speedups.why
    elif mode == "verify":
        res = child_verify(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown child mode {mode}")
    print(json.dumps(res))


# --------------------------------------------------------------------------- parent
class CheckpointsAside:
    """Move the checkpoints directory aside for a rebuild, and always put it back."""

    def __init__(self, root: Path):
        self.live = root / "checkpoints"
        self.aside = root / ASIDE

    def restore(self) -> None:
        if self.aside.exists():
            shutil.rmtree(self.live, ignore_errors=True)
            os.rename(self.aside, self.live)

    def clear(self) -> None:
        """Drop whatever checkpoints the last rebuild wrote on close."""
        shutil.rmtree(self.live, ignore_errors=True)

    def __enter__(self) -> "CheckpointsAside":
        self.restore()  # an interrupted earlier run may have left it aside
        os.rename(self.live, self.aside)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def check_open(o: dict, expect: dict, what: str, problems: list[str]) -> None:
    for key in ("head", "artifacts", "pinned_now"):
        if o[key] != expect[key]:
            problems.append(f"{what}: {key} = {o[key]}, expected {expect[key]}")
    if "digest" in o and o["digest"] != expect["digest"]:
        problems.append(f"{what}: catalogue state differs from the first full replay's (snapshot digest)")
    for w in o["warnings"]:
        problems.append(f"{what}: warning {w}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100,000 events instead of 1,000,000 (smoke run)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached ledgers")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the full rebuild")
    ap.add_argument("--top", type=int, default=15, help="rows in the profile")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child[0], args.child[1:])
        return

    cfg = QUICK if args.quick else FULL
    tmp_root = tempfile.gettempdir()
    print_machine(tmp_root)
    print(f"mode: {'quick' if args.quick else 'full'}; ledger cache key {CACHE_KEY}; targets are for a 2-core machine; "
          "every figure below is from a warm page cache")
    print()
    problems: list[str] = []

    runs = cfg["runs"]
    n_events = runs * EVENTS_PER_RUN
    root, built = cached(f"{n_events}", ["build-big", str(runs)], args.rebuild)
    blob_root, blob_built = cached(f"blobs-{cfg['blob_artifacts']}", ["build-blobs", str(cfg["blob_artifacts"])],
                                   args.rebuild)
    CheckpointsAside(root).restore()
    expect = json.loads((root / "bench-expect.json").read_text())
    log_bytes = dir_bytes(root / "log", "*.seg")
    n_seg = len(list((root / "log").glob("*.seg")))
    ckpts = sorted((root / "checkpoints").glob("*.ckpt"))
    print(f"== ledger of {n_events:,} events: {expect['artifacts']:,} artifacts over {runs} runs + "
          f"{n_events - expect['artifacts']:,} pin changes (1%); kinds {', '.join(KINDS)}; labels split/seed/tag; "
          f"metrics loss (+ acc on half); artifacts share a pool of {POOL} real blobs")
    how = (f"built in {built:.1f} s: log written in {expect['write_log_s']:.1f} s straight through "
           f"SegmentLog.append_batch (fsync off), then one open replayed it in {expect['first_replay_s']:.1f} s "
           f"and checkpointed on close") if built is not None else "cached"
    print(f"directory     {root} ({how})")
    print(f"log           {log_bytes / 1e6:.1f} MB in {n_seg} segment(s) = {log_bytes / n_events:.0f} B/event; "
          f"blobs {dir_bytes(root / 'blobs' / 'sha256') / 1e6:.1f} MB; checkpoint "
          f"{ckpts[-1].stat().st_size / 1e6 if ckpts else 0:.1f} MB ({ckpts[-1].name if ckpts else 'none'}); "
          f"{expect['pinned_now']:,} artifacts pinned at the head")
    print()

    # ---- open with a checkpoint
    opens = [in_child("open", str(root), "digest" if k == 0 else "-") for k in range(cfg["opens"])]
    for k, o in enumerate(opens):
        check_open(o, expect, f"open with checkpoint #{k + 1}", problems)
        if o["ckpt"] != expect["head"]:
            problems.append(f"open with checkpoint #{k + 1}: loaded checkpoint at seq {o['ckpt']}, "
                            f"expected the head {expect['head']}")
    open_s = statistics.median(o["open_s"] for o in opens)
    hwm_open = statistics.median(o["hwm_open_kb"] for o in opens)
    hwm_imp = statistics.median(o["hwm_import_kb"] for o in opens)
    print(f"== open with a checkpoint at the head ({len(opens)} fresh processes; the first also checks the "
          f"loaded state's snapshot digest against the first full replay's)")
    print(f"open          {ms(open_s):>10} median (each: {spread([o['open_s'] for o in opens])} ms; "
          f"checkpoint loaded at seq {opens[0]['ckpt']})   target {TARGETS['open']}: {verdict(open_s < 1.0)}")
    print(f"              CPU time of the open {ms(statistics.median(o['open_cpu_s'] for o in opens))} median")
    print(f"              whole child process {statistics.median(o['process_s'] for o in opens) * 1000:.0f} ms "
          "(interpreter start, imports, open, close, exit); "
          f"close {ms(statistics.median(o['close_s'] for o in opens))}")
    print(f"peak RSS      {hwm_open / 1024:.1f} MiB VmHWM after open ({hwm_imp / 1024:.1f} MiB after imports, "
          f"so ~{(hwm_open - hwm_imp) * 1024 / expect['artifacts']:.0f} B/artifact); "
          f"{statistics.median(o['hwm_end_kb'] for o in opens) / 1024:.1f} MiB at exit")
    print()

    # ---- full rebuild from the log: the C speedups and the pure-Python path (the previous implementation)
    runs_by: dict[bool, list[dict]] = {False: [], True: []}
    with CheckpointsAside(root) as aside:
        for k in range(cfg["rebuilds"]):
            for pure in (False, True):  # alternated, so that both see the same load
                aside.clear()
                runs_by[pure].append(in_child("open", str(root), "digest" if k == 0 else "-", pure=pure))
        aside.clear()
    print(f"== full rebuild: open with the checkpoints directory moved aside ({cfg['rebuilds']} fresh processes "
          f"per path, alternated; restored afterwards)")
    rates = {}
    for pure, label in ((False, "C speedups"), (True, "pure Python")):
        rebuilds = runs_by[pure]
        for k, o in enumerate(rebuilds):
            check_open(o, expect, f"full rebuild ({label}) #{k + 1}", problems)
            if o["ckpt"] is not None:
                problems.append(f"full rebuild ({label}) #{k + 1}: a checkpoint (seq {o['ckpt']}) was loaded")
            if (o["path"] == "C extension") == pure:
                problems.append(f"full rebuild ({label}) #{k + 1}: ran on the wrong path ({o['path']})")
        reb_s = statistics.median(o["open_s"] for o in rebuilds)
        rates[pure] = rate = expect["head"] / reb_s
        reb_cpu = statistics.median(o["open_cpu_s"] for o in rebuilds)
        hwm_reb = statistics.median(o["hwm_open_kb"] for o in rebuilds)
        hwm_reb_end = statistics.median(o["hwm_end_kb"] for o in rebuilds)
        print(f"rebuild, {label:12s} {rate:,.0f} events/s = {ms(reb_s)} median for {expect['head']:,} events "
              f"(each: {spread([o['open_s'] for o in rebuilds])} ms)"
              + (f"   target {TARGETS['rebuild']}: {verdict(rate >= 300_000)}" if not pure else
                 f"   (the baseline: {PURE_ENV}=1; path: {rebuilds[0]['path']})"))
        print(f"              CPU time of the open {ms(reb_cpu)} median = {expect['head'] / reb_cpu:,.0f} events per "
              f"CPU-second (all threads; less skewed by other load)")
        print(f"              peak RSS {hwm_reb / 1024:.1f} MiB VmHWM after the rebuild; {hwm_reb_end / 1024:.1f} MiB "
              f"at exit (after writing the checkpoint); close {ms(statistics.median(o['close_s'] for o in rebuilds))}")
    rate = rates[False]
    print(f"speed-up      {rates[False] / rates[True]:.2f}x over the pure-Python path; load average now {loadavg()} "
          "(open includes capturing the state for the background checkpoint open starts)")
    print()

    # ---- replay phases, both paths, each beside its per-batch-index fold, alternated in one process
    print(f"== replay phases: medians of {cfg['rebuilds']} passes each, alternated in one process per path (gc off, "
          f"as in open_ledger)")
    for pure, label in ((False, "C speedups"), (True, "pure Python")):
        ph = in_child("phases", str(root), str(cfg["rebuilds"]), pure=pure)
        for name, what in (("now", "indexes once at the end"), ("previous", "indexes per batch")):
            p = ph[name]
            # The C path reads payloads straight into columns (catalog.append_payloads): no decode of its own.
            decode = (f"decode {ms(p['decode'])}, fold {ms(p['apply'])}" if p["decode"] > 0.02 * p["total"]
                      else f"decode and fold in one pass (append_payloads) {ms(p['apply'] + p['decode'])}")
            print(f"  {label + ', ' + what:38s} total {ms(p['total']):>10} = {ph['events'] / p['total']:>9,.0f} "
                  f"events/s: log scan {ms(p['scan'])}, {decode}")
    print()

    # ---- as_of
    a = in_child("asof", str(root), str(cfg["asof"]))
    problems.extend(a["wrong"])
    rows = a["rows"]
    asof_only = [r[0] for r in rows]
    with_best = [r[1] for r in rows]
    with_list = [r[2] for r in rows]
    by_time = [r[3] for r in rows]
    worst = max(max(with_best), max(with_list))
    print(f"== as_of(seq=random): {len(rows)} random seqs in one process (opened with the checkpoint in "
          f"{ms(a['open_s'])}); each answer checked against the recipe: {len(a['wrong'])} wrong")

    def line(name: str, xs: list[float], target: bool = False) -> None:
        t = ""
        if target:
            t = f"   target {TARGETS['as_of']}: {verdict(statistics.median(xs) < 0.3 and max(xs) < 0.3)}"
        print(f"  {name:44s} median {statistics.median(xs) * 1e3:8.3f} ms  p90 {pct(xs, 0.9) * 1e3:8.3f} ms  "
              f"max {max(xs) * 1e3:8.3f} ms  first {xs[0] * 1e3:8.3f} ms{t}")

    line("as_of(seq) alone", asof_only)
    line("as_of(seq) + best(kind, loss, min, run)", with_best, True)
    line(f"as_of(seq) + list(scope=run) (<= {ARTS_PER_RUN})", with_list, True)
    line("as_of(time=view.time) alone", by_time)
    print(f"  peak RSS of that process: {a['hwm_end_kb'] / 1024:.1f} MiB VmHWM")
    print()

    # ---- verify
    v = in_child("verify", str(root), str(blob_root), str(cfg["verify_reps"]))
    blob_log = dir_bytes(blob_root / "log", "*.seg")
    print(f"== verify(): median of {cfg['verify_reps']} (MB/s = (log bytes + distinct blob bytes) / wall; "
          f"progress callback on; the first full run also passes expect_head=ledger.head)")

    def vline(name: str, xs: list[dict], note: str) -> None:
        s = statistics.median(x["s"] for x in xs)
        b = xs[0]["bytes"]
        print(f"  {name:38s} {b / 1e6 / s:7.1f} MB/s   {ms(s):>11} for {b / 1e6:.1f} MB, {xs[0]['records']:,} records "
              f"({xs[0]['records'] / s:,.0f}/s){note}   (each: {spread([x['s'] for x in xs])} ms)")
        for k, x in enumerate(xs):
            if not x["ok"]:
                problems.append(f"verify {name} #{k + 1}: not ok: {x['problem']} ({x.get('n_problems')} problems)")

    big = f"{n_events // 1000:,}k-event ledger"
    vline(f"{big}, log + blob pool", v["full"],
          f", {v['full'][0]['blobs']} blobs ({(v['full'][0]['bytes'] - log_bytes) / 1e6:.1f} MB)")
    vline(f"{big}, log only", v["log"], "")
    vline(f"{cfg['blob_artifacts']:,} artifacts, own blob each", v["blobs"],
          f", {v['blobs'][0]['blobs']:,} blobs ({(v['blobs'][0]['bytes'] - blob_log) / 1e6:.1f} MB; log "
          f"{blob_log / 1e6:.1f} MB)")
    for x in v["full"] + v["blobs"]:
        if not x["head_matches"]:
            problems.append("verify: the head it returned differs from ledger.head")
        last = x["progress_last"]
        if not last or last[0] != last[1] or last[1] != x["bytes"]:
            problems.append(f"verify: progress ended at {last}, result bytes {x['bytes']}")
    print()

    # ---- summary
    rss_max = max([o["hwm_end_kb"] for o in opens + runs_by[False] + runs_by[True]] + [a["hwm_end_kb"]])
    print("== summary (targets for this 2-core machine)")
    print(f"  open with checkpoint   {ms(open_s):>12}   target {TARGETS['open']:>20}: {verdict(open_s < 1)}")
    print(f"  full rebuild           {rate:>10,.0f}/s   target {TARGETS['rebuild']:>20}: {verdict(rate >= 300_000)}")
    print(f"  as_of + query, worst   {ms(worst):>12}   target {TARGETS['as_of']:>20}: {verdict(worst < 0.3)}")
    print(f"  verify (big, full)     "
          f"{v['full'][0]['bytes'] / 1e6 / statistics.median(x['s'] for x in v['full']):>7.1f} MB/s   (no target)")
    print(f"  peak RSS, worst proc   {rss_max / 1024:>8.1f} MiB   target {TARGETS['rss']:>20}: "
          f"{verdict(rss_max < 1024 * 1024)}   (max VmHWM over every process that opened the big ledger)")
    print()
    print(f"checks: {'all answers and states as expected' if not problems else f'{len(problems)} PROBLEM(S)'}")
    for p in problems[:30]:
        print(f"  PROBLEM {p}")
    print()

    if args.profile:
        with CheckpointsAside(root) as aside:
            aside.clear()
            prof = in_child("profile", str(root), str(args.top))
            aside.clear()
        if prof["ckpt"] is not None:
            print(f"PROBLEM: the profiled open loaded a checkpoint at seq {prof['ckpt']}")
        print(prof["text"], end="")
        print("replay phases, timed in one pass each (gc off, as in open_ledger; no profiler):")
        for ph in prof["phases"]:
            what = "artifact events only (the 1% pins dropped)" if ph["drop_pins"] else "as recorded"
            print(f"  {what:44s} total {ms(ph['total']):>10} = {ph['events'] / ph['total']:,.0f} events/s: "
                  f"log scan {ms(ph['scan'])}, decode {ms(ph['decode'])}, apply_decoded {ms(ph['apply'])}")
        print()
    print(f"load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
