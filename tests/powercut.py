"""Power-loss simulation: record every disk-changing call of a real workload, then build the images a
power cut could leave behind.

Child side (``Recorder``): installed in a fresh process *before* the library is imported, it wraps the
``os`` functions the library mutates the disk with (``open``/``write``/``pwrite``/``ftruncate``/
``fsync``/``fdatasync``/``rename``/``replace``/``link``/``unlink``/``mkdir``/``rmdir``, ...), routes
writing ``open()``/``Path.write_*`` through the pure-Python ``_pyio`` (whose file objects write with
``os.write``), makes ``shutil`` copy through them, records the ledger's ``syncfs``, and refuses
(raises) the calls it does not model (``writev``, ``sendfile``, ``copy_file_range``, writable
``mmap``, ``symlink``, ...) on anything under the recorded directory. Every recorded call is run and
logged under one lock, so the log order is the order the calls took effect in.

Parent side (``Model``): replays the trace into a model of the filesystem that keeps, per inode, the
current bytes and the bytes as of its last fsync/fdatasync (or a syncfs), and per directory the current
entries and the entries as of its last fsync. The *surviving image* at a cut point is the pessimistic
POSIX one: only names made durable by a directory fsync and only data made durable by a file fsync;
unsynced appends are dropped, or (the ``torn`` variant) kept up to a page boundary. The *subset*
variants keep some unflushed writes and drop others, as a filesystem may write back any of them before
the cut: unflushed names (renames, creations, removals) kept while unflushed bytes are dropped (a
renamed file survives empty or short), the log's unflushed appends kept while blob bytes and/or names
are dropped. ``Model`` also
checks that the trace explains the final disk byte for byte, so a write path the recorder misses fails
loudly instead of being silently left out of the model.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import io
import mmap
import os
import pickle
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE = 4096
MARKER_NAME = "ARTIFACT-LEDGER"


class UnmodelledCall(RuntimeError):
    """The workload changed the recorded directory in a way the model cannot replay."""


class ModelMismatch(AssertionError):
    """The trace does not explain the disk: some mutating call went unrecorded."""


# ============================================================================ child side: recording
class Recorder:
    """Wraps the mutating ``os`` calls and records those that touch ``anchor`` (child process only)."""

    def __init__(self, anchor: str):
        self.anchor = os.path.realpath(anchor)
        self.trace: list[tuple] = [("anchor", self.anchor, os.stat(self.anchor).st_ino)]
        self.lock = threading.RLock()
        self.real: dict[str, Any] = {}
        self.patched: list[tuple[Any, str, Any]] = []

    # ----------------------------------------------------------------- helpers
    def under(self, path: str | None) -> bool:
        """Whether an absolute path lies inside the recorded directory."""
        return path is not None and (path == self.anchor or path.startswith(self.anchor + os.sep))

    def _fd_path(self, fd: int) -> str | None:
        try:
            p = self.real["readlink"](f"/proc/self/fd/{fd}")
        except OSError:
            return None
        return p[: -len(" (deleted)")] if p.endswith(" (deleted)") else p

    def _abs(self, path: Any, dir_fd: int | None = None) -> str:
        p = os.fsdecode(os.fspath(path))
        if dir_fd is not None and not os.path.isabs(p):
            base = self._fd_path(dir_fd)
            if base is None:
                raise UnmodelledCall(f"cannot resolve dir_fd {dir_fd}")
            p = os.path.join(base, p)
        return os.path.normpath(os.path.abspath(p))

    def _fd_ino(self, fd: int) -> tuple[str | None, int]:
        st = os.fstat(fd)
        return self._fd_path(fd), st.st_ino

    def record(self, *op: Any) -> None:
        """Append an entry to the trace (acknowledgements and marks come from the workload)."""
        with self.lock:
            self.trace.append(op)

    # ----------------------------------------------------------------- install
    def _patch(self, obj: Any, name: str, new: Any) -> None:
        self.patched.append((obj, name, getattr(obj, name)))
        setattr(obj, name, new)

    def install(self) -> None:
        """Patch os, open and friends. Call before importing the library (it binds some at import)."""
        r = self.real
        for name in ("open", "write", "pwrite", "ftruncate", "truncate", "fsync", "fdatasync",
                     "rename", "replace", "link", "unlink", "remove", "mkdir", "rmdir", "chmod", "readlink"):
            r[name] = getattr(os, name)
        r["builtins_open"] = builtins.open
        lock = self.lock
        rec = self.trace.append

        def w_open(path, flags, mode=0o777, *, dir_fd=None):
            p = self._abs(path, dir_fd)
            with lock:
                fd = r["open"](path, flags, mode, dir_fd=dir_fd)
                if self.under(p):
                    st = os.fstat(fd)
                    rec(("open", p, flags, st.st_ino, stat.S_ISDIR(st.st_mode)))
            return fd

        def w_write(fd, data):
            with lock:
                path, ino = self._fd_ino(fd)
                if not self.under(path):
                    return r["write"](fd, data)
                append = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
                off = os.fstat(fd).st_size if append else os.lseek(fd, 0, os.SEEK_CUR)
                n = r["write"](fd, data)
                rec(("write", ino, off, bytes(memoryview(data)[:n])))
                return n

        def w_pwrite(fd, data, offset):
            with lock:
                path, ino = self._fd_ino(fd)
                n = r["pwrite"](fd, data, offset)
                if self.under(path):
                    rec(("write", ino, offset, bytes(memoryview(data)[:n])))
                return n

        def w_ftruncate(fd, length):
            with lock:
                path, ino = self._fd_ino(fd)
                r["ftruncate"](fd, length)
                if self.under(path):
                    rec(("truncate", ino, length))

        def w_truncate(path, length):
            if isinstance(path, int):
                return w_ftruncate(path, length)
            p = self._abs(path)
            with lock:
                r["truncate"](path, length)
                if self.under(p):
                    rec(("truncate", os.stat(p).st_ino, length))

        def make_sync(name):
            def w_sync(fd):
                with lock:
                    path, ino = self._fd_ino(fd)
                    r[name](fd)
                    if self.under(path):
                        rec(("fsync", ino, path, name))
            return w_sync

        def make_move(name, kind):
            def w_move(src, dst, *, src_dir_fd=None, dst_dir_fd=None, **kw):
                s, d = self._abs(src, src_dir_fd), self._abs(dst, dst_dir_fd)
                with lock:
                    r[name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, **kw)
                    if self.under(s) != self.under(d):
                        raise UnmodelledCall(f"os.{name} across the recorded directory: {s} -> {d}")
                    if self.under(s):
                        rec((kind, s, d, os.lstat(d).st_ino))
            return w_move

        def make_remove(name, kind):
            def w_remove(path, *, dir_fd=None):
                p = self._abs(path, dir_fd)
                with lock:
                    r[name](path, dir_fd=dir_fd)
                    if self.under(p):
                        rec((kind, p))
            return w_remove

        def w_mkdir(path, mode=0o777, *, dir_fd=None):
            p = self._abs(path, dir_fd)
            with lock:
                r["mkdir"](path, mode, dir_fd=dir_fd)
                if self.under(p):
                    rec(("mkdir", p, os.lstat(p).st_ino))

        def w_chmod(path, mode, *, dir_fd=None, follow_symlinks=True):
            with lock:
                r["chmod"](path, mode, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

        def refuse(name):
            real = getattr(os, name)

            def w(*args, **kw):
                for a in args[:2]:
                    p = self._fd_path(a) if isinstance(a, int) else (
                        self._abs(a) if isinstance(a, (str, bytes, os.PathLike)) else None)
                    if self.under(p):
                        raise UnmodelledCall(f"os.{name} on {p} is not modelled by the power-loss recorder")
                return real(*args, **kw)
            return w

        import _pyio

        def w_builtin_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
                           closefd=True, opener=None):
            if any(c in mode for c in "wax+"):
                # _pyio's FileIO writes, seeks and truncates through os.*, i.e. through the wrappers.
                return _pyio.open(file, mode, buffering, encoding, errors, newline, closefd, opener)
            return r["builtins_open"](file, mode, buffering, encoding, errors, newline, closefd, opener)

        real_mmap = mmap.mmap

        def w_mmap(fileno, length, *args, **kw):
            access = kw.get("access", mmap.ACCESS_DEFAULT)
            prot = kw.get("prot", mmap.PROT_READ | mmap.PROT_WRITE)
            writable = access in (mmap.ACCESS_WRITE, mmap.ACCESS_COPY) or (
                access == mmap.ACCESS_DEFAULT and prot & mmap.PROT_WRITE)
            if writable and fileno != -1 and self.under(self._fd_path(fileno)):
                raise UnmodelledCall("a writable mmap of a ledger file is not modelled")
            return real_mmap(fileno, length, *args, **kw)

        self._patch(os, "open", w_open)
        self._patch(os, "write", w_write)
        self._patch(os, "pwrite", w_pwrite)
        self._patch(os, "ftruncate", w_ftruncate)
        self._patch(os, "truncate", w_truncate)
        self._patch(os, "fsync", make_sync("fsync"))
        self._patch(os, "fdatasync", make_sync("fdatasync"))
        self._patch(os, "rename", make_move("rename", "rename"))
        self._patch(os, "replace", make_move("replace", "rename"))
        self._patch(os, "link", make_move("link", "link"))
        self._patch(os, "unlink", make_remove("unlink", "unlink"))
        self._patch(os, "remove", make_remove("remove", "unlink"))
        self._patch(os, "rmdir", make_remove("rmdir", "rmdir"))
        self._patch(os, "mkdir", w_mkdir)
        self._patch(os, "chmod", w_chmod)
        for name in ("writev", "pwritev", "sendfile", "copy_file_range", "splice", "posix_fallocate",
                     "symlink", "mkfifo", "mknod"):
            if hasattr(os, name):
                self._patch(os, name, refuse(name))
        self._patch(builtins, "open", w_builtin_open)
        self._patch(io, "open", w_builtin_open)
        self._patch(mmap, "mmap", w_mmap)
        import shutil

        # Make copyfile write through open() instead of sendfile/copy_file_range.
        for flag in ("_USE_CP_SENDFILE", "_USE_CP_COPY_FILE_RANGE", "_HAS_FCOPYFILE"):
            if hasattr(shutil, flag):
                self._patch(shutil, flag, False)

    def hook_syncfs(self, durable_module: Any) -> None:
        """Record the library's syncfs(2) (a ctypes call, not an os function)."""
        real = durable_module._syncfs
        if real is None:
            return
        lock = self.lock

        def w_syncfs(fd):
            with lock:
                rc = real(fd)
                if rc == 0:
                    self.trace.append(("syncfs", self._fd_path(fd)))
                return rc

        self._patch(durable_module, "_syncfs", w_syncfs)

    def uninstall(self) -> None:
        """Undo every patch, newest first."""
        for obj, name, old in reversed(self.patched):
            setattr(obj, name, old)
        self.patched.clear()

    def dump(self, path: str) -> None:
        """Write the trace for the parent process."""
        with self.lock, open(path, "wb") as f:
            pickle.dump(self.trace, f, protocol=pickle.HIGHEST_PROTOCOL)


# ============================================================================ parent side: the model
@dataclass
class Node:
    """One inode: a file (bytes now and as of its last flush) or a directory (entries now and durable)."""

    ino: int
    is_dir: bool
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    entries: dict[str, int] = field(default_factory=dict)
    durable_entries: dict[str, int] = field(default_factory=dict)
    snap: bytes | None = None  # bytes(data), cached until the next change (images are built often)

    def current(self) -> bytes:
        """The file's bytes now (shared, immutable)."""
        if self.snap is None:
            self.snap = bytes(self.data)
        return self.snap

    def flush(self) -> None:
        """Make the current bytes (or entries) durable."""
        if self.is_dir:
            self.durable_entries = dict(self.entries)
        else:
            self.durable = self.current()


@dataclass(frozen=True)
class Ack:
    """An acknowledged write: the call returned with this artifact id (and seq) before the cut."""

    index: int
    what: str  # "file", "dir" or "pin"
    artifact_id: str
    seq: int
    expect: Any  # sha256 hex of the bytes, {relpath: sha256} of a directory, or True for a pin


def is_marker(name: str) -> bool:
    """Whether a file name belongs to writing the ledger marker (the marker or a temp file for it)."""
    return MARKER_NAME in name


class Model:
    """The filesystem as a trace leaves it: what is there now, and what a power cut keeps."""

    def __init__(self, trace: list[tuple], *, trust_creation: bool = False):
        kind, anchor, ino = trace[0]
        assert kind == "anchor"
        self.anchor = anchor
        self.trace = trace
        self.trust_creation = trust_creation
        self.nodes: dict[int, Node] = {ino: Node(ino, True)}
        self.root_ino = ino
        self.marker_inos: set[int] = set()  # trusted (trust_creation) files: the marker and its temp file
        self.pos = 1  # next trace index to apply

    # ----------------------------------------------------------------- namespace
    def _split(self, path: str) -> list[str]:
        rel = os.path.relpath(path, self.anchor)
        return [] if rel == "." else rel.split(os.sep)

    def _lookup_parent(self, path: str) -> tuple[Node, str]:
        parts = self._split(path)
        if not parts:
            raise ModelMismatch(f"operation on the anchor itself: {path}")
        node = self.nodes[self.root_ino]
        for part in parts[:-1]:
            child = node.entries.get(part)
            if child is None or not self.nodes[child].is_dir:
                raise ModelMismatch(f"{path}: directory {part!r} does not exist in the model")
            node = self.nodes[child]
        return node, parts[-1]

    def lookup(self, path: str) -> Node | None:
        """The node a path names now, or None."""
        if not self._split(path):
            return self.nodes[self.root_ino]
        parent, name = self._lookup_parent(path)
        ino = parent.entries.get(name)
        return None if ino is None else self.nodes[ino]

    def _node(self, ino: int, what: str) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise ModelMismatch(f"{what}: inode {ino} was never created through a recorded call")
        return node

    # ----------------------------------------------------------------- replay
    def advance(self, upto: int) -> None:
        """Apply trace entries until ``upto`` (exclusive)."""
        while self.pos < upto:
            self.apply(self.trace[self.pos])
            self.pos += 1

    def apply(self, op: tuple) -> None:
        """Apply one recorded call to the model."""
        kind = op[0]
        trust = self.trust_creation
        if kind == "open":
            _, path, flags, ino, is_dir = op
            node = self.lookup(path)
            if node is None:
                if not flags & os.O_CREAT:
                    raise ModelMismatch(f"{path} was opened but never created through a recorded call")
                parent, name = self._lookup_parent(path)
                node = self.nodes[ino] = Node(ino, False)
                parent.entries[name] = ino
                if trust and is_marker(name):
                    parent.durable_entries[name] = ino
                    self.marker_inos.add(ino)
            elif node.ino != ino:
                raise ModelMismatch(f"{path} is inode {ino} on disk but {node.ino} in the model")
            elif flags & os.O_TRUNC and not node.is_dir:
                node.data = bytearray()
                node.snap = None
        elif kind == "write":
            _, ino, off, data = op
            node = self._node(ino, "write")
            if len(node.data) < off:
                node.data.extend(bytes(off - len(node.data)))
            node.data[off : off + len(data)] = data
            node.snap = None
            if trust and ino in self.marker_inos:
                node.flush()
        elif kind == "truncate":
            _, ino, length = op
            node = self._node(ino, "truncate")
            if len(node.data) > length:
                del node.data[length:]
            else:
                node.data.extend(bytes(length - len(node.data)))
            node.snap = None
        elif kind == "fsync":
            self._node(op[1], f"fsync of {op[2]}").flush()
        elif kind == "syncfs":
            for node in self.nodes.values():
                node.flush()
        elif kind in ("rename", "link"):
            _, src, dst, ino = op
            sp, sname = self._lookup_parent(src)
            dp, dname = self._lookup_parent(dst)
            if sp.entries.get(sname) != ino:
                raise ModelMismatch(f"{kind} {src} -> {dst}: the model has another inode at {src}")
            if kind == "rename":
                del sp.entries[sname]
            dp.entries[dname] = ino
            if trust and (is_marker(sname) or is_marker(dname)):
                if kind == "rename":
                    sp.durable_entries.pop(sname, None)
                dp.durable_entries[dname] = ino
        elif kind in ("unlink", "rmdir"):
            parent, name = self._lookup_parent(op[1])
            if parent.entries.pop(name, None) is None:
                raise ModelMismatch(f"{kind} of {op[1]}, which the model does not have")
        elif kind == "mkdir":
            _, path, ino = op
            parent, name = self._lookup_parent(path)
            self.nodes[ino] = Node(ino, True)
            parent.entries[name] = ino
            if trust:
                parent.durable_entries[name] = ino
        elif kind in ("ack", "mark"):
            pass
        else:
            raise ModelMismatch(f"unknown trace entry {op!r}")

    # ----------------------------------------------------------------- images
    def image(self, variant: str = "drop") -> dict[str, bytes | None]:
        """What survives a power cut now: relative path -> bytes (None for a directory).

        Only names in durable directory entries and only flushed bytes survive. ``variant`` says what
        happens to bytes appended after the flushed ones: ``drop`` (lost), ``torn`` (kept up to the
        first page boundary past the flushed ones: the filesystem writes whole pages), ``full`` (all
        written back before the cut, though never flushed), ``hole`` (the first page lost, later ones
        kept: a filesystem that updates the size before the data). The subset variants (``SUBSETS``)
        keep some kinds of unflushed writes and drop the rest: ``names`` keeps every unflushed name
        change and drops every unflushed byte; ``names+log`` keeps the names and the log segments'
        unflushed appends, dropping other bytes (blobs); ``log`` keeps only the segments' appends.
        """
        out: dict[str, bytes | None] = {}
        names_now = variant in ("names", "names+log")
        log_kept = variant in ("names+log", "log")
        data_variant = "drop" if variant in SUBSETS else variant

        def walk(node: Node, prefix: str) -> None:
            for name, ino in sorted((node.entries if names_now else node.durable_entries).items()):
                child = self.nodes[ino]
                rel = f"{prefix}{name}"
                if child.is_dir:
                    out[rel] = None
                    walk(child, rel + "/")
                else:
                    is_log = log_kept and name.endswith(".seg") and "/log/" in f"/{rel}"
                    out[rel] = self._surviving_bytes(child, "full" if is_log else data_variant)

        walk(self.nodes[self.root_ino], "")
        return out

    @staticmethod
    def _surviving_bytes(node: Node, variant: str) -> bytes:
        kept = node.durable
        now = node.current()
        if variant == "drop" or now is kept or len(now) <= len(kept) or now[: len(kept)] != kept:
            return kept
        if variant == "full":
            return now
        boundary = (len(kept) // PAGE + 1) * PAGE
        if boundary >= len(now):
            return kept
        if variant == "torn":
            return now[:boundary]
        assert variant == "hole", variant
        return kept + bytes(boundary - len(kept)) + now[boundary:]

    def check_against_disk(self) -> None:
        """Assert that the model's current tree equals the real directory, byte for byte."""
        want: dict[str, bytes | None] = {}

        def walk(node: Node, prefix: str) -> None:
            for name, ino in node.entries.items():
                child = self.nodes[ino]
                rel = f"{prefix}{name}"
                if child.is_dir:
                    want[rel] = None
                    walk(child, rel + "/")
                else:
                    want[rel] = child.current()

        walk(self.nodes[self.root_ino], "")
        have: dict[str, bytes | None] = {}
        for dirpath, dirnames, filenames in os.walk(self.anchor):
            rel = os.path.relpath(dirpath, self.anchor)
            prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for d in dirnames:
                have[prefix + d] = None
            for f in filenames:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    have[prefix + f] = fh.read()
        missing = sorted(set(have) - set(want))
        extra = sorted(set(want) - set(have))
        differ = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        if missing or extra or differ:
            raise ModelMismatch(
                "the trace does not explain the disk (an unrecorded write path?): "
                f"on disk only {missing[:5]}, in the model only {extra[:5]}, different bytes {differ[:5]}"
            )


def materialize(image: dict[str, bytes | None], target: Path) -> None:
    """Write an image (from ``Model.image``) into an empty directory."""
    target.mkdir(parents=True, exist_ok=True)
    for rel, data in image.items():
        p = target / rel
        if data is None:
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)


def load_trace(path: str | os.PathLike[str]) -> list[tuple]:
    """Read a trace written by ``Recorder.dump``."""
    with open(path, "rb") as f:
        return pickle.load(f)


def sources_of(trace: list[tuple]) -> dict[str, str]:
    """sha256 -> source file of every save the workload started (its ``("mark", "source", sha, path)``)."""
    return {op[2]: op[3] for op in trace if op[0] == "mark" and len(op) == 4 and op[1] == "source"}


def acks_of(trace: list[tuple]) -> list[Ack]:
    """The acknowledgements in a trace, in order."""
    return [Ack(i, op[1], op[2], op[3], op[4]) for i, op in enumerate(trace) if op[0] == "ack"]


# ============================================================================ parent side: checking images
@dataclass
class Tally:
    """What the power-cut images showed."""

    cut_points: int = 0  # trace positions a power cut was simulated at
    images: int = 0  # distinct surviving images among them (each opened and checked)
    acks_checked: int = 0
    ok: int = 0
    unopenable: int = 0
    lost: int = 0  # images missing (or changing) an acknowledged artifact or pin
    verify_failed: int = 0
    failed_cut_points: int = 0  # cut points (per variant) whose image failed
    batches_cut: int = 0  # images whose open cut a last batch naming an incomplete blob
    dedup_checked: int = 0  # images with an incomplete blob name whose content was saved again
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One-line summary."""
        return (f"{self.cut_points} cut points, {self.images} distinct images, {self.acks_checked} acks re-checked: "
                f"{self.ok} ok, {self.unopenable} unopenable, {self.lost} losing acknowledged writes, "
                f"{self.verify_failed} failing verify; {self.failed_cut_points} (cut point, variant) cases fail; "
                f"{self.batches_cut} cut a last batch, {self.dedup_checked} saved again over incomplete names")


def broken_names(root: Path) -> list[str]:
    """SHA-256s whose blob file in an image does not hold bytes hashing to its name."""
    out = []
    for p in sorted((root / "blobs" / "sha256").glob("*/*")):
        if p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() != p.name:
            out.append(p.name)
    return out


async def _check_ledger(root: Path, acks: list[Ack], create: bool,
                        sources: dict[str, str] | None = None) -> tuple[str, str, list[str]]:
    """Open one image with the real library and check it; returns (outcome, detail, notes). With
    ``sources`` (sha256 -> a file with those bytes), every blob whose name the image holds without its
    bytes is saved again from its source, and must then load whole (dedup must not trust the name)."""
    import warnings

    from artifact_ledger import open_ledger

    broken = [sha for sha in broken_names(root) if sources and sha in sources] if root.exists() else []
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        # Torn tails and unusable checkpoints are what a power cut leaves; they must not stop the open.
        warnings.simplefilter("always")
        try:
            led = await open_ledger(root, create=create, fsync=False)
        except Exception as exc:  # noqa: BLE001 - every way of failing to open is a finding
            return "unopenable", f"{type(exc).__name__}: {exc}", notes
        if any("last batch" in str(w.message) for w in caught):
            notes.append("batch cut")
        try:
            outcome, detail = await _check_open(led, acks)
            if outcome != "ok" or not broken:
                return outcome, detail, notes
            assert sources is not None
            fa = led.artifacts(run_id="check", graph_id="g", node_id="resave")
            for sha in broken:
                try:
                    art = await fa.save(sources[sha], kind="blob")
                    data = await fa.load_artifact_bytes(art.uri)
                except Exception as exc:  # noqa: BLE001
                    return "lost", f"saving {sha} again over its incomplete name: {type(exc).__name__}: {exc}", notes
                if hashlib.sha256(data).hexdigest() != sha:
                    return "lost", f"saving {sha} again over its incomplete name kept the wrong bytes", notes
            result = await led.verify()
            if not result.ok:
                return "verify", f"verify() failed after saving again over incomplete names: {result.problem}", notes
            notes.append("dedup checked")
            return "ok", "", notes
        finally:
            await led.aclose()


async def _check_open(led, acks: list[Ack]) -> tuple[str, str]:
    """Check an open image: every acknowledgement holds, and verify() passes."""
    fa = led.artifacts(run_id="check", graph_id="g", node_id="n")
    arts = {a.artifact_id: a for a in await fa.list(scope="all")}
    for a in acks:
        got = arts.get(a.artifact_id)
        if got is None:
            return "lost", f"acknowledged {a.what} {a.artifact_id} (seq {a.seq}) is missing"
        if a.what == "pin":
            if not got.pinned:
                return "lost", f"acknowledged pin of {a.artifact_id} (seq {a.seq}) is missing"
            continue
        if got.seq != a.seq:
            return "lost", f"{a.artifact_id} has seq {got.seq}, acknowledged as {a.seq}"
        try:
            if a.what == "file":
                data = await fa.load_artifact_bytes(f"artifact://{a.artifact_id}")
                if hashlib.sha256(data).hexdigest() != a.expect:
                    return "lost", f"bytes of {a.artifact_id} differ from what was saved"
            else:
                tree = await fa.load_artifact(f"artifact://{a.artifact_id}")
                have = {p.relative_to(tree).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in Path(tree).rglob("*") if p.is_file()}
                if have != a.expect:
                    return "lost", f"files of directory artifact {a.artifact_id} differ"
        except Exception as exc:  # noqa: BLE001
            return "lost", f"loading {a.artifact_id}: {type(exc).__name__}: {exc}"
    result = await led.verify()
    if not result.ok:
        return "verify", f"verify() failed: {result.problem}"
    return "ok", ""


def _fingerprint(image: dict[str, bytes | None]) -> tuple:
    return tuple((k, None if v is None else (len(v), hash(v))) for k, v in image.items())


VARIANTS = ("drop", "torn", "full")  # "hole" is issue 6 case 7, checked on its own
SUBSETS = ("names", "names+log", "log")  # some unflushed writes kept, others dropped (see Model.image)


def analyse(trace: list[tuple], workdir: Path, *, trust_creation: bool, variants: tuple[str, ...] = ("drop",),
            start: int = 1, stop_at_first: bool = False, ledger_name: str = "L",
            only_where_differs: bool = False) -> Tally:
    """Simulate a power cut before every trace entry from ``start`` on (and after the last), open each
    distinct surviving image with the library, and check every acknowledgement made before its cut.

    ``variants`` says what happens to bytes written but not flushed (see ``Model.image``).
    Consecutive cut points leaving the same image are checked once, against the acknowledgements made
    by the last of them (acknowledgements only grow, so that is the strictest of the group). With
    ``only_where_differs``, images equal to the ``drop`` image of the same cut are skipped.
    """
    import anyio

    acks = acks_of(trace)
    model = Model(trace, trust_creation=trust_creation)
    model.advance(start)
    groups: dict[str, list[list]] = {v: [] for v in variants}  # variant -> [[image, fingerprint, last cut]]
    for cut in range(start, len(trace) + 1):
        model.advance(cut)
        base = _fingerprint(model.image("drop")) if only_where_differs else None
        for v in variants:
            image = model.image(v)
            fp = _fingerprint(image)
            if fp == base:
                continue
            g = groups[v]
            if g and g[-1][1] == fp:
                g[-1][2] = cut
                g[-1][3] += 1
            else:
                g.append([image, fp, cut, 1])
    todo: dict[tuple, list] = {}  # (fingerprint, acks) -> [image, last cut, cut points leaving it]
    for v in variants:
        for image, fp, cut, count in groups[v]:
            n_acks = sum(1 for a in acks if a.index < cut)
            todo.setdefault((fp, n_acks), [image, cut, 0])[2] += count
    tally = Tally(cut_points=len(trace) + 1 - start)
    anyio.run(_check_all, sorted(todo.values(), key=lambda x: x[1]), acks, trace, workdir, ledger_name, tally,
              stop_at_first)
    return tally


async def _check_all(todo, acks, trace, workdir, ledger_name, tally, stop_at_first) -> None:
    import shutil

    sources = sources_of(trace)
    for n, (image, cut, count) in enumerate(todo):
        before = [a for a in acks if a.index < cut]
        target = workdir / f"img{n}"
        materialize(image, target)
        outcome, detail, notes = await _check_ledger(target / ledger_name, before, not before, sources)
        shutil.rmtree(target, ignore_errors=True)
        tally.batches_cut += "batch cut" in notes
        tally.dedup_checked += "dedup checked" in notes
        tally.images += 1
        tally.acks_checked += len(before)
        if outcome == "ok":
            tally.ok += 1
            continue
        tally.unopenable += outcome == "unopenable"
        tally.lost += outcome == "lost"
        tally.verify_failed += outcome == "verify"
        tally.failed_cut_points += count
        last = trace[cut - 1] if cut - 1 < len(trace) else None
        tally.failures.append(f"cut before entry {cut} (after {_describe(last)}; {len(before)} acks; "
                              f"{count} cut points leave this image): {outcome}: {detail}")
        if stop_at_first:
            return


def _describe(op: tuple | None) -> str:
    if op is None:
        return "nothing"
    if op[0] == "write":
        return f"write of {len(op[3])} bytes at {op[2]} to inode {op[1]}"
    if op[0] == "fsync":
        return f"{op[3]} of {op[2]}"
    return " ".join(str(x) for x in op[:3])


def first_index(trace: list[tuple], pred) -> int:
    """Index of the first trace entry satisfying ``pred``."""
    return next(i for i, op in enumerate(trace) if pred(op))


def cuts_where_variant_differs(trace: list[tuple], variant: str, *, trust_creation: bool, start: int = 1) -> int:
    """How many cut points leave a different image under ``variant`` than with unflushed bytes dropped."""
    model = Model(trace, trust_creation=trust_creation)
    n = 0
    for cut in range(start, len(trace) + 1):
        model.advance(cut)
        n += _fingerprint(model.image(variant)) != _fingerprint(model.image("drop"))
    return n
