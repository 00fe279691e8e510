"""Kill campaign: writer processes SIGKILLed at random (seeded) moments; every acknowledged write must
survive, the chain stay intact and verify() pass.

Each round starts 1-3 writer processes on one ledger root. A writer reports through its own append-only
report file, one line per event, each written only after the call it reports returned:
``opening`` / ``opened`` around ``open_ledger``, ``ack <id> <seq> <sha256>`` per save, ``pin <id> <seq>``
per pin, ``ckpt`` / ``ckpt-done`` around an explicit ``checkpoint()``. The parent kills each writer at
its own moment: while it opens (recovery), inside a checkpoint (``checkpoint_every`` is small, so
background checkpoints run too), or at a random time of its work. Every other round, and at the end, the
parent reopens the ledger and re-checks every write acknowledged so far (so half the rounds' writers
recover a log just left by killed writers). Used by ``tests/test_kill_campaign.py`` (bounded) and
``benchmarks/kill_campaign.py`` (150+ points).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

SEGMENT_BYTES = 64 * 1024
CHECKPOINT_EVERY = 5
TRIGGER_WAIT = 30.0  # seconds to wait for a writer to reach its kill trigger before killing it anyway
MODES = ("open", "checkpoint", "run", "run")


# ============================================================================ writer (child process)
def writer_main(root: str, report: str, scratch: str, seed: int, bug: str | None = None) -> None:
    """Child: open the ledger, then save, pin and checkpoint forever, reporting each returned call."""
    import anyio

    if bug is not None:
        _put_bug(bug)
    anyio.run(_writer, root, report, scratch, seed)


def _put_bug(bug: str) -> None:
    """A deliberate bug, to prove the campaign notices lost acknowledged writes."""
    from artifact_ledger.ledger import filelog

    if bug != "held_batch":
        raise ValueError(f"unknown bug {bug!r}")
    real = filelog.SegmentLog._write
    held: dict[int, tuple[bytes, int]] = {}

    def write_late(self, buf, start):
        # The bug: a batch is acknowledged while its bytes wait in memory for the next batch.
        old = held.pop(id(self), None)
        if old is None:
            held[id(self)] = (bytes(buf), start)
            self._end = start + len(buf)
            return
        data, ostart = old
        real(self, bytearray(data) + buf, ostart)

    filelog.SegmentLog._write = write_late


async def _writer(root: str, report: str, scratch: str, seed: int) -> None:
    import anyio

    from artifact_ledger import open_ledger

    fd = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def say(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    rng = random.Random(seed)
    os.makedirs(scratch, exist_ok=True)
    n = 0
    acked: list[str] = []

    async def save(fa) -> None:
        nonlocal n
        n += 1
        data = f"{seed}:{n}:".encode() + rng.randbytes(rng.choice([0, 40, 900, 6000, 30000]))
        src = os.path.join(scratch, f"{n}.bin")
        with open(src, "wb") as f:
            f.write(data)
        art = await fa.save(src, kind="blob", labels={"seed": seed, "n": n}, metrics={"n": n})
        say(f"ack {art.artifact_id} {art.seq} {hashlib.sha256(data).hexdigest()}")
        acked.append(art.artifact_id)

    say("opening")
    async with open_ledger(root, segment_bytes=SEGMENT_BYTES, checkpoint_every=CHECKPOINT_EVERY) as led:
        say("opened")
        fa = led.artifacts(run_id=f"w{seed}", graph_id="g", node_id="n")
        while True:
            r = rng.random()
            if r < 0.08 and acked:
                target = rng.choice(acked)
                await fa.pin(target)
                say(f"pin {target} {led.head[0]}")
            elif r < 0.2:
                say("ckpt")
                await led.checkpoint()
                say("ckpt-done")
            elif r < 0.35:
                async with anyio.create_task_group() as tg:  # a burst sharing group commits
                    for _ in range(rng.randint(2, 6)):
                        tg.start_soon(save, fa)
            else:
                await save(fa)


# ============================================================================ parent: the campaign
@dataclass
class CampaignTally:
    """What a campaign did and found."""

    rounds: int = 0
    writers_killed: int = 0
    killed_opening: int = 0  # killed after "opening", before "opened": during open / recovery
    killed_in_checkpoint: int = 0  # killed inside an explicit checkpoint() call
    checks: int = 0  # reopens that re-checked everything acknowledged so far
    acknowledged: int = 0  # distinct acknowledged writes (saves and pins)
    rechecked: int = 0  # acknowledged writes re-checked, summed over checks
    lost: int = 0
    unopenable: int = 0
    verify_failed: int = 0
    writers_crashed: int = 0  # writers that died before being killed (an error in the library)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One-line summary."""
        return (f"{self.rounds} rounds, {self.writers_killed} writers killed ({self.killed_opening} while "
                f"opening, {self.killed_in_checkpoint} inside checkpoint()), {self.checks} reopen checks, "
                f"{self.acknowledged} acknowledged writes, {self.rechecked} re-checked: {self.lost} lost, "
                f"{self.unopenable} unopenable, {self.verify_failed} verify failures, "
                f"{self.writers_crashed} writers crashed")


@dataclass
class _Writer:
    proc: multiprocessing.Process
    report: Path
    mode: str
    delay: float
    nth_ckpt: int
    started: float
    trigger_at: float | None = None
    killed: bool = False


def _lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return data.decode().split("\n")[:-1]  # only complete lines


def _trigger(w: _Writer, lines: list[str]) -> bool:
    if w.mode == "open":
        return "opening" in lines
    if w.mode == "checkpoint":
        return lines.count("ckpt") >= w.nth_ckpt
    return "opened" in lines


def _context():
    ctx = multiprocessing.get_context("forkserver")
    # Writers fork from a server that has the library imported already: a round costs no imports.
    ctx.set_forkserver_preload(["artifact_ledger", "killcampaign"])
    return ctx


def run_campaign(workdir: Path, points: int, seed: int, *, bug: str | None = None,
                 stop_on_failure: bool = False, progress=None) -> CampaignTally:
    """Kill ``points`` writer processes (1-3 per round) and check after every other round and at the end."""
    ctx = _context()
    rng = random.Random(seed)
    root = workdir / "ledger"
    tally = CampaignTally()
    acked: dict[str, tuple[int, str]] = {}
    pins: set[str] = set()
    reports: list[Path] = []
    while tally.writers_killed + tally.writers_crashed < points:
        tally.rounds += 1
        writers = []
        for k in range(min(rng.randint(1, 3), points - tally.writers_killed - tally.writers_crashed)):
            mode = rng.choice(MODES)
            delay = {"open": rng.uniform(0, 0.03), "checkpoint": rng.uniform(0, 0.004)}.get(
                mode, rng.uniform(0.01, 0.4))
            report = workdir / f"report-{tally.rounds}-{k}"
            reports.append(report)
            proc = ctx.Process(target=writer_main, daemon=True,
                               args=(str(root), str(report), str(workdir / f"src-{tally.rounds}-{k}"),
                                     rng.randrange(1 << 30), bug))
            proc.start()
            writers.append(_Writer(proc, report, mode, delay, rng.randint(1, 2), time.monotonic()))
        _kill_all(writers, tally)
        last = tally.writers_killed + tally.writers_crashed >= points
        if tally.rounds % 2 == 0 or last:
            _collect(reports, acked, pins)
            _check(root, acked, pins, tally)
            if progress is not None:
                progress(tally)
            if stop_on_failure and tally.failures:
                break
    return tally


def _kill_all(writers: list[_Writer], tally: CampaignTally) -> None:
    while not all(w.killed for w in writers):
        now = time.monotonic()
        for w in writers:
            if w.killed:
                continue
            lines = _lines(w.report)
            if w.proc.exitcode is not None:
                w.killed = True
                tally.writers_crashed += 1
                tally.failures.append(f"round {tally.rounds}: writer {w.proc.pid} exited by itself "
                                      f"(exit code {w.proc.exitcode}); last reports {lines[-3:]}")
                continue
            if w.trigger_at is None and (_trigger(w, lines) or now - w.started > TRIGGER_WAIT):
                w.trigger_at = now + w.delay
            if w.trigger_at is not None and now >= w.trigger_at:
                os.kill(w.proc.pid, signal.SIGKILL)
                w.proc.join()
                w.killed = True
                tally.writers_killed += 1
                lines = _lines(w.report)
                if "opening" in lines and "opened" not in lines:
                    tally.killed_opening += 1
                elif lines.count("ckpt") > lines.count("ckpt-done"):
                    tally.killed_in_checkpoint += 1
        time.sleep(0.0005)


def _collect(reports: list[Path], acked: dict[str, tuple[int, str]], pins: set[str]) -> None:
    for report in reports:
        for line in _lines(report):
            parts = line.split()
            if parts[0] == "ack":
                acked[parts[1]] = (int(parts[2]), parts[3])
            elif parts[0] == "pin":
                pins.add(parts[1])


def _check(root: Path, acked: dict[str, tuple[int, str]], pins: set[str], tally: CampaignTally) -> None:
    import anyio

    from logcheck import check_chain

    tally.checks += 1
    tally.acknowledged = len(acked) + len(pins)
    tally.rechecked += len(acked) + len(pins)
    outcome, detail, lost = anyio.run(_reopen_and_check, root, acked, pins)
    if outcome == "ok":
        try:
            check_chain(root)  # the independent parser agrees: framing, seq, hash chain
        except AssertionError as exc:
            outcome, detail = "verify", f"independent chain check: {exc}"
    if outcome != "ok":
        tally.lost += lost
        tally.unopenable += outcome == "unopenable"
        tally.verify_failed += outcome == "verify"
        tally.failures.append(f"after round {tally.rounds}: {outcome}: {detail}")


async def _reopen_and_check(root: Path, acked: dict[str, tuple[int, str]],
                            pins: set[str]) -> tuple[str, str, int]:
    from artifact_ledger import open_ledger

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torn tails of killed writers are expected
        try:
            led = await open_ledger(root, create=False, segment_bytes=SEGMENT_BYTES,
                                    checkpoint_every=CHECKPOINT_EVERY)
        except Exception as exc:  # noqa: BLE001 - any failure to open is a finding
            return "unopenable", f"{type(exc).__name__}: {exc}", 0
        try:
            fa = led.artifacts(run_id="c", graph_id="g", node_id="n")
            arts = {a.artifact_id: a for a in await fa.list(scope="all")}
            lost = []
            for aid, (seq, sha) in acked.items():
                a = arts.get(aid)
                if a is None or a.seq != seq or a.sha256 != sha:
                    lost.append(aid)
            lost += [aid for aid in pins if aid not in arts or not arts[aid].pinned]
            if lost:
                return "lost", f"{len(lost)} acknowledged writes missing or changed, e.g. {lost[:3]}", len(lost)
            # verify() re-hashes every blob, so equal sha256 fields above mean equal bytes.
            result = await led.verify()
            if not result.ok:
                return "verify", str(result.problem), 0
            return "ok", "", 0
        finally:
            await led.aclose()
