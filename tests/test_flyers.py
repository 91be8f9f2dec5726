"""Single flyers: read, create, edit, delete."""
import io
from datetime import timedelta

import pytest

from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.tdd_green

FIELDS = {"title": "Bakery sale", "description": "Fresh bread", "location_address": "Main St. 1, Zurich",
          "lat": "47.37", "lng": "8.54"}


def _form(**overrides):
    data = {name: value() if callable(value) else value for name, value in {**FIELDS, **overrides}.items()}
    data.setdefault("image_1", (io.BytesIO(jpeg_bytes()), "a.jpg"))
    return {k: v for k, v in data.items() if v is not None}


def _create(client, headers, **overrides):
    return client.post("/api/v1/flyers", data=_form(**overrides), headers=headers,
                       content_type="multipart/form-data")


def test_create_answers_201_with_the_flyer_and_its_location(client, register):
    user_id, headers = register("alice")

    response = _create(client, headers)

    assert response.status_code == 201
    assert response.json["creator"]["id"] == user_id
    assert response.headers["Location"] == f"http://localhost/api/v1/flyers/{response.json['id']}"
    assert response.json["images"][0]["url"].endswith(".jpg")


def test_create_defaults_validity_to_now_and_thirty_days(client, register, clock):
    _, headers = register("alice")

    validity = _create(client, headers).json["validity"]

    assert validity["valid_from"] == clock.now.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert validity["valid_until"] == (clock.now + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_created_flyer_is_on_its_creators_page_and_count_at_once(client, register):
    user_id, headers = register("alice")
    client.get(f"/api/v1/users/{user_id}/flyers")
    client.get(f"/api/v1/users/{user_id}/profile")

    _create(client, headers)

    assert client.get(f"/api/v1/users/{user_id}/flyers").json["count"] == 1
    assert client.get(f"/api/v1/users/{user_id}/profile").json["flyer_count"] == 1


def test_create_stores_up_to_five_images_in_order(client, register):
    _, headers = register("alice")
    images = {f"image_{n}": (io.BytesIO(jpeg_bytes(color=(n * 40, 0, 0))), f"{n}.jpg") for n in range(1, 6)}

    response = _create(client, headers, **images)

    assert [image["order"] for image in response.json["images"]] == [0, 1, 2, 3, 4]


def test_create_with_a_future_valid_from_answers_the_flyer_but_get_is_404(client, register, clock):
    _, headers = register("alice")
    start = (clock.now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    created = _create(client, headers, valid_from=start)

    assert created.status_code == 201
    assert created.json["validity"]["is_valid"] is False
    assert client.get(f"/api/v1/flyers/{created.json['id']}").status_code == 404


@pytest.mark.parametrize("overrides, field", [
    ({"title": None}, "title"),
    ({"title": ""}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"description": "x" * 2001}, "description"),
    ({"location_address": None}, "location_address"),
    ({"lat": "91"}, "lat"),
    ({"lng": "-180.5"}, "lng"),
    ({"lat": "north"}, "lat"),
    ({"lat": "nan"}, "lat"),
    ({"valid_from": "yesterday"}, "valid_from"),
    ({"valid_from": "2026-11-21T10:00:00Z", "valid_until": "2026-11-21T10:00:00Z"}, "valid_until"),
    ({"title": "tab\tok but nul \x00 is not"}, "title"),
    ({"color": "red"}, "color"),
    ({"image_1": None}, "image_1"),
    ({"image_1": lambda: (io.BytesIO(b"not an image"), "a.jpg")}, "image_1"),
    ({"image_6": lambda: (io.BytesIO(jpeg_bytes()), "6.jpg")}, "image_6"),
])
def test_create_rejects_bad_input_and_stores_nothing(client, register, overrides, field):
    user_id, headers = register("alice")

    response = _create(client, headers, **overrides)

    assert response.status_code == 400
    assert field in response.json["details"]
    assert client.get(f"/api/v1/users/{user_id}/flyers").json["count"] == 0


def test_create_without_a_token_is_401(client):
    assert client.post("/api/v1/flyers", data=_form(), content_type="multipart/form-data").status_code == 401


def test_create_with_json_is_415(client, register):
    _, headers = register("alice")

    response = client.post("/api/v1/flyers", json=FIELDS, headers=headers)

    assert response.status_code == 415


def test_get_a_valid_flyer(client, register, add_flyer):
    user_id, _ = register("alice")
    flyer_id = add_flyer(user_id)

    response = client.get(f"/api/v1/flyers/{flyer_id}")

    assert response.status_code == 200
    assert response.json["id"] == flyer_id
    assert response.headers["Cache-Control"] == "no-cache"


def test_get_an_expired_flyer_is_404(client, register, add_flyer, clock):
    user_id, _ = register("alice")
    flyer_id = add_flyer(user_id, valid_until=clock.now + timedelta(seconds=10))
    client.get(f"/api/v1/flyers/{flyer_id}")  # warm

    clock.advance(seconds=10)

    assert client.get(f"/api/v1/flyers/{flyer_id}").status_code == 404


def test_get_an_unknown_flyer_is_404(client):
    assert client.get("/api/v1/flyers/77").status_code == 404


def test_patch_updates_the_flyer_everywhere(client, register, add_flyer):
    user_id, headers = register("alice")
    flyer_id = add_flyer(user_id)
    client.get(f"/api/v1/flyers/{flyer_id}")
    client.get(f"/api/v1/users/{user_id}/flyers")

    response = client.patch(f"/api/v1/flyers/{flyer_id}", json={"title": "Bigger sale", "lat": 46.0},
                            headers=headers)

    assert response.status_code == 200
    assert response.json["title"] == "Bigger sale"
    assert client.get(f"/api/v1/flyers/{flyer_id}").json["location"]["lat"] == 46.0
    assert client.get(f"/api/v1/users/{user_id}/flyers").json["results"][0]["title"] == "Bigger sale"


def test_patch_that_ends_validity_removes_it_from_the_count(client, register, add_flyer, clock):
    user_id, headers = register("alice")
    flyer_id = add_flyer(user_id)
    client.get(f"/api/v1/users/{user_id}/profile")

    client.patch(f"/api/v1/flyers/{flyer_id}", headers=headers,
                 json={"valid_until": (clock.now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "valid_from": (clock.now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")})

    assert client.get(f"/api/v1/users/{user_id}/profile").json["flyer_count"] == 0


@pytest.mark.parametrize("body, field", [
    ({"title": ""}, "title"), ({"lat": 100}, "lat"), ({"images": []}, "images"),
    ({"valid_until": "2000-01-01T00:00:00Z"}, "valid_until"),
])
def test_patch_rejects_bad_input(client, register, add_flyer, body, field):
    user_id, headers = register("alice")
    flyer_id = add_flyer(user_id)

    response = client.patch(f"/api/v1/flyers/{flyer_id}", json=body, headers=headers)

    assert response.status_code == 400
    assert field in response.json["details"]


def test_patch_of_another_creators_flyer_is_403(client, register, add_flyer):
    owner, _ = register("alice")
    _, headers = register("mallory")
    flyer_id = add_flyer(owner)

    assert client.patch(f"/api/v1/flyers/{flyer_id}", json={"title": "x"}, headers=headers).status_code == 403


def test_delete_removes_the_flyer_everywhere(client, register, add_flyer):
    user_id, headers = register("alice")
    flyer_id = add_flyer(user_id)
    client.get(f"/api/v1/flyers/{flyer_id}")
    client.get(f"/api/v1/users/{user_id}/flyers")

    response = client.delete(f"/api/v1/flyers/{flyer_id}", headers=headers)

    assert response.status_code == 204
    assert client.get(f"/api/v1/flyers/{flyer_id}").status_code == 404
    assert client.get(f"/api/v1/users/{user_id}/flyers").json["count"] == 0


def test_delete_of_another_creators_flyer_is_403(client, register, add_flyer):
    owner, _ = register("alice")
    _, headers = register("mallory")
    flyer_id = add_flyer(owner)

    assert client.delete(f"/api/v1/flyers/{flyer_id}", headers=headers).status_code == 403
    assert client.get(f"/api/v1/flyers/{flyer_id}").status_code == 200


def test_delete_of_an_unknown_flyer_is_404(client, register):
    _, headers = register("alice")

    assert client.delete("/api/v1/flyers/999", headers=headers).status_code == 404


def test_a_creator_rename_reaches_their_flyers(client, register, add_flyer):
    user_id, headers = register("alice")
    flyer_id = add_flyer(user_id)
    client.get(f"/api/v1/flyers/{flyer_id}")

    client.patch("/api/v1/users/me/profile", json={"display_name": "Alice B."}, headers=headers)

    assert client.get(f"/api/v1/flyers/{flyer_id}").json["creator"]["display_name"] == "Alice B."
