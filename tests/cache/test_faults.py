"""Redis faults: outages, an open breaker, invalidations retried to a deadline, fills past their deadline."""
import time

import pytest

from cache import Breaker, Loaded, keys

pytestmark = pytest.mark.tdd_green

PROFILE = keys.profile_key(5)
GEN = keys.generation_key(5)
PAGES = keys.pages_key(5)
PAGE_1 = keys.page_field(1, 20, "")


@pytest.mark.parametrize("client", ["fake", "real"], indirect=True)  # counts one node's commands
def test_a_hit_sends_exactly_one_redis_command(cache, client, count_commands, counting_loader):
    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}))
    counter = count_commands(client)

    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}))

    # The lookup script, over the connection whose server was checked (cache.epoch).
    assert counter.commands == ["EVALSHA"]


@pytest.mark.parametrize("client", ["fake", "real"], indirect=True)  # counts one node's commands
def test_a_page_hit_sends_exactly_one_redis_command(cache, client, count_commands, counting_loader):
    cache.get_or_load("pages", PAGES, counting_loader([1]), variant=PAGE_1, generation_key=GEN)
    counter = count_commands(client)

    entry = cache.get_or_load("pages", PAGES, counting_loader([1]), variant=PAGE_1, generation_key=GEN)

    assert entry.result == "hit" and counter.commands == ["EVALSHA"]


def test_lookups_answer_from_the_loader_when_redis_is_down(fake_cache, fake_server, counting_loader):
    fake_server.connected = False

    entry = fake_cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}))

    assert (entry.result, entry.body) == ("error", b'{"id":5}')


def test_a_redis_error_reply_is_answered_from_the_loader(fake_cache, fake_client, counting_loader):
    fake_client.set(PROFILE, b"not a hash")  # WRONGTYPE

    entry = fake_cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}))

    assert (entry.result, entry.body) == ("error", b'{"id":5}')


def test_an_outage_during_the_fill_still_returns_the_loaded_answer(fake_cache, fake_server):
    def loader():
        fake_server.connected = False
        return Loaded({"id": 5}, 60)

    entry = fake_cache.get_or_load("profile", PROFILE, loader)

    assert (entry.result, entry.body) == ("error", b'{"id":5}')


def test_an_open_breaker_skips_redis_entirely(make_cache, fake_client, fake_server, clock, count_commands,
                                              counting_loader):
    cache = make_cache(fake_client, breaker=Breaker(threshold=1, clock=clock))
    fake_server.connected = False
    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}))
    fake_server.connected = True
    counter = count_commands(fake_client)

    entry = cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}))

    assert entry.result == "bypass" and counter.commands == []


def test_the_cache_is_used_again_once_the_breaker_delay_has_passed(make_cache, fake_client, fake_server, clock,
                                                                   counting_loader):
    cache = make_cache(fake_client, breaker=Breaker(threshold=1, base_delay=0.5, clock=clock))
    fake_server.connected = False
    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}))
    fake_server.connected = True
    clock.advance(0.5)

    entry = cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}))

    assert entry.result == "miss" and cache.breaker.state == "closed"


def test_an_invalidation_while_redis_is_down_returns_false(fake_cache, fake_server):
    fake_server.connected = False

    assert fake_cache.invalidate(keys=[PROFILE], families=["profile"]) is False


def test_an_open_breaker_never_stops_an_invalidation(make_cache, fake_client, fake_server, clock,
                                                     counting_loader):
    cache = make_cache(fake_client, breaker=Breaker(threshold=1, clock=clock))
    cache.get_or_load("profile", PROFILE, counting_loader({"name": "old"}))
    fake_server.connected = False
    cache.get_or_load("profile", PROFILE, counting_loader({"name": "old"}))  # opens the breaker
    fake_server.connected = True

    assert cache.breaker.state == "open"
    assert cache.invalidate(keys=[PROFILE]) is True
    assert not fake_client.exists(PROFILE) and cache.breaker.state == "closed"


def test_an_invalidation_is_retried_until_redis_answers_within_its_timeout(make_cache, fake_client, fake_server,
                                                                           clock, counting_loader):
    cache = make_cache(fake_client)
    cache.get_or_load("profile", PROFILE, counting_loader({"name": "old"}))
    fake_server.connected = False
    sleeps = []

    def sleep(seconds):  # Redis comes back during the third pause
        sleeps.append(seconds)
        clock.advance(seconds)
        fake_server.connected = len(sleeps) >= 3

    cache._invalidator._sleep = sleep

    assert cache.invalidate(keys=[PROFILE], timeout=1.0) is True
    assert len(sleeps) == 3 and not fake_client.exists(PROFILE)


def test_an_invalidation_gives_up_at_its_timeout(fake_cache, fake_server, clock):
    fake_server.connected = False
    started = clock()

    assert fake_cache.invalidate(keys=[PROFILE], timeout=0.5) is False
    assert 0.5 <= clock() - started < 0.7


def test_reads_bypass_the_cache_while_it_is_suspended(fake_cache, counting_loader):
    fake_cache.get_or_load("profile", PROFILE, counting_loader({"name": "old"}))
    woken = []
    fake_cache.suspended, fake_cache.on_suspended = True, lambda: woken.append(True)

    entry = fake_cache.get_or_load("profile", PROFILE, counting_loader({"name": "new"}))

    assert (entry.result, entry.body) == ("bypass", b'{"name":"new"}') and woken == [True]
    assert fake_cache.lookup("profile", PROFILE) is None


def test_a_fill_that_comes_after_its_deadline_is_never_stored(cache, client):
    def slow_loader():  # its answer is valid for 50 ms, but the fill only comes 150 ms later
        time.sleep(0.15)
        return Loaded({"id": 5}, 0.05)

    entry = cache.get_or_load("profile", PROFILE, slow_loader)

    assert entry.body == b'{"id":5}' and not client.hexists(PROFILE, "")


def test_a_fill_expires_at_the_deadline_its_loader_computed(cache, client):
    def slow_loader():  # valid for 1 s from the load; the fill comes 300 ms later
        time.sleep(0.3)
        return Loaded({"id": 5}, 1.0)

    cache.get_or_load("profile", PROFILE, slow_loader)

    assert 0 < client.pttl(PROFILE) <= 710


def test_a_flushed_script_cache_is_reloaded_transparently(fake_cache, fake_client, counting_loader):
    fake_cache.get_or_load("pages", PAGES, counting_loader([1]), variant=PAGE_1, generation_key=GEN)
    fake_client.script_flush()

    entry = fake_cache.get_or_load("pages", PAGES, counting_loader([2]), variant=PAGE_1, generation_key=GEN)

    assert (entry.result, entry.body) == ("hit", b"[1]")


@pytest.mark.parametrize("client", ["fake", "real"], indirect=True)  # counts one node's commands
def test_an_invalidation_is_one_pipeline(cache, client, count_commands, monkeypatch):
    cache.invalidate(generations=[(GEN, PAGES)])  # the first one loads the script (NOSCRIPT)
    sent = []
    make_pipeline = client.pipeline

    def recording_pipeline(*args, **kwargs):
        pipe = make_pipeline(*args, **kwargs)
        execute = pipe.execute

        def recording_execute(*a, **kw):
            sent.append([str(command[0][0]).upper() for command in pipe.command_stack])
            return execute(*a, **kw)

        pipe.execute = recording_execute
        return pipe

    monkeypatch.setattr(client, "pipeline", recording_pipeline)
    counter = count_commands(client)

    assert cache.invalidate(keys=[PROFILE], generations=[(GEN, PAGES)])

    assert sent == [["DEL", "EVALSHA", "PUBLISH"]] and counter.commands == []


def test_an_invalidation_after_a_script_flush_still_bumps_the_generation(fake_cache, fake_client):
    fake_cache.invalidate(generations=[(GEN, PAGES)])
    first = int(fake_client.get(GEN))
    fake_client.script_flush()

    assert fake_cache.invalidate(generations=[(GEN, PAGES)])

    assert int(fake_client.get(GEN)) > first
