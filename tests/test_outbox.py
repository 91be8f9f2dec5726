"""The cache outbox: every change to the tables records its invalidations, and they reach Redis."""
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from cache import EPOCH_KEY, keys
from models import CacheOutbox, db

pytestmark = pytest.mark.tdd_green


def outbox_rows(app):
    with app.app_context():
        return [(row.user_id, row.flyer_id, row.delivered)
                for row in db.session.scalars(db.select(CacheOutbox).order_by(CacheOutbox.id))]


def plain_sql(app, statement, **params):
    """A write behind the service's back (psql, a migration, another service): no session hooks."""
    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text(statement), params)


def services(app):
    return app.extensions["profile_service"]


def test_a_change_made_with_plain_sql_records_what_it_invalidates(app, register):
    user_id, _ = register("alice")
    plain_sql(app, "DELETE FROM cache_outbox")

    plain_sql(app, "UPDATE users SET bio = 'from psql' WHERE id = :id", id=user_id)

    assert outbox_rows(app) == [(user_id, None, False)]


def test_a_rename_records_every_flyer_of_the_creator(app, register, add_flyer):
    user_id, _ = register("alice")
    flyers = {add_flyer(user_id), add_flyer(user_id)}
    plain_sql(app, "DELETE FROM cache_outbox")

    plain_sql(app, "UPDATE users SET display_name = 'Alice B.' WHERE id = :id", id=user_id)

    rows = outbox_rows(app)
    assert (user_id, None, False) in rows and {flyer for _, flyer, _ in rows if flyer} == flyers


def test_a_bio_edit_records_no_flyer(app, register, add_flyer):
    user_id, _ = register("alice")
    add_flyer(user_id)
    plain_sql(app, "DELETE FROM cache_outbox")

    plain_sql(app, "UPDATE users SET bio = 'x' WHERE id = :id", id=user_id)

    assert outbox_rows(app) == [(user_id, None, False)]


def test_a_flyer_image_change_records_its_flyer_and_creator(app, register, add_flyer):
    user_id, _ = register("alice")
    flyer_id = add_flyer(user_id)
    plain_sql(app, "DELETE FROM cache_outbox")

    plain_sql(app, "DELETE FROM flyer_images WHERE flyer_id = :id", id=flyer_id)

    assert outbox_rows(app) == [(user_id, flyer_id, False)]


def test_a_write_through_the_api_has_delivered_its_rows_when_it_answers(app, client, register, redis_client):
    user_id, headers = register("alice")
    client.get(f"/api/v1/users/{user_id}/profile")
    assert redis_client.exists(keys.profile_key(user_id))

    client.patch("/api/v1/users/me/profile", json={"bio": "new"}, headers=headers)

    stored = redis_client.hget(keys.profile_key(user_id), "http://localhost")  # refilled by the answer, if at all
    assert all(delivered for _, _, delivered in outbox_rows(app))
    assert stored is None or b'"bio":"new"' in stored


def test_a_write_whose_database_goes_down_after_the_commit_still_invalidates_before_it_answers(
        app, client, register, redis_client, monkeypatch):
    user_id, headers = register("alice")
    client.get(f"/api/v1/users/{user_id}/profile")
    assert redis_client.exists(keys.profile_key(user_id))
    outbox = services(app).outbox

    def database_gone(**kwargs):
        raise OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))
    monkeypatch.setattr(outbox, "deliver_pending", database_gone)

    response = client.patch("/api/v1/users/me/profile", json={"bio": "just before the crash"}, headers=headers)

    assert response.status_code == 200
    assert not redis_client.exists(keys.profile_key(user_id))
    assert outbox_rows(app)[-1][2] is False  # delivered again by the deliverers once the database is back


def test_a_write_that_cannot_reach_redis_still_answers_and_leaves_its_rows_pending(app, client, register,
                                                                                  redis_server):
    _, headers = register("alice")
    redis_server.connected = False

    response = client.patch("/api/v1/users/me/profile", json={"bio": "offline"}, headers=headers)

    assert response.status_code == 200 and response.json["bio"] == "offline"
    assert outbox_rows(app)[-1][2] is False


def test_pending_rows_suspend_reads_until_they_are_delivered(app, client, register, redis_server):
    user_id, headers = register("alice")
    client.get(f"/api/v1/users/{user_id}/profile")
    redis_server.connected = False
    client.patch("/api/v1/users/me/profile", json={"bio": "offline"}, headers=headers)
    redis_server.connected = True
    outbox = services(app).outbox

    with app.app_context():
        assert outbox.catch_up(min_age=0.0) is True

    assert not services(app).cache.suspended and all(delivered for _, _, delivered in outbox_rows(app))
    assert client.get(f"/api/v1/users/{user_id}/profile").json["bio"] == "offline"


def test_the_deliverer_suspends_reads_while_redis_cannot_take_the_rows(app, client, register, redis_server):
    _, headers = register("alice")
    redis_server.connected = False
    client.patch("/api/v1/users/me/profile", json={"bio": "offline"}, headers=headers)
    outbox = services(app).outbox
    outbox.poll_interval = 0.01

    assert outbox.catch_up(min_age=0.0) is False
    assert services(app).cache.suspended and outbox.backlog == 1


def test_rows_older_than_the_retention_window_are_purged(app, register):
    register("alice")
    outbox = services(app).outbox
    plain_sql(app, "UPDATE cache_outbox SET created_at = created_at - :age", age=outbox.retention + 1)
    register("bob")

    assert outbox.purge() == 1
    assert len(outbox_rows(app)) == 1


def test_a_replay_deletes_every_row_of_the_window_and_waits_for_the_near_caches_once(app, register, redis_client,
                                                                                   monkeypatch):
    users = [register(name)[0] for name in ("alice", "bob", "carol", "dave", "erin")]
    for user_id in users:
        redis_client.set(keys.profile_key(user_id), b"cached before the replay")
    outbox, cache = services(app).outbox, services(app).cache
    monkeypatch.setattr(outbox, "batch", 2)  # five rows: three batches
    monkeypatch.setattr(cache._invalidator, "settle", 0.03)
    slept = []
    monkeypatch.setattr(cache._invalidator, "_sleep", slept.append)

    outbox.replay_window()

    assert [redis_client.exists(keys.profile_key(user_id)) for user_id in users] == [0] * 5
    assert slept == [pytest.approx(0.031)]


class TestOnTheRealRedis:
    @pytest.fixture
    def redis_client(self, real_redis):
        return real_redis

    def test_a_redis_restored_from_an_old_snapshot_is_repaired_before_any_hit(self, app, client, register,
                                                                              redis_client):
        user_id, headers = register("alice")
        url = f"/api/v1/users/{user_id}/profile"
        client.get(url)
        snapshot = redis_client.dump(keys.profile_key(user_id))  # the entry as an RDB file would hold it
        client.patch("/api/v1/users/me/profile", json={"bio": "after the snapshot"}, headers=headers)
        # The server restarts from that snapshot: the old entry is back, the epoch is the old server's,
        # and every connection to it is new.
        repairs = services(app).cache.epoch.repairs
        redis_client.restore(keys.profile_key(user_id), 60_000, snapshot, replace=True)
        redis_client.set(EPOCH_KEY, b"run id of the server before the restart")
        redis_client.client_kill_filter(_type="normal", skipme=True)

        answers = [client.get(url).json["bio"] for _ in range(3)]

        assert answers == ["after the snapshot"] * 3
        assert services(app).cache.epoch.repairs == repairs + 1
        assert redis_client.get(EPOCH_KEY) == redis_client.info("server")["run_id"].encode()

    def test_a_known_server_is_not_repaired_again(self, app, client, register, redis_client):
        user_id, _ = register("alice")
        client.get(f"/api/v1/users/{user_id}/profile")
        redis_client.client_kill_filter(_type="normal", skipme=True)

        client.get(f"/api/v1/users/{user_id}/profile")

        assert services(app).cache.epoch.repairs == 1  # the first connection's, to a server new to the cache


class TestTheDelivererThread:
    @pytest.fixture
    def app_config(self, app_config):
        return {**app_config, "OUTBOX_POLL_INTERVAL": 0.1, "OUTBOX_GRACE": 0.05}

    @pytest.fixture(autouse=True)
    def stop_deliverer(self, app):
        yield
        services(app).outbox.stop()

    def test_a_change_made_with_plain_sql_is_read_within_a_second(self, app, client, register):
        user_id, _ = register("alice")
        url = f"/api/v1/users/{user_id}/profile"
        deadline = time.monotonic() + 2
        while client.get(url).json["bio"] != "" or services(app).cache.suspended:
            assert time.monotonic() < deadline
        client.get(url)  # cached

        plain_sql(app, "UPDATE users SET bio = 'from psql' WHERE id = :id", id=user_id)
        written = time.monotonic()
        while client.get(url).json["bio"] != "from psql":
            assert time.monotonic() - written < 1.0, "not seen within 1 s"
            time.sleep(0.01)

    def test_a_new_process_delivers_what_is_pending_before_it_reads_the_cache(self, app, client, register,
                                                                            redis_client):
        user_id, _ = register("alice")
        cached_body = b'{"bio": "old"}'
        plain_sql(app, "UPDATE users SET bio = 'newer' WHERE id = :id", id=user_id)  # nobody delivered it
        redis_client.hset(keys.profile_key(user_id), "http://localhost", b"0" * 32 + cached_body)

        assert client.get(f"/api/v1/users/{user_id}/profile").json["bio"] == "newer"
