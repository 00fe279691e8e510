"""``python -m artifact_ledger``: the command-line tool."""

import sys

from .facade.cli import main

sys.exit(main())
