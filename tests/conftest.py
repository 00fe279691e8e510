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
def root(tmp_path):
    """A fresh, not yet created ledger directory."""
    return tmp_path / "ledger"


def pytest_configure(config):
    config.addinivalue_line("markers", "file_only: a test of the segment-file backend only (skipped on postgres)")


@pytest.fixture(params=["file", "postgres"])
def backend(request):
    """Run the test once per log backend (see tests/backends.py); postgres schemas are dropped after."""
    import backends

    if request.param == "postgres":
        if request.node.get_closest_marker("file_only"):
            pytest.skip("a test of the segment files themselves")
        backends.need_postgres()
    backends.CURRENT.name = request.param
    try:
        yield request.param
    finally:
        backends.CURRENT.name = "file"
        backends.drop_schemas()


@pytest.fixture
def pg_url():
    """The URL of a fresh PostgreSQL schema on the test server, dropped after the test."""
    import backends

    backends.need_postgres()
    try:
        yield backends.url_for(backends.new_schema())
    finally:
        backends.drop_schemas()
