"""The Artifact fast builder behaves exactly like pydantic's model_construct."""

from artifact_ledger.facade import model


def _fields():
    return {
        "artifact_id": "a" * 32, "uri": "file:///b#a", "kind": "model", "sha256": "b" * 64, "bytes": 3,
        "mime": "application/octet-stream", "labels": {"tags": ["x", 1], "ok": True}, "metrics": {"acc": 0.5, "n": 3},
        "pinned": True, "run_id": "r", "graph_id": "g", "node_id": "n", "project_id": "p",
        "created_at": model.utc_from_us(1_700_000_000_000_000), "seq": 7, "suggested_uri": "a/b",
        "aliases": ["p/production"],
    }


def test_fast_builder_matches_model_construct():
    """Equal, same dump, same JSON, same fields-set, frozen, and .id works."""
    fast = model.build_artifact(_fields())
    slow = model.Artifact.model_construct(**_fields())
    assert fast == slow
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.id == "a" * 32
    try:
        fast.kind = "other"  # type: ignore[misc]
    except Exception:
        pass
    else:
        raise AssertionError("Artifact must be frozen")


def test_fast_builder_is_selected_on_this_pydantic():
    """The self-check at import picked the fast path (so the benchmarks measure it)."""
    assert model.build_artifact is model._build_fast
