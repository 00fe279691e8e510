"""The lifecycle commands of ``artifact-ledger``: aliases, lineage, retire, purge, gc and du.

``alias``, ``unalias``, ``retire``, ``purge`` and ``gc`` (without ``--dry-run``) record
events, so they open the ledger for writing; the others only read. Alias names
default to the namespace of ``--project``, else ``all`` (the facade's rule), unless
written ``namespace/name``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import cli_format as fmt
from .cli_commands import EXIT_OK, CliError, Reader, Result, _resolve_id, parse_position

WRITING = frozenset({"alias", "unalias", "retire", "purge", "gc"})
_UNBOUND = "-"


def writes(args: Any) -> bool:
    """Whether the command records events (so the ledger is opened for writing)."""
    return args.command in WRITING and not (args.command == "gc" and args.dry_run)


def add_lifecycle_commands(sub: Any, common: Any) -> None:
    """Add the lifecycle commands to the top-level subparsers."""
    def project(p: Any) -> None:
        p.add_argument("--project", metavar="ID", help="the alias namespace (default: all)")

    def as_of(p: Any) -> None:
        p.add_argument("--as-of", metavar="POS", help="as it was after this seq or at this ISO time")

    p = sub.add_parser("alias", parents=[common], help="point an alias at an artifact (records an event)")
    p.add_argument("id", metavar="ID", help="artifact id (or a unique prefix of 4+ characters)")
    p.add_argument("name", metavar="NAME", help="alias name, or namespace/name")
    p.add_argument("--protected", action="store_true", help="the alias then moves only with --force")
    p.add_argument("--force", action="store_true", help="move (or unprotect) a protected alias")
    project(p)
    p.set_defaults(run_cmd=cmd_alias)

    p = sub.add_parser("unalias", parents=[common], help="remove an alias (records an event)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help="remove a protected alias")
    project(p)
    p.set_defaults(run_cmd=cmd_unalias)

    p = sub.add_parser("resolve", parents=[common], help="the artifact an alias points at (now or --as-of)")
    p.add_argument("name", metavar="NAME")
    project(p)
    as_of(p)
    p.set_defaults(run_cmd=cmd_resolve)

    p = sub.add_parser("aliases", parents=[common], help="aliases and what they point at, with their history")
    project(p)
    p.add_argument("--every", action="store_true", help="every namespace")
    as_of(p)
    p.set_defaults(run_cmd=cmd_aliases)

    p = sub.add_parser("lineage", parents=[common], help="what an artifact came from (or, --down, led to)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--down", action="store_true", help="walk to descendants instead of ancestors")
    p.add_argument("--depth", type=int, metavar="N", help="at most N steps")
    as_of(p)
    p.set_defaults(run_cmd=cmd_lineage)

    for name, what in (("retire", "hide an artifact from list, search, best and resolve"),
                       ("purge", "retire an artifact and let gc collect its bytes")):
        p = sub.add_parser(name, parents=[common], help=f"{what} (records an event)")
        p.add_argument("id", metavar="ID")
        p.add_argument("--reason", required=True, help="why (recorded)")
        p.add_argument("--force", action="store_true", help="even if it is pinned or aliased")
        p.set_defaults(run_cmd=cmd_retire if name == "retire" else cmd_purge)

    p = sub.add_parser("gc", parents=[common], help="collect unneeded blobs (and apply a retention policy)",
                       description="Plan (with --dry-run: only show) a garbage collection: artifacts a "
                                   "retention policy purges, blobs no live artifact needs, bytes freed; "
                                   "then record the plan, delete, and record the result.")
    p.add_argument("--dry-run", action="store_true", help="show the plan, write nothing")
    p.add_argument("--policy", metavar="FILE", help="a JSON retention policy (keep_best, keep_newest, ttl)")
    p.add_argument("--grace", type=float, metavar="SECONDS", default=3600.0,
                   help="spare unreferenced blobs no event names younger than this (default 3600)")
    p.set_defaults(run_cmd=cmd_gc)

    p = sub.add_parser("du", parents=[common], help="bytes per run, project and kind (logical and deduplicated)")
    p.set_defaults(run_cmd=cmd_du)


async def _source(reader: Reader, args: Any) -> Any:
    pos = getattr(args, "as_of", None)
    if pos is None:
        return reader.source
    at = parse_position(pos)
    return await (reader.ledger.as_of(seq=at) if isinstance(at, int) else reader.ledger.as_of(time=at))


def _facade(source: Any, args: Any) -> Any:
    return source.artifacts(run_id=_UNBOUND, graph_id=_UNBOUND, node_id=_UNBOUND,
                            project_id=getattr(args, "project", None))


def _art_line(a: Any) -> str:
    return f"{a.artifact_id}  {a.kind}  run {a.run_id}  seq {a.seq}  {fmt.fmt_time(a.created_at)}"


async def cmd_alias(reader: Reader, args: Any) -> Result:
    """Point an alias at an artifact."""
    aid = _resolve_id(reader.ledger, args.id)
    art = await _facade(reader.ledger, args).alias(aid, args.name, protected=args.protected, force=args.force)
    return Result(art.model_dump(mode="json"), f"{args.name} -> {aid}")


async def cmd_unalias(reader: Reader, args: Any) -> Result:
    """Remove an alias."""
    aid = await _facade(reader.ledger, args).unalias(args.name, force=args.force)
    return Result({"name": args.name, "was": aid}, f"{args.name} removed (pointed at {aid})")


async def cmd_resolve(reader: Reader, args: Any) -> Result:
    """The artifact an alias points at."""
    src = await _source(reader, args)
    art = await _facade(src, args).resolve(args.name)
    return Result(art.model_dump(mode="json"), _art_line(art))


async def cmd_aliases(reader: Reader, args: Any) -> Result:
    """Aliases that point somewhere."""
    src = await _source(reader, args)
    infos = await _facade(src, args).aliases(every_namespace=args.every)
    doc = [{"namespace": i.namespace, "name": i.name, "artifact_id": i.artifact_id, "protected": i.protected,
            "seq": i.seq, "time": i.time.isoformat()} for i in infos]
    rows = [(f"{i.namespace}/{i.name}", i.artifact_id, "protected" if i.protected else "", str(i.seq),
             fmt.fmt_time(i.time)) for i in infos]
    text = "\n".join("  ".join(r) for r in rows) if rows else "no aliases"
    return Result(doc, text)


async def cmd_lineage(reader: Reader, args: Any) -> Result:
    """Ancestors (or descendants) of an artifact."""
    aid = _resolve_id(reader.ledger, args.id)
    src = await _source(reader, args)
    steps = await _facade(src, args).lineage(aid, direction="down" if args.down else "up", depth=args.depth)
    doc = [{"artifact": s.artifact.model_dump(mode="json"), "relation": s.relation, "depth": s.depth,
            "via": s.via} for s in steps]
    text = "\n".join(f"{'  ' * s.depth}{s.relation}: {_art_line(s.artifact)}" for s in steps)
    return Result(doc, text or f"{aid} has no recorded {'descendants' if args.down else 'ancestors'}")


async def cmd_retire(reader: Reader, args: Any) -> Result:
    """Retire an artifact."""
    aid = _resolve_id(reader.ledger, args.id)
    await _facade(reader.ledger, args).retire(aid, args.reason, force=args.force)
    return Result({"retired": aid}, f"retired {aid}")


async def cmd_purge(reader: Reader, args: Any) -> Result:
    """Purge an artifact."""
    aid = _resolve_id(reader.ledger, args.id)
    await _facade(reader.ledger, args).purge(aid, args.reason, force=args.force)
    return Result({"purged": aid}, f"purged {aid}; its bytes go with the next gc")


def _plan_doc(p: Any) -> dict[str, Any]:
    return {"plan_id": p.plan_id, "policy": p.policy, "purge": p.purge, "blobs": len(p.blobs),
            "collectable": p.collectable, "orphans": p.orphans, "bytes": p.bytes, "spared": p.spared,
            "open_plans": p.open_plans}


async def cmd_gc(reader: Reader, args: Any) -> Result:
    """Plan or run a garbage collection."""
    policy = None
    if args.policy is not None:
        try:
            policy = json.loads(Path(args.policy).read_text())
        except json.JSONDecodeError as exc:
            raise CliError(f"--policy {args.policy}: not JSON ({exc})") from None
    out = await reader.ledger.gc(policy, dry_run=args.dry_run, grace=args.grace)
    if args.dry_run:
        doc = _plan_doc(out)
        text = (f"plan (nothing written): purge {len(out.purge)} artifacts, delete {len(out.blobs)} blobs "
                f"({out.collectable} of purged artifacts, {out.orphans} orphans), free {fmt.fmt_bytes(out.bytes)}"
                + (f"; {out.spared} young orphans spared" if out.spared else ""))
        return Result(doc, text)
    doc = {"plan": _plan_doc(out.plan), "plan_seq": out.plan_seq, "result_seq": out.result_seq, "blobs": out.blobs,
           "bytes": out.bytes, "kept": out.kept, "staging": out.staging, "materialized": out.materialized}
    text = (f"gc: purged {len(out.plan.purge)} artifacts, deleted {out.blobs} blobs, freed "
            f"{fmt.fmt_bytes(out.bytes)} (plan seq {out.plan_seq}, result seq {out.result_seq})")
    return Result(doc, text, EXIT_OK)


async def cmd_du(reader: Reader, args: Any) -> Result:
    """Bytes per run, project and kind."""
    du = await reader.ledger.du()
    lines = []
    for title, groups in (("run", du.by_run), ("project", du.by_project), ("kind", du.by_kind)):
        for key, u in sorted(groups.items(), key=lambda kv: str(kv[0])):
            lines.append(f"{title:8} {str(key):30} {u.artifacts:8}  {fmt.fmt_bytes(u.logical_bytes):>10} logical  "
                         f"{fmt.fmt_bytes(u.unique_bytes):>10} deduplicated")
    t = du.total
    lines.append(f"total: {t.artifacts} artifacts, {fmt.fmt_bytes(t.logical_bytes)} logical, "
                 f"{fmt.fmt_bytes(t.unique_bytes)} deduplicated; store: {du.store_blobs} blobs, "
                 f"{fmt.fmt_bytes(du.store_bytes)}")
    return Result(du.to_json(), "\n".join(lines))
