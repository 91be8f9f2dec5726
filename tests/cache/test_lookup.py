"""lookup: answer hits, or claim the miss, for callers that serve hits before any other work."""
import pytest

from cache import Claim, keys

pytestmark = pytest.mark.tdd_green

PROFILE = keys.profile_key(5)
GEN = keys.generation_key(5)
PAGES = keys.pages_key(5)
VARIANT = "http://127.0.0.1:8000"
PAGE_1 = keys.page_field(1, 20, VARIANT)


def test_lookup_returns_a_filled_entry_and_counts_a_hit(cache, counting_loader, stats):
    filled = cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT)

    peeked = cache.lookup("profile", PROFILE, variant=VARIANT)

    assert (peeked.body, peeked.etag, peeked.result) == (filled.body, filled.etag, "hit")
    assert stats.snapshot()["requests"]["profile"]["hit"] == 1


def warm_scripts(cache, counting_loader):
    """Load the lookup and fill scripts (their first calls also send SCRIPT LOAD)."""
    other = keys.profile_key(99)
    cache.get_or_load("profile", other, counting_loader({}), variant=VARIANT, claim=cache.lookup("profile", other))


@pytest.mark.parametrize("client", ["fake", "real"], indirect=True)  # counts one node's commands
def test_a_missing_entry_is_claimed_in_the_same_round_trip(cache, client, count_commands, counting_loader):
    warm_scripts(cache, counting_loader)
    counter = count_commands(client)

    claim = cache.lookup("profile", PROFILE, variant=VARIANT)

    assert isinstance(claim, Claim) and claim.granted
    assert counter.commands == ["EVALSHA"]


def test_a_claimed_miss_is_counted_once_when_it_is_loaded(cache, counting_loader, stats):
    claim = cache.lookup("profile", PROFILE, variant=VARIANT)
    assert stats.snapshot()["requests"] == {}

    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT, claim=claim)

    assert stats.snapshot()["requests"]["profile"] == {"miss": 1}


def test_a_second_lookup_of_a_claimed_miss_finds_the_lease_held(cache):
    cache.lookup("profile", PROFILE, variant=VARIANT)

    second = cache.lookup("profile", PROFILE, variant=VARIANT)

    assert isinstance(second, Claim) and not second.granted


@pytest.mark.parametrize("client", ["fake", "real"], indirect=True)  # counts one node's commands
def test_a_claimed_miss_is_loaded_and_filled_with_one_more_round_trip(cache, client, count_commands,
                                                                     counting_loader):
    warm_scripts(cache, counting_loader)
    claim = cache.lookup("profile", PROFILE, variant=VARIANT)
    counter = count_commands(client)

    entry = cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT, claim=claim)

    assert entry.result == "miss" and counter.commands == ["EVALSHA"]
    assert cache.lookup("profile", PROFILE, variant=VARIANT).body == b'{"id":5}'


def test_a_claim_held_by_another_reader_waits_for_its_fill(cache, counting_loader, clock):
    holder = cache.lookup("profile", PROFILE, variant=VARIANT)
    waiter = cache.lookup("profile", PROFILE, variant=VARIANT)
    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT, claim=holder)
    loader = counting_loader({"id": 6})

    entry = cache.get_or_load("profile", PROFILE, loader, variant=VARIANT, claim=waiter)

    assert (entry.result, entry.body, loader.calls) == ("lease_wait", b'{"id":5}', 0)


def test_lookup_reads_the_live_generation_of_a_page(cache, counting_loader):
    cache.get_or_load("flyer_page", PAGES, counting_loader({"count": 1}), variant=PAGE_1, generation_key=GEN)

    assert cache.lookup("flyer_page", PAGES, variant=PAGE_1, generation_key=GEN).body == b'{"count":1}'


def test_lookup_misses_after_a_generation_bump(cache, counting_loader):
    cache.get_or_load("flyer_page", PAGES, counting_loader({"count": 1}), variant=PAGE_1, generation_key=GEN)

    cache.invalidate(generations=[(GEN, PAGES)])

    assert isinstance(cache.lookup("flyer_page", PAGES, variant=PAGE_1, generation_key=GEN), Claim)


def test_lookup_with_redis_down_is_none_and_opens_the_breaker(fake_cache, fake_server):
    fake_server.connected = False

    answers = [fake_cache.lookup("profile", PROFILE, variant=VARIANT) for _ in range(5)]

    assert answers == [None] * 5
    assert fake_cache.breaker.state == "open"
