"""peek: answer hits only, for callers that serve hits before any other work."""
import pytest

from cache import keys

pytestmark = pytest.mark.tdd_green

PROFILE = keys.profile_key(5)
GEN = keys.generation_key(5)
PAGES = keys.pages_key(5)
VARIANT = "http://127.0.0.1:8000"
PAGE_1 = keys.page_field(1, 20, VARIANT)


def test_peek_returns_a_filled_entry_and_counts_a_hit(cache, counting_loader, stats):
    filled = cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT)

    peeked = cache.peek("profile", PROFILE, variant=VARIANT)

    assert (peeked.body, peeked.etag, peeked.result) == (filled.body, filled.etag, "hit")
    assert stats.snapshot()["requests"]["profile"]["hit"] == 1


def test_peek_of_a_missing_entry_is_none_and_takes_no_lease(cache, client, stats):
    assert cache.peek("profile", PROFILE, variant=VARIANT) is None

    assert client.exists(PROFILE) == 0
    assert stats.snapshot()["requests"] == {}


def test_peek_reads_the_live_generation_of_a_page(cache, counting_loader):
    cache.get_or_load("flyer_page", PAGES, counting_loader({"count": 1}), variant=PAGE_1, generation_key=GEN)

    assert cache.peek("flyer_page", PAGES, variant=PAGE_1, generation_key=GEN).body == b'{"count":1}'


def test_peek_misses_after_a_generation_bump(cache, counting_loader):
    cache.get_or_load("flyer_page", PAGES, counting_loader({"count": 1}), variant=PAGE_1, generation_key=GEN)

    cache.invalidate(generations=[(GEN, PAGES)])

    assert cache.peek("flyer_page", PAGES, variant=PAGE_1, generation_key=GEN) is None


def test_peek_with_redis_down_is_none_and_opens_the_breaker(fake_cache, fake_server):
    fake_server.connected = False

    answers = [fake_cache.peek("profile", PROFILE, variant=VARIANT) for _ in range(5)]

    assert answers == [None] * 5
    assert fake_cache.breaker.state == "open"


def test_a_lookup_after_a_peek_miss_skips_the_plain_read(cache, client, count_commands, counting_loader):
    counter = count_commands(client)

    entry = cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT, peeked=True)

    assert entry.result == "miss"
    assert "HGET" not in counter.commands


def test_a_lookup_after_a_peek_still_answers_an_entry_filled_since(cache, counting_loader):
    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT)

    entry = cache.get_or_load("profile", PROFILE, counting_loader({"id": 6}), variant=VARIANT, peeked=True)

    assert (entry.result, entry.body) == ("hit", b'{"id":5}')
