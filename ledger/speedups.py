"""Which implementation of the replay's hot loops runs: the C extension ``_speedups`` or pure Python.

The extension is optional (README, "Optional C speedups"): it is used when it was
built and imports, unless the environment variable ``ARTIFACT_LEDGER_PURE_PYTHON``
is set to anything but ``""`` or ``"0"`` when this module is first imported. Every
C function has a pure-Python twin with the same contract, which is what runs otherwise.
"""

from __future__ import annotations

import os
from types import ModuleType

PURE_ENV = "ARTIFACT_LEDGER_PURE_PYTHON"


def pure_python_requested() -> bool:
    """Whether the environment asks for the pure-Python path (``ARTIFACT_LEDGER_PURE_PYTHON``)."""
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def _load() -> tuple[ModuleType | None, str]:
    if pure_python_requested():
        return None, f"{PURE_ENV} is set"
    try:
        from . import _speedups
    except ImportError as exc:
        return None, f"the C extension is not available ({exc})"
    return _speedups, "C extension"


native, why = _load()
"""The extension module, or None (then ``why`` says why)."""

__all__ = ["PURE_ENV", "native", "pure_python_requested", "why"]
