"""The HTTP edge: ids, tokens, dates, bodies, URIs and headers at and past every limit answer 4xx JSON."""
import base64
import hashlib
import hmac
import io
import logging
from datetime import datetime, timedelta, timezone

import jwt
import orjson
import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from models.base import MAX_ID
from tests.conftest import TEST_SECRET, jpeg_bytes

pytestmark = pytest.mark.tdd_green

FLYER_FIELDS = {"title": "Bakery sale", "location_address": "Main St. 1, Zurich", "lat": "47.37", "lng": "8.54"}
OVER_MAX_IDS = [MAX_ID + 1, 9999999999, 10**17, 10**18 - 1, 10**30]


def _token(user_id, **claims):
    exp = datetime.now(timezone.utc) + timedelta(hours=1)
    return {"Authorization": "Bearer " + jwt.encode({"user_id": user_id, "exp": exp, **claims}, TEST_SECRET,
                                                   algorithm="HS256")}


def _assert_json_error(response, status):
    assert response.status_code == status, response.data[:200]
    assert response.mimetype == "application/json"
    assert isinstance(response.json["error"], str)


def _post_flyer(client, headers, **fields):
    form = {**FLYER_FIELDS, **fields, "image_1": (io.BytesIO(jpeg_bytes()), "a.jpg")}
    return client.post("/api/v1/flyers", data=form, headers=headers, content_type="multipart/form-data")


# -- ids -----------------------------------------------------------------------

@pytest.mark.parametrize("number", OVER_MAX_IDS)
@pytest.mark.parametrize("template", ["/api/v1/users/{}/profile", "/api/v1/users/{}/flyers",
                                      "/api/v1/flyers/{}", "/api/v1/users/{}/flyers?page=2"])
def test_a_read_of_an_id_no_column_can_hold_is_404_json_twice(client, redis_client, template, number):
    first = client.get(template.format(number))
    second = client.get(template.format(number))  # a cached answer would come from the fast path

    _assert_json_error(first, 404)
    _assert_json_error(second, 404)
    assert not any(b"lease" in field for key in redis_client.keys() if redis_client.type(key) == b"hash"
                   for field in redis_client.hkeys(key))


def test_a_read_of_the_largest_id_is_an_ordinary_404(client):
    _assert_json_error(client.get(f"/api/v1/users/{MAX_ID}/profile"), 404)
    _assert_json_error(client.get(f"/api/v1/flyers/{MAX_ID}"), 404)


@pytest.mark.parametrize("number", OVER_MAX_IDS)
@pytest.mark.parametrize("method, template", [("PATCH", "/api/v1/flyers/{}"), ("DELETE", "/api/v1/flyers/{}"),
                                              ("PATCH", "/api/v1/users/{}/profile")])
def test_a_write_to_an_id_no_column_can_hold_is_404_json(client, register, method, template, number):
    _, headers = register("alice")

    response = client.open(template.format(number), method=method, json={"title": "x"}, headers=headers)

    _assert_json_error(response, 404)


def test_a_write_to_the_largest_id_is_an_ordinary_answer(client, register):
    _, headers = register("alice")

    _assert_json_error(client.patch(f"/api/v1/flyers/{MAX_ID}", json={"title": "x"}, headers=headers), 404)
    _assert_json_error(client.patch(f"/api/v1/users/{MAX_ID}/profile", json={"bio": "x"}, headers=headers), 403)


# -- tokens --------------------------------------------------------------------

@pytest.mark.parametrize("user_id", [MAX_ID + 1, 2**63, 2**64, 10**30, 0, -1, "1", 1.0, True, None, [1]])
@pytest.mark.parametrize("method, path", [("GET", "/api/v1/users/me/profile"), ("PATCH", "/api/v1/users/me/profile"),
                                          ("DELETE", "/api/v1/users/me/profile/picture"),
                                          ("DELETE", "/api/v1/flyers/1")])
def test_a_signed_token_with_an_impossible_user_id_is_401(client, method, path, user_id):
    response = client.open(path, method=method, json={"bio": "x"}, headers=_token(user_id))

    _assert_json_error(response, 401)


def test_a_signed_token_with_a_real_user_id_is_accepted(client, register):
    user_id, _ = register("alice")

    assert client.get("/api/v1/users/me/profile", headers=_token(user_id)).status_code == 200


def _signed(payload: bytes) -> str:
    """A token over exactly these payload bytes (jwt.encode would refuse to write some of them), signed."""
    def part(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")
    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + b"." + part(payload)
    signature = hmac.new(TEST_SECRET.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + part(signature)).decode()


@pytest.mark.parametrize("payload", [b'{"user_id":1,"exp":1e400}', b'{"user_id":1,"exp":NaN}',
                                     b'{"user_id":1,"exp":-Infinity}', b'{"user_id":1,"exp":4e10,"nbf":1e400}',
                                     b'{"user_id":1,"exp":4e10,"iat":"yesterday"}', b'{"user_id":1,"exp":"soon"}',
                                     b'{"user_id":1e400,"exp":4e10}', b'{"user_id":1,"exp":4e10,"user_id":2e9}',
                                     b'[1,2]', b'"user_id"', b'{"user_id":1}'])
def test_a_signed_token_with_absurd_claims_is_401(client, register, payload):
    register("alice")

    response = client.get("/api/v1/users/me/profile", headers={"Authorization": f"Bearer {_signed(payload)}"})

    _assert_json_error(response, 401)


def test_a_signed_token_far_in_the_future_is_accepted(client, register):
    user_id, _ = register("alice")

    token = _signed(b'{"user_id":%d,"exp":1e300}' % user_id)

    response = client.get("/api/v1/users/me/profile", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200


# -- dates ---------------------------------------------------------------------

CALENDAR_ENDS = [
    {"valid_from": "0001-01-01T00:00:00+14:00"},
    {"valid_from": "0001-01-01T13:59:59+14:00", "valid_until": "0001-01-02T00:00:00Z"},
    {"valid_until": "9999-12-31T23:59:59-14:00"},
    {"valid_from": "9999-12-31T10:00:01-14:00", "valid_until": "9999-12-31T23:59:59Z"},
    {"valid_from": "9999-12-31T00:00:00Z"},  # the default valid_until, 30 days on, is past year 9999
    {"valid_from": "9999-12-02T00:00:00"},
    {"valid_until": "10000-01-01T00:00:00Z"},
    {"valid_from": "0000-12-31T23:59:59Z"},
    {"valid_until": "2026-01-01T00:00:00+24:00"},
]


@pytest.mark.parametrize("dates", CALENDAR_ENDS)
def test_a_flyer_post_with_a_date_past_the_calendar_is_400(client, register, dates):
    _, headers = register("alice")

    response = _post_flyer(client, headers, **dates)

    _assert_json_error(response, 400)
    assert set(response.json["details"]) <= {"valid_from", "valid_until"}


@pytest.mark.parametrize("dates", CALENDAR_ENDS[:4] + CALENDAR_ENDS[6:])
def test_a_flyer_patch_with_a_date_past_the_calendar_is_400(client, register, add_flyer, dates):
    user_id, headers = register("alice")
    flyer_id = add_flyer(user_id)

    response = client.patch(f"/api/v1/flyers/{flyer_id}", json=dates, headers=headers)

    _assert_json_error(response, 400)


def test_a_flyer_spanning_the_whole_calendar_is_stored_and_read(client, register):
    _, headers = register("alice")

    created = _post_flyer(client, headers, valid_from="0001-01-01T00:00:00Z", valid_until="9999-12-31T23:59:59+00:00")
    read = client.get(f"/api/v1/flyers/{created.json['id']}")

    assert created.status_code == 201, created.json
    assert read.json["validity"] == {"valid_from": "0001-01-01T00:00:00Z", "valid_until": "9999-12-31T23:59:59Z",
                                     "is_valid": True}


def test_a_flyer_patched_to_the_calendar_ends_is_200(client, register, add_flyer):
    user_id, headers = register("alice")
    flyer_id = add_flyer(user_id)

    response = client.patch(f"/api/v1/flyers/{flyer_id}", headers=headers,
                            json={"valid_from": "0001-01-01T14:00:00+14:00", "valid_until": "9999-12-31T13:59:59-10:00"})

    assert response.status_code == 200, response.json
    assert response.json["validity"]["valid_from"] == "0001-01-01T00:00:00Z"


# -- bodies --------------------------------------------------------------------

def _padded(document, size):
    """``document`` as JSON of exactly ``size`` bytes (padded with whitespace, which JSON ignores)."""
    body = orjson.dumps(document)
    return body + b" " * (size - len(body))


JSON_ENDPOINTS = [("POST", "/api/v1/auth/register"), ("POST", "/api/v1/auth/login"),
                  ("PATCH", "/api/v1/users/me/profile"), ("PATCH", "/api/v1/flyers/1")]


@pytest.mark.parametrize("method, path", JSON_ENDPOINTS)
@pytest.mark.parametrize("size", [64 * 1024 + 1, 10 * 1024 * 1024])
def test_a_json_body_over_64_kb_is_413_json(client, register, add_flyer, method, path, size):
    user_id, headers = register("alice")
    add_flyer(user_id)

    response = client.open(path, method=method, data=_padded({"bio": "x"}, size), headers=headers,
                           content_type="application/json")

    _assert_json_error(response, 413)


@pytest.mark.parametrize("method, path", JSON_ENDPOINTS)
def test_a_chunked_json_body_over_64_kb_is_413_json(app, register, add_flyer, method, path):
    user_id, headers = register("alice")
    add_flyer(user_id)
    environ = EnvironBuilder(path=path, method=method, headers=headers, content_type="application/json",
                             input_stream=io.BytesIO(_padded({"bio": "x"}, 200 * 1024))).get_environ()
    del environ["CONTENT_LENGTH"]  # as a server passes a chunked body on: no length, terminated input
    environ["wsgi.input_terminated"] = True

    body, status, response_headers = run_wsgi_app(app, environ, buffered=True)

    assert status.startswith("413")
    assert orjson.loads(b"".join(body))["error"]


def test_a_json_body_of_64_kb_is_parsed(client, register):
    _, headers = register("alice")

    response = client.patch("/api/v1/users/me/profile", data=_padded({"bio": "fits"}, 64 * 1024), headers=headers,
                            content_type="application/json")

    assert response.status_code == 200
    assert response.json["bio"] == "fits"


def test_a_multipart_flyer_over_64_kb_is_not_held_to_the_json_limit(client, register):
    _, headers = register("alice")
    noise = jpeg_bytes((1200, 900))
    form = {**FLYER_FIELDS, "description": "x" * 2000,
            **{f"image_{n}": (io.BytesIO(noise), f"{n}.jpg") for n in range(1, 4)}}

    response = client.post("/api/v1/flyers", data=form, headers=headers, content_type="multipart/form-data")

    assert response.status_code == 201


# -- emails --------------------------------------------------------------------

@pytest.mark.parametrize("email", ["two@@example.com", "a b@example.com", "user@", "@example.com", "user@localhost",
                                   "user@exa mple.com", ".a@example.com", "a..b@example.com", "a@example..com",
                                   "plainaddress", "a@-example.com", "a@example.com\u0000"])
def test_registering_a_malformed_email_is_400(client, email):
    response = client.post("/api/v1/auth/register", json={"email": email, "password": "password123", "username": "bob"})

    _assert_json_error(response, 400)
    assert "email" in response.json["details"]


@pytest.mark.parametrize("email", ["bob@example.com", "Bob.Smith+flyers@Example.COM", "b@mail.example.org",
                                   "ünïcode@exämple.ch"])
def test_registering_a_wellformed_email_is_201(client, email):
    response = client.post("/api/v1/auth/register", json={"email": email, "password": "password123", "username": "bob"})

    assert response.status_code == 201, response.json


# -- URIs (in process; tests/test_edge_gunicorn.py runs them and headers through gunicorn) --

def _redis_state(redis_client):
    return {key: (redis_client.hgetall(key) if redis_client.type(key) == b"hash" else redis_client.type(key))
            for key in redis_client.keys() if b"{stats}" not in key}


@pytest.mark.parametrize("path", ["/api/v1/users/1/profile?x=", "/api/v1/users/1/flyers?page=1&x=", "/healthz?x=",
                                  "/api/v1/nothing/"])
def test_a_uri_over_4_kib_is_414_json_and_touches_no_cache(client, register, redis_client, path):
    register("alice")
    before = _redis_state(redis_client)

    response = client.get(path + "a" * 5000)

    _assert_json_error(response, 414)
    assert _redis_state(redis_client) == before


def test_a_uri_just_under_4_kib_is_served(client, register):
    user_id, _ = register("alice")

    response = client.get(f"/api/v1/users/{user_id}/profile/" + "?x=" + "a" * 4000)

    assert response.status_code == 200


# -- no 5xx, no HTML, no log flood ------------------------------------------------

HOSTILE_REQUESTS = [
    ("GET", "/api/v1/users/1/flyers?page=99999999999999999999", {}),
    ("GET", "/api/v1/users/1/flyers?page_size=-1", {}),
    ("GET", "/api/v1/users/%00/profile", {}),
    ("GET", "/api/v1/users/1%ff/profile", {}),
    ("GET", "/media/../../etc/passwd", {}),
    ("POST", "/api/v1/auth/login", {"data": b'{"email": "a@example.com", "password": "\\ud800"}',
                                    "content_type": "application/json"}),
    ("POST", "/api/v1/auth/login", {"data": b"[" * 100_000, "content_type": "application/json"}),
    ("POST", "/api/v1/auth/login", {"data": b"[" * 2000 + b"]" * 2000, "content_type": "application/json"}),
    ("POST", "/api/v1/auth/login", {"data": b'{"email": 1e999, "password": null}', "content_type": "application/json"}),
    ("POST", "/api/v1/auth/register", {"json": {"email": "a@example.com", "password": "p" * 10_000, "username": "x" * 99}}),
    ("POST", "/api/v1/flyers", {"data": b"--x\r\n", "content_type": "multipart/form-data; boundary="}),
    ("GET", "/api/v1/users/me/profile", {"headers": {"Authorization": "Bearer " + "a" * 5000}}),
    ("GET", "/api/v1/users/me/profile", {"headers": {"Authorization": "Bearer a.b.c"}}),
    ("GET", "/api/v1/users/me/profile", {"headers": {"Authorization": "Basic Zm9vOmJhcg=="}}),
    ("PATCH", "/api/v1/flyers/1", {"json": {"lat": "NaN", "lng": 1e400, "valid_from": "0001-01-01T00:00:00+14:00"}}),
]


@pytest.mark.parametrize("method, path, kwargs", HOSTILE_REQUESTS)
def test_hostile_input_answers_4xx_json_with_at_most_one_log_line(client, register, caplog, method, path, kwargs):
    _, headers = register("alice")
    kwargs = {**kwargs, "headers": {**headers, **kwargs.get("headers", {})}}
    caplog.clear()

    with caplog.at_level(logging.INFO):
        response = client.open(path, method=method, **kwargs)

    assert 400 <= response.status_code < 500, response.data[:200]
    assert response.mimetype == "application/json"
    assert len(caplog.records) <= 1, [record.getMessage()[:200] for record in caplog.records]


# -- the document ------------------------------------------------------------------

def test_openapi_lists_the_edges_answers_on_every_operation(client):
    paths = client.get("/openapi.json").json["paths"]

    for path, operations in paths.items():
        for method, operation in operations.items():
            assert {"400", "414", "431"} <= set(operation["responses"]), (method, path)
            if "requestBody" in operation:
                assert "413" in operation["responses"], (method, path)
    assert paths["/api/v1/flyers/{flyer_id}"]["get"]["parameters"][0]["schema"]["maximum"] == MAX_ID


@pytest.mark.parametrize("path", ["/api/v1/users/{uid}//profile", "/api/v1/users/{uid}/flyers//",
                                  "//api/v1/users/{uid}/profile"])
def test_a_path_with_a_doubled_slash_is_404_json_not_a_redirect(client, register, path):
    user_id, _ = register("alice")

    response = client.get(path.format(uid=user_id))

    assert response.status_code == 404 and response.is_json
