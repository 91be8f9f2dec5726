"""The near cache behind the HTTP API, on the real Redis: Flask's answers, and every write seen by every process."""
import os
import time

import pytest
import redis

from cache import make_client
from models import db
from service import create_app

pytestmark = pytest.mark.tdd_green

REDIS_URL_TEST = os.environ.get("REDIS_URL_TEST", "redis://127.0.0.1:6379/15")
PATHS = ["/api/v1/users/{uid}/profile", "/api/v1/users/{uid}/flyers?page=1&page_size=5", "/api/v1/flyers/{fid}"]


def _real_redis() -> redis.Redis:
    client = make_client(REDIS_URL_TEST, connect_timeout=1.0, socket_timeout=1.0)
    try:
        client.ping()
    except redis.RedisError as error:  # fail, never skip: these tests must run
        pytest.fail(f"test Redis at {REDIS_URL_TEST} is unreachable: {error}")
    return client


@pytest.fixture
def redis_client():
    client = _real_redis()
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def other_process(app, app_config):
    """A second application on the same database and Redis, standing in for another worker process."""
    other = create_app(app_config, redis_client=_real_redis())
    yield other
    other.extensions["profile_service"].cache.near.close()
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


def near(app):
    return app.extensions["profile_service"].cache.near


def read_until_copied(reader, url, app):
    """Read `url` until the process answers it from its copy (it needs a fresh proof first)."""
    hits = near(app).hits
    deadline = time.monotonic() + 2
    while near(app).hits == hits:
        assert time.monotonic() < deadline, "no near hit within 2 s"
        reader.get(url)


@pytest.fixture
def creator(register, add_flyer):
    user_id, headers = register("alice")
    return user_id, headers, add_flyer(user_id)


@pytest.mark.parametrize("path", PATHS)
def test_a_hit_from_the_near_cache_is_the_answer_flask_gave(app, client, creator, path):
    user_id, _, flyer_id = creator
    url = path.format(uid=user_id, fid=flyer_id)
    through_flask = client.get(url)
    read_until_copied(client, url, app)
    hits = near(app).hits

    copy = client.get(url)

    assert near(app).hits == hits + 1
    assert (copy.status_code, copy.data) == (through_flask.status_code, through_flask.data)
    for header in ("ETag", "Cache-Control", "Content-Type", "Content-Length"):
        assert copy.headers[header] == through_flask.headers[header]


def test_a_revalidation_is_answered_304_from_the_near_cache(app, client, creator):
    url = f"/api/v1/users/{creator[0]}/profile"
    etag = client.get(url).headers["ETag"]
    read_until_copied(client, url, app)
    hits = near(app).hits

    response = client.get(url, headers={"If-None-Match": etag})

    assert response.status_code == 304 and near(app).hits == hits + 1


def test_a_profile_edit_in_one_process_is_read_at_once_in_another(client, creator, other_process):
    user_id, headers, _ = creator
    reader = other_process.test_client()
    read_until_copied(reader, f"/api/v1/users/{user_id}/profile", other_process)

    client.patch("/api/v1/users/me/profile", json={"bio": "changed"}, headers=headers)

    assert reader.get(f"/api/v1/users/{user_id}/profile").json["bio"] == "changed"


def test_a_new_flyer_in_one_process_is_on_the_pages_read_at_once_in_another(creator, add_flyer, other_process):
    user_id, _, _ = creator
    reader = other_process.test_client()
    read_until_copied(reader, f"/api/v1/users/{user_id}/flyers", other_process)

    new_flyer = add_flyer(user_id, title="Second sale")

    page = reader.get(f"/api/v1/users/{user_id}/flyers").json
    assert page["count"] == 2 and new_flyer in [flyer["id"] for flyer in page["results"]]
