"""The save path's shortcuts answer as the long way did: a str source path is read and named as pathlib
would, and a rename into a shard the store knows touches the directories a mkdir attempt would report."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from artifact_ledger.facade.artifacts import _source_and_name
from artifact_ledger.store.local import LocalBlobStore

_PARTS = st.lists(st.sampled_from(["a", "b", "f.txt", ".", "..", "", "sub"]), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(parts=_PARTS, absolute=st.booleans(), trailing=st.booleans())
def test_source_and_name_match_pathlib(tmp_path_factory, parts, absolute, trailing):
    """The name is Path(path).name and the path opens the same file (or fails the same way)."""
    root = tmp_path_factory.getbasetemp() / "srcs"
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "f.txt").write_bytes(b"x")
    (root / "sub" / "f.txt").write_bytes(b"y")
    text = "/".join(parts) + ("/" if trailing else "")
    if not text:
        return  # save() refuses '' before this
    if absolute:
        text = str(root) + "/" + text
    src, name = _source_and_name(text)
    assert name == Path(text).name

    def outcome(p: str) -> object:
        try:
            st_ = os.stat(p if os.path.isabs(p) else os.path.join(root, p))
            return (st_.st_ino, st_.st_mode)
        except OSError as exc:
            return type(exc)

    assert outcome(src) == outcome(str(Path(text)))
    assert _source_and_name(Path(text)) == (str(Path(text)), Path(text).name)


def _fresh_dirs(store: LocalBlobStore, tmp: str, sha: str) -> list[str]:
    store._shards.clear()  # as if never seen: the mkdir attempt decides
    return store._rename_in(tmp, sha, sync_dirs=False)


def test_known_shard_renames_report_what_a_mkdir_attempt_would(tmp_path):
    """Renames into new, known and vanished shards name the same directories with and without the cache."""
    cached = LocalBlobStore(tmp_path / "a", fsync=False)
    plain = LocalBlobStore(tmp_path / "b", fsync=False)
    shas = ["ab" + "0" * 62, "ab" + "1" * 62, "cd" + "2" * 62, "ab" + "3" * 62]
    try:
        for i, sha in enumerate(shas):
            if i == 3:
                # The shard vanished behind both stores' backs (emptied and removed).
                for s in (cached, plain):
                    shard = s._objects / "ab"
                    for f in shard.iterdir():
                        f.unlink()
                    shard.rmdir()
            got = []
            for s, rename in ((cached, lambda s, t, h: s._rename_in(t, h, sync_dirs=False)), (plain, _fresh_dirs)):
                tmp = s._new_tmp()
                Path(tmp).write_bytes(b"z")
                dirs = rename(s, tmp, sha)
                assert os.path.exists(s._name(sha)) and not os.path.exists(tmp)
                got.append([os.path.relpath(d, s.root) for d in dirs])
            assert got[0] == got[1], (i, got)
            # Always sha256/ too: an existing shard's creator may have died before flushing its name.
            assert got[0] == [os.path.join("sha256", sha[:2]), "sha256"], (i, got)
        assert str(cached._objects / "ab") in cached._shards
    finally:
        cached.close()
        plain.close()


def test_put_file_copies_and_hashes_across_the_read_buffer_boundary(tmp_path):
    """put_file's reused read buffer: files below, at and past CHUNK (several reads) keep their bytes."""
    import hashlib

    from artifact_ledger.store.local import CHUNK

    store = LocalBlobStore(tmp_path / "b", fsync=False)
    try:
        for n in (0, 1, 4096, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 517):
            data = os.urandom(n)
            src = tmp_path / f"src{n}"
            src.write_bytes(data)
            info = store.put_file(str(src))
            assert (info.sha256, info.size) == (hashlib.sha256(data).hexdigest(), n)
            assert store.path(info.sha256).read_bytes() == data
    finally:
        store.close()


def _naive_metric(value):
    """The metric rule spelled out the long way: finite reals, bools refused, integers kept exact."""
    import math
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return TypeError
    if isinstance(value, numbers.Integral):
        return ("int", int(value))
    value = float(value)
    return ValueError if not math.isfinite(value) else ("float", value)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                       st.text(max_size=3), st.none(), st.fractions(max_denominator=50),
                       st.integers(-(2**70), 2**70)))
def test_check_metrics_fast_path_matches_the_naive_rule(value):
    """Plain ints and floats take the fast path; every value is accepted or refused as the rule says."""
    from artifact_ledger.facade.validation import check_metrics

    want = _naive_metric(value)
    try:
        got = check_metrics({"m": value})["m"]
    except (TypeError, ValueError) as exc:
        if want is TypeError or want is ValueError:
            assert type(exc) is want
        else:
            # An int the ledger cannot store (out of its range) is refused by both paths alike.
            assert want[0] == "int" and abs(want[1]) >= 2**63 and type(exc) is ValueError, (value, exc)
        return
    assert want not in (TypeError, ValueError), (value, got)
    assert (type(got).__name__, got) == want
