#!/usr/bin/env python3
"""Benchmarks of the artifact facade on this machine (a script, not a timed test).

Prints, for the machine it runs on:
  * saves/s of 4 KiB files with fsync on: sequential awaits and 64 concurrent
    tasks, beside the raw cost of ``write + fsync + rename + dir fsync`` in the
    same filesystem, with one flush per batch (the default where it is safe)
    and with the three-flush protocol (``ARTIFACT_LEDGER_BATCH_FLUSH=three``)
    in the same run, as its baseline; the 64-thread raw baseline beside a
    create-only one (inode creation, no flush) and the CPU per save;
  * one durable 256 MiB save against a raw write+fsync of the same bytes (both
    protocols);
  * on a 100,000-artifact ledger over 100 runs: median ``best(scope="run")``
    latency, median label ``search`` latency, open (replay) time and peak RSS
    of a process that only opens the ledger.

Usage: ``python benchmarks/bench_facade.py [--quick] [--profile] [--rebuild] [--only-saves] [--large-mib N]``.
The big ledger is cached under the system temp dir, keyed by a version string,
so reruns skip building it.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parent.parent

from artifact_ledger.facade import open_ledger  # noqa: E402
from artifact_ledger.ledger.events import SCHEMA_VERSION, ArtifactRecorded  # noqa: E402
from artifact_ledger.ledger.framing import FORMAT_VERSION  # noqa: E402

# Bump when the synthetic ledger's contents change; the on-disk format and
# event schema versions are part of the key so a format change rebuilds it.
# 2: events name a pool of real blobs (1 named blobs that never existed, which the last-batch check on
# open rightly refuses: a checkpoint then proves records whose blobs are missing).
LEDGER_RECIPE = 2
POOL = 1000  # distinct real 4 KiB blobs the big ledger's artifacts share
CACHE_KEY = f"r{LEDGER_RECIPE}-fmt{FORMAT_VERSION}-ev{SCHEMA_VERSION}"

KINDS = ("model", "metrics", "plot", "dataset")
SPLITS = ("train", "val", "test")
MIMES = {"model": "application/octet-stream", "metrics": "application/json",
         "plot": "image/png", "dataset": "application/octet-stream"}

TARGETS = {
    "best": "< 100 us median",
    "search": "< 1 ms median (<= 100 results)",
    "open": "< 1 s",
    "save_conc": ">= 3000 saves/s",
}

FULL = dict(warm_saves=2048, reps=5, seq_saves=300, conc_saves=3000, raw_ops=500, runs=100, per_run=1000,
            best_calls=20000, search_calls=5000, opens=5)
QUICK = dict(warm_saves=768, reps=3, seq_saves=60, conc_saves=640, raw_ops=150, runs=10, per_run=1000,
             best_calls=3000, search_calls=1000, opens=3)
CONCURRENCY = 64
SIZE = 4096


# --------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem_of(path: str) -> str:
    """Type, device and mount point of the filesystem holding ``path`` (from /proc/mounts)."""
    real = os.path.realpath(path)
    best = ("?", "?", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                mnt = mnt.replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[2]):
                    best = (fstype, dev, mnt)
    except OSError:
        pass
    return f"{best[0]} ({best[1]} on {best[2] or '?'})"


def print_machine(tmp: str) -> None:
    import msgspec
    import pydantic

    print("== machine")
    print(f"platform      {platform.platform()}")
    print(f"cpu           {cpu_model()}")
    print(f"cores         {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})")
    print(f"python        {platform.python_implementation()} {platform.python_version()}")
    print(f"libs          anyio {_ver('anyio')}, "
          f"msgspec {msgspec.__version__}, pydantic {pydantic.VERSION}")
    print(f"temp dir      {tmp}: {filesystem_of(tmp)}")
    print(f"load average  {loadavg()} (other processes on this machine skew fsync-bound figures)")
    print()


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _ver(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return "?"


# --------------------------------------------------------------------------- stats
def summary_us(ns: list[int]) -> str:
    s = sorted(ns)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))] / 1000  # noqa: E731
    return (f"median {statistics.median(s) / 1000:8.1f} us   p90 {q(0.90):8.1f} us   "
            f"p99 {q(0.99):8.1f} us   mean {statistics.fmean(s) / 1000:8.1f} us   (n={len(s)})")


def verdict(ok: bool) -> str:
    return "MEETS" if ok else "MISSES"


# --------------------------------------------------------------------------- saves
def make_sources(directory: Path, n: int, rng: random.Random) -> list[str]:
    directory.mkdir(parents=True)
    out = []
    for i in range(n):
        p = directory / f"src{i:06d}.bin"
        p.write_bytes(rng.randbytes(SIZE))  # distinct contents: dedup never short-cuts a save
        out.append(str(p))
    return out


def raw_durable_writes(directory: Path, n: int, rng: random.Random, dir_sync_every: int = 1) -> float:
    """Seconds per sequential write 4 KiB + fsync + rename + dir fsync (plain Python).

    ``dir_sync_every`` > 1 fsyncs the directory once per that many renames
    (what batching the directory fsync into a group commit would cost).
    """
    directory.mkdir(parents=True)
    datas = [rng.randbytes(SIZE) for _ in range(n)]
    d = str(directory)
    t0 = time.perf_counter()
    for i, data in enumerate(datas):
        tmp = os.path.join(d, f"{i}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, os.path.join(d, f"{i}.blob"))
        if (i + 1) % dir_sync_every == 0 or i == n - 1:
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dfd)
            os.close(dfd)
    return (time.perf_counter() - t0) / n


def raw_rename_fsync_loop(directory: Path, n: int, rng: random.Random) -> float:
    """Seconds per rename + dir fsync of an already durable 4 KiB file (the rename half of a save, alone)."""
    directory.mkdir(parents=True)
    d = str(directory)
    for i in range(n):
        fd = os.open(os.path.join(d, f"{i}.part"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, rng.randbytes(SIZE))
        os.fsync(fd)
        os.close(fd)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    t0 = time.perf_counter()
    for i in range(n):
        os.rename(os.path.join(d, f"{i}.part"), os.path.join(d, f"{i}.blob"))
        os.fsync(dfd)
    took = time.perf_counter() - t0
    os.close(dfd)
    return took / n


def raw_durable_writes_threaded(directory: Path, n: int, rng: random.Random, threads: int) -> float:
    """Same as ``raw_durable_writes`` from ``threads`` threads: how far the device parallelises fsync."""
    from concurrent.futures import ThreadPoolExecutor

    directory.mkdir(parents=True)
    datas = [rng.randbytes(SIZE) for _ in range(n)]
    d = str(directory)

    def one(i: int) -> None:
        tmp = os.path.join(d, f"{i}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, datas[i])
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, os.path.join(d, f"{i}.blob"))
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)

    with ThreadPoolExecutor(threads) as ex:
        t0 = time.perf_counter()
        list(ex.map(one, range(n)))
        return (time.perf_counter() - t0) / n


def raw_creates_threaded(directory: Path, n: int, rng: random.Random, threads: int) -> float:
    """Seconds per create + write 4 KiB + close from ``threads`` threads, no fsync or rename: how much of the
    threaded raw baseline is making the inodes (a save makes one temp file per blob too)."""
    from concurrent.futures import ThreadPoolExecutor

    directory.mkdir(parents=True)
    datas = [rng.randbytes(SIZE) for _ in range(n)]
    d = str(directory)

    def one(i: int) -> None:
        fd = os.open(os.path.join(d, f"{i}.part"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, datas[i])
        os.close(fd)

    with ThreadPoolExecutor(threads) as ex:
        t0 = time.perf_counter()
        list(ex.map(one, range(n)))
        return (time.perf_counter() - t0) / n


def cpu_s() -> tuple[float, float]:
    """(user, system) CPU seconds this process has used."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


async def run_sequential(led, files: list[str]) -> float:
    """Saves per second, one await after the other."""
    fac = led.artifacts(run_id="bench", graph_id="g", node_id="seq")
    before = len(led.catalog.rows)
    t0 = time.perf_counter()
    for i, p in enumerate(files):
        await fac.save(p, kind="blob", labels={"i": i}, metrics={"m": i * 0.5})
    dt = time.perf_counter() - t0
    assert len(led.catalog.rows) == before + len(files)
    return len(files) / dt


async def run_concurrent(led, files: list[str], tasks: int = CONCURRENCY) -> float:
    """Saves per second with ``tasks`` tasks saving at once into one ledger."""
    facs = [led.artifacts(run_id="bench", graph_id="g", node_id=f"n{k}") for k in range(tasks)]
    before = len(led.catalog.rows)

    async def worker(k: int) -> None:
        fac = facs[k]
        for i in range(k, len(files), tasks):
            await fac.save(files[i], kind="blob", labels={"i": i}, metrics={"m": i * 0.5})

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for k in range(tasks):
            tg.start_soon(worker, k)
    dt = time.perf_counter() - t0
    assert len(led.catalog.rows) == before + len(files)
    return len(files) / dt


@contextlib.contextmanager
def flush_protocol(name: str):
    """Open ledgers with ARTIFACT_LEDGER_BATCH_FLUSH=name (read when a ledger is opened)."""
    old = os.environ.get("ARTIFACT_LEDGER_BATCH_FLUSH")
    os.environ["ARTIFACT_LEDGER_BATCH_FLUSH"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["ARTIFACT_LEDGER_BATCH_FLUSH"]
        else:
            os.environ["ARTIFACT_LEDGER_BATCH_FLUSH"] = old


def bench_saves(cfg: dict, tmp: Path, rng: random.Random) -> dict:
    reps = cfg["reps"]
    warm = cfg["warm_saves"]
    srcs = make_sources(tmp / "src", 2 * (warm + cfg["seq_saves"] + reps * (cfg["seq_saves"] + cfg["conc_saves"])),
                        rng)
    res: dict = {"seq": [], "conc": [], "raw": [], "raw_thr": [], "raw_batched": [], "raw_rename": [],
                 "seq_three": [], "conc_three": [], "raw_create": [], "cpu_conc": [], "cpu_conc_three": []}

    async def session() -> None:
        cursor = 0

        def take(n: int) -> list[str]:
            nonlocal cursor
            cursor += n
            return srcs[cursor - n:cursor]

        with flush_protocol("three"):
            three = await open_ledger(tmp / "saves-three")
        try:
            async with open_ledger(tmp / "saves") as led:
                res["protocol"], res["protocol_three"] = led.flush_protocol, three.flush_protocol
                # A brand-new store creates its 256 shard directories as blobs arrive;
                # measure that once, then warm up so the repetitions see a store in use.
                res["cold_seq"] = await run_sequential(led, take(cfg["seq_saves"]))
                res["warm_conc"] = await run_concurrent(led, take(warm))
                await run_sequential(three, take(cfg["seq_saves"]))
                await run_concurrent(three, take(warm))
                res["shards"] = sum(1 for _ in (led.store.root / "sha256").iterdir())
                await repetitions(led, three, take)
        finally:
            await three.aclose()

    async def repetitions(led, three, take) -> None:
        for r in range(reps):
            res["raw"].append(raw_durable_writes(tmp / f"raw{r}", cfg["raw_ops"], rng))
            # The two protocols alternate (which goes first too), so load drifts hit both alike.
            order = [(led, "seq", "conc"), (three, "seq_three", "conc_three")]
            for lg, s_key, c_key in order if r % 2 == 0 else order[::-1]:
                res[s_key].append(await run_sequential(lg, take(cfg["seq_saves"])))
                u0, s0 = cpu_s()
                res[c_key].append(await run_concurrent(lg, take(cfg["conc_saves"])))
                u1, s1 = cpu_s()
                res["cpu_" + c_key].append(((u1 - u0) / cfg["conc_saves"], (s1 - s0) / cfg["conc_saves"]))
            res["raw_thr"].append(
                raw_durable_writes_threaded(tmp / f"rawt{r}", cfg["conc_saves"] // 2, rng, CONCURRENCY))
            res["raw_create"].append(raw_creates_threaded(tmp / f"rawc{r}", cfg["conc_saves"] // 2, rng, CONCURRENCY))
            res["raw_batched"].append(raw_durable_writes(tmp / f"rawb{r}", cfg["raw_ops"], rng, 32))
            res["raw_rename"].append(raw_rename_fsync_loop(tmp / f"rawr{r}", cfg["raw_ops"], rng))
        res["artifacts"] = len(led.catalog.rows)

    anyio.run(session)
    raw = statistics.median(res["raw"])
    seq = statistics.median(res["seq"])
    conc = statistics.median(res["conc"])
    # Per-repetition ratios pair each figure with the baseline taken just before it.
    seq_ratio = statistics.median(x * b for x, b in zip(res["seq"], res["raw"]))
    conc_ratio = statistics.median(x * b for x, b in zip(res["conc"], res["raw"]))
    print(f"== saves of {SIZE // 1024} KiB files, fsync on (median of {reps} repetitions, distinct random "
          f"contents, one ledger warmed with {warm} saves first; {res['shards']} blob shard dirs)")
    print(f"raw baseline  write+fsync+rename+dir fsync, sequential: {raw * 1e6:8.1f} us/op = "
          f"{1 / raw:8.0f} ops/s   (n={cfg['raw_ops']}/rep; reps: "
          + ", ".join(f"{1 / x:.0f}" for x in res["raw"]) + ")")
    print(f"sequential    {seq:8.0f} saves/s  = {1e6 / seq:8.1f} us/save   ratio to raw baseline "
          f"{seq_ratio:5.2f}x   (n={cfg['seq_saves']}/rep; reps: "
          + ", ".join(f"{x:.0f}" for x in res["seq"]) + ")")
    print(f"concurrent    {conc:8.0f} saves/s  = {1e6 / conc:8.1f} us/save   ratio to raw baseline "
          f"{conc_ratio:5.2f}x   ({CONCURRENCY} tasks, n={cfg['conc_saves']}/rep; reps: "
          + ", ".join(f"{x:.0f}" for x in res["conc"]) + f")   target {TARGETS['save_conc']}: "
          f"{verdict(conc >= 3000)}")
    print(f"(info) sequential on the brand-new ledger (shard dirs being created): {res['cold_seq']:.0f} saves/s; "
          f"{CONCURRENCY}-task warm-up of {warm}: {res['warm_conc']:.0f} saves/s")
    thr_ratio = statistics.median(x * b for x, b in zip(res["conc"], res["raw_thr"]))
    print(f"raw baseline  the same from {CONCURRENCY} threads: {1 / statistics.median(res['raw_thr']):8.0f} ops/s "
          f"(how far the device overlaps fsyncs); concurrent saves / it, per repetition: {thr_ratio:5.2f}x   "
          f"target >= 1.5x: {verdict(thr_ratio >= 1.5)}")
    create_share = statistics.median(c / t for c, t in zip(res["raw_create"], res["raw_thr"]))
    print(f"raw baseline  create + write 4 KiB only (no fsync, no rename) from {CONCURRENCY} threads: "
          f"{1 / statistics.median(res['raw_create']):8.0f} ops/s; its time is {create_share:5.1%} of the "
          f"{CONCURRENCY}-thread durable baseline's, per repetition (reps: "
          + ", ".join(f"{1 / x:.0f}" for x in res["raw_create"]) + ")")
    for key, what in (("cpu_conc", res["protocol"]), ("cpu_conc_three", res["protocol_three"])):
        user = statistics.median(u for u, _ in res[key])
        system = statistics.median(s_ for _, s_ in res[key])
        print(f"(info) CPU of this process per concurrent save ({what}): user {user * 1e6:6.0f} us, "
              f"system {system * 1e6:6.0f} us")
    print(f"raw baseline  rename + dir fsync loop alone: {1 / statistics.median(res['raw_rename']):8.0f} ops/s "
          f"(reps: " + ", ".join(f"{1 / x:.0f}" for x in res["raw_rename"]) + ")")
    print(f"(info) raw baseline, dir fsync once per 32 renames: {1 / statistics.median(res['raw_batched']):8.0f} "
          f"ops/s (what batching directory fsyncs would leave)")
    conc3, seq3 = statistics.median(res["conc_three"]), statistics.median(res["seq_three"])
    gain = statistics.median(x / y for x, y in zip(res["conc"], res["conc_three"]))
    thr3 = statistics.median(x * b for x, b in zip(res["conc_three"], res["raw_thr"]))
    print(f"protocols     the figures above: {res['protocol']!r}; same-run baseline {res['protocol_three']!r} "
          f"(ARTIFACT_LEDGER_BATCH_FLUSH=three, its own warmed ledger, alternating with it):")
    print(f"              three flushes: concurrent {conc3:8.0f} saves/s (reps: "
          + ", ".join(f"{x:.0f}" for x in res["conc_three"]) + f"), {thr3:5.2f}x the {CONCURRENCY}-thread raw "
          f"baseline; sequential {seq3:8.0f} saves/s (reps: " + ", ".join(f"{x:.0f}" for x in res["seq_three"])
          + ")")
    print(f"              concurrent {res['protocol']} / three, per repetition: {gain:5.2f}x")
    print()
    return {"seq": seq, "conc": conc, "raw_ops_s": 1 / raw, "conc_three": conc3}


# --------------------------------------------------------------------------- one large file
def raw_copy_fsync(src: Path, dst: Path, fsync: bool = True) -> float:
    """Seconds to copy ``src`` to a new file in plain Python (1 MiB chunks) and fsync it (if ``fsync``)."""
    t0 = time.perf_counter()
    with open(src, "rb") as f, open(dst, "wb") as g:
        while chunk := f.read(1 << 20):
            g.write(chunk)
        g.flush()
        if fsync:
            os.fsync(g.fileno())
    return time.perf_counter() - t0


def bench_large_save(tmp: Path, mib: int, reps: int) -> dict:
    """A durable save of one large file against a raw write+fsync of the same bytes, and an export of it
    (export_files) against a raw copy without fsync, in the same run.

    A guard, not a target: the ledger's extra work (hashing, a durable rename,
    one event) should keep it near the device's own limit.
    """
    src = tmp / "large.bin"
    block = os.urandom(1 << 20)
    with open(src, "wb") as f:
        for i in range(mib):
            f.write(i.to_bytes(8, "little") + block[8:])  # no two MiB alike, so nothing dedups
    raws, saves, saves3, raw_copies, exports = [], [], [], [], []

    async def save_once(r: int, export: bool = False) -> float:
        # A fresh ledger per repetition, so the blob is written every time (no dedup).
        async with open_ledger(tmp / f"large-ledger{r}") as led:
            fac = led.artifacts(run_id="bench", graph_id="g", node_id="large")
            t0 = time.perf_counter()
            await fac.save(str(src), kind="model")
            dt = time.perf_counter() - t0
            if export:
                # export_files: the blob's checked copy out of the store (no fsync, like the raw copy).
                t0 = time.perf_counter()
                await fac.export_files(tmp / f"large-export{r}", kind="model")
                exports.append(time.perf_counter() - t0)
                shutil.rmtree(tmp / f"large-export{r}")
            return dt

    for r in range(reps):
        raws.append(raw_copy_fsync(src, tmp / f"raw-large{r}.bin"))
        (tmp / f"raw-large{r}.bin").unlink()
        raw_copies.append(raw_copy_fsync(src, tmp / f"raw-copy{r}.bin", fsync=False))
        (tmp / f"raw-copy{r}.bin").unlink()
        saves.append(anyio.run(save_once, r, True))
        shutil.rmtree(tmp / f"large-ledger{r}")
        with flush_protocol("three"):
            saves3.append(anyio.run(save_once, r))
        shutil.rmtree(tmp / f"large-ledger{r}")
    ratio = statistics.median(raw / save for raw, save in zip(raws, saves))
    ratio3 = statistics.median(raw / save for raw, save in zip(raws, saves3))
    print(f"== one {mib} MiB file, fsync on (median of {reps} repetitions, a fresh ledger each)")
    print(f"raw baseline  copy + fsync in plain Python: {mib / statistics.median(raws):8.1f} MiB/s   (reps: "
          + ", ".join(f"{mib / x:.0f}" for x in raws) + ")")
    print(f"save()        {mib / statistics.median(saves):8.1f} MiB/s   speed ratio to raw baseline "
          f"{ratio:5.2f}x (pairs)   (reps: " + ", ".join(f"{mib / x:.0f}" for x in saves) + ")")
    print(f"save(), three {mib / statistics.median(saves3):8.1f} MiB/s   speed ratio to raw baseline "
          f"{ratio3:5.2f}x (pairs)   (ARTIFACT_LEDGER_BATCH_FLUSH=three; reps: "
          + ", ".join(f"{mib / x:.0f}" for x in saves3) + ")")
    ratio_x = statistics.median(raw / x for raw, x in zip(raw_copies, exports))
    print(f"raw baseline  copy, no fsync, in plain Python: {mib / statistics.median(raw_copies):8.1f} MiB/s   (reps: "
          + ", ".join(f"{mib / x:.0f}" for x in raw_copies) + ")")
    print(f"export_files() {mib / statistics.median(exports):7.1f} MiB/s   speed ratio to that baseline "
          f"{ratio_x:5.2f}x (pairs)   (the blob copied out and checked against its SHA-256; reps: "
          + ", ".join(f"{mib / x:.0f}" for x in exports) + ")")
    print()
    src.unlink()
    return {"raw_mib_s": mib / statistics.median(raws), "save_mib_s": mib / statistics.median(saves), "ratio": ratio}


# --------------------------------------------------------------------------- big ledger
def labels_of(i: int, j: int) -> dict:
    # tag repeats every 1,000 artifacts, so a tag matches one artifact per run.
    return {"split": SPLITS[i % 3], "seed": i % 7, "tag": f"t{i % 1000}"}


def pool_blob(p: int) -> bytes:
    """The bytes of pooled blob ``p`` (the same on every build)."""
    return random.Random(f"pool-{LEDGER_RECIPE}-{p}").randbytes(SIZE)


def store_pool(root: Path) -> list[str]:
    """Create the ledger directory and store the POOL blobs its events name; returns their SHA-256s (open
    checks the last batch's blobs, so a ledger whose events name blobs that never existed is cut)."""
    from artifact_ledger.facade.ledger import _prepare_root
    from artifact_ledger.store.local import LocalBlobStore

    _prepare_root(root, True)
    store = LocalBlobStore(root / "blobs", fsync=False)
    return [store.put_bytes(pool_blob(p)).sha256 for p in range(POOL)]


def event_for(i: int, run: int, j: int, rng: random.Random, pool: list[str]) -> ArtifactRecorded:
    kind = KINDS[i % len(KINDS)]
    metrics = {"loss": round(rng.random(), 6)}
    if i % 2 == 0:
        metrics["acc"] = round(rng.random(), 6)
    return ArtifactRecorded(
        artifact_id=f"{rng.getrandbits(128):032x}",
        origin="save",
        kind=kind,
        sha256=pool[i % len(pool)],
        size=SIZE,
        mime=MIMES[kind],
        labels=labels_of(i, j),
        metrics=metrics,
        run_id=f"run{run:03d}",
        graph_id=f"g{j % 5}",
        node_id=f"n{j % 20}",
        project_id="bench",
        name=f"a{i}.bin",
    )


async def build_ledger(root: Path, runs: int, per_run: int) -> None:
    """Append the synthetic events through the ledger's own append path (fsync off, many at once)."""
    rng = random.Random(1234)
    pool = store_pool(root)
    async with open_ledger(root, fsync=False) as led:
        for run in range(runs):
            events = [event_for(run * per_run + j, run, j, rng, pool) for j in range(per_run)]
            # The group commit batches concurrent appends, in order within each task.
            async with anyio.create_task_group() as tg:
                for k in range(CONCURRENCY):
                    async def push(k: int = k) -> None:
                        for ev in events[k::CONCURRENCY]:  # noqa: B023  (awaited in this iteration)
                            await led._append(ev)
                    tg.start_soon(push)
        assert len(led.catalog.rows) == runs * per_run


def cached_ledger(runs: int, per_run: int, rebuild: bool) -> tuple[Path, float | None]:
    base = Path(tempfile.gettempdir()) / "artifact-ledger-bench"
    root = base / f"ledger-{CACHE_KEY}-{runs}x{per_run}"
    if rebuild and root.exists():
        shutil.rmtree(root)
    if root.exists():
        return root, None
    building = base / f".building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # Build in a child so this process stays small: a child's ru_maxrss starts
    # from its parent's high-water mark on Linux (it survives fork + exec).
    subprocess.run([sys.executable, __file__, "--build-ledger", str(building), str(runs), str(per_run)],
                   check=True)
    # Renaming a finished build makes an interrupted one invisible to later runs.
    os.rename(building, root)
    return root, time.perf_counter() - t0


OPEN_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import anyio
from artifact_ledger.facade import open_ledger
t_import = time.perf_counter() - t0
rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def hwm_kb():
    # VmHWM belongs to this process's own address space, unlike ru_maxrss,
    # which Linux carries over from the parent across fork + exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1

hwm_import = hwm_kb()
if sys.argv[2] == "nogc":
    import gc; gc.disable()

async def main():
    t = time.perf_counter()
    led = await open_ledger(sys.argv[1])
    dt = time.perf_counter() - t
    n = len(led.catalog.rows)
    head = led.head[0]
    await led.aclose()
    return dt, n, head

dt, n, head = anyio.run(main)
print(json.dumps({"open_s": dt, "artifacts": n, "head": head, "import_s": t_import,
                  "rss_import_kb": rss_import, "hwm_import_kb": hwm_import, "hwm_peak_kb": hwm_kb(),
                  "rss_peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def open_in_child(root: Path, mode: str = "gc") -> dict:
    env = dict(os.environ)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", OPEN_CHILD, str(root), mode], check=True,
                         capture_output=True, text=True, env=env)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


async def measure_queries(root: Path, cfg: dict, rng: random.Random) -> dict:
    runs = cfg["runs"]
    pc = time.perf_counter_ns
    async with open_ledger(root) as led:
        facs = [led.artifacts(run_id=f"run{r:03d}", graph_id="g0", node_id="n0", project_id="bench")
                for r in range(runs)]
        out: dict = {}

        async def timed(name: str, calls: int, make, check=None) -> None:
            ns, sizes = [], []
            for _ in range(calls):
                coro_fn = make()
                t = pc()
                res = await coro_fn()
                ns.append(pc() - t)
                sizes.append(0 if res is None else (len(res) if isinstance(res, list) else 1))
            out[name] = (ns, sizes)

        def best_call():
            fac = rng.choice(facs)
            kind = rng.choice(KINDS)
            metric = rng.choice(("loss", "acc"))
            mode = rng.choice(("max", "min"))
            return lambda: fac.best(kind=kind, metric=metric, mode=mode, scope="run")

        def best_filtered_call():
            fac = rng.choice(facs)
            kind = rng.choice(KINDS)
            split = rng.choice(SPLITS)
            return lambda: fac.best(kind=kind, metric="loss", mode="min", scope="run", filters={"split": split})

        def search_tag_all():
            fac = rng.choice(facs)
            tag = f"t{rng.randrange(1000)}"
            return lambda: fac.search(labels={"tag": tag}, scope="all")

        def search_tag_run():
            fac = rng.choice(facs)
            tag = f"t{rng.randrange(1000)}"
            return lambda: fac.search(labels={"tag": tag})

        def search_kind_split_run():
            fac = rng.choice(facs)
            kind = rng.choice(KINDS)
            split = rng.choice(SPLITS)
            return lambda: fac.search(kind=kind, labels={"split": split}, limit=100)

        def search_three_labels_all():
            fac = rng.choice(facs)
            tag = f"t{rng.randrange(1000)}"
            split = rng.choice(SPLITS)
            seed = rng.randrange(7)
            return lambda: fac.search(labels={"split": split, "seed": seed, "tag": tag}, scope="all")

        def search_ranked_run():
            fac = rng.choice(facs)
            kind = rng.choice(KINDS)
            return lambda: fac.search(kind=kind, metric="loss", mode="min", limit=10)

        b, s = cfg["best_calls"], cfg["search_calls"]
        await timed("best run", b, best_call)
        await timed("best run + filter", s, best_filtered_call)
        await timed("search tag, scope=all", s, search_tag_all)
        await timed("search tag, scope=run", s, search_tag_run)
        await timed("search kind+split, run, limit 100", s, search_kind_split_run)
        await timed("search split+seed+tag, all", s, search_three_labels_all)
        await timed("search kind, rank by metric, run, limit 10", s, search_ranked_run)
        return out


@contextlib.contextmanager
def checkpoints_aside(root: Path):
    """Hide a ledger's checkpoints (so opening replays the whole log), then put them back."""
    ck = root / "checkpoints"
    aside = root / "checkpoints.bench-aside"
    if ck.exists():
        ck.rename(aside)
    try:
        yield
    finally:
        shutil.rmtree(ck, ignore_errors=True)  # the one the replaying open wrote on close
        if aside.exists():
            aside.rename(ck)


def bench_big_ledger(cfg: dict, rebuild: bool, rng: random.Random) -> tuple[Path, dict]:
    runs, per_run = cfg["runs"], cfg["per_run"]
    n = runs * per_run
    root, built = cached_ledger(runs, per_run, rebuild)
    seg = sorted((root / "log").glob("*.seg"))
    log_bytes = sum(p.stat().st_size for p in seg)
    print(f"== ledger of {n:,} artifacts over {runs} runs ({per_run:,} per run; kinds {', '.join(KINDS)}; "
          f"labels split/seed/tag, tag matches {runs} artifacts; metrics loss + acc on half)")
    how = f"built in {built:.1f} s (fsync off, {CONCURRENCY} concurrent appends)" if built is not None else "cached"
    print(f"directory     {root} ({how}); log {log_bytes / 1e6:.1f} MB in {len(seg)} segment(s)")

    # Full replay: the checkpoints are moved aside for each open (and restored), so the
    # whole log is read and folded; then opens that load the checkpoint written on close.
    replays = []
    for _ in range(cfg["opens"]):
        with checkpoints_aside(root):
            replays.append(open_in_child(root))
    open_in_child(root)  # make sure a checkpoint at the head exists
    opens = [open_in_child(root) for _ in range(cfg["opens"])]
    assert all(o["artifacts"] == n for o in opens + replays), opens
    r_s = statistics.median(o["open_s"] for o in replays)
    print(f"open, full replay     {r_s * 1000:8.1f} ms median of {len(replays)} fresh processes, "
          "checkpoints moved aside "
          f"(each: " + ", ".join(f"{o['open_s'] * 1000:.0f}" for o in replays) + " ms)   "
          f"target {TARGETS['open']}: {verdict(r_s < 1.0)}")
    o_s = statistics.median(o["open_s"] for o in opens)
    print(f"open, with checkpoint {o_s * 1000:8.1f} ms median of {len(opens)} fresh processes "
          f"(each: " + ", ".join(f"{o['open_s'] * 1000:.0f}" for o in opens) + " ms)   "
          f"target {TARGETS['open']}: {verdict(o_s < 1.0)}")
    for label, group in (("full replay", replays), ("with checkpoint", opens)):
        rss = statistics.median(o["rss_peak_kb"] for o in group)
        hwm = statistics.median(o["hwm_peak_kb"] for o in group)
        hwm_imp = statistics.median(o["hwm_import_kb"] for o in group)
        print(f"peak RSS, {label:15s} {hwm / 1024:8.1f} MiB VmHWM of a process that only opens the ledger "
              f"({hwm_imp / 1024:.1f} MiB after imports, so ~{(hwm - hwm_imp) / 1024:.0f} MiB "
              f"for the ledger = {(hwm - hwm_imp) * 1024 / n:.0f} B/artifact; ru_maxrss {rss / 1024:.1f} MiB)")
    proc = statistics.median(o["process_s"] for o in opens)
    imp = statistics.median(o["import_s"] for o in opens)
    print(f"              whole child process {proc * 1000:.0f} ms, of which imports {imp * 1000:.0f} ms")

    res = anyio.run(measure_queries, root, cfg, rng)
    print("queries (one ledger opened in this process; each call timed alone, random runs/kinds/tags):")
    for name, (ns, sizes) in res.items():
        target = ""
        med = statistics.median(ns) / 1000
        if name == "best run":
            target = f"   target {TARGETS['best']}: {verdict(med < 100)}"
        elif name == "search tag, scope=all":
            target = f"   target {TARGETS['search']}: {verdict(med < 1000 and max(sizes) <= 100)}"
        print(f"  {name:44s} results {min(sizes)}-{max(sizes)} (median {statistics.median(sizes):g})")
        print(f"    {summary_us(ns)}{target}")
    print()
    return root, {"open_s": o_s, "rss_kb": rss}


# --------------------------------------------------------------------------- profiles
def print_profile(title: str, prof: cProfile.Profile, top: int) -> None:
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.strip_dirs().sort_stats("tottime").print_stats(top)
    print(f"---- profile: {title} (top {top} by tottime)")
    lines = buf.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    total = next((line for line in lines if "function calls" in line), "")
    print(total.strip())
    print("\n".join(lines[start:]).rstrip())
    print()


def profile_phases(root: Path, cfg: dict, tmp: Path, rng: random.Random, top: int) -> None:
    print("== cProfile of the slow paths (main thread only; worker-thread time shows as waits)")

    async def open_close() -> None:
        led = await open_ledger(root)
        await led.aclose()

    # Replay runs in a worker thread, so profile the thread body directly by
    # opening synchronously through the same code path the coroutine uses.
    import artifact_ledger.facade.ledger as fl

    import gc

    real = fl.anyio.to_thread.run_sync

    async def inline(fn, *a, **k):
        return fn(*a, **k)

    for gc_on in (True, False):
        prof = cProfile.Profile()
        fl.anyio.to_thread.run_sync = inline  # run the open in this thread so cProfile sees it
        if not gc_on:
            gc.disable()
        try:
            prof.enable()
            anyio.run(open_close)
            prof.disable()
        finally:
            fl.anyio.to_thread.run_sync = real
            gc.enable()
        # With the collector on, its pauses are charged to whichever builtin allocated.
        print_profile(f"open_ledger on {cfg['runs'] * cfg['per_run']:,} artifacts, "
                      f"cyclic GC {'on (default)' if gc_on else 'disabled'}", prof, top)

    async def queries(kind: str, calls: int) -> None:
        async with open_ledger(root) as led:
            facs = [led.artifacts(run_id=f"run{r:03d}", graph_id="g0", node_id="n0")
                    for r in range(cfg["runs"])]
            args = [(rng.choice(facs), rng.choice(KINDS), f"t{rng.randrange(1000)}") for _ in range(calls)]
            p = cProfile.Profile()
            p.enable()
            for fac, k, tag in args:
                if kind == "best":
                    await fac.best(kind=k, metric="loss", mode="min")
                else:
                    await fac.search(labels={"tag": tag}, scope="all")
            p.disable()
            print_profile(f"{calls} x {kind}", p, top)

    anyio.run(queries, "best", cfg["best_calls"] // 4)
    anyio.run(queries, "search tag scope=all", cfg["search_calls"] // 5)

    # Saves: time the worker-thread phases by wrapping them here (the core is untouched).
    from artifact_ledger.ledger.filelog import SegmentLog
    from artifact_ledger.store.local import LocalBlobStore

    orig_put, orig_append = LocalBlobStore.put_file, SegmentLog.append_batch

    def run_saves(label: str, fn, n: int) -> None:
        stats: dict[str, list] = {"put_file": [], "append_batch": [], "batch_sizes": []}

        def put_file(self, *a, **k):
            t = time.perf_counter()
            try:
                return orig_put(self, *a, **k)
            finally:
                stats["put_file"].append(time.perf_counter() - t)

        def append_batch(self, payloads, on_record):
            t = time.perf_counter()
            try:
                return orig_append(self, payloads, on_record)
            finally:
                stats["append_batch"].append(time.perf_counter() - t)
                stats["batch_sizes"].append(len(payloads))

        files = make_sources(tmp / f"prof-src-{label}", cfg["warm_saves"] + n, rng)
        p = cProfile.Profile()
        out: dict = {}

        async def session() -> None:
            async with open_ledger(tmp / f"prof-{label}") as led:
                await run_concurrent(led, files[:cfg["warm_saves"]])
                LocalBlobStore.put_file, SegmentLog.append_batch = put_file, append_batch
                try:
                    p.enable()
                    t0 = time.perf_counter()
                    out["rate"] = await fn(led, files[cfg["warm_saves"]:])
                    out["wall"] = time.perf_counter() - t0
                    p.disable()
                finally:
                    LocalBlobStore.put_file, SegmentLog.append_batch = orig_put, orig_append

        anyio.run(session)
        rate, wall = out["rate"], out["wall"]
        print_profile(f"{n} {label} saves, main thread", p, top)
        pf, ab, bs = stats["put_file"], stats["append_batch"], stats["batch_sizes"]
        print(f"{label} save phases ({rate:.0f} saves/s under profiling, wall {wall:.2f} s, "
              f"{wall / n * 1e6:.0f} us/save):")
        print(f"  store.put_file (worker thread): {len(pf)} calls, median {statistics.median(pf) * 1e6:.0f} us, "
              f"sum {sum(pf):.2f} s (~{sum(pf) / wall:.1f} threads busy on average)")
        print(f"  log.append_batch (group commit): {len(ab)} batches, median {statistics.median(ab) * 1e6:.0f} us, "
              f"sum {sum(ab):.2f} s ({sum(ab) / wall * 100:.0f}% of wall); batch size median "
              f"{statistics.median(bs):g}, mean {statistics.fmean(bs):.1f}, max {max(bs)}")
        print()

    run_saves("sequential", run_sequential, cfg["seq_saves"])
    run_saves("concurrent", run_concurrent, cfg["conc_saves"])


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (10k-artifact ledger, fewer saves)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached big ledger")
    ap.add_argument("--profile", action="store_true", help="also print cProfile hot spots")
    ap.add_argument("--top", type=int, default=22, help="rows per profile")
    ap.add_argument("--skip-saves", action="store_true", help="only the big-ledger part")
    ap.add_argument("--only-saves", action="store_true", help="only the saves and the large-file part")
    ap.add_argument("--large-mib", type=int, default=256, help="size of the large-file save (0 skips it)")
    ap.add_argument("--build-ledger", nargs=3, metavar=("DIR", "RUNS", "PER_RUN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_ledger:
        anyio.run(build_ledger, Path(args.build_ledger[0]), int(args.build_ledger[1]), int(args.build_ledger[2]))
        return
    cfg = QUICK if args.quick else FULL
    rng = random.Random(42)
    tmp_root = tempfile.gettempdir()
    print_machine(tmp_root)
    print(f"mode: {'quick' if args.quick else 'full'}; ledger cache key {CACHE_KEY}; targets are for a 2-core machine")
    print()
    work = Path(tempfile.mkdtemp(prefix="bench-facade-"))
    try:
        if not args.skip_saves:
            bench_saves(cfg, work, rng)
            if args.large_mib > 0:
                bench_large_save(work, args.large_mib, cfg["reps"])
        if not args.only_saves:
            root, _ = bench_big_ledger(cfg, args.rebuild, rng)
            if args.profile:
                profile_phases(root, cfg, work, rng, args.top)
        print(f"load average at the end: {loadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
