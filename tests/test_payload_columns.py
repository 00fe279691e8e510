"""Replay's C reader of a chunk's payloads (``catalog.append_payloads``) folds exactly what decoding does.

The reference is the general path replay takes without it: ``decode_event_array`` (msgspec) and then
``apply_decoded``. Chunks come from hypothesis, encoded by the library's own encoder and also by a
small msgpack writer here that varies what msgspec never writes but could read (key order, left-out
defaults, wide ints and strs, float32) or that this path must refuse (unknown, repeated or misplaced
keys, other versions and types, bad UTF-8, bin values, truncation). Either the C path folds and the
whole state equals the reference's, or it refuses and has changed nothing. Plain chunks must be taken.
"""

from __future__ import annotations

import os
import struct
from array import array
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifact_ledger.ledger.events import (ArtifactRecorded, PinChanged, Retired, decode_event_array, encode_event)
from artifact_ledger.projections import catalog
from artifact_ledger.projections.catalog import Catalog, append_payloads, apply_decoded

REQUIRE = os.environ.get("ARTIFACT_LEDGER_REQUIRE_SPEEDUPS", "") not in ("", "0")

try:
    from artifact_ledger.ledger import _speedups as NATIVE
except ImportError as exc:  # pragma: no cover - depends on the build
    NATIVE = None
    WHY = str(exc)


@pytest.fixture(autouse=True)
def c_reader(monkeypatch):
    """The C reader in use, even when ARTIFACT_LEDGER_PURE_PYTHON switched the library's off."""
    if NATIVE is None:
        if REQUIRE:
            pytest.fail(f"ARTIFACT_LEDGER_REQUIRE_SPEEDUPS is set but the C extension is missing: {WHY}")
        pytest.skip(f"C extension not built: {WHY}")
    monkeypatch.setattr(catalog, "_payload_columns", NATIVE.payload_columns)


def test_the_reader_knows_exactly_the_artifact_fields_and_is_in_use():
    assert set(NATIVE.ARTIFACT_FIELDS) == set(ArtifactRecorded.__struct_fields__)
    assert [attr for _, attr in catalog._STR_COLUMNS] == list(NATIVE.ARTIFACT_FIELDS[:9])
    from artifact_ledger.ledger import speedups
    if not speedups.pure_python_requested():
        assert catalog._payload_columns is NATIVE.payload_columns


# ------------------------------------------------------------------ a msgpack writer with choices
class Raw(bytes):
    """Bytes written as they are (to inject what an encoder would not write)."""


def mp(v: Any, wide: bool = False, f32: bool = False) -> bytes:
    """msgpack of ``v``; ``wide``: the widest header of each kind; ``f32``: floats as float32."""
    if isinstance(v, Raw):
        return bytes(v)
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if not wide:
            return msgspec.msgpack.encode(v)
        if v < 0 or (v < 1 << 63 and v % 2):  # both 64-bit forms, for values either can hold
            return b"\xd3" + struct.pack(">q", v)
        return b"\xcf" + struct.pack(">Q", v)
    if isinstance(v, float):
        if f32 and abs(v) < 3e38:  # float32 where it holds the value's magnitude (rounded: both paths read it)
            return b"\xca" + struct.pack(">f", v)
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        return (b"\xda" + struct.pack(">H", len(b)) + b) if wide else msgspec.msgpack.encode(v)
    if isinstance(v, bytes):
        return b"\xc4" + bytes([len(v)]) + v
    if isinstance(v, Pairs):
        head = b"\xde" + struct.pack(">H", len(v)) if wide else _map(len(v))
        return head + b"".join(mp(k, wide, f32) + mp(x, wide, f32) for k, x in v)
    if isinstance(v, list):
        head = b"\xdc" + struct.pack(">H", len(v)) if wide else _arr(len(v))
        return head + b"".join(mp(x, wide, f32) for x in v)
    raise TypeError(v)


def _arr(n: int) -> bytes:
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)


def _map(n: int) -> bytes:
    return bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)


class Pairs(list):
    """A map as its (key, value) pairs: order kept, repeats allowed."""


def as_pairs(obj: Any) -> Any:
    """The builtins msgspec decodes ``obj`` to, maps as Pairs (recursively)."""
    if isinstance(obj, dict):
        return Pairs((k, as_pairs(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [as_pairs(x) for x in obj]
    return obj


DEFAULTS = {"labels": {}, "metrics": {}, "pinned": False, "project_id": None, "suggested_uri": None,
            "name": None, "derived_from": [], "v": 1}
PLAIN = ("shuffle", "drop_defaults", "wide", "f32")  # variations the C path must take
REFUSED = ("type_late", "extra_key", "repeat_key", "v2", "bad_utf8", "bin_label", "truncate", "trailing")


def encode_variant(ev: Any, how: frozenset[str], rnd: Any) -> tuple[bytes, bool]:
    """One event's payload, written as ``how`` says (see PLAIN and REFUSED), and whether a REFUSED change applied."""
    if not how:
        return encode_event(ev), False
    raw = msgspec.msgpack.decode(encode_event(ev))
    items = list(raw.items())  # "type" first, as msgspec writes it
    refused = False
    if "drop_defaults" in how:
        defaults = DEFAULTS if type(ev) is ArtifactRecorded else {"v": 1}
        items = [items[0]] + [(k, v) for k, v in items[1:] if not (k in defaults and defaults[k] == v
                                                                   and type(defaults[k]) is type(v))]
    if "shuffle" in how:
        rest = items[1:]
        rnd.shuffle(rest)
        items = [items[0]] + rest
    if "type_late" in how and len(items) > 1:
        items = items[1:] + items[:1]
        refused = True
    if "extra_key" in how:
        items.insert(rnd.randint(1, len(items)), ("added_later", 7))
        refused = True
    if "repeat_key" in how and len(items) > 1:
        items.append(rnd.choice(items[1:]))
        refused = True
    if "v2" in how:
        items = [(k, 2 if k == "v" else v) for k, v in items]
        if not any(k == "v" for k, _ in items):
            items.append(("v", 2))
        refused = True
    if "bad_utf8" in how:
        items = [(k, Raw(b"\xa3a\xffb") if k == "artifact_id" else v) for k, v in items]
        refused = True
    if "bin_label" in how and type(ev) is ArtifactRecorded:
        items = [(k, {**v, "blob": b"\x00\x01"} if k == "labels" else v) for k, v in items]
        if any(k == "labels" for k, _ in items):
            refused = True
    data = mp(Pairs((k, as_pairs(v)) for k, v in items), "wide" in how, "f32" in how)
    if "truncate" in how:
        data = data[:-1]
        refused = True
    if "trailing" in how:
        data += b"\xc0"
        refused = True
    return data, refused


# ------------------------------------------------------------------ events
IDS = [f"{i:032x}" for i in range(40)]
WORDS = ["a", "b", "run-1", "é", "ü-ß", "save", "model", "x" * 40, ""]
label_values = st.one_of(st.none(), st.integers(-(2 ** 63), 2 ** 64 - 1), st.floats(allow_nan=False),
                         st.sampled_from(WORDS), st.text(max_size=4))
rare_label_values = st.one_of(label_values, st.booleans(), st.lists(st.integers(0, 3), max_size=2))
metric_values = st.one_of(st.integers(-(2 ** 63), 2 ** 64 - 1), st.floats(allow_nan=False))
words = st.sampled_from(WORDS)


@st.composite
def artifacts(draw, rare: bool) -> ArtifactRecorded:
    values = rare_label_values if rare else label_values
    return ArtifactRecorded(
        artifact_id=draw(st.sampled_from(IDS)), origin=draw(st.sampled_from(["save", "ingest", "writer"])),
        kind=draw(words), sha256=draw(st.binary(min_size=32, max_size=32)).hex(),
        size=draw(st.integers(0, 2 ** 40)), mime=draw(words),
        labels=draw(st.dictionaries(st.sampled_from(["k", "lr", "é", "seed", "model"]), values, max_size=4)),
        metrics=draw(st.dictionaries(st.sampled_from(["loss", "acc", "é", "run-1"]), metric_values, max_size=3)),
        pinned=draw(st.booleans()), run_id=draw(words), graph_id=draw(words), node_id=draw(words),
        project_id=draw(st.none() | words), suggested_uri=draw(st.none() | words), name=draw(st.none() | words),
        derived_from=draw(st.lists(st.sampled_from(IDS), max_size=2)))


def events(rare: bool) -> st.SearchStrategy[Any]:
    pins = st.builds(PinChanged, artifact_id=st.sampled_from(IDS), pinned=st.booleans())
    if not rare:
        return st.one_of(artifacts(False), artifacts(False), pins)
    retired = st.builds(Retired, artifact_id=st.sampled_from(IDS), reason=st.just("r"))
    return st.one_of(artifacts(True), pins, retired)


def internals(cat: Catalog) -> dict[str, Any]:
    """Everything a fold builds, order included (dict insertion order too), caches left out."""
    out: dict[str, Any] = {}
    for k, v in vars(cat).items():
        if k in ("row_cache", "metric_cols", "_by_sha", "_id_rows", "_rep_of", "life"):
            continue
        out[k] = list(v.items()) if isinstance(v, dict) else v
    out["id_rows"] = list(cat.id_rows.items())
    out["life"] = cat.life.fingerprint()
    return out


def chunk(payloads: list[bytes]) -> bytes:
    """What the log's scan hands replay: an array32 header, then the payloads back to back."""
    return b"\xdd" + len(payloads).to_bytes(4, "big") + b"".join(payloads)


def fold_both(before: list[Any], evs: list[Any], payloads: list[bytes]) -> tuple[bool, Catalog, Catalog | None]:
    """(taken, the C path's state, the reference's state or None where the general path refuses the chunk)."""
    states = []
    for _ in range(2):
        cat = Catalog()
        if before:
            apply_decoded(cat, list(range(1, len(before) + 1)), [10 * i for i in range(len(before))], before)
        cat.defer_indexes()
        states.append(cat)
    mine, ref = states
    seqs = array("q", range(len(before) + 1, len(before) + 1 + len(evs)))
    tss = array("q", [1000 + 3 * i for i in range(len(evs))])
    joined = chunk(payloads)
    untouched = internals(mine)
    taken = append_payloads(mine, joined, seqs, tss)
    if not taken:
        assert internals(mine) == untouched, "refused, yet it changed the state"
    decoded = decode_event_array(joined, len(evs))
    if decoded is None:
        assert not taken, "took a chunk the general decoder refuses"
        return taken, mine, None
    try:
        apply_decoded(ref, seqs, tss, decoded)
    except (TypeError, ValueError):  # a payload the facade never writes (a bin label): replay fails on it
        assert not taken, "took a chunk the general fold refuses"
        return taken, mine, None
    if not taken:
        apply_decoded(mine, seqs, tss, decoded)
    for cat in (mine, ref):
        cat.build_indexes()
    return taken, mine, ref


def plain(evs: list[Any]) -> bool:
    """Whether the C path must take a chunk of these events (as msgspec writes them) into a fresh state."""
    ids = [e.artifact_id for e in evs if type(e) is ArtifactRecorded]
    return (len(ids) == len(set(ids)) and all(type(e) in (ArtifactRecorded, PinChanged) for e in evs)
            and not any(type(v) in (bool, list) for e in evs if type(e) is ArtifactRecorded for v in e.labels.values()))


# ------------------------------------------------------------------ properties
@settings(max_examples=150)
@given(evs=st.lists(events(False), min_size=1, max_size=25), how=st.sets(st.sampled_from(PLAIN)),
       rnd=st.randoms(use_true_random=False))
def test_plain_chunks_are_taken_and_fold_as_decoding_does(evs, how, rnd):
    taken, mine, ref = fold_both([], evs, [encode_variant(e, frozenset(how), rnd)[0] for e in evs])
    assert ref is not None
    assert taken == plain(evs)
    assert internals(mine) == internals(ref)
    assert mine == ref


@settings(max_examples=150)
@given(before=st.lists(events(True), max_size=15), evs=st.lists(events(True), min_size=1, max_size=20),
       how=st.lists(st.sets(st.sampled_from(PLAIN + REFUSED), max_size=2), min_size=20, max_size=20),
       rnd=st.randoms(use_true_random=False))
def test_any_chunk_is_folded_as_decoding_does_or_refused_unchanged(before, evs, how, rnd):
    written = [encode_variant(e, frozenset(h), rnd) for e, h in zip(evs, how)]
    taken, mine, ref = fold_both(before, evs, [data for data, _ in written])
    if any(refused for _, refused in written):
        assert not taken
    if ref is not None:
        assert internals(mine) == internals(ref)


@pytest.mark.parametrize("variant", REFUSED)
def test_each_refused_encoding_is_refused(variant):
    import random
    ev = ArtifactRecorded(artifact_id=IDS[0], origin="save", kind="k", sha256="ab" * 32, size=3, mime="m",
                          labels={"a": 1}, metrics={"loss": 0.5}, run_id="r", graph_id="g", node_id="n")
    data, refused = encode_variant(ev, frozenset({variant}), random.Random(3))
    assert refused
    taken, mine, ref = fold_both([], [ev], [data])
    assert not taken


def test_ids_already_known_or_repeated_and_live_best_tables_are_left_to_the_general_path():
    ev = ArtifactRecorded(artifact_id=IDS[1], origin="save", kind="k", sha256="cd" * 32, size=1, mime="m",
                          run_id="r", graph_id="g", node_id="n")
    taken, _, _ = fold_both([ev], [ev], [encode_event(ev)])
    assert not taken
    taken, mine, ref = fold_both([], [ev, ev], [encode_event(ev)] * 2)
    assert not taken and ref is not None and internals(mine) == internals(ref)
    cat = Catalog()
    cat.defer_indexes()
    cat.best[("k", "loss")] = {}
    assert not append_payloads(cat, chunk([encode_event(ev)]), array("q", [1]), array("q", [5]))


def test_a_header_that_does_not_match_the_count_is_refused():
    ev = ArtifactRecorded(artifact_id=IDS[2], origin="save", kind="k", sha256="ef" * 32, size=1, mime="m",
                          run_id="r", graph_id="g", node_id="n")
    cat = Catalog()
    cat.defer_indexes()
    assert not append_payloads(cat, chunk([encode_event(ev)] * 2), array("q", [1]), array("q", [5]))
    assert not append_payloads(cat, b"\x91" + encode_event(ev), array("q", [1]), array("q", [5]))
    assert cat.n == 0 and cat.strs == []


def test_records_of_an_older_schema_version_are_left_to_the_upcasters(monkeypatch):
    from artifact_ledger.ledger import events
    ev = ArtifactRecorded(artifact_id=IDS[3], origin="save", kind="k", sha256="01" * 32, size=1, mime="m",
                          run_id="r", graph_id="g", node_id="n")
    cat = Catalog()
    cat.defer_indexes()
    monkeypatch.setattr(events, "SCHEMA_VERSION", 2)  # the library now writes v2: a v1 payload needs its upcaster
    assert not append_payloads(cat, chunk([encode_event(ev)]), array("q", [1]), array("q", [5]))
    monkeypatch.setattr(events, "SCHEMA_VERSION", 1)
    assert append_payloads(cat, chunk([encode_event(ev)]), array("q", [1]), array("q", [5]))
