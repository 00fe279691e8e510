"""One import package: the wheel built from the sdist installs the same tree as the source, and nothing else."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import artifact_ledger

REPO = Path(__file__).resolve().parent.parent
# The extension must be built wherever it was built for the running tests (or CI requires it).
SPEEDUPS_EXPECTED = (os.environ.get("ARTIFACT_LEDGER_REQUIRE_SPEEDUPS", "") not in ("", "0")
                     or importlib.util.find_spec("artifact_ledger.ledger._speedups") is not None)
SUBPACKAGES = ("facade", "ledger", "projections", "store")
USER_CODE = """
import anyio, sys
from artifact_ledger import open_ledger, Artifact

async def main():
    async with open_ledger(sys.argv[1]) as led:
        arts = led.artifacts(run_id="r", graph_id="g", node_id="n")
        a = await arts.save(sys.argv[2], kind="text")
        assert isinstance(a, Artifact)
        print((await arts.load_artifact(a.uri)).strip())

anyio.run(main)
"""


def _source_tree() -> set[str]:
    """The files the package must carry, as paths inside ``artifact_ledger/`` (besides the built extension)."""
    files = {"__init__.py", "__main__.py", "sync.py", "testing.py", "py.typed", "ledger/FORMAT.md",
             "ledger/_speedups.pyi"}
    for sub in SUBPACKAGES:
        files |= {f"{sub}/{p.name}" for p in (REPO / sub).glob("*.py")}
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from an sdist built from this checkout (no network: no build isolation)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(REPO)],
                   check=True, capture_output=True)
    sdist = next(out.glob("*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(out / "src", filter="data")
    src = next((out / "src").iterdir())
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
                   check=True, capture_output=True)
    return next(out.glob("*.whl"))


def test_wheel_from_sdist_holds_one_package_with_the_source_tree(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"artifact_ledger"}
    inside = {n.split("/", 1)[1] for n in names if n.startswith("artifact_ledger/")}
    built = {n for n in inside if n.startswith("ledger/_speedups.") and n.endswith(".so")}
    assert inside - built == _source_tree()
    # The C extension is compiled into the wheel for this interpreter; its C source is a build
    # input and stays in the sdist (the .pyi stub documents the module for type checkers).
    assert "ledger/_speedups.c" not in inside
    if SPEEDUPS_EXPECTED:
        assert built == {"ledger/_speedups" + sysconfig.get_config_var("EXT_SUFFIX")}
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    entries = zipfile.ZipFile(wheel).read(entry).decode()
    assert "artifact-ledger = artifact_ledger.facade.cli:main" in entries
    # hypothesis finds the testing kit's strategies through this entry point (st.from_type).
    assert "[hypothesis]\nartifact_ledger = artifact_ledger.testing:_hypothesis_setup_hook" in entries


def test_sdist_carries_the_c_source_and_its_stub(wheel):
    sdist = next(wheel.parent.glob("*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"ledger/_speedups.c", "ledger/_speedups.pyi", "ledger/speedups.py", "pyproject.toml"} <= names
    assert not any(n.endswith(".so") for n in names)  # never a stale build of the checkout


def test_wheel_extension_imports_and_is_used(wheel, tmp_path):
    if not SPEEDUPS_EXPECTED:
        pytest.skip("the C extension was not built here")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(target), str(wheel)], check=True, capture_output=True)
    code = ("import artifact_ledger.ledger._speedups as s, artifact_ledger.ledger.speedups as p;"
            "print(s.__file__); print(p.native is s)")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=True)
    where, used = proc.stdout.split()
    assert where.startswith(str(target)) and used == "True"


def test_editable_install_serves_the_same_tree():
    pkg = Path(artifact_ledger.__file__).parent
    assert pkg == REPO
    for sub in SUBPACKAGES:
        mod = __import__(f"artifact_ledger.{sub}", fromlist=["x"])
        assert Path(mod.__file__).parent == REPO / sub


@pytest.mark.parametrize("install", ["wheel", "editable"])
def test_user_modules_named_like_the_subpackages_do_not_break_imports(install, wheel, tmp_path):
    """A user's own store.py / ledger.py beside their script cannot shadow the library."""
    work = tmp_path / "user"
    work.mkdir()
    for name in SUBPACKAGES:
        (work / f"{name}.py").write_text("raise SystemExit('user module imported instead of the library')\n")
    (work / "script.py").write_text(USER_CODE)
    (work / "note.txt").write_text("hello\n")
    env = None
    if install == "wheel":
        target = tmp_path / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                        "--target", str(target), str(wheel)], check=True, capture_output=True)
        env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
        probe = subprocess.run([sys.executable, "-c", "import artifact_ledger; print(artifact_ledger.__file__)"],
                               cwd=work, env=env, capture_output=True, text=True, check=True)
        assert probe.stdout.startswith(str(target))
    proc = subprocess.run([sys.executable, "script.py", str(tmp_path / "led"), "note.txt"],
                          cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hello"


def test_public_names_version_and_module_entry_point():
    for name in ["open_ledger", "Ledger", "ArtifactFacade", "Artifact", "LedgerView", "LedgerEvent", "Diff",
                 "VerifyResult", "LedgerError", "LedgerClosed", "LedgerCorruption", "LedgerPoisoned",
                 "ReadOnlyError", "TornTailWarning", "CheckpointWarning", "__version__"]:
        assert hasattr(artifact_ledger, name), name
        assert name in artifact_ledger.__all__
    assert artifact_ledger.__version__ == "0.1.0"
    for cmd in ([sys.executable, "-m", "artifact_ledger", "--version"],
                [str(Path(sys.executable).parent / "artifact-ledger"), "--version"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "artifact-ledger 0.1.0"
