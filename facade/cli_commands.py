"""The commands of ``artifact-ledger``: each reads through the public Python API.

A command returns a ``Result`` (one JSON document, the same thing as text for
people, and an exit code); ``cli.py`` parses arguments, opens the ledger and
prints. ``export`` streams instead, since a log may not fit in memory.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

from ..ledger.events import (AliasRemoved, AliasSet, ArtifactRecorded, GcPlanned, GcSwept, PinChanged, Purged,
                             Related, Retired)

from . import cli_format as fmt
from .exporting import MANIFEST_NAME
from .model import ARTIFACT_URI_SCHEME, Artifact

EXIT_OK = 0
EXIT_FAILED = 1  # verification failed or the ledger is damaged
EXIT_USAGE = 2  # bad arguments, missing ledger, rejected by the API
EXIT_ENV = 3  # the environment refused: permission denied, disk full, I/O error, ...
TABLE_ROWS = 50  # rows a table shows unless --limit or --all says otherwise

# The facade needs every id bound; ids a query leaves out are never read
# because the scope check below insists the scope's own ids are given.
_UNBOUND = "-"
_SCOPE_NEEDS = {
    "node": ("run_id", "graph_id", "node_id"),
    "graph": ("run_id", "graph_id"),
    "run": ("run_id",),
    "project": ("project_id",),
    "all": (),
}
_FLAG = {"run_id": "--run", "graph_id": "--graph", "node_id": "--node", "project_id": "--project"}


class CliError(Exception):
    """A failure to report as one line on stderr with an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


@dataclass
class Result:
    """What a command produced: a JSON document, its text rendering, an exit code."""

    doc: Any
    text: str
    code: int = EXIT_OK
    streamed: bool = False  # the command already wrote its output (export to stdout)


@dataclass
class Reader:
    """Where read commands look: the live ledger, or a past view of it (``upto`` = its seq)."""

    ledger: Any
    source: Any
    upto: int | None = None


# ---------------------------------------------------------------- argument values
def parse_label(text: str) -> tuple[str, Any]:
    """``k=v``: v is read as JSON when it parses (``1``, ``true``, ``"1"``, ``[1,2]``), else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise CliError(f"--label expects KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    scalars = (str, int, float, bool, type(None))
    if isinstance(value, list):
        ok = all(isinstance(v, scalars) for v in value)
    else:
        ok = isinstance(value, scalars)
    if not ok:
        raise CliError(f"--label {key}: label values are JSON scalars or lists of scalars, got {raw!r}")
    return key, value


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is taken as UTC."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{text!r} is neither a seq number nor an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def parse_position(text: str) -> int | datetime:
    """A ledger position: a seq number (digits) or an ISO time."""
    return int(text) if text.isdigit() else parse_time(text)


def parse_head(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` as printed by ``verify``."""
    seq, sep, digest = text.partition(":")
    digest = digest.lower()
    if not sep or not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CliError(f"--expect-head expects SEQ:HASH (a seq number and a 64-digit hex SHA-256), got {text!r}")
    return int(seq), digest


# ---------------------------------------------------------------- rendering
def artifact_rows(arts: list[Artifact]) -> str:
    """The artifact table of list/search/best/diff."""
    return fmt.table(
        ("SEQ", "ID", "KIND", "RUN", "GRAPH", "NODE", "PIN", "SIZE", "CREATED", "METRICS", "LABELS"),
        [
            (a.seq, a.artifact_id, a.kind, a.run_id, a.graph_id, a.node_id, "yes" if a.pinned else "",
             fmt.fmt_bytes(a.bytes), fmt.fmt_time(a.created_at), fmt.fmt_metrics(a.metrics),
             fmt.fmt_pairs_short(a.labels))
            for a in arts
        ],
        right=("SEQ", "SIZE"),
    )


def event_subject(ev: Any) -> tuple[str, str | None, str]:
    """(what happened, the artifact it is about or None, detail) of a non-recording event."""
    t = type(ev)
    if t is PinChanged:
        return ("pin" if ev.pinned else "unpin"), ev.artifact_id, ""
    if t is AliasSet:
        return "alias", ev.artifact_id, f"{ev.namespace}/{ev.name}" + (" protected" if ev.protected else "")
    if t is AliasRemoved:
        return "unalias", None, f"{ev.namespace}/{ev.name}"
    if t is Related:
        return "relate", ev.child, f"{ev.relation} {ev.parent}"
    if t in (Retired, Purged):
        return ("retire" if t is Retired else "purge"), ev.artifact_id, ev.reason
    if t is GcPlanned:
        return "gc plan", None, f"{ev.plan_id[:12]} purges {len(ev.purge)}, {ev.blobs} blobs {fmt.fmt_bytes(ev.bytes)}"
    if t is GcSwept:
        return "gc done", None, f"{ev.plan_id[:12]} deleted {ev.blobs} blobs {fmt.fmt_bytes(ev.bytes)}"
    return t.__name__, None, ""


def event_rows(events: list[Any], lookup: dict[str, ArtifactRecorded]) -> str:
    """The event table of log/show."""
    rows = []
    for e in events:
        ev = e.event
        rec: ArtifactRecorded | None
        if isinstance(ev, ArtifactRecorded):
            what = "recorded"
            detail = f"{ev.origin} {fmt.fmt_bytes(ev.size)} {ev.mime}" + (" pinned" if ev.pinned else "")
            rec = ev
        else:
            what, aid, detail = event_subject(ev)
            rec = lookup.get(aid) if aid is not None else None
        rows.append((e.seq, fmt.fmt_time(e.time), what, rec.artifact_id if rec else (aid or "-"),
                     rec.kind if rec else "?", rec.run_id if rec else "?", detail))
    return fmt.table(("SEQ", "TIME", "EVENT", "ARTIFACT", "KIND", "RUN", "DETAIL"), rows, right=("SEQ",))


def _dump(a: Artifact | None) -> Any:
    return None if a is None else a.model_dump(mode="json")


# ---------------------------------------------------------------- queries
def _binding(args: Any) -> tuple[dict[str, str | None], str]:
    ids = {"run_id": args.run, "graph_id": args.graph, "node_id": args.node, "project_id": args.project}
    scope = args.scope
    if scope is None:
        # The narrowest scope the given ids pin down, as a facade bound to them would use.
        if ids["run_id"] and ids["graph_id"] and ids["node_id"]:
            scope = "node"
        elif ids["run_id"] and ids["graph_id"]:
            scope = "graph"
        elif ids["run_id"]:
            scope = "run"
        elif ids["project_id"]:
            scope = "project"
        else:
            scope = "all"
    missing = [_FLAG[k] for k in _SCOPE_NEEDS[scope] if not ids[k]]
    if missing:
        raise CliError(f"--scope {scope} needs {' and '.join(missing)}")
    return ids, scope


def _query(reader: Reader, args: Any) -> tuple[Any, str, dict[str, Any], dict[str, Any]]:
    """The bound facade, the scope, id filters beyond the scope, and label filters."""
    ids, scope = _binding(args)
    labels: dict[str, Any] = {}
    for text in args.label or ():
        k, v = parse_label(text)
        if k in ids and ids[k] is not None:
            raise CliError(f"{k} is given twice: by {_FLAG[k]} and by --label {k}=...; keep one")
        labels[k] = v
    facade = reader.source.artifacts(
        run_id=ids["run_id"] or _UNBOUND, graph_id=ids["graph_id"] or _UNBOUND,
        node_id=ids["node_id"] or _UNBOUND, project_id=ids["project_id"],
    )
    # Without --scope every id given filters. With --scope the ids are a binding,
    # as for a facade: the scope alone decides which of them constrain.
    extra = {} if args.scope is not None else {
        k: v for k, v in ids.items() if v is not None and k not in _SCOPE_NEEDS[scope]}
    return facade, scope, extra, labels


def _row_limit(args: Any) -> int | None:
    """Rows to fetch: --limit when given; else, for tables, ``TABLE_ROWS`` unless --all."""
    if args.limit is not None:
        return int(args.limit)
    if getattr(args, "all", False) or getattr(args, "json", False):
        return None
    return TABLE_ROWS


async def cmd_search(reader: Reader, args: Any) -> Result:
    """``list`` and ``search``: artifacts in a scope, by kind and labels, optionally ranked."""
    facade, scope, extra, labels = _query(reader, args)
    limit = _row_limit(args)
    arts = await facade.search(kind=args.kind, labels=labels or None, metric=args.metric, mode=args.mode,
                               scope=scope, extra_scope_labels=extra or None, limit=limit)
    text = artifact_rows(arts) if arts else "no artifacts match"
    if limit is not None and len(arts) == limit and not getattr(args, "json", False):
        total = await facade.count(kind=args.kind, labels=labels or None, metric=args.metric, scope=scope,
                                   extra_scope_labels=extra or None)
        if total > len(arts):
            text += "\n" + fmt.left_out(len(arts), total, "artifacts")
    return Result([_dump(a) for a in arts], text)


async def cmd_best(reader: Reader, args: Any) -> Result:
    """The best artifact of a kind by a metric in a scope (``null`` when none)."""
    facade, scope, extra, labels = _query(reader, args)
    art = await facade.best(kind=args.kind, metric=args.metric, mode=args.mode, scope=scope,
                            filters={**labels, **extra} or None)
    text = artifact_rows([art]) if art is not None else f"no {args.kind} artifact has metric {args.metric!r}"
    return Result(_dump(art), text)


def _resolve_id(ledger: Any, given: str) -> str:
    """A full artifact id from an id, a unique prefix of at least 4 characters, or a URI naming one."""
    rows = ledger.catalog.rows
    if given.startswith(ARTIFACT_URI_SCHEME):
        given = given[len(ARTIFACT_URI_SCHEME):]
    elif given.startswith("file://") and "#" in given:
        given = given.rpartition("#")[2]  # the file form of earlier versions: the fragment is the id
    if given in rows:
        return given
    if len(given) >= 4:
        hits = [aid for aid in rows if aid.startswith(given)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            hits.sort()
            shown = ", ".join(hits[:10]) + (f" and {len(hits) - 10} more" if len(hits) > 10 else "")
            raise CliError(f"artifact id prefix {given!r} is ambiguous: it matches {len(hits)} artifacts "
                           f"({shown}); give more characters")
    raise CliError(f"no artifact with id {given!r} in the ledger at {ledger.where}")


async def cmd_show(reader: Reader, args: Any) -> Result:
    """One artifact's fields (as of the reader's position) and the events that touched it."""
    aid = _resolve_id(reader.ledger, args.id)
    history = await reader.ledger.history(aid)
    if reader.upto is not None:
        history = [e for e in history if e.seq <= reader.upto]
        if not history:
            raise CliError(f"artifact {aid} was recorded after seq {reader.upto}")
    rec: ArtifactRecorded = history[0].event
    facade = reader.source.artifacts(run_id=rec.run_id, graph_id=rec.graph_id, node_id=rec.node_id,
                                     project_id=rec.project_id)
    art = await facade.get(aid)
    text = "\n".join([
        fmt.fields([
            ("id", art.artifact_id), ("kind", art.kind), ("uri", art.uri), ("sha256", art.sha256),
            ("size", f"{art.bytes} bytes ({fmt.fmt_bytes(art.bytes)})"), ("mime", art.mime),
            ("pinned", "yes" if art.pinned else "no"), ("run", art.run_id), ("graph", art.graph_id),
            ("node", art.node_id), ("project", art.project_id or "-"),
            ("created", fmt.fmt_time(art.created_at)), ("seq", art.seq),
            ("suggested_uri", art.suggested_uri or "-"),
            ("metrics", fmt.fmt_metrics(art.metrics)), ("labels", fmt.fmt_pairs(art.labels)),
        ]),
        "",
        "history:",
        event_rows(history, {aid: rec}),
    ])
    return Result({"artifact": _dump(art), "history": [e.to_json() for e in history]}, text)


# ---------------------------------------------------------------- audit
async def _selected_events(reader: Reader, args: Any) -> AsyncIterator[Any]:
    """Events within --since/--until (seq or time) matching --run/--kind, up to the reader's position."""
    ledger = reader.ledger
    since = parse_position(args.since) if args.since else None
    until = parse_position(args.until) if args.until else None
    run = getattr(args, "run", None)
    kind = getattr(args, "kind", None)
    rows = ledger.catalog.rows
    async for e in ledger.events(since=since, until=until):
        if reader.upto is not None and e.seq > reader.upto:
            return  # under as-of: nothing after the view's seq
        if run is not None or kind is not None:
            ev = e.event
            aid = None if isinstance(ev, ArtifactRecorded) else event_subject(ev)[1]
            rec = ev if isinstance(ev, ArtifactRecorded) else getattr(rows.get(aid or ""), "ev", None)
            if rec is None or (run is not None and rec.run_id != run) or (kind is not None and rec.kind != kind):
                continue
        yield e


async def cmd_log(reader: Reader, args: Any) -> Result:
    """Recorded events in order, filtered by run, kind and seq/time range."""
    limit = _row_limit(args)
    events: list[Any] = []
    total = 0
    async for e in _selected_events(reader, args):
        total += 1  # the rest are only counted, for the line saying how many were left out
        if limit is None or len(events) < limit:
            events.append(e)
    rows = reader.ledger.catalog.rows
    needed = {aid for e in events if not isinstance(e.event, ArtifactRecorded)
              for aid in [event_subject(e.event)[1]] if aid is not None}
    lookup = {aid: rows[aid].ev for aid in needed if aid in rows}
    text = event_rows(events, lookup) if events else "no events match"
    if total > len(events):
        text += "\n" + fmt.left_out(len(events), total, "events")
    return Result([e.to_json() for e in events], text)


async def cmd_runs(reader: Reader, args: Any) -> Result:
    """Every run with its artifact count and first and last recording times."""
    runs = await reader.source.runs(project_id=args.project)
    limit = _row_limit(args)
    shown = runs if limit is None else runs[:limit]
    if not shown:
        text = "no runs" + (f" in project {args.project}" if args.project else "")
    else:
        text = fmt.table(("RUN", "ARTIFACTS", "FIRST", "LAST"),
                         [(r.run_id, r.artifacts, fmt.fmt_time(r.first_at), fmt.fmt_time(r.last_at)) for r in shown],
                         right=("ARTIFACTS",))
        if len(runs) > len(shown):
            text += "\n" + fmt.left_out(len(shown), len(runs), "runs")
    return Result([r.model_dump(mode="json") for r in shown], text)


async def cmd_export_files(reader: Reader, args: Any) -> Result:
    """Copy the files of the artifacts a query finds into a directory, with a manifest."""
    facade, scope, extra, labels = _query(reader, args)
    target = Path(args.dir)
    try:
        paths = await facade.export_files(target, kind=args.kind, labels=labels or None, metric=args.metric,
                                          mode=args.mode, scope=scope, extra_scope_labels=extra or None,
                                          limit=args.limit, overwrite=args.overwrite)
    except (FileExistsError, NotADirectoryError) as exc:
        # Refused before anything was written, because of the DIR given: a usage error, not the system's.
        raise CliError(str(exc)) from None
    manifest = target / MANIFEST_NAME
    doc = {"dir": str(target), "manifest": str(manifest), "artifacts": len(paths),
           "files": {aid: str(p) for aid, p in paths.items()}}
    return Result(doc, f"exported {len(paths)} artifacts to {target} (manifest: {manifest})")


async def cmd_export(reader: Reader, args: Any) -> Result:
    """Every selected event as one JSON object per line, to stdout or ``--out``."""
    ledger = reader.ledger
    total = ledger.head[0]
    bar = fmt.Progress("export", unit="events")
    out_path = Path(args.out) if args.out else None
    if out_path is not None and not out_path.parent.is_dir():
        # A path the user mistyped is a usage error; a refusal by the system (EACCES, ENOSPC) is not.
        raise CliError(f"cannot write --out {args.out}: No such file or directory "
                       f"({out_path.parent} does not exist)")
    stream = open(out_path, "w", encoding="utf-8") if out_path else sys.stdout
    count = 0
    try:
        async for e in _selected_events(reader, args):
            stream.write(json.dumps(e.to_json(), separators=(",", ":")) + "\n")
            count += 1
            bar.update(e.seq, total)
    finally:
        bar.close()
        if out_path is not None:
            stream.close()
    if out_path is None:
        stream.flush()
        return Result(None, "", streamed=True)
    doc = {"events": count, "out": str(out_path)}
    return Result(doc, f"exported {count} events to {out_path}")


def _short(a: Artifact | None, metric: str) -> str:
    if a is None:
        return "-"
    value = a.metrics.get(metric)
    return a.artifact_id + ("" if value is None else f" ({metric}={value:g})")


async def cmd_diff(reader: Reader, args: Any) -> Result:
    """What changed between two positions: artifacts added, pins, best-by-metric winners."""
    ledger = reader.ledger
    d = await ledger.diff(parse_position(args.a), parse_position(args.b) if args.b else ledger.head[0])
    parts = [f"diff seq {d.a} -> {d.b}", "", f"added ({len(d.added)}):"]
    if d.added:
        parts.append(artifact_rows(d.added))
    parts += ["", f"pins changed ({len(d.pins)}):"]
    if d.pins:
        parts.append(fmt.table(("ARTIFACT", "BEFORE", "AFTER"),
                               [(p.artifact_id, "pinned" if p.before else "unpinned",
                                 "pinned" if p.after else "unpinned") for p in d.pins]))
    parts += ["", f"best changed ({len(d.best)}):"]
    if d.best:
        parts.append(fmt.table(
            ("SCOPE", "KEY", "KIND", "METRIC", "MODE", "OLD", "NEW"),
            [(c.scope, _scope_key(c.scope_key), c.kind, c.metric, c.mode, _short(c.old, c.metric),
              _short(c.new, c.metric)) for c in d.best],
        ))
    return Result(d.to_json(), "\n".join(parts))


def _scope_key(key: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in key.items()) or "-"


async def cmd_verify(reader: Reader, args: Any) -> Result:
    """Walk the hash chain and every blob; exit 1 when anything does not check out."""
    expect = parse_head(args.expect_head) if args.expect_head else None
    bar = fmt.Progress("verify", unit="bytes")
    try:
        res = await reader.ledger.verify(expect_head=expect, progress=bar.update)
    finally:
        bar.close()
    seq, digest = res.head
    doc = res.to_json()
    if expect is not None:
        doc["expected_head"] = {"seq": expect[0], "hash": expect[1]}
    summary = f"{res.records} records, {res.blobs} blobs, {fmt.fmt_bytes(res.bytes)} checked"
    if res.collected:
        summary += f"; {len(res.collected)} blobs of purged artifacts collected by gc (not damage)"
    if res.ok:
        text = f"ok: {summary}\nhead: {seq}:{digest}"
        if expect is not None:
            text += f"\nexpected head {expect[0]}:{expect[1]} is in the log"
    else:
        text = "\n".join([*(f"FAILED: {p}" for p in res.problems), summary, f"head: {seq}:{digest}"])
    return Result(doc, text, EXIT_OK if res.ok else EXIT_FAILED)


async def cmd_checkpoint(reader: Reader, args: Any) -> Result:
    """Write a projection checkpoint at the head now."""
    seq = await reader.ledger.checkpoint()
    return Result({"checkpoint_seq": seq}, f"checkpoint written at seq {seq}")


async def cmd_report(reader: Reader, args: Any) -> Result:
    """Write the self-contained HTML report (runs, best-so-far plots, thumbnails, pins, timeline, verified head)."""
    from . import report

    modes = report.parse_modes(args.minimize, args.maximize)
    upto = None
    if args.as_of is not None:
        pos = parse_position(args.as_of)
        upto = (await reader.ledger.as_of(seq=pos) if isinstance(pos, int) else
                await reader.ledger.as_of(time=pos)).seq
    data = await report.gather(reader.ledger, upto=upto, run=args.run, project=args.project, modes=modes)
    out = Path(args.out)
    out.write_text(report.render(data), encoding="utf-8")
    v = data.verified
    doc = {"out": str(out), "as_of_seq": data.upto, "artifacts": len(data.artifacts), "events": len(data.timeline),
           "plots": [[b.kind, b.metric, b.mode] for b in data.boards.values()], "verified": v.ok,
           "head": list(v.head) if v.head is not None else None}
    text = (f"wrote {out}: {len(data.artifacts)} artifacts, {len(data.boards)} best-so-far plots, "
            f"{len(data.timeline)} events, as of seq {data.upto}; verify {'ok' if v.ok else 'FAILED'}")
    return Result(doc, text, EXIT_OK if v.ok else EXIT_FAILED)
