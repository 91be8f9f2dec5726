"""The invalidator's replication rule (Sentinel mode), on the test Redis: a primary with no replica.

The test Redis (REDIS_URL_TEST) has no replica, so ``WAIT 1`` always falls short there, as on a
Sentinel primary whose replica is down. The sentinels' verdict (``cache.sentinel``) is a fake.
"""
from __future__ import annotations

import time

import pytest

from cache import Breaker
from cache.invalidation import Invalidator
from cache.scripts import Scripts


class FakeSentinels:
    """Answers the lone-primary question with a fixed verdict and records the run_ids it was asked about."""

    def __init__(self, verdict: bool) -> None:
        self.verdict = verdict
        self.asked: list[str] = []

    def __call__(self, run_id: str) -> bool:
        self.asked.append(run_id)
        return self.verdict


def invalidator(client, lone_check=None) -> Invalidator:
    return Invalidator(client, Scripts(client), Breaker(), time.time, 60_000, replicas=1, lone_check=lone_check)


@pytest.fixture
def lone_primary(real_client):
    """The test Redis, which has no replica (checked), with one key to invalidate."""
    assert real_client.info("replication")["connected_slaves"] == 0, "the test Redis must have no replica"
    real_client.set("pf:test:lone", b"old")
    return real_client


def test_a_primary_the_sentinels_call_alone_takes_an_invalidation_well_within_the_deadline(lone_primary):
    sentinels = FakeSentinels(verdict=True)
    subject = invalidator(lone_primary, sentinels)

    started = time.monotonic()
    delivered = subject.deliver(["pf:test:lone"], [], timeout=1.0)

    assert delivered and time.monotonic() - started < 0.5
    assert lone_primary.get("pf:test:lone") is None
    assert sentinels.asked == [lone_primary.info("server")["run_id"]] and subject.lone_deliveries == 1


def test_a_primary_alone_takes_no_invalidation_unless_the_sentinels_agree(lone_primary):
    sentinels = FakeSentinels(verdict=False)

    delivered = invalidator(lone_primary, sentinels).deliver(["pf:test:lone"], [], timeout=0.3)

    assert not delivered and sentinels.asked


def test_without_sentinels_to_ask_a_primary_alone_takes_no_invalidation(lone_primary):
    delivered = invalidator(lone_primary).deliver(["pf:test:lone"], [], timeout=0.3)

    assert not delivered
