"""The optional C extension agrees with its pure-Python twins, is built here, and can be switched off.

The twins: ``framing.py_scan_chain`` for ``scan_chain``, ``catalog._py_group_rows`` / ``_py_intern`` /
``_py_lookup`` / ``_py_columns`` for the fold helpers. Run with ``ARTIFACT_LEDGER_REQUIRE_SPEEDUPS=1``
(as ``.ci/run`` does) a missing extension fails these tests instead of skipping them.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from array import array
from pathlib import Path
from types import SimpleNamespace

import crc32c as crc32c_pkg
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from artifact_ledger.ledger import framing, speedups
from artifact_ledger.ledger.events import ArtifactRecorded
from artifact_ledger.ledger.framing import GENESIS_HASH, MAX_BODY, Record, encode_record, py_scan_chain
from artifact_ledger.projections import catalog

REQUIRE = os.environ.get("ARTIFACT_LEDGER_REQUIRE_SPEEDUPS", "") not in ("", "0")
REPO = Path(__file__).resolve().parent.parent


def _load():
    try:
        # Imported directly, so the twins are compared even when ARTIFACT_LEDGER_PURE_PYTHON is set.
        from artifact_ledger.ledger import _speedups
    except ImportError as exc:
        return None, str(exc)
    return _speedups, ""


NATIVE, WHY_MISSING = _load()


@pytest.fixture(scope="module")
def c():
    """The C extension module; a failure (not a skip) when it is required and missing."""
    if NATIVE is None:
        if REQUIRE:
            pytest.fail(f"ARTIFACT_LEDGER_REQUIRE_SPEEDUPS is set but the C extension is missing: {WHY_MISSING}")
        pytest.skip(f"C extension not built: {WHY_MISSING}")
    return NATIVE


# ------------------------------------------------------------------ installation and selection
def test_the_extension_is_built_and_in_use_unless_switched_off(c):
    assert c.MAX_BODY == MAX_BODY
    if not speedups.pure_python_requested():
        assert speedups.native is c and framing._native is c
        assert catalog._group_rows is c.group_rows and catalog._intern is c.intern
        assert catalog._columns is c.columns and catalog._lookup is c.lookup
    if "sse4_2" in Path("/proc/cpuinfo").read_text():
        assert c.CRC_HARDWARE == 1


def _selection(env_value: str | None, cwd: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != speedups.PURE_ENV}
    if env_value is not None:
        env[speedups.PURE_ENV] = env_value
    code = ("from artifact_ledger.ledger import speedups, framing; from artifact_ledger.projections import catalog;"
            "print(speedups.native is None, framing._native is None, catalog._group_rows is catalog._py_group_rows,"
            "catalog._intern is catalog._py_intern, catalog._columns is catalog._py_columns)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return proc.stdout.split()


def test_pure_python_variable_selects_the_fallback(c, tmp_path):
    # From outside the checkout too: the editable install must find the built module.
    assert _selection("1", tmp_path) == ["True"] * 5
    assert _selection("0", tmp_path) == ["False"] * 5
    assert _selection(None, tmp_path) == ["False"] * 5


# ------------------------------------------------------------------ CRC32C
@given(st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_crc32c_hardware_and_table_match_the_crc32c_package(data, value):
    want = crc32c_pkg.crc32c(data, value)
    assert NATIVE is None or NATIVE.crc32c(data, value) == want
    assert NATIVE is None or NATIVE.crc32c(data, value, portable=True) == want


def test_crc32c_known_value(c):
    assert c.crc32c(b"123456789") == c.crc32c(b"123456789", portable=True) == 0xE3069283
    assert zlib.crc32(b"123456789") != 0xE3069283  # not the zlib polynomial


# ------------------------------------------------------------------ scan_chain
@st.composite
def logs(draw):
    """A buffer of records (version 1 or 2, random batches), maybe damaged, and scan arguments.

    The arguments continue the chain at a record boundary most of the time (so the scan gets
    past the first record and the batch and seq rules are exercised), else they are perturbed.
    """
    version = draw(st.sampled_from([1, 2]))
    first = draw(st.sampled_from([1, 2, 1000, 2**64 - 3]))
    n = draw(st.integers(0, 8))
    prev0 = draw(st.sampled_from([GENESIS_HASH, b"\x07" * 32]))
    buf, prev, bf = b"", prev0, first
    starts, seqs, hashes, bfs = [], [], [], []
    for k in range(n):
        seq = (first + k) % 2**64  # wraps on disk past 2**64 - 1: the chain must stop there
        if k == 0 or draw(st.booleans()):
            bf = seq
        payload = draw(st.binary(max_size=24))
        if version == 1:
            frame, h = encode_record(seq, 10 + k, prev, payload, version=1)
        else:
            frame, h = encode_record(seq, 10 + k, prev, payload, batch_first=bf, version=2)
        starts.append(len(buf))
        seqs.append(seq)
        hashes.append(h)
        bfs.append(bf if version == 2 else 0)
        buf += frame
        prev = h
    bad = bytearray(buf)
    damage = draw(st.sampled_from(["none", "none", "flip", "cut", "length", "seq", "prev", "batch", "garbage"]))
    if damage == "flip" and bad:
        bit = draw(st.integers(0, len(bad) * 8 - 1))
        bad[bit // 8] ^= 1 << (bit % 8)
    elif damage == "cut" and bad:
        del bad[draw(st.integers(0, len(bad) - 1)):]
    elif damage == "length" and starts:
        at = starts[draw(st.integers(0, n - 1))]
        length = draw(st.sampled_from([0, 47, 48, 55, 56, MAX_BODY, MAX_BODY + 1, 2**31, 2**32 - 1]))
        bad[at:at + 4] = struct.pack("<I", length)
    elif damage in ("seq", "prev", "batch") and starts:
        # A record re-encoded with a wrong field but a valid CRC: only the chain rules can stop it.
        k = draw(st.integers(0, n - 1))
        recs = py_scan_chain(bytes(bad), starts[k], "s", 0, seqs[k], hashes[k - 1] if k else prev0, 1, version,
                             bfs[k - 1] if k else None)[0]
        assume(recs)
        r = recs[0]
        seq, prv, bfirst = r.seq, r.prev_hash, r.batch_first
        if damage == "seq":
            seq = draw(st.sampled_from([0, (seq + 1) % 2**64, max(seq - 1, 0), 2**64 - 1]))
        elif damage == "prev":
            prv = bytes(32) if prv != bytes(32) else b"\x01" * 32
        else:
            bfirst = draw(st.sampled_from([0, (seq + 1) % 2**64, max(seq - 1, 0), 1, 2**64 - 1]))
        if version == 1:
            frame, _ = encode_record(seq, r.ts_us, prv, r.payload, version=1)
        else:
            frame, _ = encode_record(seq, r.ts_us, prv, r.payload, batch_first=bfirst, version=2)
        bad[starts[k]:starts[k] + r.length] = frame
    elif damage == "garbage":
        bad += draw(st.binary(min_size=1, max_size=80))
    data = bytes(bad)
    k = draw(st.integers(0, n))
    pos = starts[k] if k < n else len(buf)
    next_seq = first + k
    prev_hash = hashes[k - 1] if k else prev0
    batch_first = (bfs[k - 1] if k else draw(st.sampled_from([None, -1]))) if version == 2 else None
    if draw(st.integers(0, 3)) == 0:
        pos = draw(st.integers(0, len(data) + 2))
    if draw(st.integers(0, 3)) == 0:
        next_seq = draw(st.sampled_from([next_seq + 1, max(next_seq - 1, 0), 2**64 - 1, 2**64, -1, 0]))
    if draw(st.integers(0, 3)) == 0:
        prev_hash = draw(st.sampled_from([bytes(32), b"\x07" * 31, b"", prev0]))
    if draw(st.integers(0, 3)) == 0:
        batch_first = draw(st.sampled_from([None, -1, 0, first, first + 1, 2**64, 2**64 - 3]))
    limit = draw(st.sampled_from([1, 2, 3, 4096, 4096, 0, -1, 2**70]))
    scan_version = version if draw(st.integers(0, 5)) else draw(st.sampled_from([1, 2, 3]))
    return data, pos, next_seq, prev_hash, limit, scan_version, batch_first


def _same(got, want):
    assert got[1] == want[1]
    assert got[0] == want[0]
    for g, w in zip(got[0], want[0]):
        assert type(g) is Record and [type(x) for x in g] == [type(x) for x in w]


# Each example costs well under a millisecond: many more than the profile's default, still bounded by it.
MANY = settings(max_examples=settings.default.max_examples * 16)


@MANY
@given(logs(), st.integers(-(2**40), 2**40))
def test_c_scan_chain_equals_python_on_random_and_damaged_logs(c, case, base):
    data, pos, next_seq, prev_hash, limit, version, batch_first = case
    want = py_scan_chain(data, pos, "seg", base, next_seq, prev_hash, limit, version, batch_first)
    got = c.scan_chain(Record, data, pos, "seg", base, next_seq, prev_hash, limit, version, batch_first)
    _same(got, want)
    # framing.scan_chain (C when loaded, the twin for odd argument types) says the same.
    _same(framing.scan_chain(data, pos, "seg", base, next_seq, prev_hash, limit, version, batch_first), want)


@MANY
@given(logs(), st.integers(-(2**40), 2**40), st.sampled_from([1, 2, 3, 1024]))
def test_scan_payloads_is_scan_chain_without_a_record_each(c, case, base, sparse_every):
    """Both twins of scan_payloads say what scan_chain's records say, in replay's shape."""
    data, pos, next_seq, prev_hash, limit, version, batch_first = case
    recs, stop = py_scan_chain(data, pos, "seg", base, next_seq, prev_hash, limit, version, batch_first)
    args = (data, pos, "seg", base, next_seq, prev_hash, limit, version, batch_first, sparse_every)
    if any(r.seq >= 2**63 for r in recs):  # past array('q'): both twins refuse
        for scan in (framing.py_scan_payloads, lambda *a: c.scan_payloads(Record, *a)):
            with pytest.raises(OverflowError):
                scan(*args)
        return
    want = (len(recs), stop, b"\xdd" + len(recs).to_bytes(4, "big") + b"".join(r.payload for r in recs),
            array("q", [r.seq for r in recs]).tobytes(), array("q", [r.ts_us for r in recs]).tobytes(),
            [(r.seq, r.offset) for r in recs if r.seq % sparse_every == 1], recs[-1] if recs else None)
    assert framing.py_scan_payloads(*args) == want
    assert c.scan_payloads(Record, *args) == want
    assert framing.scan_payloads(*args) == want


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=40), st.integers(1, 7))
def test_c_scan_chain_follows_a_long_chain_in_chunks(c, payloads, limit):
    buf, prev = b"", GENESIS_HASH
    for seq, p in enumerate(payloads, 1):
        frame, prev = encode_record(seq, seq, prev, p)
        buf += frame
    outs = []
    for scan in (lambda *a: c.scan_chain(Record, *a), py_scan_chain):
        out, pos, seq, prev, bf = [], 0, 1, GENESIS_HASH, -1
        while True:
            recs, pos = scan(buf, pos, "s", 56, seq, prev, limit, 2, bf)
            if not recs:
                break
            out += recs
            seq, prev, bf = recs[-1].seq + 1, recs[-1].hash, recs[-1].batch_first
        outs.append((out, pos))
    assert outs[0] == outs[1] and len(outs[0][0]) == len(payloads) and outs[0][1] == len(buf)


def _chain(first, n, prev=GENESIS_HASH, version=2, batch_of=lambda k, seq: seq):
    buf = b""
    for k in range(n):
        seq = (first + k) % 2**64
        if version == 1:
            frame, prev = encode_record(seq, k, prev, b"p%d" % k, version=1)
        else:
            frame, prev = encode_record(seq, k, prev, b"p%d" % k, batch_first=batch_of(k, seq), version=2)
        buf += frame
    return buf


# Edges the random logs reach only rarely: (buffer, pos, next_seq, prev_hash, batch_first, version).
EDGES = {
    # seq 2**64 - 1 is followed by a record whose seq wrapped to 0: no u64 continues the chain.
    "seq wraps past 2**64 - 1": (_chain(2**64 - 2, 4), 0, 2**64 - 2, GENESIS_HASH, None, 2),
    "seq wraps, version 1": (_chain(2**64 - 2, 4, version=1), 0, 2**64 - 2, GENESIS_HASH, None, 1),
    # A short or empty expected hash matches no record, not even one whose previous hash is all zeros.
    "expected hash of 31 bytes": (_chain(1, 2), 0, 1, bytes(31), None, 2),
    "expected hash empty": (_chain(1, 2), 0, 1, b"", None, 2),
    # Batch start 0 is never valid, also when the batch before is unknown.
    "batch start 0": (_chain(5, 2, batch_of=lambda k, seq: 0 if k else seq), 0, 5, GENESIS_HASH, None, 2),
    "batch start 0, unknown before": (_chain(5, 1, batch_of=lambda k, seq: 0), 0, 5, GENESIS_HASH, None, 2),
    "batch start above seq": (_chain(5, 1, batch_of=lambda k, seq: seq + 1), 0, 5, GENESIS_HASH, None, 2),
    "batch continues, unknown before": (_chain(5, 1, batch_of=lambda k, seq: 3), 0, 5, GENESIS_HASH, None, 2),
    # -1 (a segment's start) and 2**64 are batch starts no record carries: only a new batch may follow.
    "batch continues after -1": (_chain(5, 1, batch_of=lambda k, seq: 3), 0, 5, GENESIS_HASH, -1, 2),
    "batch continues after 2**64": (_chain(5, 1, batch_of=lambda k, seq: 3), 0, 5, GENESIS_HASH, 2**64, 2),
    "batch continues after 3": (_chain(5, 2, batch_of=lambda k, seq: 3), 0, 5, GENESIS_HASH, 3, 2),
    "version 1 read as 2": (_chain(1, 3, version=1), 0, 1, GENESIS_HASH, None, 2),
    "version 2 read as 1": (_chain(1, 3), 0, 1, GENESIS_HASH, None, 1),
    "unknown version reads as 2": (_chain(1, 3), 0, 1, GENESIS_HASH, None, 7),
    "pos past the end": (_chain(1, 1), 10**6, 1, GENESIS_HASH, None, 2),
}


@pytest.mark.parametrize("name", list(EDGES))
def test_c_scan_chain_equals_python_on_edge_cases(c, name):
    buf, pos, next_seq, prev, bf, version = EDGES[name]
    want = py_scan_chain(buf, pos, "s", 0, next_seq, prev, 100, version, bf)
    _same(c.scan_chain(Record, buf, pos, "s", 0, next_seq, prev, 100, version, bf), want)


def test_c_scan_chain_refuses_a_body_over_max_body(c):
    """The length limit holds even when the buffer does hold the whole (valid) record."""
    for extra in (0, 1):
        buf = _chain_payload(MAX_BODY - framing.BODY_HEAD_SIZE_V2 + extra)
        want = py_scan_chain(buf, 0, "s", 0, 1, GENESIS_HASH, 10, 2, None)
        assert len(want[0]) == 1 - extra
        _same(c.scan_chain(Record, buf, 0, "s", 0, 1, GENESIS_HASH, 10, 2, None), want)


def _chain_payload(size):
    return encode_record(1, 1, GENESIS_HASH, bytes(size))[0]


def test_c_scan_chain_reads_past_no_end_and_survives_huge_lengths(c):
    frame, _ = encode_record(1, 1, GENESIS_HASH, b"x" * 100)
    for cut in range(len(frame)):
        part = frame[:cut]
        assert c.scan_chain(Record, part, 0, "s", 0, 1, GENESIS_HASH, 10, 2, None) == ([], 0)
    huge = struct.pack("<II", 2**32 - 1, 0) + b"\0" * 64
    assert c.scan_chain(Record, huge, 0, "s", 0, 1, GENESIS_HASH, 10, 2, None) == ([], 0)
    # More records than a few GIL-free sub-chunks (1024 each), with a limit inside one.
    buf, prev = b"", GENESIS_HASH
    for seq in range(1, 9001):
        f, prev = encode_record(seq, seq, prev, b"p")
        buf += f
    got = c.scan_chain(Record, buf, 0, "s", 0, 1, GENESIS_HASH, 5000, 2, None)
    assert got == py_scan_chain(buf, 0, "s", 0, 1, GENESIS_HASH, 5000, 2, None) and len(got[0]) == 5000


def test_c_scan_chain_refuses_bad_argument_types(c):
    with pytest.raises(TypeError):
        c.scan_chain(tuple, bytearray(8), 0, "s", 0, 1, GENESIS_HASH, 1, 2, None)
    with pytest.raises(TypeError):
        c.scan_chain(dict, b"", 0, "s", 0, 1, GENESIS_HASH, 1, 2, None)
    with pytest.raises(ValueError):
        c.scan_chain(Record, b"", -1, "s", 0, 1, GENESIS_HASH, 1, 2, None)


# ------------------------------------------------------------------ fold helpers
@st.composite
def groupings(draw):
    k = draw(st.integers(1, 3))
    n = draw(st.integers(0, 40))
    code = st.integers(0, 6) if draw(st.integers(0, 3)) else st.integers(-3, 6)
    cols = tuple(array("i", draw(st.lists(code, min_size=n, max_size=n))) for _ in range(k))
    base = draw(st.integers(0, 1000))
    off = remap = None
    if draw(st.booleans()):
        counts = []
        left = n
        while left:
            take = draw(st.integers(0, left))
            counts.append(take)
            left -= take
        counts += draw(st.lists(st.just(0), max_size=2))
        start = draw(st.integers(0, 50))
        off = array("q", [start])
        for x in counts:
            off.append(off[-1] + x)
    if k == 1 and draw(st.booleans()):
        remap = draw(st.lists(st.integers(-2, 4), min_size=7, max_size=9))
    return cols, base, off, remap


def _norm(groups):
    return [(key, bytes(rows)) for key, rows in groups]


@MANY
@given(groupings())
def test_c_group_rows_equals_python(c, case):
    cols, base, off, remap = case
    try:
        want = catalog._py_group_rows(cols, base, off, remap)
    except IndexError:  # a code outside the remap list: both refuse it
        with pytest.raises(IndexError):
            c.group_rows(cols, base, off, remap)
        return
    assert _norm(c.group_rows(cols, base, off, remap)) == _norm(want)
    for _, g in want:  # ascending within each group
        assert list(array("i", g)) == sorted(array("i", g))


@pytest.mark.parametrize("args, exc", [
    (((array("i", [1, -1]),), 0, None, [0, 1, 2]), IndexError),  # a negative code indexes no remap entry
    (((array("i", [1, 2]), array("i", [1])), 0), ValueError),  # columns of different lengths
    (((array("i", [1, 9]),), 0, None, [0, 1, 2]), IndexError),  # remap too short
    (((array("i", [1]),), 0, None, [0, 2**31]), OverflowError),  # remapped past a C int
    (((array("i", [1, 2]),), 0, array("q", [0, 1])), ValueError),  # off spans 1 item, not 2
    (((array("i", [1, 2]),), 0, array("q", [0, 3, 2])), ValueError),  # off descends
    ((tuple(), 0), ValueError),
])
def test_c_group_rows_refuses_what_python_refuses(c, args, exc):
    with pytest.raises(exc):
        catalog._py_group_rows(*args)
    with pytest.raises(exc):
        c.group_rows(*args)


values = st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "ab", "é", ""]), st.text(max_size=3)), max_size=30)


@MANY
@given(values, st.lists(st.text(max_size=2), max_size=4, unique=True), st.booleans())
def test_c_intern_equals_python(c, vals, known, via_attr):
    results = []
    for fn in (c.intern, catalog._py_intern):
        strs: list = list(known)
        ids = {s: i for i, s in enumerate(strs)}
        arg = [SimpleNamespace(x=v) for v in vals] if via_attr else list(vals)
        out = fn(arg, "x" if via_attr else None, ids, strs)
        results.append((bytes(out), list(ids.items()), strs))
    assert results[0] == results[1]


def test_c_intern_tells_apart_many_values_of_one_length(c):
    """Hundreds of distinct same-length strings (and None) collide in the recent-value cache: codes still match."""
    import random
    rnd = random.Random(5)
    vals = [rnd.choice([None, f"n{rnd.randrange(700):03d}", "é" * 4, "\U0001F600" * 4]) for _ in range(5000)]
    results = []
    for fn in (c.intern, catalog._py_intern):
        strs: list = []
        ids: dict = {}
        results.append((bytes(fn(vals, None, ids, strs)), list(ids.items()), strs))
    assert results[0] == results[1]


@MANY
@given(st.lists(st.one_of(st.from_type(ArtifactRecorded),
                          st.builds(SimpleNamespace, run_id=st.sampled_from(["r", "s"]))), max_size=8),
       st.sampled_from(["run_id", "name", "project_id", "missing"]))
@example([ArtifactRecorded(artifact_id="a" * 32, origin="save", kind="k", sha256="0" * 64, size=1, mime="m",
                           run_id="r", graph_id="g", node_id="n"), SimpleNamespace(run_id="s"),
          SimpleNamespace(run_id="r")], "run_id")
def test_c_intern_reads_struct_fields_like_getattr(c, objs, attr):
    """Events' fields are read from their slots: the same codes as getattr, the same error for a missing one."""
    results = []
    for fn in (c.intern, catalog._py_intern):
        strs: list = []
        ids: dict = {}
        try:
            out = bytes(fn(list(objs), attr, ids, strs))
        except AttributeError:
            out = "AttributeError"
        results.append(out if out == "AttributeError" else (out, list(ids.items()), strs))
    assert results[0] == results[1]


@MANY
@given(st.lists(st.one_of(st.integers(0, 5), st.tuples(st.sampled_from("ab"), st.integers(0, 3))), max_size=30),
       st.dictionaries(st.one_of(st.integers(0, 5), st.tuples(st.sampled_from("ab"), st.integers(0, 3))),
                       st.integers(0, 100), max_size=8))
def test_c_lookup_equals_python(c, vals, table):
    got, want = c.lookup(vals, table), catalog._py_lookup(vals, table)
    assert (bytes(got[0]), got[1]) == (bytes(want[0]), want[1])


@given(st.lists(st.from_type(ArtifactRecorded), max_size=6), st.integers(0, 100), st.integers(0, 100))
def test_c_columns_equals_python(c, evs, lstart, mstart):
    got, want = c.columns(evs, lstart, mstart), catalog._py_columns(evs, lstart, mstart)
    assert len(got) == len(want) == 11
    assert [bytes(x) if isinstance(x, (bytes, array)) else x for x in got] == \
           [bytes(x) if isinstance(x, (bytes, array)) else x for x in want]


# ------------------------------------------------------------------ the replay tests on the pure-Python path
PURE_RUN = ["tests/test_framing_scan.py", "tests/test_apply_batch.py", "tests/test_log_recovery.py",
            "tests/test_torn_batch.py", "tests/test_power_loss.py", "tests/test_projections.py",
            "tests/test_state_machine.py"]


def test_replay_and_recovery_tests_pass_on_the_pure_python_path(c):
    """This run uses the extension; the key replay tests run once more, in a child, without it."""
    if speedups.pure_python_requested():
        pytest.skip("this whole run is already on the pure-Python path")
    env = {**os.environ, speedups.PURE_ENV: "1", "HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *PURE_RUN,
                           "-k", "not s3 and not postgres"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
