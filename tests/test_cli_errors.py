"""CLI failures: ambiguous id prefixes are refused naming the candidates; system errors have their own exit status."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from artifact_ledger.facade import artifacts as artifacts_module
from artifact_ledger.facade import open_ledger

IDS = ["abcd1111" + "0" * 24, "abcd2222" + "0" * 24, "ffff0000" + "0" * 24]


def run_cli(*args: str, root: Path, pre: str = "") -> subprocess.CompletedProcess:
    """``python -m artifact_ledger -C root args...``, after running ``pre`` in the same interpreter."""
    code = (textwrap.dedent(pre)
            + "\nimport sys\nfrom artifact_ledger.facade.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {k: v for k, v in os.environ.items() if k != "ARTIFACT_LEDGER_ROOT"}
    return subprocess.run([sys.executable, "-c", code, "-C", str(root), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def one_error_line(res: subprocess.CompletedProcess, code: int) -> str:
    """Insist on exit ``code`` and one ``artifact-ledger: error:`` line (no traceback); return that line."""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("artifact-ledger: error: ")
    return line


@pytest.fixture
def ledger_with_shared_prefix(root, tmp_path, monkeypatch) -> Path:
    """Three artifacts, two of whose ids share the prefix ``abcd``."""
    ids = iter(IDS)
    monkeypatch.setattr(artifacts_module, "unique_hex", lambda: next(ids))

    async def build() -> None:
        async with open_ledger(root) as led:
            arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
            for i in range(3):
                src = tmp_path / f"f{i}.txt"
                src.write_text(str(i))
                art = await arts.save(str(src), kind="text")
                assert art.artifact_id == IDS[i]

    anyio.run(build)
    return root


def test_an_ambiguous_id_prefix_is_refused_naming_every_candidate(ledger_with_shared_prefix):
    """``show abcd`` matches two artifacts: exit 2 naming both, never an arbitrary one of them."""
    root = ledger_with_shared_prefix
    res = run_cli("show", "abcd", root=root)
    line = one_error_line(res, 2)
    assert "ambiguous" in line and "2 artifacts" in line
    assert IDS[0] in line and IDS[1] in line and IDS[2] not in line
    assert res.stdout == ""
    # A longer prefix that is unique still works.
    ok = run_cli("show", "abcd2", "--json", root=root)
    assert ok.returncode == 0, ok.stderr
    assert IDS[1] in ok.stdout and IDS[0] not in ok.stdout


_DENY_LOCK = """
    import errno, os
    _real_open = os.open
    def _open(path, flags, *a, **kw):
        # What a ledger directory the user may not write gives: EACCES from open(2).
        if os.fspath(path).endswith("LOCK"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return _real_open(path, flags, *a, **kw)
    os.open = _open
"""


def test_permission_denied_exits_3_not_the_usage_status(ledger_with_shared_prefix):
    """EACCES from the system is not a usage error: exit 3 and one line naming the cause."""
    res = run_cli("checkpoint", root=ledger_with_shared_prefix, pre=_DENY_LOCK)
    line = one_error_line(res, 3)
    assert "Permission denied" in line and "LOCK" in line


def test_an_unwritable_output_file_exits_3(ledger_with_shared_prefix, tmp_path):
    """``export --out`` to a file the system refuses (a read-only sysfs entry): exit 3."""
    target = Path("/sys/kernel/notes")
    if not target.exists():
        pytest.skip("no /sys/kernel/notes on this system")
    try:
        open(target, "a").close()
    except OSError:
        pass
    else:
        pytest.skip("/sys/kernel/notes is writable here")
    res = run_cli("export", "--out", str(target), root=ledger_with_shared_prefix)
    one_error_line(res, 3)


def test_help_documents_exit_status_3(ledger_with_shared_prefix):
    """--help lists the environment exit status with the others."""
    res = run_cli("--help", root=ledger_with_shared_prefix)
    assert res.returncode == 0
    assert "3  the system refused: permission denied" in res.stdout
