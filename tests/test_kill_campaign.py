"""The kill campaign, bounded for CI: about 30 writer processes SIGKILLed at seeded random moments (1-3
at once, while opening, inside checkpoints, while saving); after reopening, every acknowledged write is
there, the chain is intact and verify() passes. ``benchmarks/kill_campaign.py`` runs the long version."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import killcampaign as kc

CI_POINTS = 30
CI_SEED = 20261201


@pytest.fixture
def campaign_dir(tmp_path):
    """A directory on tmpfs when there is one: SIGKILL keeps the page cache, so tmpfs loses nothing a
    disk would keep, and fsync there costs nothing."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="killcampaign-", dir=shm))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


def test_kill_campaign_loses_no_acknowledged_write(campaign_dir):
    """30 SIGKILLs at seeded random moments: 0 acknowledged writes lost, 0 unopenable, verify ok."""
    tally = kc.run_campaign(campaign_dir, CI_POINTS, CI_SEED)
    print(f"\nkill campaign: {tally.line()}")
    assert tally.failures == [], tally.line() + "\n" + "\n".join(tally.failures[:10])
    assert tally.writers_killed == CI_POINTS
    assert tally.acknowledged > 0 and tally.checks >= CI_POINTS // 6
    assert (tally.lost, tally.unopenable, tally.verify_failed, tally.writers_crashed) == (0, 0, 0, 0)


def test_kill_campaign_notices_acknowledged_writes_that_were_never_written(campaign_dir):
    """The campaign has teeth: with a library bug that acknowledges a batch while its bytes wait in memory
    for the next batch, killed writers lose acknowledged writes and the campaign reports them."""
    tally = kc.run_campaign(campaign_dir, 12, CI_SEED, bug="held_batch", stop_on_failure=True)
    assert tally.lost + tally.unopenable + tally.verify_failed + tally.writers_crashed > 0, tally.line()
