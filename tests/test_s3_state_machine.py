"""The facade state machine of tests/test_state_machine.py (random saves, ingests, writers, directory
ingests, pins, queries, loads, reopens, checked against the naive model) on the file log with S3 blobs."""

from __future__ import annotations

import pytest
from hypothesis import settings

from artifact_ledger.facade import open_ledger
from test_state_machine import FacadeMachine


class S3FacadeMachine(FacadeMachine):
    """The same machine; its ledger keeps the blobs in S3 and caches them in the machine's temp dir."""

    url = ""  # set per test by the fixture below, before any machine is made

    def _open(self) -> None:
        url, cache = self.url, self.tmp / "cache"

        async def opener():
            return await open_ledger(self.root, fsync=False, blobs=url, cache_dir=cache)

        self.ledger = self.portal.call(opener)
        self.facades = {c: self.ledger.artifacts(run_id=c[0], graph_id=c[1], node_id=c[2], project_id=c[3])
                        for c in self._contexts()}

    def _contexts(self):
        from test_state_machine import CONTEXTS

        return CONTEXTS


@pytest.fixture(autouse=True)
def _point_at_s3(s3_place):
    bucket, prefix = s3_place
    # Examples share the prefix: blobs are content-addressed, so one example's objects are another's
    # deduplicated uploads, as for machines sharing a bucket.
    S3FacadeMachine.url = f"s3://{bucket}/{prefix}"


# Fewer examples than the local machine's: every step here is a round trip to the server, and the
# local run already explores the model; this one checks that S3 blobs change no answer.
S3FacadeMachine.TestCase.settings = settings(max_examples=8, stateful_step_count=25)
test_s3_facade_matches_naive_model = S3FacadeMachine.TestCase
