"""Interleavings forced deterministically: stale sets, stampedes, lease expiry, loader failure."""
import threading
import time

import pytest

from cache import Loaded, ReadThroughCache, keys

pytestmark = pytest.mark.tdd_green

PROFILE = keys.profile_key(5)
GEN = keys.generation_key(5)
PAGES = keys.pages_key(5)
PAGE_1 = keys.page_field(1, 20, "")


def _load_racing_an_invalidation(cache):
    """A loader that reads the "old" row, then a writer commits and invalidates mid-load."""

    def loader():
        cache.invalidate(keys=[PROFILE], families=["profile"])
        return Loaded({"name": "old"}, 60)

    return cache.get_or_load("profile", PROFILE, loader)


def test_a_fill_that_raced_an_invalidation_is_refused(cache, client):
    _load_racing_an_invalidation(cache)

    assert not client.exists(PROFILE)


def test_the_reader_whose_fill_was_refused_still_gets_its_loaded_answer(cache):
    entry = _load_racing_an_invalidation(cache)

    assert (entry.result, entry.body) == ("miss", b'{"name":"old"}')


def test_a_refused_fill_is_counted_as_stale(cache, stats):
    _load_racing_an_invalidation(cache)

    assert stats.snapshot()["requests"]["profile"] == {"stale": 1}


def test_the_read_after_a_refused_fill_loads_fresh(cache, counting_loader):
    _load_racing_an_invalidation(cache)

    entry = cache.get_or_load("profile", PROFILE, counting_loader({"name": "new"}))

    assert (entry.result, entry.body) == ("miss", b'{"name":"new"}')


def test_a_page_fill_that_raced_a_generation_bump_is_refused(cache, client):
    def loader():
        cache.invalidate(generations=[(GEN, PAGES)])
        return Loaded([1], 60)

    cache.get_or_load("pages", PAGES, loader, variant=PAGE_1, generation_key=GEN)

    assert client.keys("*pages*") == []


def test_concurrent_misses_call_the_loader_once_and_waiters_get_the_fill(client, stats):
    waiters = 4
    holder_loading, release = threading.Event(), threading.Event()
    waiting, waiting_lock, all_waiting = set(), threading.Lock(), threading.Event()

    def sleep(seconds):
        with waiting_lock:
            waiting.add(threading.get_ident())
            if len(waiting) == waiters:
                all_waiting.set()
        time.sleep(seconds)

    cache = ReadThroughCache(client, stats=stats, wait_timeout=5.0, sleep=sleep)
    calls, answers = [], []

    def holder_loader():
        calls.append("holder")
        holder_loading.set()
        release.wait(5)
        return Loaded({"v": 1}, 60)

    def waiter_loader():
        calls.append("waiter")
        return Loaded({"v": 2}, 60)

    holder = threading.Thread(target=lambda: answers.append(cache.get_or_load("p", PROFILE, holder_loader)))
    holder.start()
    assert holder_loading.wait(5)
    threads = [threading.Thread(target=lambda: answers.append(cache.get_or_load("p", PROFILE, waiter_loader)))
               for _ in range(waiters)]
    for t in threads:
        t.start()
    assert all_waiting.wait(5)  # every waiter is polling before the holder fills
    release.set()
    for t in [holder, *threads]:
        t.join(5)

    assert calls == ["holder"]
    assert sorted(a.result for a in answers) == ["lease_wait"] * waiters + ["miss"]
    assert {a.body for a in answers} == {b'{"v":1}'}


def _wait_out_a_held_lease(cache, waiter_loader):
    """A holder whose loader outlasts the waiter's wait_timeout (fake clock: no real sleep)."""
    seen = {}

    def holder_loader():
        seen["waiter"] = cache.get_or_load("profile", PROFILE, waiter_loader)
        seen["stored"] = cache.client.hget(PROFILE, "")
        return Loaded({"v": "holder"}, 60)

    cache.get_or_load("profile", PROFILE, holder_loader)
    return seen


def test_a_waiter_whose_wait_times_out_answers_from_its_own_loader(cache, counting_loader):
    loader = counting_loader({"v": "waiter"})

    seen = _wait_out_a_held_lease(cache, loader)

    assert (seen["waiter"].result, seen["waiter"].body, loader.calls) == ("miss", b'{"v":"waiter"}', 1)


def test_a_waiter_whose_wait_times_out_does_not_fill(cache, client, counting_loader):
    seen = _wait_out_a_held_lease(cache, counting_loader({"v": "waiter"}))

    assert seen["stored"] is None
    assert client.hget(PROFILE, "").endswith(b'{"v":"holder"}')


def test_a_waiter_that_timed_out_is_counted_as_lease_timeout(cache, stats, counting_loader):
    _wait_out_a_held_lease(cache, counting_loader({"v": "waiter"}))

    assert stats.snapshot()["requests"]["profile"] == {"lease_timeout": 1, "miss": 1}


def test_an_expired_lease_lets_another_reader_load_and_fill(cache, clock, counting_loader):
    seen = {}

    def stuck_holder():
        clock.advance(2.5)  # longer than lease_ttl (2 s)
        seen["other"] = cache.get_or_load("profile", PROFILE, counting_loader({"v": "other"}))
        return Loaded({"v": "stuck"}, 60)

    cache.get_or_load("profile", PROFILE, stuck_holder)

    assert seen["other"].result == "miss"


def test_the_holder_of_an_expired_lease_cannot_overwrite_the_newer_fill(cache, clock, client, counting_loader):
    def stuck_holder():
        clock.advance(2.5)
        cache.get_or_load("profile", PROFILE, counting_loader({"v": "other"}))
        return Loaded({"v": "stuck"}, 60)

    cache.get_or_load("profile", PROFILE, stuck_holder)

    assert client.hget(PROFILE, "").endswith(b'{"v":"other"}')


def test_a_failing_loader_releases_its_lease(cache, client):
    def failing():
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        cache.get_or_load("profile", PROFILE, failing)

    assert not client.exists(PROFILE)


def test_a_waiter_stops_waiting_once_the_lease_is_gone(make_cache, client, clock, counting_loader):
    def sleep(seconds):
        client.hdel(PROFILE, keys.lease_field(""))  # meanwhile the holder gave up its lease
        clock.advance(seconds)

    cache = make_cache(client, wait_timeout=60.0, sleep=sleep)
    seen = {}

    def holder_loader():
        start = clock()
        seen["waiter"] = cache.get_or_load("profile", PROFILE, counting_loader({"v": "waiter"}))
        seen["waited"] = clock() - start
        return Loaded({"v": "holder"}, 60)

    cache.get_or_load("profile", PROFILE, holder_loader)

    assert seen["waiter"].body == b'{"v":"waiter"}'
    assert seen["waited"] < 1
