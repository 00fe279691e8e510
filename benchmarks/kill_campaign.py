#!/usr/bin/env python3
"""Kill campaign: SIGKILL writer processes at random (seeded) moments and re-check every acknowledged write.

Each round starts 1-3 writers on one ledger; each is killed at its own moment (while opening, i.e.
during recovery; inside a checkpoint, with ``checkpoint_every=5``; or at a random time of its work).
Every other round and at the end the ledger is reopened: every acknowledged save (id, seq, sha256)
and pin must be there, the independent chain check (tests/logcheck.py) and ``verify()`` must pass.
Prints the tally and the machine it ran on. The CI version is ``tests/test_kill_campaign.py``.

Usage: ``python benchmarks/kill_campaign.py [--points 150] [--seed N] [--dir DIR]``.
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

import killcampaign  # noqa: E402  (lives beside the tests, which share it)


def main() -> int:
    """Run the campaign and print its tally; exit status 1 if anything acknowledged was lost."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=150, help="writer processes to kill (default 150)")
    ap.add_argument("--seed", type=int, default=6, help="seed of the kill schedule (default 6)")
    ap.add_argument("--dir", default=None, help="where to put the ledger (default: a fresh temp dir)")
    args = ap.parse_args()
    if args.points < 1:
        ap.error("--points must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="kill-campaign-", dir=args.dir))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()} "
          f"({platform.python_implementation()})")
    print(f"ledger: {work / 'ledger'}; {args.points} kill points, seed {args.seed}")
    t0 = time.monotonic()

    def progress(t: killcampaign.CampaignTally) -> None:
        print(f"  [{time.monotonic() - t0:6.1f}s] {t.line()}", flush=True)

    try:
        tally = killcampaign.run_campaign(work, args.points, args.seed, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"result ({time.monotonic() - t0:.0f}s): rounds {tally.rounds}, writers killed {tally.writers_killed} "
          f"({tally.killed_opening} while opening, {tally.killed_in_checkpoint} inside checkpoint()), "
          f"reopen checks {tally.checks}, acknowledged writes {tally.acknowledged}, "
          f"re-checked {tally.rechecked}, lost {tally.lost}, unopenable {tally.unopenable}, "
          f"verify failures {tally.verify_failed}, writers crashed {tally.writers_crashed}")
    for f in tally.failures[:20]:
        print(f"  FAILURE {f}")
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
