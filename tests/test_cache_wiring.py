"""The cache in front of the endpoints: hits, invalidation triggers, negative caching, races."""
import threading

import pytest
from models import User, db, queries

pytestmark = pytest.mark.tdd_green


def _stats(app):
    return app.extensions["profile_service"].stats.snapshot()["requests"]


def test_a_second_read_is_a_cache_hit(app, client, register):
    user_id, _ = register("alice")

    client.get(f"/api/v1/users/{user_id}/profile")
    client.get(f"/api/v1/users/{user_id}/profile")

    assert _stats(app)["profile"] == {"miss": 1, "hit": 1}


def test_a_304_is_answered_from_the_cache(app, client, register, count_statements):
    user_id, _ = register("alice")
    etag = client.get(f"/api/v1/users/{user_id}/profile").headers["ETag"]

    with count_statements() as statements:
        response = client.get(f"/api/v1/users/{user_id}/profile", headers={"If-None-Match": etag})

    assert response.status_code == 304
    assert statements == []


def test_an_unknown_user_is_cached_as_missing_until_registration(app, client, register):
    assert client.get("/api/v1/users/1/profile").status_code == 404
    assert client.get("/api/v1/users/1/flyers").status_code == 404

    user_id, _ = register("alice")

    assert user_id == 1
    assert client.get("/api/v1/users/1/profile").status_code == 200
    assert client.get("/api/v1/users/1/flyers").status_code == 200


def test_an_unknown_id_is_answered_from_the_cache_the_second_time(app, client, count_statements):
    client.get("/api/v1/flyers/5")

    with count_statements() as statements:
        assert client.get("/api/v1/flyers/5").status_code == 404

    assert statements == []


def test_a_commit_from_any_code_path_invalidates(app, client, register):
    user_id, _ = register("alice")
    client.get(f"/api/v1/users/{user_id}/profile")

    with app.app_context():  # as a shell or a script would
        db.session.get(User, user_id).bio = "set from a shell"
        db.session.commit()

    assert client.get(f"/api/v1/users/{user_id}/profile").json["bio"] == "set from a shell"


def test_a_rolled_back_change_invalidates_nothing(app, client, register):
    user_id, _ = register("alice")
    client.get(f"/api/v1/users/{user_id}/profile")

    with app.app_context():
        db.session.get(User, user_id).bio = "never committed"
        db.session.flush()
        db.session.rollback()

    client.get(f"/api/v1/users/{user_id}/profile")
    assert _stats(app)["profile"]["hit"] == 1


def test_the_cli_create_user_clears_a_cached_miss(app, client):
    client.get("/api/v1/users/1/profile")

    result = app.test_cli_runner().invoke(args=["create-user", "--email", "c@example.com",
                                                "--username", "carol", "--password", "password123"])

    assert result.exit_code == 0, result.output
    assert client.get("/api/v1/users/1/profile").json["username"] == "carol"


def test_the_cli_seed_clears_cached_misses(app, client):
    client.get("/api/v1/users/1/profile")

    result = app.test_cli_runner().invoke(args=["seed", "--users", "3", "--flyers-per-user", "2",
                                                "--big-creators", "1", "--big-flyers", "4"])

    assert result.exit_code == 0, result.output
    assert client.get("/api/v1/users/1/profile").status_code == 200


def test_a_fill_that_raced_a_write_is_refused(app, client, register, monkeypatch):
    """Reader loads the old row; the writer commits and invalidates; the reader's fill is refused."""
    user_id, headers = register("alice")
    original = queries.read_creator
    raced = []

    def load_then_write(*args, **kwargs):
        loaded = original(*args, **kwargs)
        if not raced:
            raced.append(True)
            # The reader has loaded the old row: now a write commits before it fills
            # (on another thread, so with its own app context and session).
            writer = threading.Thread(target=lambda: raced.append(
                client.patch("/api/v1/users/me/profile", json={"bio": "new"}, headers=headers).status_code))
            writer.start()
            writer.join(10)
        return loaded

    monkeypatch.setattr(queries, "read_creator", load_then_write)
    first = client.get(f"/api/v1/users/{user_id}/profile")

    assert raced[1] == 200
    assert first.json["bio"] == ""  # it started before the write answered
    assert client.get(f"/api/v1/users/{user_id}/profile").json["bio"] == "new"
    assert _stats(app)["profile"]["stale"] == 1


def test_two_readers_missing_at_once_cause_one_load(app, client, register, monkeypatch):
    user_id, _ = register("alice")
    original = queries.read_creator
    loads, loading, release = [], threading.Event(), threading.Event()

    def slow_read_creator(conn, uid, now):
        loads.append(uid)
        loading.set()
        release.wait(5)
        return original(conn, uid, now)

    monkeypatch.setattr(queries, "read_creator", slow_read_creator)
    cache, waiting = app.extensions["profile_service"].cache, threading.Event()
    cache._wait_timeout = 5.0  # the second reader must not give up on a loaded machine
    sleep = cache._sleep

    def noting_sleep(seconds):  # the second reader polls for the first one's fill
        waiting.set()
        sleep(seconds)

    monkeypatch.setattr(cache, "_sleep", noting_sleep)
    answers = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", client.get(f"/api/v1/users/{user_id}/profile")))
    first.start()
    loading.wait(5)
    second = threading.Thread(target=lambda: answers.setdefault("second", client.get(f"/api/v1/users/{user_id}/profile")))
    second.start()
    waiting.wait(5)  # the second found the lease held: only now may the first fill
    release.set()
    first.join(5)
    second.join(5)

    assert len(loads) == 1
    assert answers["first"].json == answers["second"].json
    assert _stats(app)["profile"]["lease_wait"] == 1


def test_a_profile_ttl_ends_at_the_next_validity_boundary(app, client, register, add_flyer, clock, redis_client):
    from datetime import timedelta

    from cache import keys
    user_id, _ = register("alice")
    add_flyer(user_id, valid_until=clock.now + timedelta(seconds=42))

    client.get(f"/api/v1/users/{user_id}/profile")

    assert 0 < redis_client.pttl(keys.profile_key(user_id)) <= 42_000
