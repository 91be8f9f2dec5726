"""The testing kit (service.testing) that people who run the service in their tests use."""
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import fakeredis
import pytest
import redis
from werkzeug.security import generate_password_hash

from models import User, db
from service.testing import FAST_HASH, CacheEvents, dispose_app, make_app, register_user

pytestmark = pytest.mark.tdd_green

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL_TEST = os.environ.get("REDIS_URL_TEST", "redis://127.0.0.1:6379/15")


@pytest.fixture
def kit_app():
    app = make_app()
    yield app
    dispose_app(app)


def test_make_app_serves_the_api_on_in_memory_sqlite(kit_app):
    client = kit_app.test_client()

    user_id, auth = register_user(client, "alice")
    edited = client.patch("/api/v1/users/me/profile", json={"bio": "Bakery"}, headers=auth)

    assert kit_app.config["SQLALCHEMY_DATABASE_URI"] == "sqlite://"
    assert edited.status_code == 200
    assert client.get(f"/api/v1/users/{user_id}/profile").json["bio"] == "Bakery"


def test_kit_users_are_hashed_with_the_fast_method(kit_app):
    user_id, _ = register_user(kit_app.test_client(), "alice")

    with kit_app.app_context():
        stored = db.session.get(User, user_id).password_hash

    assert stored.startswith("pbkdf2:sha256:1000$")
    assert generate_password_hash("x", method=FAST_HASH).startswith("pbkdf2:sha256:1000$")


def test_the_clock_moves_the_app_and_ages_fakeredis_keys_alike(app, clock, redis_client):
    redis_client.set("k", b"v", ex=60)
    before = clock()

    clock.advance(seconds=61)

    assert (clock() - before).total_seconds() == 61
    assert redis_client.get("k") is None


def test_cache_events_show_a_miss_then_a_hit(client, register, cache_events):
    user_id, _ = register("alice")

    client.get(f"/api/v1/users/{user_id}/profile")
    client.get(f"/api/v1/users/{user_id}/profile")

    assert (cache_events.misses("profile"), cache_events.hits("profile")) == (1, 1)


def test_cache_events_show_the_invalidation_of_an_edit(client, register, cache_events):
    user_id, auth = register("alice")
    client.get(f"/api/v1/users/{user_id}/profile")

    client.patch("/api/v1/users/me/profile", json={"bio": "new"}, headers=auth)

    assert cache_events.invalidations("profile") >= 1


def test_cache_events_reset_forgets_earlier_lookups(client, register, cache_events):
    user_id, _ = register("alice")
    client.get(f"/api/v1/users/{user_id}/profile")

    cache_events.reset()

    assert cache_events.counts("profile") == {}


def test_add_flyer_puts_a_valid_flyer_on_its_creators_page(client, register, add_flyer):
    user_id, _ = register("alice")

    flyer_id = add_flyer(user_id, title="Sale")

    page = client.get(f"/api/v1/users/{user_id}/flyers").json
    assert [f["id"] for f in page["results"]] == [flyer_id]


def test_live_service_answers_over_http(live_service):
    with urllib.request.urlopen(f"{live_service.url}/healthz", timeout=10) as answer:
        assert answer.status == 200


def test_a_kit_app_writes_nothing_to_the_redis_named_in_the_environment(monkeypatch):
    real = redis.Redis.from_url(REDIS_URL_TEST)
    real.flushdb()
    monkeypatch.setenv("REDIS_URL", REDIS_URL_TEST)
    app = make_app({"RATE_LIMIT_ENABLED": True})
    client = app.test_client()

    register_user(client, "alice")
    client.post("/api/v1/auth/login", json={"email": "alice@example.com", "password": "wrong-password"})
    dispose_app(app)

    assert real.dbsize() == 0


def test_cache_events_of_a_fresh_app_are_empty(kit_app):
    assert CacheEvents(kit_app).counts("profile") == {}


def test_fakeredis_without_lua_stops_create_app_with_what_to_install(tmp_path):
    code = ("import sys; sys.modules['lupa'] = None\n"
            "from service.testing import make_app\n"
            "make_app()\n")

    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert run.returncode != 0
    assert "pip install 'fakeredis[lua]'" in run.stderr


def test_create_app_starts_on_a_fakeredis_that_is_down():
    server = fakeredis.FakeServer()
    server.connected = False

    app = make_app(redis_client=fakeredis.FakeRedis(server=server))

    assert app.test_client().get("/healthz").status_code == 200
    dispose_app(app)
