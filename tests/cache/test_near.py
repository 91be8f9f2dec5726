"""The near cache: in-process copies of Redis hits, served only with a fresh proof of being caught up.

The near cache runs on a fake clock that only moves when a test moves it. A writer answers
only after waiting the proof window (`settle`); the tests move the clock by as much.
"""
from __future__ import annotations

import time

import pytest
import redis

from cache import Claim, NearCache, keys
from cache.entries import Entry

pytestmark = pytest.mark.tdd_green

PROFILE = keys.profile_key(5)
OTHER_PROFILE = keys.profile_key(6)
GEN = keys.generation_key(5)
PAGES = keys.pages_key(5)
VARIANT = "http://127.0.0.1:8000"
PAGE_1 = keys.page_field(1, 20, VARIANT)


def caught_up(near):
    """Look up until the near cache has read the answer to a PING, as lookups under load do."""
    deadline = time.monotonic() + 2
    while not near.caught_up:
        near.get("warm-up", "")
        assert time.monotonic() < deadline, "no PONG within 2 s"
        time.sleep(0.001)


def settle(near_clock, near):
    """What a writer does after its invalidation: let the proof window pass."""
    near_clock.advance(near.window + 0.001)


def copied(cache, counting_loader, value=None):
    """Fill the profile through `cache` and peek it once, so the near cache holds a copy."""
    caught_up(cache.near)
    cache.get_or_load("profile", PROFILE, counting_loader(value or {"id": 5}), variant=VARIANT)
    return cache.lookup("profile", PROFILE, variant=VARIANT)


def test_a_hit_copied_once_is_answered_again_without_any_redis_command(near_cache, real_client, count_commands,
                                                                       counting_loader):
    first = copied(near_cache, counting_loader)
    counter = count_commands(real_client)

    again = near_cache.lookup("profile", PROFILE, variant=VARIANT)

    assert (again.body, again.etag, again.result) == (first.body, first.etag, "near_hit")
    assert counter.commands == []


def test_a_hit_from_the_near_cache_counts_as_a_near_hit(near_cache, counting_loader, stats, near):
    copied(near_cache, counting_loader)

    near_cache.lookup("profile", PROFILE, variant=VARIANT)

    assert stats.snapshot()["requests"]["profile"]["near_hit"] == 1 and near.hits == 1


def test_another_process_invalidation_is_seen_once_the_writer_has_answered(near_cache, near, near_clock,
                                                                           other_process, counting_loader):
    copied(near_cache, counting_loader)

    other_process.invalidate(keys=[PROFILE])
    settle(near_clock, near)

    assert isinstance(near_cache.lookup("profile", PROFILE, variant=VARIANT), Claim)


def test_another_process_fill_after_an_invalidation_is_read_fresh(near_cache, near, near_clock, other_process,
                                                                  counting_loader):
    copied(near_cache, counting_loader, {"bio": "old"})

    other_process.invalidate(keys=[PROFILE])
    settle(near_clock, near)
    other_process.get_or_load("profile", PROFILE, counting_loader({"bio": "new"}), variant=VARIANT)

    assert near_cache.lookup("profile", PROFILE, variant=VARIANT).body == b'{"bio":"new"}'


def test_a_generation_bump_drops_the_copied_pages(near_cache, near, near_clock, other_process, counting_loader):
    caught_up(near)
    near_cache.get_or_load("flyer_page", PAGES, counting_loader({"count": 1}), variant=PAGE_1, generation_key=GEN)
    assert isinstance(near_cache.lookup("flyer_page", PAGES, variant=PAGE_1, generation_key=GEN), Entry)

    other_process.invalidate(generations=[(GEN, PAGES)])
    settle(near_clock, near)

    assert isinstance(near_cache.lookup("flyer_page", PAGES, variant=PAGE_1, generation_key=GEN), Claim)


def test_a_change_to_one_key_keeps_the_copies_of_other_tags(near_cache, near, near_clock, other_process,
                                                            counting_loader):
    copied(near_cache, counting_loader)

    other_process.invalidate(keys=[OTHER_PROFILE])
    settle(near_clock, near)
    caught_up(near)

    assert isinstance(near_cache.lookup("profile", PROFILE, variant=VARIANT), Entry) and near.hits == 1


def test_a_copy_ends_with_the_redis_value_it_was_read_from(near, near_clock, real_client, near_cache,
                                                          counting_loader):
    copied(near_cache, counting_loader)
    remaining_ms = real_client.pttl(PROFILE)

    near_clock.advance(remaining_ms / 1000 + 0.01)

    assert near.get(PROFILE, VARIANT)[0] is None


def test_a_value_read_before_an_applied_invalidation_is_not_copied(near, other_process, counting_loader):
    caught_up(near)
    other_process.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT)
    _, stamp = near.get(PROFILE, VARIANT)
    other_process.invalidate(keys=[PROFILE])
    time.sleep(0.05)
    near.get(OTHER_PROFILE, VARIANT)  # applies the invalidation, as another thread's request would

    near.put(PROFILE, VARIANT, Entry(b"{}", "e" * 32, "hit"), 60_000, stamp)

    assert near.get(PROFILE, VARIANT)[0] is None


def test_copies_beyond_the_byte_budget_evict_the_oldest(real_client, make_near):
    small = make_near(max_bytes=300)
    caught_up(small)
    entry = Entry(b"x" * 100, "e" * 32, "hit")
    stamp = small.get(PROFILE, VARIANT)[1]
    for user_id in (1, 2, 3):
        small.put(keys.profile_key(user_id), VARIANT, entry, 60_000, stamp)

    assert small.get(keys.profile_key(1), VARIANT)[0] is None
    assert small.get(keys.profile_key(3), VARIANT)[0] is entry


def test_a_lost_subscription_drops_every_copy_until_it_is_back(near_cache, near, real_client, counting_loader):
    copied(near_cache, counting_loader)

    real_client.client_kill_filter(_type="pubsub")

    assert near.get(PROFILE, VARIANT) == (None, None)
    assert not near.caught_up
    near._next_attempt = float("-inf")  # the retry interval has passed
    caught_up(near)
    assert near.get(PROFILE, VARIANT)[0] is None


def test_a_forked_process_does_not_trust_the_copies_it_inherited(near_cache, near, counting_loader, monkeypatch):
    copied(near_cache, counting_loader)

    monkeypatch.setattr("cache.near.os.getpid", lambda: -1)

    assert near.get(PROFILE, VARIANT)[0] is None
    caught_up(near)  # on its own subscribed connection, made in the child
    assert near.get(PROFILE, VARIANT)[0] is None


def test_a_large_backlog_of_invalidations_is_applied_before_any_copy_is_answered(near_cache, near, near_clock,
                                                                                 real_client, other_process,
                                                                                 counting_loader):
    copied(near_cache, counting_loader)
    pipe = real_client.pipeline(transaction=False)
    for user_id in range(1000, 3000):
        pipe.publish(keys.INVALIDATION_CHANNEL, f"{{u:{user_id}}}")
    pipe.execute()

    other_process.invalidate(keys=[PROFILE])
    settle(near_clock, near)

    assert isinstance(near_cache.lookup("profile", PROFILE, variant=VARIANT), Claim)


def test_an_invalidation_publishes_each_tag_it_touched_once(real_client, other_process):
    subscriber = real_client.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(keys.INVALIDATION_CHANNEL)
    subscriber.get_message(timeout=1)

    other_process.invalidate(keys=[PROFILE, keys.flyer_key(7)], generations=[(GEN, PAGES)])

    assert subscriber.get_message(timeout=1)["data"] == b"{f:7} {u:5}"
    subscriber.close()


def test_the_all_tag_drops_every_copy(near_cache, near, real_client, counting_loader):
    copied(near_cache, counting_loader)

    real_client.publish(keys.INVALIDATION_CHANNEL, keys.ALL)
    real_client.ping()

    assert isinstance(near_cache.lookup("profile", PROFILE, variant=VARIANT), Entry) and near.hits == 0


def test_no_copy_is_served_once_the_proof_is_older_than_the_window(near_cache, near, near_clock, counting_loader):
    copied(near_cache, counting_loader)

    near_clock.advance(near.window + 0.001)

    assert near.get(PROFILE, VARIANT) == (None, None)


def test_copies_are_served_again_once_a_new_ping_is_answered(near_cache, near, near_clock, counting_loader):
    copied(near_cache, counting_loader)
    near_clock.advance(near.window + 0.001)

    caught_up(near)

    assert near.get(PROFILE, VARIANT)[0] is not None


def test_a_subscription_that_stops_answering_serves_nothing_and_is_dropped(near_cache, near, near_clock,
                                                                          real_client, counting_loader):
    copied(near_cache, counting_loader)
    real_client.execute_command("CLIENT", "PAUSE", "500", "ALL")  # a silent connection, as if half-open
    try:
        near_clock.advance(near.window / 2 + 0.001)
        near.get(PROFILE, VARIANT)  # sends a PING that no answer follows
        near_clock.advance(near.window / 2)
        served_while_silent = near.get(PROFILE, VARIANT)
        near_clock.advance(1.1)
        dropped = near.get(PROFILE, VARIANT)
    finally:
        real_client.execute_command("CLIENT", "UNPAUSE")

    assert served_while_silent == (None, None)
    assert dropped == (None, None) and near.usage()[:2] == (0, 0)


def test_a_subscriber_that_cannot_find_its_server_serves_nothing_and_raises_nothing():
    """Sentinel mode: the connection factory asks the sentinels, and raises when none answers."""
    def no_primary() -> redis.Connection:
        raise redis.ConnectionError("No master found for 'mymaster'")

    near = NearCache(no_primary, keys.INVALIDATION_CHANNEL, max_bytes=1 << 20)

    assert near.get(keys.profile_key(1), "v") == (None, None) and not near.caught_up
