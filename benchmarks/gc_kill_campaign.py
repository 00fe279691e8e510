#!/usr/bin/env python3
"""GC kill campaign: writers save identical and distinct bytes while a gc process is SIGKILLed at seeded
random moments; then every acknowledged artifact not purged must load with its exact bytes, verify ok.

The CI version is ``tests/test_gc.py::test_gc_under_concurrent_writers_and_sigkill_never_deletes_a_needed_blob``
(30 kills). Usage: ``python benchmarks/gc_kill_campaign.py [--kills 300] [--writers 3] [--seed N] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import gccampaign  # noqa: E402  (lives beside the tests, which share it)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=300)
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--saves", type=int, default=20000, help="at most this many saves per writer")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", help="where to build the ledger (default: a temp dir on /dev/shm if any)")
    args = ap.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(
        prefix="gccampaign-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    start = time.monotonic()
    try:
        tally = gccampaign.run_campaign(base, args.kills, args.seed, writers=args.writers, saves=args.saves)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{tally.line()} in {time.monotonic() - start:.1f} s")
    print(f"machine: {os.cpu_count()} cpus, {platform.processor() or platform.machine()}, {platform.platform()}")
    for f in tally.failures[:20]:
        print("FAILURE:", f)
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
