import threading

import pytest

from cache import CacheStats, read_from_redis, keys

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


def test_a_flush_writes_the_minute_bucket_and_the_total(stats, client):
    stats.record("profile", "hit")

    assert stats.flush_to_redis(client, NOW)

    field = b"profile|hit"
    assert client.hget(keys.stats_minute_key(int(NOW // 60)), field) == b"1"
    assert client.hget(keys.stats_total_key(), field) == b"1"


def test_a_minute_bucket_expires_after_about_two_hours(stats, client):
    stats.record("profile", "hit")

    stats.flush_to_redis(client, NOW)

    assert 7000 < client.ttl(keys.stats_minute_key(int(NOW // 60))) <= 7200


def test_a_flush_pushes_only_what_was_counted_since_the_last_flush(stats, client):
    stats.record("profile", "hit")
    stats.flush_to_redis(client, NOW)
    stats.record("profile", "hit")

    stats.flush_to_redis(client, NOW + 1)

    assert read_from_redis(client, NOW + 1)["profile"]["since_start"] == {"hit": 2}


def test_a_failed_flush_keeps_its_counts_for_the_next_one(stats, fake_client, fake_server):
    stats.record("profile", "miss")
    fake_server.connected = False
    assert stats.flush_to_redis(fake_client, NOW) is False
    fake_server.connected = True

    stats.flush_to_redis(fake_client, NOW)

    assert read_from_redis(fake_client, NOW)["profile"]["since_start"] == {"miss": 1}


def test_reading_sums_every_process_flushes(client):
    first, second = CacheStats(), CacheStats()
    first.record("profile", "hit")
    second.record("profile", "hit")
    second.record_invalidation("profile")

    first.flush_to_redis(client, NOW)
    second.flush_to_redis(client, NOW)

    assert read_from_redis(client, NOW)["profile"]["last_minute"] == {"hit": 2, "invalidations": 1}


def test_reading_splits_counts_into_last_minute_last_hour_and_since_start(stats, client):
    stats.record("profile", "hit")
    stats.flush_to_redis(client, NOW - 2 * 3600)  # long ago: only in the total
    stats.record("profile", "hit")
    stats.flush_to_redis(client, NOW - 600)  # ten minutes ago
    stats.record("profile", "hit")
    stats.flush_to_redis(client, NOW)

    assert read_from_redis(client, NOW)["profile"] == {
        "last_minute": {"hit": 1}, "last_hour": {"hit": 2}, "since_start": {"hit": 3},
    }
