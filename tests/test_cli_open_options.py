"""The CLI's --lock-timeout and --accept-loss reach open_ledger, and its errors name them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from logcheck import seg_files
from test_lost_records import build, delete_last_segment, tree_bytes

HOLDER = """
import sys
from artifact_ledger.ledger.lockfile import LogLock
lock = LogLock(sys.argv[1], timeout=None)
lock.acquire(True)
print("held", flush=True)
sys.stdin.read()
"""


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the tool on ``root``; returns the finished process."""
    return subprocess.run([sys.executable, "-m", "artifact_ledger", "-C", str(root), *args],
                          capture_output=True, text=True, timeout=120)


def test_lock_timeout_bounds_the_wait_and_the_error_names_the_option(tmp_path):
    """With the log lock held elsewhere, a read waits only --lock-timeout seconds, then exits 3 naming the holder."""
    root = tmp_path / "ledger"
    build(root, tmp_path / "src")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root / "log")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        res = cli(root, "list", "--scope", "all", "--lock-timeout", "0.25")
        assert res.returncode == 3, (res.stdout, res.stderr)
        assert "timed out after 0.25 s" in res.stderr, res.stderr  # the given value, not the 30 s default
        assert f"pid {holder.pid}" in res.stderr and "--lock-timeout SECONDS" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    finally:
        holder.communicate("", timeout=30)
    res = cli(root, "list", "--scope", "all", "--lock-timeout", "none")
    assert res.returncode == 0, res.stderr


def test_a_bad_lock_timeout_is_a_usage_error(tmp_path):
    """Zero, negative and non-numeric timeouts are refused by the parser, naming the option."""
    root = tmp_path / "ledger"
    build(root, tmp_path / "src")
    for bad in ("0", "-1", "soon", "nan", "inf"):
        res = cli(root, "list", "--lock-timeout", bad)
        assert res.returncode == 2, (bad, res.stderr)
        assert "--lock-timeout" in res.stderr and repr(bad) in res.stderr, res.stderr


def test_accept_loss_opens_a_log_that_lost_records(tmp_path):
    """Lost records fail with exit 1 naming --accept-loss; with it, a read lists the survivors, changing nothing."""
    root = tmp_path / "ledger"
    recs = build(root, tmp_path / "src")
    log_head = delete_last_segment(root, recs)
    before = tree_bytes(root)
    res = cli(root, "list", "--scope", "all", "--json")
    assert res.returncode == 1 and "--accept-loss" in res.stderr, res.stderr
    res = cli(root, "list", "--scope", "all", "--json", "--all", "--accept-loss")
    assert res.returncode == 0, res.stderr
    assert "accepting lost records" in res.stderr, res.stderr
    listed = json.loads(res.stdout)
    rows = listed["artifacts"] if isinstance(listed, dict) else listed
    assert len(rows) == log_head
    assert tree_bytes(root) == before, "a read-only command must not drop the evidence"
    assert seg_files(root)
