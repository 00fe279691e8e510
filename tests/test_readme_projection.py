"""The README's projection example runs as written: the lifecycles, check_projection and the machine."""

from __future__ import annotations

import re
import runpy
import unittest
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def example(tmp_path: Path) -> Path:
    text = README.read_text()
    m = re.search(r"<!-- projection-example -->\n```python\n(.*?)```", text, re.S)
    assert m, "the README lost its projection example"
    path = tmp_path / "readme_kinds.py"
    path.write_text(m.group(1))
    return path


def test_readme_example_runs_as_a_script(tmp_path):
    runpy.run_path(str(example(tmp_path)), run_name="__main__")


def test_readme_example_machine_passes(tmp_path):
    mod = runpy.run_path(str(example(tmp_path)), run_name="readme_kinds")
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(mod["TestKinds"])
    result = unittest.TextTestRunner(verbosity=0).run(suite)
    assert result.wasSuccessful(), result.failures + result.errors
