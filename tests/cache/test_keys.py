import pytest

from cache import keys

pytestmark = pytest.mark.tdd_green


def test_every_key_carries_the_schema_version():
    built = [keys.profile_key(5), keys.generation_key(5), keys.pages_key(5), keys.flyer_key(9),
             keys.stats_bucket_key(1), keys.stats_total_key(), keys.stats_processes_key()]

    assert all(k.startswith(f"pf:{keys.SCHEMA_VERSION}:") for k in built)


def test_a_users_keys_share_one_cluster_hash_tag():
    user_keys = [keys.profile_key(5), keys.generation_key(5),
                 keys.generation_hash_key(keys.pages_key(5), 3)]

    assert {k[k.index("{"):k.index("}") + 1] for k in user_keys} == {"{u:5}"}


def test_key_formats_match_the_documented_layout():
    assert keys.profile_key(5) == "pf:1:{u:5}:profile"
    assert keys.generation_key(5) == "pf:1:{u:5}:gen"
    assert keys.generation_hash_key(keys.pages_key(5), b"7") == "pf:1:{u:5}:pages:g7"
    assert keys.flyer_key(9) == "pf:1:{f:9}:flyer"


def test_page_fields_differ_by_page_size_and_variant_and_are_never_lease_fields():
    fields = {keys.page_field(1, 20, "http://a"), keys.page_field(1, 50, "http://a"),
              keys.page_field(1, 20, "http://b"), keys.page_field(2, 20, "http://a")}

    assert len(fields) == 4
    assert not any(f.startswith(keys.LEASE_PREFIX) for f in fields)


@pytest.mark.parametrize("key, tag", [
    (keys.profile_key(5), "{u:5}"),
    (keys.pages_key(5), "{u:5}"),
    (keys.flyer_key(7), "{f:7}"),
    ("no-tag", "no-tag"),
])
def test_the_hash_tag_of_a_key_names_its_user_or_flyer(key, tag):
    assert keys.hash_tag(key) == tag
