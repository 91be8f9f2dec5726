import orjson
import pytest

from cache import NOT_FOUND, Loaded, keys
from cache.entries import make_etag

pytestmark = pytest.mark.tdd_green

PROFILE = keys.profile_key(5)
GEN = keys.generation_key(5)
PAGES = keys.pages_key(5)
VARIANT = "http://127.0.0.1:8000"
PAGE_1 = keys.page_field(1, 20, VARIANT)


def test_a_first_lookup_is_a_miss_answered_by_the_loader(cache, counting_loader):
    loader = counting_loader({"id": 5, "name": "Ada"})

    entry = cache.get_or_load("profile", PROFILE, loader, variant=VARIANT)

    assert (entry.result, entry.body, loader.calls) == ("miss", b'{"id":5,"name":"Ada"}', 1)


def test_a_miss_stores_a_32_hex_etag_of_the_body(cache, counting_loader):
    entry = cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT)

    assert entry.etag == make_etag(entry.body)
    assert len(entry.etag) == 32 and int(entry.etag, 16) >= 0


def test_a_hit_returns_the_same_etag_and_body_without_calling_the_loader(cache, counting_loader):
    first = cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT)
    loader = counting_loader({"id": "other"})

    second = cache.get_or_load("profile", PROFILE, loader, variant=VARIANT)

    assert (second.result, second.body, second.etag) == ("hit", first.body, first.etag)
    assert loader.calls == 0


def test_variants_of_one_key_are_cached_separately(cache, counting_loader):
    cache.get_or_load("profile", PROFILE, counting_loader({"url": "http://a/x"}), variant="http://a")

    entry = cache.get_or_load("profile", PROFILE, counting_loader({"url": "http://b/x"}), variant="http://b")

    assert (entry.result, orjson.loads(entry.body)) == ("miss", {"url": "http://b/x"})


def test_a_missing_object_is_cached_as_not_found(cache, counting_loader):
    cache.get_or_load("profile", PROFILE, counting_loader(NOT_FOUND, ttl=5), variant=VARIANT)
    loader = counting_loader({"id": 5})

    entry = cache.get_or_load("profile", PROFILE, loader, variant=VARIANT)

    assert (entry.result, entry.found, entry.body, entry.etag) == ("hit", False, None, None)
    assert loader.calls == 0


def test_invalidation_clears_a_negative_entry(cache, counting_loader):
    cache.get_or_load("profile", PROFILE, counting_loader(NOT_FOUND, ttl=5), variant=VARIANT)

    cache.invalidate(keys=[PROFILE], families=["profile"])
    entry = cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT)

    assert (entry.result, entry.found) == ("miss", True)


def test_an_entry_expires_after_its_ttl(cache, client, counting_loader):
    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}, ttl=30), variant=VARIANT)

    assert 29_000 < client.pttl(PROFILE) <= 30_000


def test_a_zero_ttl_answer_is_not_cached(cache, client, counting_loader):
    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}, ttl=0), variant=VARIANT)

    assert not client.exists(PROFILE)


def test_a_page_lookup_reads_the_live_generation(cache, client, counting_loader):
    cache.get_or_load("pages", PAGES, counting_loader([1, 2]), variant=PAGE_1, generation_key=GEN)

    entry = cache.get_or_load("pages", PAGES, counting_loader([9]), variant=PAGE_1, generation_key=GEN)

    assert (entry.result, entry.body) == ("hit", b"[1,2]")
    assert client.hexists(keys.generation_hash_key(PAGES, 0), PAGE_1)


def test_invalidating_a_generation_bumps_it_and_deletes_the_live_pages(cache, client, counting_loader):
    cache.get_or_load("pages", PAGES, counting_loader([1, 2]), variant=PAGE_1, generation_key=GEN)

    ok = cache.invalidate(generations=[(GEN, PAGES)], families=["pages"])

    assert ok and int(client.get(GEN)) > 0
    assert not client.exists(keys.generation_hash_key(PAGES, 0))


def test_a_page_lookup_after_a_generation_bump_loads_fresh(cache, counting_loader):
    cache.get_or_load("pages", PAGES, counting_loader([1, 2]), variant=PAGE_1, generation_key=GEN)
    cache.invalidate(generations=[(GEN, PAGES)])

    entry = cache.get_or_load("pages", PAGES, counting_loader([3]), variant=PAGE_1, generation_key=GEN)

    assert (entry.result, entry.body) == ("miss", b"[3]")


def test_generations_only_ever_increase(cache, client, clock):
    cache.invalidate(generations=[(GEN, PAGES)])
    first = int(client.get(GEN))
    client.delete(GEN)  # as if evicted
    clock.advance(1)

    cache.invalidate(generations=[(GEN, PAGES)])

    assert int(client.get(GEN)) > first


def test_invalidate_deletes_the_profile_and_the_pages_in_one_call(cache, client, counting_loader):
    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT)
    cache.get_or_load("pages", PAGES, counting_loader([1]), variant=PAGE_1, generation_key=GEN)

    ok = cache.invalidate(keys=[PROFILE], generations=[(GEN, PAGES)], families=["profile", "pages"])

    assert ok
    assert client.keys("*profile") == [] and client.keys("*pages*") == []


def test_invalidate_deletes_every_variant_and_lease_of_a_key(cache, client, counting_loader):
    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant="http://a")
    client.hset(PROFILE, keys.lease_field("http://b"), b"99999999999999|tok")

    cache.invalidate(keys=[PROFILE])

    assert not client.exists(PROFILE)


def test_a_lease_only_hash_expires_with_its_lease(cache, client):
    def loader_checking_the_lease():
        seen["pttl"] = client.pttl(PROFILE)
        return Loaded({"id": 5}, 60)

    seen = {}
    cache.get_or_load("profile", PROFILE, loader_checking_the_lease, variant=VARIANT)

    assert 0 < seen["pttl"] <= 2000


def test_a_later_variant_never_extends_an_earlier_variants_ttl(cache, client, clock, counting_loader):
    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}, ttl=30), variant="http://a")

    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}, ttl=300), variant="http://b")

    assert client.pttl(PROFILE) <= 30_000


def test_lookups_and_invalidations_are_counted_by_family_and_result(cache, stats, counting_loader):
    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT)
    cache.get_or_load("profile", PROFILE, counting_loader({"id": 5}), variant=VARIANT)
    cache.invalidate(keys=[PROFILE], families=["profile"])

    assert stats.snapshot() == {"requests": {"profile": {"hit": 1, "miss": 1}},
                                "invalidations": {"profile": 1}}
