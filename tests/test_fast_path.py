"""Cache hits, and profile and page misses, answered before Flask: the same answers as the Flask views, with no routing."""
import pytest

from models import db
from service import create_app

pytestmark = pytest.mark.tdd_green

PATHS = ["/api/v1/users/{uid}/profile", "/api/v1/users/{uid}/profile/", "/api/v1/users/{uid}/flyers",
         "/api/v1/users/{uid}/flyers?page=2&page_size=1", "/api/v1/users/{uid}/flyers?page_size=500",
         "/api/v1/flyers/{fid}"]


@pytest.fixture
def flask_requests(app):
    """Count the requests that reach Flask (from when the test starts acting)."""
    seen = []
    app.before_request(lambda: seen.append(1) and None)
    return seen


@pytest.fixture
def creator(flask_requests, register, add_flyer):
    """A creator with two flyers; the requests that set it up are not counted."""
    user_id, _ = register("alice")
    flyers = [add_flyer(user_id) for _ in range(2)]
    flask_requests.clear()
    return user_id, flyers


@pytest.fixture
def flask_only(app_config, redis_client):
    """A client of the same service with the fast path off: every read goes through the Flask views."""
    app = create_app({**app_config, "CACHE_FAST_PATH": False}, redis_client=redis_client)
    yield app.test_client()
    with app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("path", PATHS)
def test_a_hit_is_answered_before_flask_with_the_same_answer(client, creator, flask_requests, flask_only,
                                                             redis_client, path):
    user_id, flyer_ids = creator
    url = path.format(uid=user_id, fid=flyer_ids[0])
    miss = client.get(url)
    hit = client.get(url)
    redis_client.flushdb()

    through_flask = flask_only.get(url)  # a miss loaded by the Flask view

    assert len(flask_requests) == (1 if "/flyers/{fid}" in path else 0)  # flyer misses still go to Flask
    for answer in (miss, hit):
        assert (answer.status_code, answer.data) == (through_flask.status_code, through_flask.data)
        for header in ("ETag", "Cache-Control", "Content-Type", "Content-Length"):
            assert answer.headers[header] == through_flask.headers[header]


def test_a_profile_miss_is_answered_before_flask(client, creator, flask_requests):
    user_id, _ = creator

    response = client.get(f"/api/v1/users/{user_id}/profile")

    assert response.status_code == 200
    assert flask_requests == []


def test_a_miss_whose_load_fails_is_answered_by_flask(client, creator, flask_requests, monkeypatch):
    user_id, _ = creator
    from models import queries

    from sqlalchemy.exc import OperationalError

    def broken(*args, **kwargs):
        raise OperationalError("SELECT", {}, Exception("database down"))
    monkeypatch.setattr(queries, "read_creator", broken)

    response = client.get(f"/api/v1/users/{user_id}/profile")

    assert response.status_code == 503  # the view's own answer to a database outage
    assert len(flask_requests) == 1


def test_a_hit_with_a_matching_etag_is_304_before_flask(client, creator, flask_requests):
    user_id, _ = creator
    etag = client.get(f"/api/v1/users/{user_id}/profile").headers["ETag"]

    response = client.get(f"/api/v1/users/{user_id}/profile", headers={"If-None-Match": f"W/{etag}, \"x\""})

    assert response.status_code == 304
    assert flask_requests == []


@pytest.mark.parametrize("query", ["?page=1&page=2", "?page=0", "?page_size=x", "?page=1&other=2"])
def test_unusual_query_strings_go_to_flask(client, creator, flask_requests, query):
    user_id, _ = creator
    client.get(f"/api/v1/users/{user_id}/flyers")
    flask_requests.clear()

    client.get(f"/api/v1/users/{user_id}/flyers{query}")

    assert len(flask_requests) == 1


def test_each_host_gets_its_own_absolute_urls(client, creator):
    user_id, _ = creator
    client.get(f"/api/v1/users/{user_id}/flyers")

    other = client.get(f"/api/v1/users/{user_id}/flyers", base_url="https://cdn.example.org")

    assert other.json["results"][0]["images"][0]["url"].startswith("https://cdn.example.org/media/")


def test_cached_404s_go_to_flask(client, flask_requests):
    client.get("/api/v1/users/99/profile")

    response = client.get("/api/v1/users/99/profile")

    assert response.status_code == 404
    assert len(flask_requests) == 2


def test_the_fast_path_can_be_turned_off(app, app_config, redis_client):
    app = create_app({**app_config, "CACHE_FAST_PATH": False}, redis_client=redis_client)
    client = app.test_client()
    body = {"email": "a@example.com", "password": "password123", "username": "alice"}
    user_id = client.post("/api/v1/auth/register", json=body).json["user_id"]

    client.get(f"/api/v1/users/{user_id}/profile")
    hit = client.get(f"/api/v1/users/{user_id}/profile")

    assert hit.status_code == 200
    assert app.extensions["profile_service"].stats.snapshot()["requests"]["profile"]["hit"] == 1
    with app.app_context():
        db.engine.dispose()


def test_a_cached_404_is_looked_up_once(app, client):
    client.get("/api/v1/users/99/profile")

    client.get("/api/v1/users/99/profile")

    assert app.extensions["profile_service"].stats.snapshot()["requests"]["profile"] == {"miss": 1, "hit": 1}


@pytest.mark.parametrize("path", PATHS[:1] + PATHS[2:3] + PATHS[5:])
def test_a_miss_is_two_redis_round_trips_claim_then_fill(client, creator, redis_client, monkeypatch, path):
    user_id, flyer_ids = creator
    url = path.format(uid=user_id, fid=flyer_ids[0])
    client.get(url)  # loads the scripts
    redis_client.flushdb()
    sent = []
    connection_class = redis_client.connection_pool.connection_class
    send = connection_class.send_command
    monkeypatch.setattr(connection_class, "send_command", lambda conn, *args, **kw: sent.append(args[0]) or send(conn, *args, **kw))

    response = client.get(url)

    assert response.status_code == 200
    assert sent == ["EVALSHA", "EVALSHA"]
