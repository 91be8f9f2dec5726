"""A creator's flyer pages: validity, order, pagination."""
from datetime import timedelta

import pytest

pytestmark = pytest.mark.tdd_green


def _page(client, user_id, query=""):
    return client.get(f"/api/v1/users/{user_id}/flyers{query}")


def test_a_page_lists_valid_flyers_newest_first(client, register, add_flyer, clock):
    user_id, _ = register("alice")
    older = add_flyer(user_id, created_at=clock.now - timedelta(days=2))
    newer = add_flyer(user_id, created_at=clock.now - timedelta(days=1))

    response = _page(client, user_id)

    assert response.status_code == 200
    assert [f["id"] for f in response.json["results"]] == [newer, older]
    assert response.json["count"] == 2


def test_flyers_created_at_the_same_moment_are_ordered_by_id_desc(client, register, add_flyer, clock):
    user_id, _ = register("alice")
    ids = [add_flyer(user_id, created_at=clock.now) for _ in range(3)]

    assert [f["id"] for f in _page(client, user_id).json["results"]] == ids[::-1]


def test_a_flyer_has_exactly_the_contract_shape(client, register, add_flyer):
    user_id, _ = register("alice")
    add_flyer(user_id)

    flyer = _page(client, user_id).json["results"][0]

    assert set(flyer) == {"id", "title", "description", "creator", "images", "location", "validity",
                          "created_at", "updated_at"}
    assert flyer["creator"] == {"id": user_id, "username": "alice", "display_name": "alice",
                                "profile_picture_url": None}
    assert flyer["images"][0]["url"].startswith("http://localhost/media/")
    assert flyer["location"] == {"address": "Main St. 1, Zurich", "lat": 47.37, "lng": 8.54}
    assert flyer["validity"]["is_valid"] is True


def test_a_flyer_not_yet_valid_is_absent(client, register, add_flyer, clock):
    user_id, _ = register("alice")
    add_flyer(user_id, valid_from=clock.now + timedelta(seconds=1))

    assert _page(client, user_id).json["results"] == []


def test_an_expired_flyer_is_absent(client, register, add_flyer, clock):
    user_id, _ = register("alice")
    add_flyer(user_id, valid_from=clock.now - timedelta(days=1), valid_until=clock.now)

    assert _page(client, user_id).json["count"] == 0


def test_a_flyer_appears_at_its_valid_from_with_a_warm_cache(client, register, add_flyer, clock):
    user_id, _ = register("alice")
    add_flyer(user_id, valid_from=clock.now + timedelta(seconds=30))
    assert _page(client, user_id).json["count"] == 0

    clock.advance(seconds=30)

    assert _page(client, user_id).json["count"] == 1


def test_a_creator_with_no_flyers_gets_an_empty_page(client, register):
    user_id, _ = register("alice")

    response = _page(client, user_id)

    assert response.status_code == 200
    assert response.json == {"count": 0, "next": None, "previous": None, "results": []}


def test_an_unknown_creator_is_404(client):
    response = _page(client, 4242)

    assert response.status_code == 404
    assert "error" in response.json


def test_pages_link_to_each_other_with_absolute_urls(client, register, add_flyer):
    user_id, _ = register("alice")
    for _ in range(5):
        add_flyer(user_id)

    middle = _page(client, user_id, "?page=2&page_size=2").json

    assert middle["next"] == f"http://localhost/api/v1/users/{user_id}/flyers?page=3&page_size=2"
    assert middle["previous"] == f"http://localhost/api/v1/users/{user_id}/flyers?page=1&page_size=2"


def test_the_last_page_has_no_next(client, register, add_flyer):
    user_id, _ = register("alice")
    for _ in range(5):
        add_flyer(user_id)

    last = _page(client, user_id, "?page=3&page_size=2").json

    assert len(last["results"]) == 1
    assert last["next"] is None


def test_a_page_past_the_end_is_404(client, register, add_flyer):
    user_id, _ = register("alice")
    add_flyer(user_id)

    assert _page(client, user_id, "?page=2").status_code == 404


def test_page_size_above_50_is_clamped(client, register, add_flyer):
    user_id, _ = register("alice")
    for _ in range(51):
        add_flyer(user_id)

    response = _page(client, user_id, "?page_size=500").json

    assert len(response["results"]) == 50
    assert response["next"].endswith("page=2&page_size=50")


@pytest.mark.parametrize("query", ["?page=0", "?page=-1", "?page=abc", "?page_size=0", "?page_size=x",
                                   "?page=1.5", "?page=99999999999999999999"])
def test_bad_page_numbers_are_400(client, register, query):
    user_id, _ = register("alice")

    response = _page(client, user_id, query)

    assert response.status_code == 400
    assert response.json["details"]


def test_public_base_url_is_used_for_links(app, client, register, add_flyer):
    app.config["PUBLIC_BASE_URL"] = "https://api.example.com"
    user_id, _ = register("alice")
    add_flyer(user_id)

    flyer = _page(client, user_id).json["results"][0]

    assert flyer["images"][0]["url"].startswith("https://api.example.com/media/")


def test_a_new_flyer_is_on_the_warm_page_at_once(client, register, add_flyer):
    user_id, _ = register("alice")
    _page(client, user_id)  # warm

    add_flyer(user_id)

    assert _page(client, user_id).json["count"] == 1
    assert client.get(f"/api/v1/users/{user_id}/profile").json["flyer_count"] == 1


def test_a_page_answers_304_on_a_matching_etag(client, register, add_flyer):
    user_id, _ = register("alice")
    add_flyer(user_id)
    etag = _page(client, user_id).headers["ETag"]

    response = client.get(f"/api/v1/users/{user_id}/flyers", headers={"If-None-Match": etag})

    assert response.status_code == 304
