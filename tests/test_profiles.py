"""Reading and editing profiles."""
from datetime import timedelta

import pytest

pytestmark = pytest.mark.tdd_green

PROFILE_FIELDS = {"user_id", "username", "display_name", "bio", "profile_picture_url",
                  "profile_picture_thumbnail_url", "flyer_count", "created_at", "updated_at"}


def test_a_profile_has_exactly_the_contract_fields(client, register):
    user_id, _ = register("alice")

    response = client.get(f"/api/v1/users/{user_id}/profile")

    assert response.status_code == 200
    assert set(response.json) == PROFILE_FIELDS
    assert response.json["profile_picture_url"] is None
    assert response.json["created_at"].endswith("Z")


def test_a_profile_never_exposes_the_email(client, register):
    user_id, _ = register("alice")

    assert b"@example.com" not in client.get(f"/api/v1/users/{user_id}/profile").data


def test_a_profile_answers_with_or_without_a_trailing_slash(client, register):
    user_id, _ = register("alice")

    assert client.get(f"/api/v1/users/{user_id}/profile/").status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/users/999/profile", "/api/v1/users/0/profile",
                                  "/api/v1/users/-1/profile", "/api/v1/users/abc/profile",
                                  "/api/v1/users/99999999999999999999999/profile"])
def test_an_unknown_or_malformed_id_is_404_json(client, path):
    response = client.get(path)

    assert response.status_code == 404
    assert "error" in response.json


def test_flyer_count_counts_only_valid_flyers(client, register, add_flyer, clock):
    user_id, _ = register("alice")
    add_flyer(user_id)
    add_flyer(user_id, valid_from=clock.now + timedelta(hours=1))
    add_flyer(user_id, valid_from=clock.now - timedelta(days=2), valid_until=clock.now - timedelta(days=1))

    assert client.get(f"/api/v1/users/{user_id}/profile").json["flyer_count"] == 1


def test_me_profile_reads_your_own(client, register):
    user_id, headers = register("alice")

    response = client.get("/api/v1/users/me/profile", headers=headers)

    assert response.json["user_id"] == user_id


def test_me_profile_without_a_token_is_401(client):
    assert client.get("/api/v1/users/me/profile").status_code == 401


def test_a_profile_carries_an_etag_and_no_cache(client, register):
    user_id, _ = register("alice")

    response = client.get(f"/api/v1/users/{user_id}/profile")

    assert response.headers["ETag"].startswith('"')
    assert response.headers["Cache-Control"] == "no-cache"


def test_a_matching_if_none_match_answers_304_without_a_body(client, register):
    user_id, _ = register("alice")
    etag = client.get(f"/api/v1/users/{user_id}/profile").headers["ETag"]

    response = client.get(f"/api/v1/users/{user_id}/profile", headers={"If-None-Match": etag})

    assert response.status_code == 304
    assert response.data == b""


def test_an_edit_changes_the_etag(client, register):
    user_id, headers = register("alice")
    etag = client.get(f"/api/v1/users/{user_id}/profile").headers["ETag"]
    client.patch("/api/v1/users/me/profile", json={"bio": "new"}, headers=headers)

    response = client.get(f"/api/v1/users/{user_id}/profile", headers={"If-None-Match": etag})

    assert response.status_code == 200


def test_patch_answers_the_updated_profile(client, register):
    _, headers = register("alice")

    response = client.patch("/api/v1/users/me/profile", json={"display_name": "Alice", "bio": "Bakery"},
                            headers=headers)

    assert response.status_code == 200
    assert (response.json["display_name"], response.json["bio"]) == ("Alice", "Bakery")


def test_an_edit_is_seen_by_the_next_read(client, register):
    user_id, headers = register("alice")
    client.get(f"/api/v1/users/{user_id}/profile")  # warm the cache

    client.patch("/api/v1/users/me/profile", json={"bio": "Bakery on Main St."}, headers=headers)

    assert client.get(f"/api/v1/users/{user_id}/profile").json["bio"] == "Bakery on Main St."


def test_patch_by_own_id_works(client, register):
    user_id, headers = register("alice")

    response = client.patch(f"/api/v1/users/{user_id}/profile", json={"bio": "hi"}, headers=headers)

    assert response.status_code == 200


def test_patch_of_another_users_profile_is_403(client, register):
    other_id, _ = register("bob")
    _, headers = register("alice")

    response = client.patch(f"/api/v1/users/{other_id}/profile", json={"bio": "hacked"}, headers=headers)

    assert response.status_code == 403
    assert client.get(f"/api/v1/users/{other_id}/profile").json["bio"] == ""


@pytest.mark.parametrize("body, field", [
    ({"display_name": ""}, "display_name"),
    ({"display_name": "x" * 51}, "display_name"),
    ({"bio": "x" * 501}, "bio"),
    ({"bio": 5}, "bio"),
    ({"bio": "nul\x00byte"}, "bio"),
    ({"display_name": "bell\x07"}, "display_name"),
    ({"email": "new@example.com"}, "email"),
    ({"username": "renamed"}, "username"),
])
def test_patch_rejects_bad_fields_and_keeps_the_profile(client, register, body, field):
    user_id, headers = register("alice")

    response = client.patch("/api/v1/users/me/profile", json=body, headers=headers)

    assert response.status_code == 400
    assert field in response.json["details"]
    assert client.get(f"/api/v1/users/{user_id}/profile").json["display_name"] == "alice"


def test_patch_accepts_newlines_and_tabs_in_the_bio(client, register):
    _, headers = register("alice")

    response = client.patch("/api/v1/users/me/profile", json={"bio": "line\n\tindented"}, headers=headers)

    assert response.json["bio"] == "line\n\tindented"


def test_patch_with_a_json_array_is_400(client, register):
    _, headers = register("alice")

    response = client.patch("/api/v1/users/me/profile", json=["bio"], headers=headers)

    assert response.status_code == 400


def test_patch_with_form_data_is_415(client, register):
    _, headers = register("alice")

    response = client.patch("/api/v1/users/me/profile", data={"bio": "x"}, headers=headers)

    assert response.status_code == 415


def test_a_wrong_method_is_405_json(client, register):
    user_id, _ = register("alice")

    response = client.delete(f"/api/v1/users/{user_id}/profile")

    assert response.status_code == 405
    assert "error" in response.json
