"""Registration, login and bearer tokens."""
from datetime import datetime, timedelta, timezone

import jwt
import pytest

from models import db
from service import create_app
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.tdd_green

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"


def test_register_answers_201_with_a_token(client):
    response = client.post(REGISTER, json={"email": "a@example.com", "password": "password123", "username": "alice"})

    assert response.status_code == 201
    assert response.json["user_id"] >= 1
    assert jwt.decode(response.json["token"], TEST_SECRET, algorithms=["HS256"])["user_id"] == response.json["user_id"]


def test_a_new_user_has_its_username_as_display_name_and_an_empty_bio(client, register):
    user_id, _ = register("alice")

    profile = client.get(f"/api/v1/users/{user_id}/profile").json

    assert profile["display_name"] == "alice"
    assert profile["bio"] == ""


@pytest.mark.parametrize("body, field", [
    ({"password": "password123", "username": "bob"}, "email"),
    ({"email": "b@example.com", "username": "bob"}, "password"),
    ({"email": "b@example.com", "password": "password123"}, "username"),
    ({"email": "not-an-email", "password": "password123", "username": "bob"}, "email"),
    ({"email": "b@example.com", "password": "short", "username": "bob"}, "password"),
    ({"email": "b@example.com", "password": "password123", "username": "b"}, "username"),
    ({"email": "b@example.com", "password": "password123", "username": "bad name!"}, "username"),
    ({"email": "b@example.com", "password": "password123", "username": "x" * 31}, "username"),
    ({"email": "b@example.com", "password": "password123", "username": 42}, "username"),
    ({"email": "b@example.com", "password": "password123", "username": "bob", "admin": True}, "admin"),
])
def test_register_rejects_bad_fields_with_details(client, body, field):
    response = client.post(REGISTER, json=body)

    assert response.status_code == 400
    assert field in response.json["details"]


@pytest.mark.parametrize("second", [
    {"email": "ALICE@example.com", "username": "other"},
    {"email": "other@example.com", "username": "alice"},
])
def test_register_refuses_a_duplicate_email_or_username(client, register, second):
    register("alice")

    response = client.post(REGISTER, json={"password": "password123", **second})

    assert response.status_code == 409
    assert "error" in response.json


def test_register_refuses_malformed_json(client):
    response = client.post(REGISTER, data=b"{not json", content_type="application/json")

    assert response.status_code == 400
    assert response.json["error"] == "Malformed JSON body"


def test_register_refuses_a_body_that_is_not_json(client):
    response = client.post(REGISTER, data="email=a", content_type="application/x-www-form-urlencoded")

    assert response.status_code == 415


def test_login_compares_the_email_case_insensitively(client, register):
    user_id, _ = register("alice")

    response = client.post(LOGIN, json={"email": "Alice@Example.com", "password": "password123"})

    assert response.status_code == 200
    assert response.json["user_id"] == user_id


@pytest.mark.parametrize("email, password", [("alice@example.com", "wrong-password"), ("nobody@example.com", "password123")])
def test_login_with_bad_credentials_is_401(client, register, email, password):
    register("alice")

    response = client.post(LOGIN, json={"email": email, "password": password})

    assert response.status_code == 401
    assert response.json["error"] == "Invalid email or password"


def test_login_without_password_is_400(client):
    response = client.post(LOGIN, json={"email": "alice@example.com"})

    assert response.status_code == 400
    assert "password" in response.json["details"]


def _token(claims):
    return {"Authorization": "Bearer " + jwt.encode(claims, TEST_SECRET, algorithm="HS256")}


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Basic abc"},
    {"Authorization": "Bearer not.a.jwt"},
    _token({"user_id": 1}),
    _token({"user_id": 1, "exp": datetime.now(timezone.utc) - timedelta(seconds=1)}),
    {"Authorization": "Bearer " + jwt.encode({"user_id": 1, "exp": datetime.now(timezone.utc) + timedelta(hours=1)},
                                             "another-secret-key-that-is-also-long-enough", algorithm="HS256")},
])
def test_a_write_without_a_valid_token_is_401(client, register, headers):
    register("alice")

    response = client.patch("/api/v1/users/me/profile", json={"bio": "x"}, headers=headers)

    assert response.status_code == 401
    assert "error" in response.json


def test_login_is_rate_limited_per_client_with_retry_after(app, app_config, redis_client):
    limited_app = create_app({**app_config, "RATE_LIMIT_ENABLED": True, "RATE_LIMIT_AUTH": "2 per minute"},
                             redis_client=redis_client)
    limited = limited_app.test_client()
    body = {"email": "x@example.com", "password": "password123"}

    answers = [limited.post(LOGIN, json=body) for _ in range(3)]

    assert [a.status_code for a in answers] == [401, 401, 429]
    assert int(answers[-1].headers["Retry-After"]) > 0
    assert "error" in answers[-1].json
    with limited_app.app_context():
        db.engine.dispose()
