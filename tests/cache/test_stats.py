import threading

import pytest

import redis

from cache import CacheStats, read_from_redis, keys
from cache.stats import deltas, push_deltas

pytestmark = pytest.mark.tdd_green

NOW = 1_700_000_000.0  # an instant 20 s into its minute


def test_a_snapshot_counts_lookups_by_family_and_result_and_invalidations_by_family(stats):
    for result in ("hit", "hit", "miss"):
        stats.record("profile", result)
    stats.record("pages", "error")
    stats.record_invalidation("profile")

    assert stats.snapshot() == {
        "requests": {"pages": {"error": 1}, "profile": {"hit": 2, "miss": 1}},
        "invalidations": {"profile": 1},
    }


def test_concurrent_records_are_all_counted(stats):
    def hammer():
        for _ in range(2000):
            stats.record("profile", "hit")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert stats.snapshot()["requests"]["profile"]["hit"] == 8000


def flush(stats, client, now, before=None):
    """Push what `stats` counted beyond `before` (a previous `fields()`), as a process's telemetry does."""
    fields = stats.fields()
    push_deltas(client, deltas(fields, before or {}), now)
    return fields


def test_a_push_writes_the_10_second_bucket_and_the_total(stats, client):
    stats.record("profile", "hit")

    flush(stats, client, NOW)

    field = b"lookup|profile|hit"
    assert client.hget(keys.stats_bucket_key(int(NOW // 10)), field) == b"1"
    assert client.hget(keys.stats_total_key(), field) == b"1"


def test_a_bucket_expires_after_a_little_more_than_an_hour(stats, client):
    stats.record("profile", "hit")

    flush(stats, client, NOW)

    assert 3600 < client.ttl(keys.stats_bucket_key(int(NOW // 10))) <= 3700


def test_pushing_deltas_adds_only_what_was_counted_since_the_last_push(stats, client):
    stats.record("profile", "hit")
    before = flush(stats, client, NOW)
    stats.record("profile", "hit")

    flush(stats, client, NOW + 1, before)

    assert read_from_redis(client, NOW + 1)["profile"]["since_start"] == {"hit": 2}


def test_a_failed_push_applies_nothing(stats, fake_client, fake_server):
    stats.record("profile", "miss")
    fake_server.connected = False
    with pytest.raises(redis.RedisError):
        flush(stats, fake_client, NOW)
    fake_server.connected = True

    assert read_from_redis(fake_client, NOW) == {}


def test_reading_sums_every_process_pushes(client):
    first, second = CacheStats(), CacheStats()
    first.record("profile", "hit")
    second.record("profile", "hit")
    second.record_invalidation("profile")

    flush(first, client, NOW)
    flush(second, client, NOW)

    assert read_from_redis(client, NOW)["profile"]["last_minute"] == {"hit": 2, "invalidations": 1}


def test_the_last_minute_is_the_last_six_10_second_buckets_and_the_hour_the_last_360(stats, client):
    before = {}
    for ago in (2 * 3600, 600, 61, 45, 0):  # long ago: only in the total; 61 s ago: outside the last minute
        stats.record("profile", "hit")
        before = flush(stats, client, NOW - ago, before)

    assert read_from_redis(client, NOW)["profile"] == {
        "last_minute": {"hit": 2}, "last_hour": {"hit": 4}, "since_start": {"hit": 5},
    }


def test_fields_flatten_every_counter_kind(stats):
    stats.record("profile", "near_hit")
    stats.record_invalidation("flyer")
    stats.record_invalidation_outcome("flyer", "queued")
    stats.record_fill("profile", "stored", 0.003)
    stats.record_audit("profile", "fresh")

    assert stats.fields() == {"lookup|profile|near_hit": 1, "inval|flyer": 1, "inval_outcome|flyer|queued": 1,
                              "fill|profile|stored": 1, "audit|profile|fresh": 1}
    counts, total = stats.fill_histograms()["profile"]
    assert counts[2] == 1 and sum(counts) == 1  # the 2.5-5 ms bucket and total == pytest.approx(0.003)
