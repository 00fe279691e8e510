"""scan_chain (the replay fast path) decodes exactly what read_record does, and stops where it must."""

from hypothesis import given
from hypothesis import strategies as st

from artifact_ledger.ledger.framing import GENESIS_HASH, OK, encode_record, read_record, scan_chain


def _log(payloads):
    buf, prev, hashes = b"", GENESIS_HASH, []
    for seq, p in enumerate(payloads, 1):
        frame, h = encode_record(seq, 1000 + seq, prev, p)
        buf += frame
        hashes.append(h)
        prev = h
    return buf, hashes


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=30), st.integers(1, 7))
def test_scan_chain_equals_read_record_loop(payloads, limit):
    """Chunked scanning yields the same records as read_record one at a time."""
    buf, _ = _log(payloads)
    slow, pos = [], 0
    while pos < len(buf):
        status, rec, _ = read_record(buf, pos, "s", 100)
        assert status == OK
        slow.append(rec)
        pos += rec.length
    fast, pos, seq, prev = [], 0, 1, GENESIS_HASH
    while pos < len(buf):
        recs, pos = scan_chain(buf, pos, "s", 100, seq, prev, limit)
        assert recs and len(recs) <= limit
        fast += recs
        seq, prev = recs[-1].seq + 1, recs[-1].hash
    assert fast == slow


@given(st.lists(st.binary(max_size=40), min_size=2, max_size=12), st.data())
def test_scan_chain_stops_at_damage_or_a_broken_chain(payloads, data):
    """A flipped byte, a cut, or a wrong expected seq/hash stops the scan right at that record."""
    buf, hashes = _log(payloads)
    offsets, pos = [], 0
    while pos < len(buf):
        offsets.append(pos)
        pos += read_record(buf, pos, "s", 0)[1].length
    k = data.draw(st.integers(0, len(offsets) - 1))
    at = offsets[k]
    flip = data.draw(st.integers(at, (offsets[k + 1] if k + 1 < len(offsets) else len(buf)) - 1))
    bad = bytearray(buf)
    bad[flip] ^= 0x40
    recs, stop = scan_chain(bytes(bad), 0, "s", 0, 1, GENESIS_HASH)
    assert len(recs) == k and stop == at
    recs, stop = scan_chain(buf[: len(buf) - 1], 0, "s", 0, 1, GENESIS_HASH)
    assert len(recs) == len(payloads) - 1 and stop == offsets[-1]
    recs, stop = scan_chain(buf, 0, "s", 0, 2, GENESIS_HASH)
    assert recs == [] and stop == 0
    recs, stop = scan_chain(buf, offsets[1], "s", 0, 2, bytes(32))
    assert recs == [] and stop == offsets[1]
