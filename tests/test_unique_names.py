"""Artifact ids and temp names: 32 hex characters, never repeated, not shared with a forked child."""

import os
import re

from artifact_ledger.store.durable import unique_hex


def test_names_are_hex_and_unique():
    """100,000 names are all 32 lowercase hex characters and all distinct, first 8 characters mostly too."""
    names = [unique_hex() for _ in range(100_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", n) for n in names)
    assert len(set(names)) == len(names)
    assert len({n[:8] for n in names}) > 99_000  # prefixes stay useful to people (the CLI accepts them)


def test_forked_child_does_not_repeat_the_parents_names():
    """After fork the child reseeds, so its next names differ from the parent's next names."""
    unique_hex()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        os.write(w, "".join(unique_hex() for _ in range(5)).encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 1000).decode()
    os.close(r)
    os.waitpid(pid, 0)
    parent = "".join(unique_hex() for _ in range(5))
    child_names = {child[i : i + 32] for i in range(0, len(child), 32)}
    assert len(child_names) == 5 and not child_names & {parent[i : i + 32] for i in range(0, 160, 32)}
