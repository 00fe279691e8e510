"""The real facade, driven by random operations, answers exactly like a naive list-based model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule,
                                 run_state_machine_as_test)

import backends
from backends import open_ledger
from artifact_ledger.facade.lifecycle import ArtifactPurged

# 2 runs x 2 graphs x 2 nodes; node and graph names repeat across runs and
# graphs, and projects cut across runs, so every scope has something to exclude.
PROJECT_OF = {("r1", "g1"): "p1", ("r1", "g2"): None, ("r2", "g1"): "p2", ("r2", "g2"): "p1"}
CONTEXTS = [(r, g, n, PROJECT_OF[(r, g)]) for r in ("r1", "r2") for g in ("g1", "g2") for n in ("n1", "n2")]
SCOPES = ["node", "graph", "run", "project", "all"]
KINDS = ["image", "json", "text", "model"]
EXTS = ["", ".bin", ".txt", ".json"]
EXPECTED_MIME = {"": "application/octet-stream", ".bin": "application/octet-stream",
                 ".txt": "text/plain", ".json": "application/json"}
DIR_MIME = "inode/directory"
# 1 vs "1" vs True vs 1.0, case and SQL-wildcard look-alikes, null, and ordered lists.
LABEL_VALUES = [1, "1", 1.0, True, "v", "V", "%", "_", None, [1, "1"], ["1", 1]]
LABEL_KEYS = ["a", "task"]
METRIC_KEYS = ["loss", "acc"]
# Few values, and 1 next to 1.0, so ties are common.
METRIC_VALUES = [1, 1.0, 0.5, 2, -1]
SHARED_BLOBS = [b"", b"same bytes", b"\xff\xfe not utf-8", b"hello"]
JSON_DOCS = [1, "1", {"a": [1, 2]}, [], None, True, {"k": "v"}]
DIR_PATHS = ["a.txt", "b.bin", "sub/c.txt", "sub/deeper/d", "e"]
EMPTY_DIRS = ["empty", "sub/void"]
_MISSING = object()

contexts = st.sampled_from(CONTEXTS)
label_maps = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2)
metric_maps = st.dictionaries(st.sampled_from(METRIC_KEYS), st.sampled_from(METRIC_VALUES), max_size=2)
# Filters also name the id keys ("ids are labels"), including a null project and an int run id.
ID_PAIRS = [("run_id", "r1"), ("run_id", "r2"), ("run_id", 1), ("graph_id", "g1"), ("graph_id", "g2"),
            ("node_id", "n1"), ("node_id", "n2"), ("project_id", "p1"), ("project_id", "p2"), ("project_id", None)]
id_pairs = st.sampled_from(ID_PAIRS)
label_pairs = st.tuples(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES))
filter_maps = st.one_of(st.just({}), st.lists(st.one_of(label_pairs, id_pairs), min_size=1, max_size=2).map(dict))
extra_maps = st.one_of(st.none(), st.lists(st.one_of(id_pairs, label_pairs), min_size=1, max_size=2).map(dict))
rankings = st.sampled_from([(None, None)] + [(m, mode) for m in METRIC_KEYS for mode in ("max", "min")])
trees = st.tuples(
    st.dictionaries(st.sampled_from(DIR_PATHS), st.sampled_from(SHARED_BLOBS) | st.binary(max_size=6), max_size=4),
    st.sets(st.sampled_from(EMPTY_DIRS), max_size=2),
)


def json_eq(a: Any, b: Any) -> bool:
    """Exact JSON equality: bools are not numbers, 1 == 1.0, strings compare literally."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is bool and type(b) is bool and a == b
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b
    if isinstance(a, list) or isinstance(b, list):
        return (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
                and all(json_eq(x, y) for x, y in zip(a, b)))
    return type(a) is type(b) and a == b


def strict(value: Any) -> Any:
    """A form where True, 1 and 1.0 stay distinguishable under ==."""
    if isinstance(value, dict):
        return tuple(sorted((k, strict(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(strict(v) for v in value))
    return (type(value).__name__, value)


@dataclass
class Rec:
    """What the model knows about one recorded artifact."""

    artifact_id: str
    seq: int
    kind: str
    mime: str
    sha256: str
    size: int
    labels: dict
    metrics: dict
    pinned: bool
    run_id: str
    graph_id: str
    node_id: str
    project_id: str | None
    suggested_uri: str | None
    created_at: datetime
    uri: str
    data: bytes | None = None  # file content; None for directories
    tree: tuple | None = None  # (files, empty dirs) for directories
    view: dict = field(default_factory=dict)
    aliases: list = field(default_factory=list)  # "namespace/name" of the aliases pointing at it
    retired: bool = False
    purged: bool = False

    def fields(self) -> tuple:
        return (self.artifact_id, self.seq, self.kind, self.mime, self.sha256, self.size, strict(self.labels),
                strict(self.metrics), self.pinned, self.run_id, self.graph_id, self.node_id, self.project_id,
                self.suggested_uri, self.created_at, self.uri, tuple(sorted(self.aliases)))


def art_fields(a: Any) -> tuple:
    return (a.artifact_id, a.seq, a.kind, a.mime, a.sha256, a.bytes, strict(a.labels), strict(a.metrics), a.pinned,
            a.run_id, a.graph_id, a.node_id, a.project_id, a.suggested_uri, a.created_at, a.uri, tuple(a.aliases))


ALIAS_NAMES = ["production", "best", "candidate"]
RELATIONS = ["derived_from", "consumed", "references"]


@dataclass
class Snap:
    """The lifecycle part of the model right after one seq (for checks through as_of)."""

    seq: int
    ids: list  # every artifact recorded by then, oldest first
    retired: set
    purged: set
    aliases: dict  # (namespace, name) -> (artifact id, protected)
    parents: dict  # artifact id -> {(parent, relation)}


def decode_expected(kind: str, mime: str, data: bytes) -> Any:
    """The README's load rule, restated: the kind first ("json", "text"), then the MIME type (JSON when it
    parses, text when UTF-8), else bytes."""

    def as_text() -> Any:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data

    if kind == "json":
        return json.loads(data)
    if kind == "text":
        return as_text()
    if mime == "application/json" or mime.endswith("+json"):
        try:
            return json.loads(data)
        except ValueError:
            return data
    if mime.startswith("text/"):
        return as_text()
    return data


def read_tree(path: Path) -> tuple:
    files, dirs = {}, set()
    for dirpath, dirnames, filenames in os.walk(path):
        for d in dirnames:
            dirs.add((Path(dirpath) / d).relative_to(path).as_posix())
        for f in filenames:
            files[(Path(dirpath) / f).relative_to(path).as_posix()] = (Path(dirpath) / f).read_bytes()
    return files, dirs


class FacadeMachine(RuleBasedStateMachine):
    """Random saves, ingests, writers, directory ingests, pins, queries, loads and reopens."""

    artifacts = Bundle("artifacts")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="ledger-sm-"))
        self.root = self.tmp / "ledger"
        self.src = self.tmp / "src"
        self.src.mkdir()
        self._portal_cm = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self.model: list[Rec] = []
        self.head = 0
        self.uri_of_sha: dict[str, str] = {}
        self.aliases: dict[tuple, tuple] = {}  # (namespace, name) -> (artifact id, protected)
        self.parents: dict[str, set] = {}  # child -> {(parent, relation)}
        self.collected: set[str] = set()  # blobs a gc deleted
        self.snaps: list[Snap] = []
        self._open()
        # The pair really is the one the fixture named: no silent fallback to the local backends.
        assert self.ledger._log.location.startswith("postgresql://") == (backends.log_kind() == "postgres")
        assert self.ledger.store.location.startswith("s3://") == backends.on_s3()

    # ------------------------------------------------------------ plumbing
    def call(self, fn, *args, **kw):
        return self.portal.call(lambda: fn(*args, **kw))

    def _open(self) -> None:
        async def opener():
            return await open_ledger(self.root, fsync=False)

        self.ledger = self.portal.call(opener)
        self.facades = {c: self.ledger.artifacts(run_id=c[0], graph_id=c[1], node_id=c[2], project_id=c[3])
                        for c in CONTEXTS}

    def teardown(self) -> None:
        try:
            self.call(self.ledger.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def by_id(self, artifact_id: str) -> Rec:
        return next(r for r in self.model if r.artifact_id == artifact_id)

    def record(self, ctx, art, *, kind, mime, size, labels, metrics, pin, suggested, data=None, tree=None,
               sha=None) -> str:
        """Add a new artifact to the model after checking the facade's answer against it."""
        self.head += 1
        assert all(r.artifact_id != art.artifact_id for r in self.model), "artifact ids must be fresh"
        assert art.created_at.utcoffset() == timedelta(0), "created_at must be timezone-aware UTC"
        if sha is None:
            sha = hashlib.sha256(data).hexdigest()
        # art.uri is the stable artifact://<id> (changed by design from the file form, which named
        # the ledger's absolute path). The file form, the blob's file URI plus "#<artifact id>",
        # is still accepted: artifacts over one blob share its file part, different blobs never do.
        expected_uri = f"artifact://{art.artifact_id}"
        blob_uri = self.ledger.store.uri(sha)
        assert self.uri_of_sha.setdefault(sha, blob_uri) == blob_uri
        assert sum(1 for u in self.uri_of_sha.values() if u == blob_uri) == 1
        run, graph, node, project = ctx
        user_labels = {k: v for k, v in labels.items() if k not in ("run_id", "graph_id", "node_id", "project_id")}
        rec = Rec(artifact_id=art.artifact_id, seq=self.head, kind=kind, mime=mime, sha256=sha, size=size,
                  labels=user_labels, metrics=dict(metrics), pinned=pin, run_id=run, graph_id=graph, node_id=node,
                  project_id=project, suggested_uri=suggested, created_at=art.created_at, uri=expected_uri,
                  data=data, tree=tree)
        rec.view = {**user_labels, "run_id": run, "graph_id": graph, "node_id": node, "project_id": project}
        assert art_fields(art) == rec.fields()
        facade = self.facades[ctx]
        assert facade.last_artifact is not None and art_fields(facade.last_artifact) == rec.fields()
        self.model.append(rec)
        self.snap()
        return art.artifact_id

    def snap(self) -> None:
        """Remember the lifecycle state after the newest seq."""
        self.snaps.append(Snap(self.head, [r.artifact_id for r in self.model],
                               {r.artifact_id for r in self.model if r.retired},
                               {r.artifact_id for r in self.model if r.purged}, dict(self.aliases),
                               {k: set(v) for k, v in self.parents.items()}))

    def content_for(self, kind: str, ext: str, blob: bytes, doc: Any) -> bytes:
        # JSON artifacts must hold JSON, or load_artifact could not decode them.
        if kind == "json" or ext == ".json":
            return json.dumps(doc).encode()
        return blob

    # ------------------------------------------------------------ writes
    @initialize(target=artifacts, batch=st.lists(
        st.tuples(contexts, st.sampled_from(KINDS), st.sampled_from(EXTS), st.sampled_from(SHARED_BLOBS),
                  label_maps, metric_maps, st.booleans()),
        min_size=6, max_size=12))
    def seed(self, batch):
        # Without a seed, the simplest runs hypothesis tries would query an empty ledger.
        ids = [self.put_file(ctx, kind, ext, self.content_for(kind, ext, blob, 1), labels, metrics, pin, None, "save")
               for ctx, kind, ext, blob, labels, metrics, pin in batch]
        return multiple(*ids)

    @rule(target=artifacts, ctx=contexts, kind=st.sampled_from(KINDS), ext=st.sampled_from(EXTS),
          blob=st.sampled_from(SHARED_BLOBS) | st.binary(max_size=8), doc=st.sampled_from(JSON_DOCS),
          labels=label_maps, metrics=metric_maps, pin=st.booleans(), echo_ids=st.booleans(),
          suggested=st.sampled_from([None, "plots/a.png", "x"]), how=st.sampled_from(["save", "ingest"]))
    def write_file(self, ctx, kind, ext, blob, doc, labels, metrics, pin, echo_ids, suggested, how):
        if echo_ids:
            # Repeating the bound ids as labels is allowed and records nothing extra.
            labels = {**labels, "run_id": ctx[0], "graph_id": ctx[1]}
        return self.put_file(ctx, kind, ext, self.content_for(kind, ext, blob, doc), labels, metrics, pin,
                             suggested, how)

    def put_file(self, ctx, kind, ext, data, labels, metrics, pin, suggested, how) -> str:
        facade = self.facades[ctx]
        if how == "save":
            path = self.src / f"{uuid.uuid4().hex}{ext}"
            path.write_bytes(data)
            art = self.call(facade.save, str(path), kind=kind, labels=labels, metrics=metrics,
                            suggested_uri=suggested, pin=pin)
            assert path.read_bytes() == data, "save() must leave the caller's file in place"
        else:
            staged = Path(self.call(facade.stage, ext))
            staged.write_bytes(data)
            art = self.call(facade.ingest, str(staged), kind=kind, labels=labels, metrics=metrics,
                            suggested_uri=suggested, pin=pin)
            assert not staged.exists(), "ingest() must take the staged file away"
        return self.record(ctx, art, kind=kind, mime=EXPECTED_MIME[ext], size=len(data), labels=labels,
                           metrics=metrics, pin=pin, suggested=suggested, data=data)

    @rule(target=artifacts, ctx=contexts, kind=st.sampled_from(KINDS), ext=st.sampled_from(EXTS + [None]),
          blob=st.sampled_from(SHARED_BLOBS) | st.binary(max_size=8), doc=st.sampled_from(JSON_DOCS),
          labels=label_maps, metrics=metric_maps, pin=st.booleans(), cut=st.integers(0, 8))
    def write_with_writer(self, ctx, kind, ext, blob, doc, labels, metrics, pin, cut):
        data = self.content_for(kind, ext or "", blob, doc)
        facade = self.facades[ctx]

        async def go():
            async with facade.writer(kind=kind, planned_ext=ext, pin=pin, labels=labels, metrics=metrics) as w:
                w.write(data[:cut])
                assert w.tell() == len(data[:cut])
                w.write(data[cut:])
            return facade.last_artifact

        art = self.portal.call(go)
        return self.record(ctx, art, kind=kind, mime=EXPECTED_MIME[ext or ""], size=len(data), labels=labels,
                           metrics=metrics, pin=pin, suggested=None, data=data)

    @rule(target=artifacts, ctx=contexts, tree=trees, kind=st.sampled_from([None, "dataset", "json"]),
          labels=label_maps, metrics=metric_maps, pin=st.booleans())
    def write_directory(self, ctx, tree, kind, labels, metrics, pin):
        files, empty = tree
        facade = self.facades[ctx]
        staged = Path(self.call(facade.stage_dir))
        for rel, data in files.items():
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            (staged / rel).write_bytes(data)
        for d in empty:
            (staged / d).mkdir(parents=True, exist_ok=True)
        kw = {} if kind is None else {"kind": kind}
        art = self.call(facade.ingest_dir, str(staged), labels=labels, metrics=metrics, pin=pin, **kw)
        assert not staged.exists(), "ingest_dir() must take the staged directory away"
        expected_tree = read_tree_of(files, empty)
        # Equal trees share one manifest blob; different trees never do.
        for other in self.model:
            if other.tree is not None:
                assert (other.sha256 == art.sha256) == (other.tree == expected_tree)
        return self.record(ctx, art, kind=kind or "directory", mime=DIR_MIME, size=sum(map(len, files.values())),
                           labels=labels, metrics=metrics, pin=pin, suggested=None, tree=expected_tree,
                           sha=art.sha256)

    @rule(ctx=contexts, artifact_id=artifacts, pinned=st.booleans())
    def pin(self, ctx, artifact_id, pinned):
        assert self.call(self.facades[ctx].pin, artifact_id, pinned) is None
        self.head += 1
        self.by_id(artifact_id).pinned = pinned
        self.snap()

    @rule(ctx=contexts, what=st.sampled_from(["pin", "load", "blob", "writer"]),
          unknown_id=st.sampled_from(["", "0" * 32, "nope", "%"]) | st.uuids().map(lambda u: u.hex),
          uri=st.sampled_from(["artifact://nope", "file:///etc/passwd", "nope", ""])
          | st.uuids().map(lambda u: f"artifact://{u.hex}"))
    def misuse(self, ctx, what, unknown_id, uri):
        facade = self.facades[ctx]
        if what == "pin":
            with pytest.raises(KeyError, match=re.escape(repr(unknown_id))):
                self.call(facade.pin, unknown_id, True)
        elif what in ("load", "blob"):
            if what == "blob":
                # Shaped like a real blob URI of this ledger, but no artifact has these bytes.
                uri = self.ledger.store.uri(hashlib.sha256(uri.encode() + b"?").hexdigest())
            with pytest.raises(FileNotFoundError, match=re.escape(repr(uri))):
                self.call(facade.load_artifact_bytes, uri)
            with pytest.raises(FileNotFoundError, match=re.escape(repr(uri))):
                self.call(facade.load_artifact, uri)
        else:
            before = facade.last_artifact

            class Boom(Exception):
                pass

            async def go():
                async with facade.writer(kind="image", planned_ext=".bin") as w:
                    w.write(b"never recorded")
                    raise Boom()

            with pytest.raises(Boom):
                self.portal.call(go)
            # Nothing recorded is checked by the invariants; the staged file by staging_is_empty.
            assert facade.last_artifact is before

    @rule()
    def close_and_reopen(self):
        head = self.ledger.head
        self.call(self.ledger.aclose)
        self._open()
        assert self.ledger.head == head

    # ------------------------------------------------------------ reads
    def constraints(self, ctx, scope) -> dict:
        run, graph, node, project = ctx
        if scope == "project":
            if project is None:
                raise ValueError("project scope without a project")
            return {"project_id": project}
        return {"node": {"run_id": run, "graph_id": graph, "node_id": node},
                "graph": {"run_id": run, "graph_id": graph}, "run": {"run_id": run}, "all": {}}[scope]

    def expected(self, ctx, scope, kind, labels, extra, metric, mode) -> list[Rec]:
        cons = {**self.constraints(ctx, scope), **(extra or {})}
        wanted = list(cons.items()) + list((labels or {}).items())
        rows = [r for r in self.model
                if not r.retired and (kind is None or r.kind == kind)
                and all(json_eq(r.view.get(k, _MISSING), v) for k, v in wanted)]
        rows.sort(key=lambda r: r.seq, reverse=True)
        if metric is not None:
            rows = [r for r in rows if metric in r.metrics]
            # Stable sort on the value keeps newest-first among ties.
            rows.sort(key=lambda r: r.metrics[metric], reverse=(mode == "max"))
        return rows

    def check_same(self, got, want: list[Rec]) -> None:
        assert [a.artifact_id for a in got] == [r.artifact_id for r in want]
        assert [art_fields(a) for a in got] == [r.fields() for r in want]

    @rule(ctx=contexts, op=st.sampled_from(["list", "search", "best"]), scope=st.sampled_from(SCOPES),
          kind=st.sampled_from([None, "directory"] + KINDS), labels=filter_maps, extra=extra_maps,
          ranking=rankings, limit=st.none() | st.integers(0, 3))
    def query(self, ctx, op, scope, kind, labels, extra, ranking, limit):
        metric, mode = ranking
        facade = self.facades[ctx]
        if op == "list":
            kind = labels = extra = metric = mode = limit = None
            call = lambda: facade.list(scope=scope)  # noqa: E731
        elif op == "search":
            call = lambda: facade.search(kind=kind, labels=labels, metric=metric, mode=mode,  # noqa: E731
                                         scope=scope, extra_scope_labels=extra, limit=limit)
        else:
            # best() has no extra_scope_labels; its filters play the role of labels.
            kind, extra, limit = kind or "image", None, 1
            metric, mode = (metric, mode) if metric is not None else ("loss", "max")
            call = lambda: facade.best(kind=kind, metric=metric, mode=mode, scope=scope,  # noqa: E731
                                       filters=labels or None)
        try:
            want = self.expected(ctx, scope, kind, labels, extra, metric, mode)
        except ValueError:
            with pytest.raises(ValueError, match="project"):
                self.portal.call(call)
            return
        got = self.portal.call(call)
        if op == "best":
            got = [] if got is None else [got]
        self.check_same(got, want if limit is None else want[:limit])

    @rule(ctx=contexts, scope=st.sampled_from(SCOPES), extra=extra_maps, limit=st.none() | st.integers(0, 3))
    def filter_by_every_label(self, ctx, scope, extra, limit):
        """One search per vocabulary label, so 1/"1"/1.0/True confusions meet stored values."""
        if scope == "project" and ctx[3] is None:
            scope = "all"
        facade = self.facades[ctx]
        pairs = [(k, v) for k in LABEL_KEYS for v in LABEL_VALUES] + ID_PAIRS

        async def gather():
            return [await facade.search(labels={k: v}, scope=scope, extra_scope_labels=extra, limit=limit)
                    for k, v in pairs]

        for (k, v), got in zip(pairs, self.portal.call(gather)):
            want = self.expected(ctx, scope, None, {k: v}, extra, None, None)
            self.check_same(got, want if limit is None else want[:limit])

    @rule(ctx=contexts, kind=st.sampled_from(["directory"] + KINDS), limit=st.none() | st.integers(0, 3))
    def rank_everywhere(self, ctx, kind, limit):
        """Every scope, metric and mode at once, so ranking and tie-breaks meet many states."""
        facade = self.facades[ctx]
        scopes = [s for s in SCOPES if s != "project" or ctx[3] is not None]

        async def gather():
            out = {}
            for scope in scopes:
                for metric in METRIC_KEYS:
                    for mode in ("max", "min"):
                        out[scope, metric, mode] = (
                            await facade.search(metric=metric, mode=mode, scope=scope, limit=limit),
                            await facade.search(kind=kind, metric=metric, mode=mode, scope=scope),
                            await facade.best(kind=kind, metric=metric, mode=mode, scope=scope),
                        )
            return out

        for (scope, metric, mode), (ranked, ranked_kind, top) in self.portal.call(gather).items():
            self.check_same(ranked, self.expected(ctx, scope, None, None, None, metric, mode)[:limit])
            want = self.expected(ctx, scope, kind, None, None, metric, mode)
            self.check_same(ranked_kind, want)
            self.check_same([] if top is None else [top], want[:1])

    @rule(ctx=contexts, artifact_id=artifacts, metric=st.sampled_from([None] + METRIC_KEYS))
    def get_and_count(self, ctx, artifact_id, metric):
        """get() finds any artifact from any facade, whatever its scope; count() agrees with the model."""
        facade = self.facades[ctx]
        self.check_same([self.call(facade.get, artifact_id)], [self.by_id(artifact_id)])
        for scope in (s for s in SCOPES if s != "project" or ctx[3] is not None):
            mode = None if metric is None else "max"
            want = self.expected(ctx, scope, None, None, None, metric, mode)
            assert self.call(facade.count, scope=scope, metric=metric) == len(want)

    @rule(ctx=contexts, artifact_id=artifacts, how=st.sampled_from(["uri", "file", "blob", "id"]))
    def load(self, ctx, artifact_id, how):
        facade = self.facades[ctx]
        rec = self.by_id(artifact_id)
        if rec.purged and how != "blob":
            # The record stays; its bytes do not load, and the error says when and why.
            with pytest.raises(ArtifactPurged, match="purged at seq"):
                self.call(facade.load_artifact_bytes, rec.uri)
            return
        if how == "uri":
            uri = rec.uri  # names this very artifact
        elif how == "file":
            uri = f"{self.uri_of_sha[rec.sha256]}#{artifact_id}"  # the file form names it too
        elif how == "blob":
            # The bare blob URI names bytes, not one artifact: it resolves to the newest artifact over them.
            uri = self.uri_of_sha[rec.sha256]
            rec = max((r for r in self.model if r.sha256 == rec.sha256), key=lambda r: r.seq)
            if rec.purged:
                with pytest.raises(ArtifactPurged):
                    self.call(facade.load_artifact_bytes, uri)
                return
        else:
            uri = f"artifact://{artifact_id}"
        if rec.tree is not None:
            with pytest.raises(IsADirectoryError):
                self.call(facade.load_artifact_bytes, uri)
            path = self.call(facade.load_artifact, uri)
            assert isinstance(path, Path)
            assert read_tree(path) == rec.tree
            return
        assert self.call(facade.load_artifact_bytes, uri) == rec.data
        got = self.call(facade.load_artifact, uri)
        want = decode_expected(rec.kind, rec.mime, rec.data)
        assert type(got) is type(want) and strict(got) == strict(want)

    # ------------------------------------------------------------ lifecycle
    def namespace(self, ctx) -> str:
        return ctx[3] if ctx[3] is not None else "all"

    def set_aliases(self) -> None:
        """Recompute every record's aliases from the model's alias map."""
        for r in self.model:
            r.aliases = []
        for (ns, name), (aid, _) in self.aliases.items():
            self.by_id(aid).aliases.append(f"{ns}/{name}")

    @rule(ctx=contexts, artifact_id=artifacts, name=st.sampled_from(ALIAS_NAMES), protected=st.booleans(),
          force=st.booleans())
    def alias(self, ctx, artifact_id, name, protected, force):
        key = (self.namespace(ctx), name)
        now = self.aliases.get(key)
        rec = self.by_id(artifact_id)
        facade = self.facades[ctx]
        if rec.retired:
            with pytest.raises(ValueError, match="retired"):
                self.call(facade.alias, artifact_id, name, protected=protected, force=force)
            return
        if now is not None and now[1] and not force and (now[0] != artifact_id or not protected):
            with pytest.raises(ValueError, match="protected"):
                self.call(facade.alias, artifact_id, name, protected=protected, force=force)
            return
        art = self.call(facade.alias, artifact_id, name, protected=protected, force=force)
        self.head += 1
        self.aliases[key] = (artifact_id, protected)
        self.set_aliases()
        assert f"{key[0]}/{name}" in self.call(facade.get, artifact_id).aliases
        assert art.artifact_id == artifact_id
        self.snap()

    @rule(ctx=contexts, name=st.sampled_from(ALIAS_NAMES), force=st.booleans())
    def unalias(self, ctx, name, force):
        key = (self.namespace(ctx), name)
        now = self.aliases.get(key)
        facade = self.facades[ctx]
        if now is None:
            with pytest.raises(KeyError, match="does not point"):
                self.call(facade.unalias, name, force=force)
            with pytest.raises(KeyError, match="does not point"):
                self.call(facade.resolve, name)
            return
        if now[1] and not force:
            with pytest.raises(ValueError, match="protected"):
                self.call(facade.unalias, name, force=force)
            return
        assert self.call(facade.unalias, name, force=force) == now[0]
        self.head += 1
        del self.aliases[key]
        self.set_aliases()
        self.snap()

    def ancestors(self, parents: dict, aid: str) -> set:
        out, stack = set(), [aid]
        while stack:
            for p, _ in parents.get(stack.pop(), ()):
                if p not in out:
                    out.add(p)
                    stack.append(p)
        return out

    @rule(ctx=contexts, child=artifacts, parent=artifacts, relation=st.sampled_from(RELATIONS))
    def relate(self, ctx, child, parent, relation):
        facade = self.facades[ctx]
        if child == parent or child in self.ancestors(self.parents, parent):
            with pytest.raises(ValueError, match="itself|cycle"):
                self.call(facade.relate, child, parent, relation=relation)
            return
        if (parent, relation) in self.parents.get(child, set()):
            with pytest.raises(ValueError, match="already related"):
                self.call(facade.relate, child, parent, relation=relation)
            return
        self.call(facade.relate, child, parent, relation=relation)
        self.head += 1
        self.parents.setdefault(child, set()).add((parent, relation))
        self.snap()

    @rule(ctx=contexts, artifact_id=artifacts, force=st.booleans(), purge=st.booleans())
    def retire_or_purge(self, ctx, artifact_id, force, purge):
        rec = self.by_id(artifact_id)
        facade = self.facades[ctx]
        call = facade.purge if purge else facade.retire
        if (rec.purged if purge else rec.retired):
            with pytest.raises(ValueError, match="already"):
                self.call(call, artifact_id, "test", force=force)
            return
        if (rec.pinned or rec.aliases) and not force:
            with pytest.raises(ValueError, match="force=True"):
                self.call(call, artifact_id, "test", force=force)
            return
        self.call(call, artifact_id, "test", force=force)
        self.head += 1
        rec.retired = True
        rec.purged = rec.purged or purge
        self.snap()

    @rule(dry_run=st.booleans())
    def gc(self, dry_run):
        needed = {r.sha256 for r in self.model if not r.purged}
        gone = {r.sha256 for r in self.model if r.purged} - needed - self.collected
        out = self.call(self.ledger.gc, dry_run=dry_run, grace=0)
        planned = out if dry_run else out.plan
        # Blobs of purged artifacts no other artifact needs (directory members may add orphans).
        assert gone <= set(planned.blobs) and not needed & set(planned.blobs)
        if dry_run:
            return
        self.collected |= gone
        for _ in ("gc.planned", "gc.swept"):
            self.head += 1
            self.snap()

    @rule(data=st.data())
    def check_the_past(self, data):
        """Every lifecycle rule, checked again through as_of at a random earlier seq."""
        snap = data.draw(st.sampled_from(self.snaps))
        view = self.call(self.ledger.as_of, seq=snap.seq)
        facade = view.artifacts(run_id="r1", graph_id="g1", node_id="n1")
        live = [aid for aid in reversed(snap.ids) if aid not in snap.retired]
        assert [a.artifact_id for a in self.call(facade.list, scope="all")] == live
        for (ns, name), (aid, _) in snap.aliases.items():
            if aid in snap.retired:
                with pytest.raises(KeyError, match="retired"):
                    self.call(facade.resolve, f"{ns}/{name}")
            else:
                assert self.call(facade.resolve, f"{ns}/{name}").artifact_id == aid
            assert f"{ns}/{name}" in self.call(facade.get, aid).aliases
        for ns in ("all", "p1", "p2"):
            for name in ALIAS_NAMES:
                if (ns, name) not in snap.aliases:
                    with pytest.raises(KeyError, match="does not point"):
                        self.call(facade.resolve, f"{ns}/{name}")
        assert {(i.namespace, i.name): i.artifact_id for i in self.call(facade.aliases, every_namespace=True)} == {
            k: v[0] for k, v in snap.aliases.items()}
        aid = data.draw(st.sampled_from(snap.ids))
        up = {s.artifact.artifact_id for s in self.call(facade.lineage, aid)}
        assert up == self.ancestors(snap.parents, aid)
        if aid in snap.purged:
            with pytest.raises(ArtifactPurged):
                self.call(facade.load_artifact_bytes, f"artifact://{aid}")
        elif self.by_id(aid).purged and self.by_id(aid).sha256 in self.collected and self.by_id(aid).tree is None:
            # Before its purge the metadata is there; the bytes a gc took are gone, and it says so.
            assert self.call(facade.get, aid).artifact_id == aid
            with pytest.raises(ArtifactPurged, match="purged later"):
                self.call(facade.load_artifact_bytes, f"artifact://{aid}")

    # ------------------------------------------------------------ invariants
    @invariant()
    def everything_reads_back(self):
        got = self.call(self.facades[CONTEXTS[0]].list, scope="all")
        self.check_same(got, sorted((r for r in self.model if not r.retired), key=lambda r: r.seq, reverse=True))
        assert self.ledger.head[0] == self.head

    @invariant()
    def staging_is_empty(self):
        # Every rule stages only what it ingests, so nothing may linger.
        assert list((self.root / "staging").iterdir()) == []

    @invariant()
    def aliases_resolve_and_blobs_survive(self):
        for (ns, name), (aid, _) in self.aliases.items():
            facade = self.facades[CONTEXTS[0]]
            if self.by_id(aid).retired:
                with pytest.raises(KeyError, match="retired"):
                    self.call(facade.resolve, f"{ns}/{name}")
            else:
                assert self.call(facade.resolve, f"{ns}/{name}").artifact_id == aid
        # gc never takes a blob an artifact not purged needs.
        for r in self.model:
            if not r.purged:
                assert self.ledger.store.exists(r.sha256), r


def read_tree_of(files: dict, empty: set) -> tuple:
    """The (files, directories) pair read_tree would give for a staged tree."""
    dirs = set(empty)
    for rel in list(files) + list(empty):
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return dict(files), dirs


# At most this many examples on the server pairs (the file pair runs the profile's count): on
# postgres and S3 every append and every upload is a server round trip, and the file run already
# explores the model; the other pairs check that their backend changes no answer.
MAX_EXAMPLES = {"postgres": 10, "file+s3": 8, "postgres+s3": 8}


def test_facade_matches_naive_model(backend):
    """The machine on every (log, blobs) pair of the conformance suite (tests/backends.py)."""
    examples = min(MAX_EXAMPLES.get(backend, settings.default.max_examples), settings.default.max_examples)
    run_state_machine_as_test(FacadeMachine, settings=settings(stateful_step_count=30, max_examples=examples))
