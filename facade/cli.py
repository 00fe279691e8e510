"""``artifact-ledger``: read, audit and export a ledger directory from the shell.

Argument parsing, opening the ledger and the mapping of failures to exit codes
live here; the commands are in ``cli_commands.py``, tables in ``cli_format.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import anyio

from ..ledger.errors import LedgerCorruption, LockTimeout, RecordsLost, SchemaTooNew
from ..ledger.lockfile import DEFAULT_LOCK_TIMEOUT, check_lock_timeout
from ..store.base import BlobStoreError

from . import cli_commands as cmd
from . import cli_lifecycle, importing
from .cli_commands import EXIT_ENV, EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, Reader, Result
from .cli_format import Progress, fmt_time
from .ledger import open_ledger
from .repair import LedgerNeedsRepair, repair_ledger

PROG = "artifact-ledger"
ROOT_ENV = "ARTIFACT_LEDGER_ROOT"
LOG_ENV = "ARTIFACT_LEDGER_LOG"
BLOBS_ENV = "ARTIFACT_LEDGER_BLOBS"
CACHE_ENV = "ARTIFACT_LEDGER_CACHE_DIR"
OPEN_QUIET_SECONDS = 0.5  # a progress bar appears only when opening (log replay) takes longer

DESCRIPTION = ("Read, audit and export an artifact ledger directory (never creates artifacts, except `import`, "
               "which records those of an MLflow or AetherGraph store; the lifecycle commands alias, unalias, "
               "retire, purge and gc record their events).")

EPILOG = f"""\
The ledger directory is given by --root DIR (or -C DIR), or else by the
environment variable {ROOT_ENV}. A ledger whose log is in PostgreSQL is
given by --log postgresql://user@host:5432/db?schema=NAME (or {LOG_ENV}),
with its local cache in --cache-dir DIR (or {CACHE_ENV}; default
~/.cache/artifact-ledger/<hash of the URL>). --root/-C, --log, --cache-dir
and --json may be written before or after the command. The tool never creates a ledger (except
`import --create`) and never records, except `import mlflow` and
`import aethergraph`.

A ledger whose blobs live in S3 remembers where: --blobs s3://bucket/prefix
(or {BLOBS_ENV}) is needed only to create one with `import --create`, and is
checked against the ledger's own record otherwise. The S3 endpoint, region and
credentials come from the AWS environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...). Fetched blobs are cached in
--cache-dir DIR (or {CACHE_ENV}); without it, a private temporary directory.

--lock-timeout SECONDS bounds each wait for the log lock (default
{DEFAULT_LOCK_TIMEOUT:g}; none: no limit). --accept-loss opens a log that lost
committed records instead of failing (a writing command then drops the
checkpoints past its end).

Positions (--since, --until, diff A B, as-of --time) are a seq number or an
ISO 8601 time (2024-05-01T12:00:00Z; a time without a zone is UTC). A time
names the last event committed at or before it; for --since, the first event
committed at or after it.

Label filters: --label KEY=VALUE, repeatable; VALUE is read as JSON when it
parses (1, 2.5, true, null, "1", [1,2]) and as a plain string otherwise.

Output: aligned tables for people; --json prints one JSON document instead.
Tables of list, search, log and runs show at most 50 rows and say how many
were left out (--limit N or --all to change that; --limit also limits --json).
Long labels are shortened in tables, never in --json.
export always writes JSON lines (one event per line).

Exit status:
  0  success
  1  verification failed, the ledger is damaged, or some artifacts of an
     import failed (the others are imported)
  2  usage error: bad arguments, no ledger at the directory, or a value the
     library rejects (unknown id, seq out of range, ...)
  3  the system refused: permission denied, disk full, I/O error, ...

examples:
  {PROG} -C runs/ledger list --run r1
  {PROG} -C runs/ledger search --kind model --label epoch=3 --metric acc --mode max
  {PROG} -C runs/ledger as-of --seq 120 best --kind model --metric acc --mode max --run r1
  {PROG} -C runs/ledger runs --project p
  {PROG} -C runs/ledger export-files --run r1 out/r1
  {PROG} -C runs/ledger verify --expect-head 120:3f2a...
"""


class _Parser(argparse.ArgumentParser):
    """argparse with the tool's name in its error line (exit status 2 stays)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def _common() -> _Parser:
    # SUPPRESS defaults let the same options appear before or after a command
    # without the subcommand's default overwriting a value given earlier.
    p = _Parser(add_help=False)
    p.add_argument("-C", "--root", metavar="DIR", default=argparse.SUPPRESS,
                   help=f"the ledger directory (default: ${ROOT_ENV})")
    p.add_argument("--log", metavar="URL", default=argparse.SUPPRESS,
                   help=f"the log by URL, postgresql://user@host:5432/db?schema=NAME (default: ${LOG_ENV})")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print one JSON document instead of tables")
    p.add_argument("--blobs", metavar="URL", default=argparse.SUPPRESS,
                   help=f"where the blobs live: s3://bucket/prefix (default: ${BLOBS_ENV}, else as the ledger says)")
    p.add_argument("--cache-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help=f"this machine's local state: for --log, staging, materialised copies and local blobs; "
                        f"the cache of blobs fetched from S3 (default: ${CACHE_ENV})")
    p.add_argument("--lock-timeout", metavar="SECONDS", type=_lock_timeout, default=argparse.SUPPRESS,
                   help=f"wait at most this long for the log lock; 'none' waits until interrupted "
                        f"(default: {DEFAULT_LOCK_TIMEOUT:g})")
    p.add_argument("--accept-loss", action="store_true", default=argparse.SUPPRESS,
                   help="open a log that lost committed records (a segment deleted or cut short) instead of "
                        "failing; a writing command then drops the checkpoints past its end")
    return p


def _lock_timeout(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return check_lock_timeout(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds or 'none', got {text!r}") from None


def open_options(args: argparse.Namespace) -> dict[str, Any]:
    """open_ledger's ``blobs``, ``cache_dir``, ``lock_timeout`` and ``accept_loss`` from the common options.

    ``--blobs`` and ``--cache-dir`` fall back to their environment variables.
    """
    blobs = getattr(args, "blobs", None) or os.environ.get(BLOBS_ENV) or None
    cache = getattr(args, "cache_dir", None) or os.environ.get(CACHE_ENV) or None
    return {"blobs": blobs, "cache_dir": cache,
            "lock_timeout": getattr(args, "lock_timeout", DEFAULT_LOCK_TIMEOUT),
            "accept_loss": bool(getattr(args, "accept_loss", False))}


def _add_query_args(p: argparse.ArgumentParser, *, ranking: str) -> None:
    g = p.add_argument_group("binding and scope")
    g.add_argument("--run", metavar="ID", help="run id")
    g.add_argument("--graph", metavar="ID", help="graph id")
    g.add_argument("--node", metavar="ID", help="node id")
    g.add_argument("--project", metavar="ID", help="project id")
    g.add_argument("--scope", choices=("node", "graph", "run", "project", "all"),
                   help="how far the query reaches from the bound ids, as in the facade; it needs "
                        "its ids (node: --run --graph --node, graph: --run --graph, run: --run, "
                        "project: --project) and ignores the others. Without --scope, every id given "
                        "filters (and the scope is the narrowest those ids determine)")
    f = p.add_argument_group("filters")
    f.add_argument("--kind", required=ranking == "required", help="artifact kind")
    f.add_argument("--label", action="append", metavar="KEY=VALUE", help="label equality (repeatable)")
    req = ranking == "required"
    f.add_argument("--metric", required=req, help="rank by this metric" + ("" if req else " (needs --mode)"))
    f.add_argument("--mode", choices=("max", "min"), required=req, help="max or min")
    if ranking != "required":
        f.add_argument("--limit", type=_non_negative, metavar="N", help="at most N artifacts")
    if ranking == "optional":
        _add_all_arg(p)


def _add_all_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true",
                   help=f"tables show every row (by default at most {cmd.TABLE_ROWS}, and say how many were left out)")


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def _add_read_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """log/list/search/best/show/export/runs/export-files: the commands ``as-of`` can also run at a past position."""
    p = sub.add_parser("log", parents=[common], help="recorded events in order",
                       description="Recorded events (artifacts recorded, pins) in commit order.")
    _add_range_args(p)
    p.add_argument("--run", metavar="ID", help="only events of artifacts of this run")
    p.add_argument("--kind", help="only events of artifacts of this kind")
    p.add_argument("--limit", type=_non_negative, metavar="N", help="at most N events (the first N)")
    _add_all_arg(p)
    p.set_defaults(run_cmd=cmd.cmd_log)

    p = sub.add_parser("list", parents=[common], help="artifacts in a scope, newest first",
                       description="Artifacts in a scope, newest first (or ranked with --metric/--mode).")
    _add_query_args(p, ranking="optional")
    p.set_defaults(run_cmd=cmd.cmd_search)
    p = sub.add_parser("search", parents=[common], help="artifacts by kind and labels, optionally ranked",
                       description="Artifacts matching kind and labels in a scope; ranked best first "
                                   "with --metric/--mode, else newest first.")
    _add_query_args(p, ranking="optional")
    p.set_defaults(run_cmd=cmd.cmd_search)
    p = sub.add_parser("best", parents=[common], help="the best artifact of a kind by a metric",
                       description="The best artifact of a kind by a metric in a scope (ties: newest).")
    _add_query_args(p, ranking="required")
    p.set_defaults(run_cmd=cmd.cmd_best)
    p = sub.add_parser("show", parents=[common], help="one artifact and its history",
                       description="One artifact's fields and every event that touched it.")
    p.add_argument("id", help="artifact id (or a unique prefix of at least 4 characters), or its URI "
                              "(artifact://<id>)")
    p.set_defaults(run_cmd=cmd.cmd_show)
    p = sub.add_parser("export", parents=[common], help="events as JSON lines",
                       description="Every event (or a --since/--until range) as one JSON object per line.")
    _add_range_args(p)
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(run_cmd=cmd.cmd_export)
    p = sub.add_parser("runs", parents=[common], help="runs with artifact counts and first/last times",
                       description="Every run with its number of artifacts and the times its first and last "
                                   "artifact were recorded, most recently active first.")
    p.add_argument("--project", metavar="ID", help="count only this project's artifacts")
    p.add_argument("--limit", type=_non_negative, metavar="N", help="at most N runs")
    _add_all_arg(p)
    p.set_defaults(run_cmd=cmd.cmd_runs)
    p = sub.add_parser("export-files", parents=[common], help="copy the files of a run or a query into DIR",
                       description="Copy the files of the artifacts a query finds (the options of list/search) "
                                   "into DIR: one file per artifact (directories as directories) with a readable, "
                                   "collision-free name, and DIR/manifest.jsonl (artifact fields and path). "
                                   "Existing files are refused unless --overwrite.")
    p.add_argument("dir", metavar="DIR", help="target directory (created if missing)")
    _add_query_args(p, ranking="export")
    p.add_argument("--overwrite", action="store_true", help="replace files that already exist in DIR")
    p.set_defaults(run_cmd=cmd.cmd_export_files)


def build_parser() -> argparse.ArgumentParser:
    """The full command-line grammar."""
    common = _common()
    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, parents=[common],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    _add_read_commands(sub, common)

    p = sub.add_parser("as-of", parents=[common],
                       help="run a read command (log/list/search/best/show/export/runs/export-files) "
                            "at a past seq or time",
                       description="Run a read command on the catalogue as it was after a seq "
                                   "or at a time, e.g. `as-of --seq 12 list --run r1`.")
    at = p.add_mutually_exclusive_group(required=True)
    at.add_argument("--seq", type=_non_negative, metavar="N", help="after event N")
    at.add_argument("--time", metavar="ISO", help="after the last event committed at or before this time")
    inner = p.add_subparsers(dest="read_command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_read_commands(inner, common)

    p = sub.add_parser("diff", parents=[common], help="what changed between two positions",
                       description="Artifacts added, pins changed and best-by-metric winners changed "
                                   "between positions A and B (B defaults to the head).")
    p.add_argument("a", metavar="A", help="seq or ISO time")
    p.add_argument("b", metavar="B", nargs="?", help="seq or ISO time (default: head)")
    p.set_defaults(run_cmd=cmd.cmd_diff)

    p = sub.add_parser("verify", parents=[common], help="check the hash chain and every blob",
                       description="Walk the whole hash chain and every blob's SHA-256. Exit 1 on any "
                                   "problem. Prints the head SEQ:HASH to record elsewhere.")
    p.add_argument("--expect-head", metavar="SEQ:HASH",
                   help="also fail unless the log still holds this record with this hash")
    p.set_defaults(run_cmd=cmd.cmd_verify)

    p = sub.add_parser("repair", parents=[common], help="repair a ledger that will not open, and sweep leftovers",
                       description="Rewrite a missing or damaged ARTIFACT-LEDGER marker beside an intact log "
                                   "(no record is changed), then remove temp files of dead processes and "
                                   "stale staging entries. Prints what it did.")
    p.set_defaults(run_cmd=None)

    p = sub.add_parser("checkpoint", parents=[common], help="write a projection checkpoint now",
                       description="Write a checkpoint of the projections at the current head.")
    p.set_defaults(run_cmd=cmd.cmd_checkpoint)

    p = sub.add_parser("report", parents=[common], help="write a self-contained HTML report",
                       description="Write one HTML file that opens offline: runs and their artifacts, a "
                                   "best-so-far plot per (kind, metric), image thumbnails, pins, a timeline "
                                   "and the verified head. Metrics whose names read as costs (loss, error, "
                                   "latency, ...) are ranked lowest-first unless --maximize says otherwise.")
    p.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write")
    p.add_argument("--as-of", metavar="POS", help="the ledger as it was after this seq or at this time")
    p.add_argument("--run", metavar="ID", help="only this run's artifacts")
    p.add_argument("--project", metavar="ID", help="only this project's artifacts")
    p.add_argument("--minimize", action="append", metavar="METRIC", help="rank this metric lowest-first")
    p.add_argument("--maximize", action="append", metavar="METRIC", help="rank this metric highest-first")
    p.set_defaults(run_cmd=cmd.cmd_report)

    importing.add_import_command(sub, common, _Parser)
    cli_lifecycle.add_lifecycle_commands(sub, common)
    return parser


def _add_range_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="POS", help="from this seq or time (inclusive)")
    p.add_argument("--until", metavar="POS", help="up to this seq or time (inclusive)")


def _root(args: argparse.Namespace, *, must_exist: bool = True) -> Any:
    """The ledger directory (a Path), or the log URL (a str) given by --log / $ARTIFACT_LEDGER_LOG."""
    given = getattr(args, "root", None)
    url = getattr(args, "log", None)
    if given and url:
        raise CliError("give either --root DIR or --log URL, not both")
    if not given and not url:
        given = os.environ.get(ROOT_ENV)
        url = None if given else os.environ.get(LOG_ENV)
    if url:
        if "://" not in url:
            raise CliError(f"--log takes a URL such as postgresql://user@host:5432/db?schema=NAME, got {url!r}; "
                           "a ledger directory is given by --root DIR")
        return url
    if not given:
        raise CliError(f"no ledger given: use --root DIR (or -C DIR) or --log URL, or set {ROOT_ENV} or {LOG_ENV}")
    root = Path(given)
    if must_exist and not root.is_dir():
        raise CliError(f"no ledger at {root}: no such directory")
    return root


async def _open(root: Any, read_only: bool = True, options: dict[str, Any] | None = None) -> Any:
    """Open without creating (read-only unless told); a replay that takes a while gets a progress bar."""
    options = options or {}
    bar = Progress(f"replaying the log of {root if isinstance(root, str) else root.name}")
    started = time.monotonic()

    def rebuild_progress(done: int, total: int) -> None:
        # Most opens load a checkpoint and finish at once; only a long replay earns a bar.
        if time.monotonic() - started >= OPEN_QUIET_SECONDS:
            bar.update(done, total)

    try:
        return await open_ledger(root, create=False, progress=rebuild_progress, read_only=read_only, **options)
    finally:
        bar.close()


async def _run(args: argparse.Namespace) -> int:
    json_mode = bool(getattr(args, "json", False))
    if args.command == "import":
        # The one command that records; with --create the ledger directory may not exist yet.
        doc, text, code = await importing.cmd_import(_root(args, must_exist=False), args)
        _emit(Result(doc, text, code), json_mode)
        return code
    root = _root(args)
    if args.command == "repair":
        if isinstance(root, str):
            raise CliError("repair fixes a ledger directory (--root DIR); a log in PostgreSQL needs no repair")
        return await _repair(root, json_mode, open_options(args))
    try:
        # Every command but checkpoint only reads: open read-only, so it works with read
        # permission alone and never writes into the ledger (no close-time checkpoint, no repair).
        # The lifecycle commands that record (alias, retire, gc, ...) open it for writing too.
        ledger = await _open(root, read_only=args.command != "checkpoint" and not cli_lifecycle.writes(args),
                             options=open_options(args))
    except BlobStoreError:
        raise  # before FileNotFoundError's "no ledger": a missing bucket is one too, and must say so
    except FileNotFoundError as exc:
        if isinstance(root, str):
            raise CliError(str(exc)) from None
        raise CliError(f"no ledger at {root}: the directory is not an artifact ledger "
                       "(ledgers are created by the Python API, open_ledger)") from None
    try:
        reader = Reader(ledger, ledger)
        if args.command == "as-of":
            at = cmd.parse_time(args.time) if args.time is not None else None
            view = await (ledger.as_of(seq=args.seq) if at is None else ledger.as_of(time=at))
            reader = Reader(ledger, view, view.seq)
        result = await args.run_cmd(reader, args)
        if reader.upto is not None and not json_mode:
            result.text = f"as of seq {reader.upto} ({fmt_time(reader.source.time)})\n\n{result.text}"
    finally:
        await ledger.aclose()
    _emit(result, json_mode)
    return result.code


async def _repair(root: Path, json_mode: bool, options: dict[str, Any]) -> int:
    """``repair``: fix what keeps the ledger from opening, then sweep what dead processes left."""
    done = await anyio.to_thread.run_sync(repair_ledger, root)
    ledger = await open_ledger(root, create=False, **options)
    try:
        done += await ledger.sweep()
    finally:
        await ledger.aclose()
    text = "\n".join(done) if done else "nothing to repair"
    _emit(Result(text=text, doc={"done": done}), json_mode)
    return EXIT_OK


def _emit(result: Result, json_mode: bool) -> None:
    if result.streamed:
        return
    if json_mode:
        sys.stdout.write(json.dumps(result.doc, indent=2) + "\n")
    elif result.text:
        sys.stdout.write(result.text + "\n")
    sys.stdout.flush()


def _warn(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    # Library warnings (a repaired torn tail, an ignored checkpoint) matter to
    # the user but not their source line; one line each.
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``artifact-ledger`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    warnings.showwarning = _warn
    try:
        return anyio.run(_run, args)
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except RecordsLost as exc:
        return _fail(f"{exc} With this tool: --accept-loss.", EXIT_FAILED)
    except (LedgerCorruption, LedgerNeedsRepair, SchemaTooNew) as exc:
        return _fail(str(exc), EXIT_FAILED)
    except LockTimeout as exc:
        return _fail(f"{exc}; with this tool: --lock-timeout SECONDS", EXIT_ENV)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyError as exc:
        return _fail(str(exc.args[0]) if exc.args else "unknown key", EXIT_USAGE)
    except BrokenPipeError:
        # The reader (e.g. `| head`) stopped early; silence the flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # Not the user's arguments but the system (permissions, a full disk, EIO):
        # its own status, so scripts can tell the two apart.
        return _fail(str(exc), EXIT_ENV)


if __name__ == "__main__":
    sys.exit(main())
