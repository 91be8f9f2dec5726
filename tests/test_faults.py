"""Behaviour under faults: Redis down, database down."""
import time

import pytest
from sqlalchemy import event

from models import db
from tests.conftest import BACKENDS, SQLITE

pytestmark = pytest.mark.tdd_green


@pytest.fixture
def app_config(app_config):
    # Retry Redis at once after a failure, so recovery shows without waiting.
    return {**app_config, "CACHE_BREAKER_BASE_DELAY": 0.0, "CACHE_BREAKER_THRESHOLD": 1}


@pytest.fixture
def database_down(app):
    """Make every new database connection fail, as if the server were gone."""
    with app.app_context():
        engine = db.engine

    def refuse(dialect, conn_rec, cargs, cparams):
        raise dialect.loaded_dbapi.OperationalError("connection refused")

    def down():
        with app.app_context():
            db.session.remove()
        engine.dispose()
        event.listen(engine, "do_connect", refuse)

    yield down
    if event.contains(engine, "do_connect", refuse):
        event.remove(engine, "do_connect", refuse)


def test_reads_answer_from_the_database_while_redis_is_down(client, register, redis_server):
    user_id, _ = register("alice")
    redis_server.connected = False

    response = client.get(f"/api/v1/users/{user_id}/profile")

    assert response.status_code == 200
    assert response.headers["ETag"]


def test_writes_succeed_while_redis_is_down(client, register, redis_server):
    user_id, headers = register("alice")
    redis_server.connected = False

    response = client.patch("/api/v1/users/me/profile", json={"bio": "offline edit"}, headers=headers)

    assert response.status_code == 200
    assert response.json["bio"] == "offline edit"


def test_hits_come_back_by_themselves_when_redis_returns(app, client, register, redis_server):
    user_id, _ = register("alice")
    redis_server.connected = False
    client.get(f"/api/v1/users/{user_id}/profile")
    redis_server.connected = True

    client.get(f"/api/v1/users/{user_id}/profile")
    client.get(f"/api/v1/users/{user_id}/profile")

    assert app.extensions["profile_service"].stats.snapshot()["requests"]["profile"]["hit"] == 1


def test_cached_reads_are_served_while_the_database_is_down(client, register, database_down):
    user_id, _ = register("alice")
    client.get(f"/api/v1/users/{user_id}/profile")
    database_down()

    response = client.get(f"/api/v1/users/{user_id}/profile")

    assert response.status_code == 200
    assert response.json["user_id"] == user_id


def test_uncached_reads_answer_503_with_retry_after_while_the_database_is_down(client, register, database_down):
    user_id, _ = register("alice")
    database_down()

    response = client.get(f"/api/v1/users/{user_id}/flyers")

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json["error"]


def test_writes_answer_503_while_the_database_is_down(client, register, database_down):
    _, headers = register("alice")
    database_down()

    response = client.patch("/api/v1/users/me/profile", json={"bio": "lost?"}, headers=headers)

    assert response.status_code == 503
    assert response.headers["Retry-After"]


def test_readyz_is_503_while_the_database_is_down(client, database_down):
    database_down()

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json["database"] == "unavailable"


class TestWithTheOutboxDeliverer:
    """What a write leaves undelivered while Redis is down, this process's deliverer thread delivers.

    The writer waits its deadline (0.3 s here) before it answers; the deliverer polls every
    0.05 s, so by the answer it has seen the pending row and suspended the cache's reads
    until the row is delivered.
    """

    @pytest.fixture
    def app_config(self, app_config):
        return {**app_config, "CACHE_BREAKER_BASE_DELAY": 0.0, "CACHE_BREAKER_THRESHOLD": 1,
                "OUTBOX_POLL_INTERVAL": 0.05, "OUTBOX_GRACE": 0.01, "CACHE_WRITE_DEADLINE": 0.3}

    @pytest.fixture(autouse=True)
    def deliverer(self, app):
        yield app.extensions["profile_service"].outbox
        app.extensions["profile_service"].outbox.stop()

    def test_an_edit_made_while_redis_was_down_is_seen_at_once_and_after_it_is_back(
            self, client, register, redis_server, deliverer):
        user_id, headers = register("alice")
        client.get(f"/api/v1/users/{user_id}/profile")
        client.get(f"/api/v1/users/{user_id}/profile")  # cached with the old bio
        redis_server.connected = False
        client.patch("/api/v1/users/me/profile", json={"bio": "offline edit"}, headers=headers)

        redis_server.connected = True
        at_once = client.get(f"/api/v1/users/{user_id}/profile").json["bio"]
        deadline = time.monotonic() + 2
        while deliverer.cache.suspended and time.monotonic() < deadline:
            time.sleep(0.01)

        assert at_once == "offline edit"
        assert client.get(f"/api/v1/users/{user_id}/profile").json["bio"] == "offline edit"
        assert not deliverer.cache.suspended

    def test_new_flyers_created_while_redis_is_down_show_on_warm_pages_at_once(
            self, client, register, add_flyer, redis_server):
        user_id, _ = register("alice")
        client.get(f"/api/v1/users/{user_id}/flyers")
        client.get(f"/api/v1/users/{user_id}/flyers")
        redis_server.connected = False
        add_flyer(user_id)

        redis_server.connected = True

        assert client.get(f"/api/v1/users/{user_id}/flyers").json["count"] == 1


ON_POSTGRESQL = pytest.mark.parametrize("database_url", [b for b in BACKENDS if b != SQLITE], indirect=True)
"""A PostgreSQL fault: the test runs on PostgreSQL only (CI always has it)."""


@pytest.fixture
def kill_pooled_backends(app, database_url):
    """Fill the pool with three connections, then terminate their server processes."""
    import psycopg

    def kill():
        with app.app_context():
            engine = db.engine
        pooled = [engine.raw_connection() for _ in range(3)]
        pids = [conn.driver_connection.execute("SELECT pg_backend_pid()").fetchone()[0] for conn in pooled]
        for conn in pooled:
            conn.driver_connection.rollback()
            conn.close()  # back in the pool, idle for less than DB_PING_IDLE_SECONDS
        with psycopg.connect(database_url, autocommit=True) as admin:
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.2)
    return kill


@ON_POSTGRESQL
def test_a_miss_whose_pooled_connections_were_all_killed_is_answered_from_a_fresh_one(
        client, register, redis_client, kill_pooled_backends):
    user_id, _ = register("alice")
    redis_client.flushdb()
    kill_pooled_backends()

    response = client.get(f"/api/v1/users/{user_id}/profile")

    assert response.status_code == 200


@ON_POSTGRESQL
def test_a_write_whose_pooled_connections_were_all_killed_is_made(client, register, kill_pooled_backends):
    _, headers = register("alice")
    kill_pooled_backends()

    response = client.patch("/api/v1/users/me/profile", json={"bio": "after the kill"}, headers=headers)

    assert response.status_code == 200 and response.json["bio"] == "after the kill"
