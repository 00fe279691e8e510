"""User projections (issue 10): live, past, one-shot and checkpointed lifecycles, isolation, upcasting."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import anyio
import msgspec
import pytest

from artifact_ledger import CheckpointWarning, ProjectionError, ProjectionWarning
from artifact_ledger.facade import projecting
from artifact_ledger.ledger import events as E
from artifact_ledger.ledger.events import ArtifactRecorded, register_upcaster
from artifact_ledger.projections.leaderboard import Leaderboard
from artifact_ledger.projections.storage import StorageAccounting

import backends
from backends import open_ledger  # the real one under the file backend; a schema of its own under postgres

# The lifecycles (live across processes, past, fold, registered with checkpoints) run on every log backend.
every_backend = pytest.mark.usefixtures("backend")

R = {"run_id": "r1", "graph_id": "g", "node_id": "n"}
APPLIED: list[int] = []  # seqs Counted.apply saw, to tell a checkpoint load from a full replay


class Counted:
    """Counts recordings and pins; notes every seq it applies (only for the tests' eyes)."""

    name = "counted"
    version = 1

    def initial(self):
        return {"recorded": 0, "pins": 0, "last": 0}

    def apply(self, state, event):
        APPLIED.append(event.seq)
        key = "recorded" if isinstance(event.event, ArtifactRecorded) else "pins"
        return {**state, key: state[key] + 1, "last": event.seq}

    def encode(self, state):
        return msgspec.json.encode(state)

    def decode(self, data):
        return msgspec.json.decode(data)


class CountedV2(Counted):
    version = 2


class Kinds:
    """Kinds seen, without a codec: never checkpointed."""

    name = "kinds"
    version = 1

    def initial(self):
        return frozenset()

    def apply(self, state, event):
        return state | {event.event.kind} if isinstance(event.event, ArtifactRecorded) else state


class Fragile:
    """Raises on the second recording."""

    name = "fragile"
    version = 1

    def initial(self):
        return 0

    def apply(self, state, event):
        if state == 1:
            raise ZeroDivisionError("the second recording")
        return state + 1


def save_many(led, tmp_path: Path, n: int, start: int = 0, **kw) -> list:
    """Save ``n`` small files; returns the artifacts."""
    async def go():
        arts = led.artifacts(**R, **kw)
        out = []
        for i in range(start, start + n):
            src = tmp_path / f"src{i}"
            src.write_bytes(b"content %d" % (i % 3))
            out.append(await arts.save(str(src), kind="model", metrics={"loss": (i * 7) % 5}))
        return out

    return go()


async def folded(led, projection):
    return await led.fold(projection)


# ------------------------------------------------------------ live
@every_backend
def test_live_state_follows_own_commits_at_once(root, tmp_path):
    async def main():
        async with open_ledger(root, fsync=False) as led:
            await save_many(led, tmp_path, 2)
            handle = await led.project(Counted())
            assert handle.state == {"recorded": 2, "pins": 0, "last": 2}
            [art] = await save_many(led, tmp_path, 1, start=2)
            # Read-your-writes: the commit was applied before save() returned.
            assert handle.seq == art.seq == 3 and handle.state["recorded"] == 3
            await led.artifacts(**R).pin(art.artifact_id)
            assert await handle.wait(4) == {"recorded": 3, "pins": 1, "last": 4}
            assert handle.state == await folded(led, Counted())

    anyio.run(main)


def child_target(root) -> list[str]:
    """How a child process opens the ledger at ``root`` on the current backend: [target, cache_dir?]."""
    if backends.log_kind() == "file":
        return [str(root)]  # with S3 blobs too: the directory remembers its blob place
    return [backends.url_for(backends.schema_for(root)), str(root)]


CHILD = textwrap.dedent("""
    import anyio, sys
    from artifact_ledger import open_ledger

    async def main():
        cache = {"cache_dir": sys.argv[3]} if len(sys.argv) > 3 else {}
        async with open_ledger(sys.argv[1], fsync=False, **cache) as led:
            arts = led.artifacts(run_id="other", graph_id="g", node_id="n")
            for i in range(int(sys.argv[2])):
                p = sys.argv[3 if cache else 1] + f"/../child{i}"
                open(p, "wb").write(b"child %d" % i)
                art = await arts.save(p, kind="image")
            print(art.seq)

    anyio.run(main)
""")


@every_backend
def test_live_state_picks_up_other_processes_commits(root, tmp_path):
    async def main():
        async with open_ledger(root, fsync=False) as led:
            await save_many(led, tmp_path, 1)
            counted, kinds = await led.project(Counted()), await led.project(Kinds())
            out = await anyio.run_process([sys.executable, "-c", CHILD, child_target(root)[0], "3",
                                           *child_target(root)[1:]])
            seq = int(out.stdout.decode().strip())
            assert seq == 4 and counted.seq == 1  # nothing read the log yet
            with anyio.fail_after(30):
                state = await counted.wait(seq)
            assert state["recorded"] == 4 and counted.seq == 4
            assert await kinds.refresh() == {"model", "image"}

    anyio.run(main)


@every_backend
def test_wait_refuses_bad_seqs_and_closed_handles(root, tmp_path):
    async def main():
        async with open_ledger(root, fsync=False) as led:
            handle = await led.project(Counted())
            for bad in (-1, "3", True, 1.5):
                with pytest.raises(ValueError, match="wait"):
                    await handle.wait(bad)
            handle.close()
            await save_many(led, tmp_path, 1)
            assert handle.seq == 0  # a closed handle is no longer fed
            with pytest.raises(ValueError, match="closed"):
                await handle.refresh()

    anyio.run(main)


# ------------------------------------------------------------ past and one-shot
@every_backend
def test_past_state_equals_folding_the_first_n_events(root, tmp_path):
    async def main():
        async with open_ledger(root, fsync=False) as led:
            arts = await save_many(led, tmp_path, 5)
            await led.artifacts(**R).pin(arts[1].artifact_id)
            for n in range(1, 7):
                view = await led.as_of(seq=n)
                past = await view.project(Counted())
                assert past.seq == n and past.state == await led.fold(Counted(), until=n)
                assert past.state["last"] == n
                assert await past.wait(n) == past.state
                with pytest.raises(ValueError, match="never reaches"):
                    await past.wait(n + 1)
            view = await led.as_of(time=arts[2].created_at)
            assert (await view.project(Kinds())).state == {"model"}

    anyio.run(main)


@every_backend
def test_fold_since_until_by_seq_and_time(root, tmp_path):
    async def main():
        async with open_ledger(root, fsync=False) as led:
            arts = await save_many(led, tmp_path, 4)
            assert (await led.fold(Counted(), since=2, until=3))["recorded"] == 2
            got = await led.fold(Counted(), since=arts[1].created_at, until=arts[2].created_at)
            assert got == {"recorded": 2, "pins": 0, "last": 3}
            assert await led.fold(Counted(), since=9) == Counted().initial()
            with pytest.raises(TypeError, match="since"):
                await led.fold(Counted(), since="2")

    anyio.run(main)


# ------------------------------------------------------------ registration and checkpoints
def _pckpt(root: Path, name: str = "counted", version: int = 1) -> Path:
    return root / "checkpoints" / "projections" / f"{name}.v{version}.pckpt"


@every_backend
def test_registered_projection_is_checkpointed_and_reopens_from_it(root, tmp_path):
    async def first():
        async with open_ledger(root, fsync=False, projections=[Counted(), Kinds()]) as led:
            await save_many(led, tmp_path, 3)

    async def second():
        APPLIED.clear()
        async with open_ledger(root, fsync=False, projections=[Counted(), Kinds()]) as led:
            assert APPLIED == []  # the checkpoint, no replay
            handle = await led.project(Counted())
            assert handle.state == {"recorded": 3, "pins": 0, "last": 3}
            assert (await led.project(Kinds())).state == {"model"}  # no codec: rebuilt from the log
            await save_many(led, tmp_path, 2, start=3)
        APPLIED.clear()
        # Without a final checkpoint (a crash after the appends), only the tail is replayed.
        _pckpt(root).write_bytes(ckpt_after_3)
        async with open_ledger(root, fsync=False, projections=[Counted()]) as led:
            assert APPLIED == [4, 5]
            assert (await led.project(Counted())).state == await led.fold(Counted())

    anyio.run(first)
    assert _pckpt(root).exists() and not _pckpt(root, "kinds").exists()
    ckpt_after_3 = _pckpt(root).read_bytes()
    anyio.run(second)


@every_backend
def test_register_on_an_open_ledger_catches_up_and_is_checkpointed_on_close(root, tmp_path):
    async def main():
        async with open_ledger(root, fsync=False) as led:
            await save_many(led, tmp_path, 3)
            assert await led.checkpoint() == 3
            handle = await led.register(Counted())
            assert handle.state["recorded"] == 3
            with pytest.raises(ValueError, match="already registered"):
                await led.register(CountedV2())
        # The catalogue's checkpoint was current; close still wrote the projection's.
        assert _pckpt(root).exists()

    anyio.run(main)


@every_backend
def test_a_new_version_rebuilds_from_the_log_with_a_warning(root, tmp_path):
    async def main():
        async with open_ledger(root, fsync=False, projections=[Counted()]) as led:
            await save_many(led, tmp_path, 2)
        APPLIED.clear()
        with pytest.warns(CheckpointWarning, match=r"now version 2.*counted\.v1\.pckpt"):
            async with open_ledger(root, fsync=False, projections=[CountedV2()]) as led:
                assert APPLIED == [1, 2]
                assert (await led.project(CountedV2())).state["recorded"] == 2
        assert _pckpt(root, version=2).exists() and not _pckpt(root).exists()

    anyio.run(main)


def _reopen_warns(root: Path, match: str) -> dict:
    async def main():
        APPLIED.clear()
        with pytest.warns(CheckpointWarning, match=match):
            async with open_ledger(root, fsync=False, projections=[Counted()]) as led:
                state = (await led.project(Counted())).state
                assert state == await led.fold(Counted())
                return state

    state = anyio.run(main)
    assert APPLIED[:state["last"]] == list(range(1, state["last"] + 1))  # rebuilt from the log
    return state


@pytest.mark.parametrize("where", ["header", "payload", "magic", "cut"])
@every_backend
def test_a_damaged_projection_checkpoint_is_rebuilt_from_the_log(root, tmp_path, where):
    async def build():
        async with open_ledger(root, fsync=False, projections=[Counted()]) as led:
            await save_many(led, tmp_path, 3)

    anyio.run(build)
    path = _pckpt(root)
    data = bytearray(path.read_bytes())
    if where == "cut":
        data = data[: len(data) // 2]
    else:
        data[{"magic": 0, "header": 12, "payload": len(data) - 2}[where]] ^= 0x40
    path.write_bytes(bytes(data))
    assert _reopen_warns(root, "ignoring the checkpoint of projection 'counted'")["recorded"] == 3


@every_backend
def test_a_checkpoint_of_another_log_is_rebuilt(root, tmp_path):
    """Same seq, other history: the log's hash at that seq decides (the log wins)."""
    other = tmp_path / "other"

    async def build(r, n):
        async with open_ledger(r, fsync=False, projections=[Counted()]) as led:
            await save_many(led, tmp_path, n, start=100 if r == other else 0)

    anyio.run(build, root, 3)
    anyio.run(build, other, 3)
    _pckpt(root).write_bytes(_pckpt(other).read_bytes())
    _reopen_warns(root, "does not match the log's record at seq 3")


@every_backend
def test_a_checkpoint_beyond_the_log_head_is_rebuilt(root, tmp_path):
    """A checkpoint at seq 5 on a log that ends at seq 2 (as accept_loss can leave it)."""
    five = tmp_path / "five"

    async def build(r, n):
        async with open_ledger(r, fsync=False, projections=[Counted()]) as led:
            await save_many(led, tmp_path, n)

    anyio.run(build, root, 2)
    anyio.run(build, five, 5)
    _pckpt(root).write_bytes(_pckpt(five).read_bytes())
    assert _reopen_warns(root, "at seq 5, beyond the log's head 2")["recorded"] == 2


@every_backend
def test_a_checkpoint_whose_decode_raises_is_rebuilt(root, tmp_path, monkeypatch):
    async def build():
        async with open_ledger(root, fsync=False, projections=[Counted()]) as led:
            await save_many(led, tmp_path, 2)

    anyio.run(build)
    monkeypatch.setattr(Counted, "decode", lambda self, data: msgspec.json.decode(data[1:]))
    _reopen_warns(root, "raised")


@every_backend
def test_a_failing_projection_checkpoint_write_warns_and_keeps_the_old_one(root, tmp_path, monkeypatch):
    if backends.on_s3():
        # The simulated disk failure is patched into the whole process, the S3 client included.
        pytest.skip("a test of projection checkpoint files, not of blobs")
    async def main():
        async with open_ledger(root, fsync=False, projections=[Counted()]) as led:
            await save_many(led, tmp_path, 2)
        before = _pckpt(root).read_bytes()

        def enospc(*a, **kw):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(projecting, "atomic_write", enospc)
        with pytest.warns(CheckpointWarning, match="No space left"):
            async with open_ledger(root, fsync=False, projections=[Counted()]) as led:
                await save_many(led, tmp_path, 1, start=2)
        assert _pckpt(root).read_bytes() == before
        monkeypatch.undo()
        async with open_ledger(root, fsync=False, projections=[Counted()]) as led:
            assert (await led.project(Counted())).state["recorded"] == 3

    anyio.run(main)


KILLED = textwrap.dedent("""
    import anyio, os, signal, sys
    sys.path.insert(0, sys.argv[2])
    from artifact_ledger import open_ledger
    from test_user_projections import Counted, save_many
    from pathlib import Path

    async def main():
        cache = {"cache_dir": sys.argv[3]} if len(sys.argv) > 3 else {}
        led = await open_ledger(sys.argv[1], fsync=True, checkpoint_every=3, projections=[Counted()], **cache)
        await save_many(led, Path(sys.argv[3] if cache else sys.argv[1]).parent, 10)
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no final checkpoint

    anyio.run(main)
""")


@every_backend
def test_after_sigkill_the_projection_reopens_at_the_log_head(root, tmp_path):
    if backends.on_s3():
        # Its child process creates the ledger, with the default local blobs.
        pytest.skip("a test of projection checkpoint files, not of blobs")
    target, *cache = child_target(root)
    proc = subprocess.run([sys.executable, "-c", KILLED, target, str(Path(__file__).parent), *cache],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    async def main():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)
            async with open_ledger(root, fsync=False, projections=[Counted()]) as led:
                assert (await led.project(Counted())).state == await led.fold(Counted())
                return led.head[0]

    assert anyio.run(main) == 10


# ------------------------------------------------------------ isolation
@every_backend
def test_a_raising_projection_is_isolated(root, tmp_path):
    async def main():
        async with open_ledger(root, fsync=False, projections=[Counted(), Fragile()]) as led:
            fragile = await led.project(Fragile())
            with pytest.warns(ProjectionWarning, match=r"'fragile' \(version 1\) raised at seq 2"):
                arts = await save_many(led, tmp_path, 3)
            assert [a.seq for a in arts] == [1, 2, 3]  # the ledger goes on
            assert (await led.project(Counted())).state["recorded"] == 3  # and so do the others
            with pytest.raises(ProjectionError) as info:
                _ = fragile.state
            assert info.value.name == "fragile" and info.value.seq == 2
            assert isinstance(info.value.cause, ZeroDivisionError)
            with pytest.raises(ProjectionError):
                await fragile.wait(3)
            assert len(await led.artifacts(**R).list()) == 3
        assert not _pckpt(root, "fragile").exists() and _pckpt(root).exists()

        # Registered and raising while the ledger opens: the ledger opens all the same.
        with pytest.warns(ProjectionWarning, match="seq 2"):
            async with open_ledger(root, fsync=False, projections=[Fragile(), Counted()]) as led:
                assert (await led.project(Counted())).state["recorded"] == 3
                assert (await led.project(Fragile())).error.seq == 2

    anyio.run(main)


@every_backend
def test_a_raising_one_shot_or_past_fold_names_projection_and_seq(root, tmp_path):
    async def main():
        async with open_ledger(root, fsync=False) as led:
            await save_many(led, tmp_path, 3)
            with pytest.raises(ProjectionError, match="'fragile'.*seq 2"):
                await led.fold(Fragile())
            with pytest.raises(ProjectionError, match="seq 2"):
                await (await led.as_of(seq=3)).project(Fragile())
            assert (await (await led.as_of(seq=1)).project(Fragile())).state == 1

    anyio.run(main)


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad, error, match", [
    (object(), TypeError, "needs a name"),
    (type("P", (), {"name": "a/b", "version": 1}), TypeError, "needs a name"),
    (type("P", (), {"name": "p", "version": 0}), TypeError, "needs a version"),
    (type("P", (), {"name": "p", "version": True}), TypeError, "needs a version"),
    (type("P", (), {"name": "p", "version": 1, "initial": lambda s: 0}), TypeError, "no apply"),
    (type("P", (), {"name": "p", "version": 1, "initial": lambda s: 0, "apply": lambda s, a, b: a,
                    "encode": lambda s, x: b""}), TypeError, "both encode"),
])
def test_bad_projections_are_refused_before_anything_is_created(root, bad, error, match):
    async def main():
        await open_ledger(root, projections=[bad])

    with pytest.raises(error, match=match):
        anyio.run(main)
    assert not root.exists()


def test_bad_projection_lists_are_refused_before_anything_is_created(root):
    for bad, match in ((Counted(), "list of projections"), ("counted", "list of projections"),
                       ([Counted(), CountedV2()], "twice")):
        with pytest.raises((TypeError, ValueError), match=match):
            anyio.run(_open, root, bad)
        assert not root.exists()


async def _open(root, projections):
    async with open_ledger(root, projections=projections):
        pass


@every_backend
def test_read_only_ledgers_project_but_never_write_checkpoints(root, tmp_path):
    async def main():
        async with open_ledger(root, fsync=False) as led:
            await save_many(led, tmp_path, 2)
        async with open_ledger(root, read_only=True, projections=[Counted()]) as led:
            assert (await led.project(Counted())).state["recorded"] == 2
        assert not _pckpt(root).exists()

    anyio.run(main)


# ------------------------------------------------------------ upcasting
def test_register_upcaster_refuses_bad_steps(monkeypatch):
    monkeypatch.setattr(E, "UPCASTERS", {})
    with pytest.raises(ValueError, match="unknown event type"):
        register_upcaster("artifact.teleported", 1)
    with pytest.raises(ValueError, match="from_version"):
        register_upcaster("artifact.pin", 0)
    register_upcaster("artifact.pin", 1)(lambda raw: raw)
    with pytest.raises(ValueError, match="already registered"):
        register_upcaster("artifact.pin", 1)(lambda raw: raw)


@every_backend
def test_a_projection_written_against_v1_keeps_working_after_an_upcast(root, tmp_path, monkeypatch):
    """Records written as v1, read by a (pretend) release whose events are v2: every projection
    lifecycle sees upcast events, and the v1 projections give the same answers."""
    async def build():
        async with open_ledger(root, fsync=False) as led:
            await save_many(led, tmp_path, 4)

    anyio.run(build)

    async def answers():
        async with open_ledger(root, fsync=False, projections=[StorageAccounting()]) as led:
            board = await led.project(Leaderboard({"loss": "min"}))
            past = await (await led.as_of(seq=2)).project(Counted())
            seen = [(e.event.v, e.event.labels) async for e in led.events()]
            return (board.state, (await led.project(StorageAccounting())).state, past.state,
                    await led.fold(Counted())), seen

    before, seen = anyio.run(answers)
    assert seen == [(1, {})] * 4
    monkeypatch.setattr(E, "UPCASTERS", {})
    monkeypatch.setattr(E, "SCHEMA_VERSION", 2)

    # What v2 adds (a label) is something the v1 projections never look at.
    @register_upcaster("artifact.recorded", 1)
    def recorded_v1(raw):
        return {**raw, "labels": {**raw["labels"], "schema": "v2"}}

    register_upcaster("artifact.pin", 1)(lambda raw: raw)
    shutil_rm(root / "checkpoints")
    after, seen = anyio.run(answers)
    assert seen == [(2, {"schema": "v2"})] * 4  # the upcaster ran on every read
    assert after == before


def shutil_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


@every_backend
def test_background_checkpoints_carry_the_registered_projections(root, tmp_path):
    async def main():
        async with open_ledger(root, fsync=False, checkpoint_every=2, projections=[Counted()]) as led:
            await save_many(led, tmp_path, 5)
            await led._join_checkpoint()
            path = _pckpt(root)
            seq, _, payload = projecting.read_checkpoint(str(path), projecting.check(Counted()))
            assert seq >= 2 and msgspec.json.decode(payload)["last"] == seq  # written before close

    anyio.run(main)


@every_backend
@backends.file_only  # temporary checkpoint files of dead processes, on disk
def test_open_sweeps_projection_checkpoint_temps_of_dead_processes(root, tmp_path):
    from test_sweep import _dead_owner_tag

    async def build():
        async with open_ledger(root, fsync=False, projections=[Counted()]) as led:
            await save_many(led, tmp_path, 1)

    anyio.run(build)
    dead = root / "checkpoints" / "projections" / f"counted.v1.pckpt.{_dead_owner_tag()}.{'b' * 32}.tmp"
    dead.write_bytes(b"half written")
    anyio.run(build)
    assert not dead.exists() and _pckpt(root).exists()


def test_the_blocking_api_runs_projections(root, tmp_path):
    from artifact_ledger.sync import open_ledger as open_sync

    src = tmp_path / "f"
    src.write_bytes(b"x")
    with open_sync(root, fsync=False, projections=[Counted()]) as led:
        handle = led.project(Counted())
        art = led.artifacts(**R).save(str(src), kind="model")
        assert handle.wait(art.seq)["recorded"] == 1 and handle.seq == 1
        assert led.fold(Counted()) == handle.state == handle.refresh()
        assert led.as_of(seq=1).project(Kinds()).state == {"model"}
        assert led.register(Kinds()).state == {"model"}


def test_a_cancelled_wait_leaves_the_handle_live(root, tmp_path):
    """wait() for a seq nobody commits is bounded by the caller's timeout; the handle goes on afterwards."""
    async def main():
        async with open_ledger(root, fsync=False) as led:
            handle = await led.project(Counted())
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.2):
                    await handle.wait(1, poll=0.01)
            await save_many(led, tmp_path, 1)
            with anyio.fail_after(10):
                assert (await handle.wait(1))["recorded"] == 1

    anyio.run(main)


def test_an_encode_that_fails_skips_that_checkpoint_only(root, tmp_path, monkeypatch):
    monkeypatch.setattr(Counted, "encode", lambda self, state: "not bytes")

    async def main():
        with pytest.warns(ProjectionWarning, match="not checkpointed.*'counted'.*not bytes"):
            async with open_ledger(root, fsync=False, projections=[Counted(), Leaderboard()]) as led:
                await save_many(led, tmp_path, 2)
        assert not _pckpt(root).exists() and _pckpt(root, "leaderboard", Leaderboard.version).exists()
        assert (root / "checkpoints" / f"{2:020d}.ckpt").exists()  # the catalogue's too

    anyio.run(main)
