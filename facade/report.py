"""A self-contained HTML report of a ledger (or of a past view of it).

One file that opens offline: CSS, JavaScript, SVG plots and image thumbnails
are inline, nothing is fetched. It is built from the event stream itself
(``events()``), so its numbers are an independent check of the catalogue's.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..ledger.events import (AliasRemoved, AliasSet, ArtifactRecorded, GcPlanned, GcSwept, PinChanged, Purged,
                             Related, Retired)

from .audit import LedgerEvent
from .cli_format import fmt_bytes, fmt_metrics, fmt_pairs, fmt_time

# Metric names with one of these words are ranked lowest-first unless told otherwise.
MIN_WORDS = frozenset({
    "loss", "error", "err", "mse", "mae", "rmse", "wer", "cer", "perplexity", "ppl", "latency", "time",
    "duration", "seconds", "ms", "cost", "regret", "nll", "bpd",
})
THUMBNAIL_MIME = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/svg+xml"})
MAX_THUMBNAIL_BYTES = 1 << 20  # an image larger than this is listed, not embedded
MAX_THUMBNAILS_BYTES = 32 << 20  # all embedded images together
MAX_ROWS_PER_RUN = 500
MAX_TIMELINE = 2000
_PLOT_W, _PLOT_H, _PAD = 640, 180, 40


def default_mode(metric: str) -> str:
    """``"min"`` for metric names that read as costs (loss, error, latency, ...), else ``"max"``."""
    words = re.split(r"[^a-z0-9]+", metric.lower())
    return "min" if any(w in MIN_WORDS for w in words) else "max"


@dataclass
class Leader:
    """One change of leader of a (kind, metric) ranking (``artifact_id`` None: no live artifact is left)."""

    seq: int
    time: datetime
    artifact_id: str | None
    value: float | int | None
    retired: str | None = None  # the leader whose retirement made this one lead


@dataclass
class Board:
    """The best-so-far history of one (kind, metric)."""

    kind: str
    metric: str
    mode: str
    changes: list[Leader] = field(default_factory=list)
    live: dict[str, float | int] = field(default_factory=dict)  # live candidates, oldest first

    @property
    def candidates(self) -> int:
        """How many live (not retired) artifacts have the metric."""
        return len(self.live)

    def offer(self, seq: int, time: datetime, artifact_id: str, value: float | int) -> None:
        """Fold in one artifact having the metric; ties go to the newest, as ``best()`` ranks them."""
        self.live[artifact_id] = value
        cur = self.changes[-1].value if self.changes else None
        if cur is None or (value >= cur if self.mode == "max" else value <= cur):
            self.changes.append(Leader(seq, time, artifact_id, value))

    def retire(self, seq: int, time: datetime, artifact_id: str) -> None:
        """Drop a retired artifact; if it led, the best live one (newest on ties) leads from ``seq`` on."""
        if self.live.pop(artifact_id, None) is None or self.changes[-1].artifact_id != artifact_id:
            return
        best: tuple[str, float | int] | None = None
        for aid, v in self.live.items():  # oldest first: a later tie replaces the earlier one
            if best is None or (v >= best[1] if self.mode == "max" else v <= best[1]):
                best = (aid, v)
        self.changes.append(Leader(seq, time, None if best is None else best[0], None if best is None else best[1],
                                   retired=artifact_id))


@dataclass
class ReportData:
    """Everything the report shows, gathered from events up to ``upto``."""

    root: str
    upto: int
    upto_time: datetime | None
    upto_hash: str | None
    verified: Any
    run: str | None
    project: str | None
    artifacts: dict[str, tuple[LedgerEvent, ArtifactRecorded]] = field(default_factory=dict)
    pinned: dict[str, bool] = field(default_factory=dict)
    retired: dict[str, tuple[int, str]] = field(default_factory=dict)  # artifact id -> (seq, reason), by upto
    purged: dict[str, tuple[int, str]] = field(default_factory=dict)
    aliases: dict[tuple[str, str], tuple[str, bool, int]] = field(default_factory=dict)  # -> (target, protected, seq)
    notes: dict[int, str] = field(default_factory=dict)  # seq -> what a lifecycle event did, as HTML
    timeline: list[LedgerEvent] = field(default_factory=list)
    boards: dict[tuple[str, str], Board] = field(default_factory=dict)
    thumbnails: dict[str, str] = field(default_factory=dict)  # artifact id -> data: URI
    skipped_thumbnails: dict[str, str] = field(default_factory=dict)  # artifact id -> why not shown
    events_total: int = 0


def _selected(rec: ArtifactRecorded, run: str | None, project: str | None) -> bool:
    return (run is None or rec.run_id == run) and (project is None or rec.project_id == project)


async def gather(ledger: Any, *, upto: int | None = None, run: str | None = None, project: str | None = None,
                 modes: dict[str, str] | None = None) -> ReportData:
    """Read the events up to ``upto`` (default: the head), verify the ledger, and fold what the report shows."""
    verified = await ledger.verify()
    head = ledger.head[0]
    upto = head if upto is None else upto
    data = ReportData(str(ledger.root), upto, None, None, verified, run, project)
    modes = modes or {}
    # Whether a lifecycle event took effect is the catalogue's rule (a racing writer's refused move is
    # recorded without effect): the seqs each effect happened at come from its lifecycle projection.
    life = (await ledger._refresh()).life
    effects = _Effects(life, upto)
    async for e in ledger.events(until=upto):
        data.events_total += 1
        data.upto_time, data.upto_hash = e.time, e.hash
        ev = e.event
        if not isinstance(ev, (ArtifactRecorded, PinChanged)):
            if _fold_lifecycle(data, effects, e):
                data.timeline.append(e)
            continue
        if isinstance(ev, ArtifactRecorded):
            if not _selected(ev, run, project):
                continue
            data.artifacts[ev.artifact_id] = (e, ev)
            data.pinned[ev.artifact_id] = ev.pinned
            for metric, value in ev.metrics.items():
                key = (ev.kind, metric)
                board = data.boards.get(key)
                if board is None:
                    board = data.boards[key] = Board(ev.kind, metric, modes.get(metric) or default_mode(metric))
                board.offer(e.seq, e.time, ev.artifact_id, value)
        elif isinstance(ev, PinChanged):
            if ev.artifact_id not in data.artifacts:
                continue  # an artifact outside the selection
            data.pinned[ev.artifact_id] = ev.pinned
        else:
            continue
        data.timeline.append(e)
    await _load_thumbnails(ledger, data)
    return data


class _Effects:
    """Which lifecycle events took effect (by seq), from the catalogue's lifecycle state, as of ``upto``."""

    def __init__(self, life: Any, upto: int) -> None:
        self.retired: dict[int, list[tuple[str, str]]] = {}  # seq -> [(artifact id, reason)]
        for aid, (seq, reason) in life.retired.items():
            if seq <= upto:
                self.retired.setdefault(seq, []).append((aid, reason))
        self.purged: dict[int, list[tuple[str, str]]] = {}  # a purge may follow the artifact's retirement
        for aid, (seq, reason) in life.purged.items():
            if seq <= upto:
                self.purged.setdefault(seq, []).append((aid, reason))
        self.alias: dict[int, tuple[str | None, str | None]] = {}  # seq -> (target before, target after)
        for hist in life.alias_hist.values():
            prev: str | None = None
            for seq, target, _ in hist:
                self.alias[seq] = (prev, target)
                prev = target
        self.edges = {(e.seq, child, e.other, e.relation) for child, es in life.parents.items() for e in es}
        self.swept = {(pid, seq) for pid, seq in life.sweeps.items()}


def _code(aid: str | None) -> str:
    return "nothing" if aid is None else f'<code title="{_e(aid)}">{_e(aid[:12])}</code>'


def _fold_lifecycle(data: ReportData, fx: _Effects, e: LedgerEvent) -> bool:
    """Fold one lifecycle event into ``data`` and describe it; False when it concerns no selected artifact."""
    ev = e.event
    scoped = data.run is not None or data.project is not None
    retired_here = fx.retired.get(e.seq, [])
    purged_here = fx.purged.get(e.seq, [])
    for aid, reason in retired_here:
        if aid in data.artifacts:
            data.retired[aid] = (e.seq, reason)
            for board in data.boards.values():
                board.retire(e.seq, e.time, aid)
    for aid, reason in purged_here:
        if aid in data.artifacts:
            data.purged[aid] = (e.seq, reason)
    forced = " <b>(forced)</b>" if getattr(ev, "force", False) else ""
    if isinstance(ev, (AliasSet, AliasRemoved)):
        key = (ev.namespace, ev.name)
        name = f"<b>{_e(ev.namespace)}/{_e(ev.name)}</b>"
        done = fx.alias.get(e.seq)
        before = done[0] if done else None
        named = {ev.artifact_id} if isinstance(ev, AliasSet) else set()
        if before is not None:
            named.add(before)
        if scoped and not named & data.artifacts.keys():
            return False
        if isinstance(ev, AliasSet):
            prot = " (protected)" if ev.protected else ""
            if done is None:
                what = (f"alias {name} → {_code(ev.artifact_id)}{prot}: no effect (the alias is protected, "
                        "or the artifact was retired, when this was folded in)")
            elif before is None:
                what = f"alias {name} set → {_code(ev.artifact_id)}{prot}{forced}"
            else:
                what = f"alias {name} moved {_code(before)} → {_code(ev.artifact_id)}{prot}{forced}"
            if done is not None:
                data.aliases[key] = (ev.artifact_id, ev.protected, e.seq)
        else:
            if done is None:
                what = f"alias {name} removed: no effect (it pointed nowhere, or was protected)"
            else:
                what = f"alias {name} removed (was {_code(before)}){forced}"
                data.aliases.pop(key, None)
    elif isinstance(ev, Related):
        if scoped and not {ev.child, ev.parent} & data.artifacts.keys():
            return False
        took = (e.seq, ev.child, ev.parent, ev.relation) in fx.edges
        what = (f"lineage: {_code(ev.child)} <b>{_e(ev.relation)}</b> {_code(ev.parent)}"
                + ("" if took else ": no effect (an unknown id, a duplicate or a cycle when folded in)"))
    elif isinstance(ev, (Retired, Purged)):
        if scoped and ev.artifact_id not in data.artifacts:
            return False
        verb = "retired" if isinstance(ev, Retired) else "purged (bytes collectable once unreferenced)"
        took = any(aid == ev.artifact_id for aid, _ in (purged_here if isinstance(ev, Purged) else retired_here))
        what = (f"{verb} {_code(ev.artifact_id)}: <q>{_e(ev.reason)}</q>{forced}"
                + ("" if took else ": no effect (already retired, or pinned/aliased without force, when folded in)"))
    elif isinstance(ev, GcPlanned):
        mine = [aid for aid, _ in purged_here if aid in data.artifacts]
        if scoped and not mine:
            return False
        part = f" (part {ev.part}/{ev.parts})" if ev.parts > 1 else ""
        policy = _e(json.dumps(ev.policy, sort_keys=True)) if ev.policy else "none (only unreferenced blobs)"
        listed = ", ".join(_code(a) for a in mine[:20]) + (f" and {len(mine) - 20} more" if len(mine) > 20 else "")
        what = (f"gc plan <code>{_e(ev.plan_id)}</code>{part}: policy {policy}; purges {len(ev.purge)} "
                f"artifact(s){': ' + listed if listed else ''}; expects to delete {ev.blobs} blob(s), "
                f"{_e(fmt_bytes(ev.bytes))}; grace {ev.grace_s:g} s")
    elif isinstance(ev, GcSwept):
        if scoped:
            return False  # a sweep frees blobs of the whole ledger, not of one run or project
        resumed = (" · finished earlier plan(s) " + ", ".join(f"<code>{_e(p)}</code>" for p in ev.resumes)
                   if ev.resumes else "")
        what = (f"gc result of plan <code>{_e(ev.plan_id)}</code>: deleted {ev.blobs} blob(s), "
                f"freed {_e(fmt_bytes(ev.bytes))}; kept {ev.kept} needed again; removed {ev.staging} staging and "
                f"{ev.materialized} materialised entries{resumed}")
    else:
        if scoped:
            return False
        what = _e(e.type)  # a type this report does not know yet: listed, not interpreted
    data.notes[e.seq] = what
    return True


async def _load_thumbnails(ledger: Any, data: ReportData) -> None:
    budget = MAX_THUMBNAILS_BYTES
    view = ledger if data.upto == ledger.head[0] else await ledger.as_of(seq=data.upto)
    for aid, (_, rec) in data.artifacts.items():
        if rec.mime not in THUMBNAIL_MIME:
            continue
        if rec.size > MAX_THUMBNAIL_BYTES or rec.size > budget:
            data.skipped_thumbnails[aid] = f"{fmt_bytes(rec.size)}, too large to embed"
            continue
        facade = view.artifacts(run_id=rec.run_id, graph_id=rec.graph_id, node_id=rec.node_id,
                                project_id=rec.project_id)
        try:
            raw = await facade.load_artifact_bytes(f"artifact://{aid}")
        except (OSError, ValueError) as exc:  # a missing or damaged blob is shown, not fatal
            data.skipped_thumbnails[aid] = f"not readable: {exc}"
            continue
        budget -= len(raw)
        data.thumbnails[aid] = f"data:{rec.mime};base64,{base64.b64encode(raw).decode('ascii')}"


# ---------------------------------------------------------------- rendering
def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: float | int) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _plot(board: Board, t0: float, t1: float) -> str:
    """A step plot of the best value over commit time, with a marker at each change of leader."""
    pts = board.changes
    vals = [p.value for p in pts if p.value is not None]
    lo, hi = min(vals), max(vals)
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    span = (t1 - t0) or 1.0
    w, h = _PLOT_W - 2 * _PAD, _PLOT_H - 2 * _PAD

    def x(t: datetime) -> float:
        return _PAD + (t.timestamp() - t0) / span * w

    def y(v: float | int) -> float:
        return _PAD + (hi - v) / (hi - lo) * h

    # A step line: the best value holds until the next change of leader; it breaks while no live
    # artifact leads (every candidate retired) and starts again at the next one.
    path: list[str] = []
    drawing = False
    for p in pts:
        if p.value is None:
            if drawing:
                path.append(f"H{x(p.time):.1f}")
            drawing = False
        elif drawing:
            path.append(f"H{x(p.time):.1f} V{y(p.value):.1f}")
        else:
            path.append(f"M{x(p.time):.1f} {y(p.value):.1f}")
            drawing = True
    if drawing:
        path.append(f"H{_PAD + w:.1f}")
    marks = "".join(
        f'<circle class="leader{" after-retirement" if p.retired else ""}" cx="{x(p.time):.1f}" '
        f'cy="{y(p.value):.1f}" r="4" data-seq="{p.seq}" '
        f'data-artifact="{_e(p.artifact_id)}" data-value="{_e(repr(p.value))}">'
        f"<title>seq {p.seq}: {_e(p.artifact_id)} {_e(board.metric)}={_e(_num(p.value))} "
        f"({_e(fmt_time(p.time))}){f' after {_e(p.retired)} was retired' if p.retired else ''}</title></circle>"
        for p in pts if p.value is not None
    )
    axis = (
        f'<line x1="{_PAD}" y1="{_PAD + h}" x2="{_PAD + w}" y2="{_PAD + h}" class="axis"/>'
        f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_PAD + h}" class="axis"/>'
        f'<text x="{_PAD - 4}" y="{y(max(vals)) + 4:.1f}" text-anchor="end">{_e(_num(max(vals)))}</text>'
        f'<text x="{_PAD - 4}" y="{y(min(vals)) + 4:.1f}" text-anchor="end">{_e(_num(min(vals)))}</text>'
        f'<text x="{_PAD}" y="{_PLOT_H - 8}">{_e(fmt_time(datetime.fromtimestamp(t0, timezone.utc)))}</text>'
        f'<text x="{_PAD + w}" y="{_PLOT_H - 8}" text-anchor="end">'
        f"{_e(fmt_time(datetime.fromtimestamp(t1, timezone.utc)))}</text>"
    )
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_PLOT_W} {_PLOT_H}" width="{_PLOT_W}" '
            f'height="{_PLOT_H}" role="img" aria-label="best {_e(board.metric)} of {_e(board.kind)} over time">'
            f'{axis}<path class="best-line" d="{" ".join(path)}"/>{marks}</svg>')


def _boards_html(data: ReportData) -> str:
    if not data.boards:
        return "<p>No artifact has a metric yet.</p>"
    times = [e.time.timestamp() for e in data.timeline] or [0.0]
    t0, t1 = min(times), max(times)
    out = []
    for (kind, metric), board in sorted(data.boards.items()):
        lead = board.changes[-1]
        changes = "".join(
            f"<li>seq {c.seq} · {_e(fmt_time(c.time))} · "
            + ("no live artifact" if c.artifact_id is None or c.value is None else
               f"<code>{_e(c.artifact_id)}</code> = {_e(_num(c.value))}")
            + (f" (after <code>{_e(c.retired)}</code> was retired)" if c.retired else "") + "</li>"
            for c in board.changes
        )
        if lead.artifact_id is None or lead.value is None:
            # best() answers None: every artifact with the metric is retired.
            best = (f'<p class="best">best: <b class="best-value"></b><code class="best-id"></code>none since seq '
                    f"{lead.seq}: every artifact with this metric is retired</p>")
            attrs = 'data-best-id="" data-best-value=""'
        else:
            best = (f'<p class="best">best: <b class="best-value">{_e(_num(lead.value))}</b> '
                    f'<code class="best-id">{_e(lead.artifact_id)}</code> since seq {lead.seq}</p>')
            attrs = f'data-best-id="{_e(lead.artifact_id)}" data-best-value="{_e(repr(lead.value))}"'
        out.append(
            f'<section class="board" data-kind="{_e(kind)}" data-metric="{_e(metric)}" data-mode="{board.mode}" '
            f"{attrs}>"
            f"<h3>{_e(kind)} · {_e(metric)} <small>({board.mode}, {board.candidates} live artifacts, "
            f"{len(board.changes)} leaders)</small></h3>"
            f"{best}{_plot(board, t0, t1)}<details><summary>changes of leader</summary><ol>{changes}</ol></details>"
            f"</section>"
        )
    return "".join(out)


def _runs_html(data: ReportData) -> str:
    runs: dict[str, list[tuple[LedgerEvent, ArtifactRecorded]]] = {}
    for pair in data.artifacts.values():
        runs.setdefault(pair[1].run_id, []).append(pair)
    if not runs:
        return "<p>No artifacts.</p>"
    out = []
    for run_id in sorted(runs):
        items = runs[run_id]
        projects = sorted({r.project_id or "-" for _, r in items})
        shown = items[-MAX_ROWS_PER_RUN:]
        rows = "".join(_artifact_row(data, e, r) for e, r in reversed(shown))
        more = (f'<p class="note">showing the newest {len(shown)} of {len(items)}</p>'
                if len(shown) < len(items) else "")
        gone = sum(1 for _, r in items if r.artifact_id in data.retired)
        retired = f" ({gone} retired)" if gone else ""
        out.append(
            f'<details class="run" open data-run="{_e(run_id)}" data-live="{len(items) - gone}"><summary>'
            f"<b>{_e(run_id)}</b> · {len(items)} artifacts{retired} · project {_e(', '.join(projects))} · "
            f"{_e(fmt_time(items[0][0].time))} – {_e(fmt_time(items[-1][0].time))}</summary>{more}"
            "<table class='artifacts'><thead><tr><th>seq</th><th>id</th><th>kind</th><th>name</th><th>size</th>"
            "<th>metrics</th><th>labels</th><th>pin</th><th>status</th><th>created</th><th>preview</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></details>"
        )
    return "".join(out)


def _artifact_row(data: ReportData, e: LedgerEvent, r: ArtifactRecorded) -> str:
    aid = r.artifact_id
    thumb = data.thumbnails.get(aid)
    if thumb is not None:
        preview = f'<img class="thumb" alt="{_e(r.name or aid)}" data-artifact="{_e(aid)}" src="{thumb}">'
    else:
        preview = _e(data.skipped_thumbnails.get(aid, ""))
    pinned = "📌" if data.pinned.get(aid) else ""
    status, cls = "live", ""
    gone = data.purged.get(aid) or data.retired.get(aid)
    if gone is not None:
        word = "purged" if aid in data.purged else "retired"
        status, cls = f"{word} at seq {gone[0]}: {gone[1]}", f' class="{word}"'
    aliases = [f"{ns}/{n}" for (ns, n), (target, _, _) in sorted(data.aliases.items()) if target == aid]
    if aliases:
        status += " · alias " + ", ".join(aliases)
    return (
        f'<tr data-artifact="{_e(aid)}"{cls}><td>{e.seq}</td><td><code title="{_e(aid)}">{_e(aid[:12])}</code></td>'
        f"<td>{_e(r.kind)}</td><td>{_e(r.name or r.suggested_uri or '')}</td><td>{_e(fmt_bytes(r.size))}</td>"
        f"<td>{_e(fmt_metrics(dict(r.metrics)))}</td><td>{_e(fmt_pairs(dict(r.labels)))}</td>"
        f'<td class="pin">{pinned}</td><td class="status">{_e(status)}</td><td>{_e(fmt_time(e.time))}</td>'
        f"<td>{preview}</td></tr>"
    )


def _aliases_html(data: ReportData) -> str:
    if not data.aliases:
        return "<p>No aliases.</p>"
    rows = "".join(
        f'<tr data-alias="{_e(ns)}/{_e(name)}" data-artifact="{_e(target)}"><td><b>{_e(ns)}/{_e(name)}</b></td>'
        f"<td><code>{_e(target)}</code></td><td>{'protected' if prot else ''}</td><td>{seq}</td></tr>"
        for (ns, name), (target, prot, seq) in sorted(data.aliases.items())
    )
    return ("<table class='aliases'><thead><tr><th>alias</th><th>artifact</th><th></th><th>since seq</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def _pins_html(data: ReportData) -> str:
    pinned = [aid for aid, p in data.pinned.items() if p]
    if not pinned:
        return "<p>No pinned artifacts.</p>"
    rows = "".join(
        f'<tr data-artifact="{_e(aid)}"><td><code>{_e(aid)}</code></td><td>{_e(data.artifacts[aid][1].kind)}</td>'
        f"<td>{_e(data.artifacts[aid][1].run_id)}</td></tr>"
        for aid in pinned
    )
    return ("<table class='pins'><thead><tr><th>id</th><th>kind</th><th>run</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _timeline_html(data: ReportData) -> str:
    shown = data.timeline[-MAX_TIMELINE:]
    note = (f'<p class="note">showing the last {len(shown)} of {len(data.timeline)} events</p>'
            if len(shown) < len(data.timeline) else "")
    rows = []
    for e in shown:
        ev = e.event
        if isinstance(ev, ArtifactRecorded):
            what = f"recorded {_e(ev.kind)} <code>{_e(ev.artifact_id[:12])}</code> in run {_e(ev.run_id)}"
        elif isinstance(ev, PinChanged):
            what = f"{'pinned' if ev.pinned else 'unpinned'} <code>{_e(ev.artifact_id[:12])}</code>"
        else:
            what = data.notes.get(e.seq, _e(e.type))
        rows.append(f'<tr data-seq="{e.seq}"><td>{e.seq}</td><td>{_e(fmt_time(e.time))}</td>'
                    f"<td>{_e(e.type)}</td><td>{what}</td></tr>")
    return (f"{note}<table class='timeline'><thead><tr><th>seq</th><th>time</th><th>type</th><th>what</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;margin-top:2em}h3 small{color:#666;font-weight:normal}
table{border-collapse:collapse;margin:.5em 0;width:100%}td,th{border-bottom:1px solid #eee;padding:2px 6px;
text-align:left;vertical-align:top}th{background:#f4f4f4}code{font-size:.9em}.note{color:#666}
tr.retired,tr.purged{color:#888}tr.purged td.status{color:#b00}
.thumb{max-width:96px;max-height:96px}.axis{stroke:#999}.best-line{fill:none;stroke:#1565c0;stroke-width:2}
.leader{fill:#e65100}svg text{font-size:11px;fill:#555}.head{background:#f4f8ff;padding:.5em 1em;border-radius:4px}
.bad{background:#fff0f0}#filter{margin:.5em 0;padding:3px;width:20em}
"""

_JS = """
document.getElementById('filter').addEventListener('input', function (ev) {
  var q = ev.target.value.toLowerCase();
  document.querySelectorAll('table.artifacts tbody tr').forEach(function (tr) {
    tr.style.display = tr.textContent.toLowerCase().indexOf(q) >= 0 ? '' : 'none';
  });
});
"""


def render(data: ReportData) -> str:
    """The report as one self-contained HTML document."""
    v = data.verified
    status = "ok" if v.ok else f"FAILED: {v.problem}"
    head_seq, head_hash = v.head if v.head is not None else (0, "")
    scope = " · ".join(x for x in [f"run {data.run}" if data.run else "", f"project {data.project}"
                                   if data.project else ""] if x) or "all runs"
    at = f"seq {data.upto}" + (f" ({fmt_time(data.upto_time)})" if data.upto_time else "")
    summary = {"root": data.root, "as_of_seq": data.upto, "as_of_hash": data.upto_hash,
               "verified": v.ok, "head": [head_seq, head_hash], "artifacts": len(data.artifacts),
               "retired": len(data.retired), "purged": len(data.purged)}
    # "</" would end the script element early; JSON allows "<\/" for it.
    summary_json = json.dumps(summary).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>artifact-ledger report: {_e(data.root)}</title><style>{_CSS}</style></head>
<body>
<h1>artifact-ledger report</h1>
<div class="head{'' if v.ok else ' bad'}" id="head" data-verified="{str(v.ok).lower()}" data-head-seq="{head_seq}" data-head-hash="{_e(head_hash)}" data-as-of-seq="{data.upto}">
<p>Ledger <code>{_e(data.root)}</code>, {_e(scope)}, as of {_e(at)}: {len(data.artifacts)} artifacts, {len(data.timeline)} events shown of {data.events_total}.</p>
<p>Verified head: <b id="verify-status">{_e(status)}</b> · seq <b id="head-seq">{head_seq}</b> · <code id="head-hash">{_e(head_hash)}</code><br>
<small>Record this (seq, hash) somewhere else; <code>artifact-ledger verify --expect-head {head_seq}:{_e(head_hash)}</code> proves later that the history up to it is unchanged.</small>{f'<br>Hash of seq {data.upto}: <code id="as-of-hash">{_e(data.upto_hash)}</code>' if data.upto_hash and data.upto != head_seq else ''}</p>
</div>
<h2>Best so far</h2>{_boards_html(data)}
<h2>Runs</h2><input id="filter" type="search" placeholder="filter artifacts">{_runs_html(data)}
<h2>Pinned</h2>{_pins_html(data)}
<h2>Aliases</h2>{_aliases_html(data)}
<h2>Timeline</h2>{_timeline_html(data)}
<script type="application/json" id="summary">{summary_json}</script>
<script>{_JS}</script>
</body></html>
"""  # noqa: E501  (one HTML line per element: wrapping would change the page)


def parse_modes(minimize: Sequence[str] | None, maximize: Sequence[str] | None) -> dict[str, str]:
    """Per-metric ranking directions given on the command line; a metric given both ways is refused."""
    modes = {m: "min" for m in minimize or ()}
    for m in maximize or ():
        if modes.get(m) == "min":
            raise ValueError(f"metric {m!r} is given both as --minimize and --maximize")
        modes[m] = "max"
    return modes
