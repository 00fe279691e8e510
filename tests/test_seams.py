"""One contract per seam: no module outside a backend's own seam imports a backend module (STYLE.md).

The facade, projections and audit reach logs through ``ledger/base.py`` and blobs through
``store/base.py``; ``ledger/backends.py`` and ``store/__init__.py`` open backends by URL.
"""

from __future__ import annotations

import ast
from pathlib import Path

import artifact_ledger

PACKAGE = Path(artifact_ledger.__file__).resolve().parent

BACKENDS = {
    "artifact_ledger.ledger.file", "artifact_ledger.ledger.filelog", "artifact_ledger.ledger.postgres",
    "artifact_ledger.store.local", "artifact_ledger.store.s3",
}
# Who may import a backend module, and why.
ALLOWED = {
    "artifact_ledger.ledger.backends": "opens logs by URL",
    "artifact_ledger.store": "opens blob stores by URL",
    "artifact_ledger.ledger": "re-exports the segment log's public names",
    "artifact_ledger.ledger.checkpoints": "the file backend's checkpoint files, addressed by segment position",
    "artifact_ledger.facade.repair": "repairs a ledger directory's segment files, which only the file log has",
}


def module_name(path: Path) -> str:
    """Dotted module name of a source file of the package."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["artifact_ledger", *parts])


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports (relative imports resolved, ``from X import y`` also as ``X.y``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    return out


def sources() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py")
            if not {".venv", "tests", "benchmarks", ".typecheck", "build"} & set(p.relative_to(PACKAGE).parts)]


def test_only_a_backends_own_seam_imports_it():
    """Each backend module is imported only by itself, its seam's opener, or an entry of ALLOWED."""
    offenders = []
    for path in sources():
        name = module_name(path)
        if name in BACKENDS or name in ALLOWED:
            continue
        for target in sorted(imported(path) & BACKENDS):
            offenders.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert offenders == [], "backend modules reached past their contract:\n" + "\n".join(offenders)


def test_the_import_scan_sees_relative_and_absolute_imports(tmp_path):
    """The scan resolves the import forms the package uses, so the rule above cannot pass by not seeing."""
    probe = PACKAGE / "facade" / "one_flush.py"
    assert "artifact_ledger.ledger.base" in imported(probe)
    assert "artifact_ledger.store.base.OneFlushBlobs" in imported(probe)
    top = imported(PACKAGE / "__init__.py")
    assert "artifact_ledger.facade" in top and "artifact_ledger.ledger.errors.TornTailWarning" in top
    # One module that really does import a backend: found.
    assert "artifact_ledger.ledger.filelog" in imported(PACKAGE / "facade" / "repair.py")
    assert "artifact_ledger.store.local" in imported(PACKAGE / "store" / "__init__.py")
