"""The lifecycle commands of the CLI: alias, unalias, resolve [--as-of], aliases, lineage, retire, purge, gc, du."""

from __future__ import annotations

import json

import anyio
import pytest

from artifact_ledger.facade import open_ledger
from artifact_ledger.facade.cli import main


@pytest.fixture
def ledger_ids(tmp_path):
    """A ledger with three artifacts (the second derived from the first); returns (root, ids)."""
    root = tmp_path / "ledger"

    async def build():
        async with await open_ledger(root, fsync=False) as led:
            fa = led.artifacts(run_id="r1", graph_id="g", node_id="n")
            ids = []
            for i, data in enumerate([b"one", b"two", b"three"]):
                p = tmp_path / f"{i}.bin"
                p.write_bytes(data)
                ids.append((await fa.save(str(p), kind="model", derived_from=ids[:1] if i == 1 else None))
                           .artifact_id)
            return ids
    return root, anyio.run(build)


def cli(root, *args, capsys):
    code = main(["-C", str(root), "--json", *args])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


def test_alias_resolve_as_of_aliases_and_unalias(ledger_ids, capsys):
    root, (a, b, c) = ledger_ids
    assert cli(root, "alias", a, "production", "--protected", capsys=capsys)[0] == 0
    code, _, err = cli(root, "alias", b, "production", capsys=capsys)
    assert code == 2 and "protected" in err
    assert cli(root, "alias", b[:8], "production", "--force", capsys=capsys)[0] == 0  # a unique prefix works
    assert cli(root, "resolve", "production", capsys=capsys)[1]["artifact_id"] == b
    assert cli(root, "resolve", "production", "--as-of", "4", capsys=capsys)[1]["artifact_id"] == a
    code, _, err = cli(root, "resolve", "production", "--as-of", "3", capsys=capsys)
    assert code == 2 and "does not point" in err
    assert [x["artifact_id"] for x in cli(root, "aliases", capsys=capsys)[1]] == [b]
    assert cli(root, "unalias", "production", capsys=capsys)[1]["was"] == b
    assert cli(root, "aliases", capsys=capsys)[1] == []
    code, _, err = cli(root, "alias", "ffffffffffff", "x", capsys=capsys)
    assert code == 2 and "no artifact" in err


def test_lineage_retire_purge_gc_and_du(ledger_ids, capsys):
    root, (a, b, c) = ledger_ids
    assert [s["artifact"]["artifact_id"] for s in cli(root, "lineage", b, capsys=capsys)[1]] == [a]
    assert [s["artifact"]["artifact_id"] for s in cli(root, "lineage", a, "--down", capsys=capsys)[1]] == [b]
    assert cli(root, "retire", c, "--reason", "old", capsys=capsys)[0] == 0
    assert cli(root, "purge", a, "--reason", "pii", capsys=capsys)[0] == 0
    code, _, err = cli(root, "purge", a, "--reason", "pii", capsys=capsys)
    assert code == 2 and "already purged" in err
    plan = cli(root, "gc", "--dry-run", "--grace", "0", capsys=capsys)[1]
    assert plan["blobs"] == 1 and plan["bytes"] == 3
    done = cli(root, "gc", "--grace", "0", capsys=capsys)[1]
    assert done["blobs"] == 1 and done["bytes"] == 3
    du = cli(root, "du", capsys=capsys)[1]
    assert du["total"]["artifacts"] == 2 and du["store"]["blobs"] == 2
    v = cli(root, "verify", capsys=capsys)[1]
    assert v["ok"] and len(v["collected"]) == 1
    types = [e["type"] for e in cli(root, "log", capsys=capsys)[1]]
    assert types[-4:] == ["artifact.retired", "artifact.purged", "gc.planned", "gc.swept"]


def test_gc_policy_file_errors(ledger_ids, capsys, tmp_path):
    root, _ = ledger_ids
    bad = tmp_path / "p.json"
    bad.write_text('{"keep_best": [{"kind": "model"}], "oops": 1}')
    code, _, err = cli(root, "gc", "--dry-run", "--policy", str(bad), capsys=capsys)
    assert code == 2 and "oops" in err and "keep_best.0.metric" in err
    bad.write_text("not json")
    code, _, err = cli(root, "gc", "--dry-run", "--policy", str(bad), capsys=capsys)
    assert code == 2 and "not JSON" in err
