"""Readers and writers at once against real Redis (and PostgreSQL in CI): no stale reads, no stale sets."""
import random
import threading
import time

import pytest

from cache import keys
from cache.entries import from_stored
from models import User, db
from service.representations import encode, profile_json

pytestmark = pytest.mark.tdd_green

RUN_SECONDS = 3.0
BASE = "http://localhost"


@pytest.fixture
def redis_client(real_redis):
    return real_redis


def _writer(app, headers, user_id, writes, stop):
    client = app.test_client()
    version = 0
    while not stop.is_set():
        version += 1
        response = client.patch("/api/v1/users/me/profile", json={"bio": f"v{version}"}, headers=headers)
        assert response.status_code == 200
        writes.append((user_id, version, time.monotonic()))


def _reader(app, user_ids, reads, stop):
    client = app.test_client()
    rng = random.Random()
    while not stop.is_set():
        user_id = rng.choice(user_ids)
        started = time.monotonic()
        bio = client.get(f"/api/v1/users/{user_id}/profile").json["bio"]
        reads.append((user_id, started, int(bio[1:]) if bio else 0))


def test_every_read_after_a_write_sees_it_and_the_cache_ends_equal_to_the_database(app, register):
    users = [register(f"user{n}") for n in range(3)]
    user_ids = [user_id for user_id, _ in users]
    writes, reads, stop = [], [], threading.Event()
    threads = [threading.Thread(target=_writer, args=(app, headers, user_id, writes, stop)) for user_id, headers in users]
    threads += [threading.Thread(target=_reader, args=(app, user_ids, reads, stop)) for _ in range(4)]

    for thread in threads:
        thread.start()
    time.sleep(RUN_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(30)

    stale = [(user_id, started, seen) for user_id, started, seen in reads
             if seen < max((v for u, v, answered in writes if u == user_id and answered < started), default=0)]
    assert len(writes) > 10 and len(reads) > 50
    assert app.extensions["profile_service"].cache.near.hits > 0  # in-process copies were in play
    assert stale == []
    with app.app_context():
        for user_id in user_ids:
            cached = app.extensions["profile_service"].redis.hget(keys.profile_key(user_id), BASE)
            if cached is not None:
                fresh = profile_json(db.session.get(User, user_id), 0, BASE)
                assert from_stored(cached, "hit").body == encode(fresh)
