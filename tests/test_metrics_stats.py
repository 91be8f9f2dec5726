"""/api/v1/cache/stats (fleet-wide, sliding windows), /dashboard, request ids, and the staleness audit."""
import re

import fakeredis
import pytest
from sqlalchemy import text

from cache import CacheStats, keys
from cache.stats import deltas, push_deltas, read_buckets
from models import db
from service import create_app
from service.audit import Job
from service.operations import fleet_stats, quantile

pytestmark = pytest.mark.tdd_green

NOW = 1_700_000_005.0  # 5 s into a 10-second bucket


@pytest.fixture
def app_config(app_config):
    return {**app_config, "METRICS_FLUSH_INTERVAL": 0.0, "CACHE_AUDIT_FRACTION": 0.0, "CACHE_AUDIT_GRACE": 0.05}


@pytest.fixture
def other_instance(app_config, redis_server):
    other = create_app(app_config, redis_client=fakeredis.FakeRedis(server=redis_server))
    yield other
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def profile_url(register):
    user_id, _ = register("alice")
    return f"/api/v1/users/{user_id}/profile"


def read(client, url, times):
    for _ in range(times):
        assert client.get(url).status_code == 200


def test_stats_sum_every_instance_sharing_the_redis(client, profile_url, other_instance):
    read(client, profile_url, 2)
    read(other_instance.test_client(), profile_url, 3)

    stats = client.get("/api/v1/cache/stats").json

    assert stats["scope"] == "all instances sharing the Redis" and stats["redis"] is True
    assert stats["families"]["profile"]["since_start"]["lookups"] == 5
    assert stats["families"]["profile"]["last_minute"]["hits"] == 4
    assert stats["families"]["profile"]["last_minute"]["results"] == {"hit": 4, "miss": 1}


def test_stats_give_volumes_beside_rates_and_latency_per_endpoint(client, profile_url):
    read(client, profile_url, 4)

    minute = client.get("/api/v1/cache/stats").json["windows"]["last_minute"]

    assert (minute["lookups"], minute["hits"], minute["hit_rate"]) == (4, 3, 0.75)
    assert 50 <= minute["seconds"] <= 60 and minute["requests_per_second"] == round(minute["requests"] / minute["seconds"], 3)
    endpoint = minute["endpoints"]["profiles.get_profile"]
    assert endpoint["requests"] == 4 and endpoint["errors"] == 0 and endpoint["statuses"] == {"200": 4}
    assert 0 < endpoint["p50"] <= endpoint["p95"] <= endpoint["p99"]


def test_stats_count_server_errors(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    assert client.get("/boom").status_code == 500

    minute = client.get("/api/v1/cache/stats").json["windows"]["last_minute"]
    assert minute["errors"] == 1 and minute["endpoints"]["boom"]["statuses"] == {"500": 1}


def test_stats_report_each_process_breaker_state(client, other_instance, redis_server):
    other_instance.test_client().get("/healthz")

    instances = client.get("/api/v1/cache/stats").json["instances"]

    assert len(instances) == 2 and {i["breaker"] for i in instances} == {"closed"}
    assert all(i["reporting"] for i in instances)


def test_without_redis_the_stats_say_they_are_this_process_only(client, profile_url, redis_server):
    read(client, profile_url, 2)
    redis_server.connected = False

    stats = client.get("/api/v1/cache/stats")

    assert stats.status_code == 200 and stats.json["scope"] == "this process only (Redis unavailable)"
    assert stats.json["redis"] is False
    assert stats.json["families"]["profile"]["last_minute"]["lookups"] == 2


def test_the_embedded_mode_says_it_has_no_redis(app_config):
    app = create_app(app_config)  # no REDIS_URL, no injected client
    with app.app_context():
        db.create_all()
    stats = app.test_client().get("/api/v1/cache/stats").json
    with app.app_context():
        db.engine.dispose()

    assert stats["scope"] == "this process only (no Redis configured)" and stats["redis"] is False


def push(client, stats, now, before):
    fields = stats.fields()
    push_deltas(client, deltas(fields, before), now)
    return fields


def test_the_last_minute_is_the_last_six_buckets_and_says_how_long_that_is(redis_client):
    stats, before = CacheStats(), {}
    for ago, hits in ((125, 7), (65, 5), (45, 3), (0, 1)):
        for _ in range(hits):
            stats.record("profile", "hit")
        before = push(redis_client, stats, NOW - ago, before)

    buckets, totals = read_buckets(redis_client, NOW)
    document = fleet_stats(buckets, totals, [], "all instances sharing the Redis", NOW)

    minute = document["windows"]["last_minute"]
    assert minute["lookups"] == 4 and minute["seconds"] == 55 and minute["from"] == "2023-11-14T22:12:30Z"
    assert minute["lookups"] == sum(p["lookups"] for p in document["recent"][-6:])
    assert document["windows"]["last_5_minutes"]["lookups"] == 16
    assert document["windows"]["since_start"]["lookups"] == 16


def test_the_series_mark_the_running_interval_as_partial(redis_client):
    stats = CacheStats()
    stats.record("profile", "hit")
    push(redis_client, stats, NOW, {})

    buckets, totals = read_buckets(redis_client, NOW)
    document = fleet_stats(buckets, totals, [], "x", NOW)

    assert len(document["recent"]) == 60 and len(document["history"]) == 60
    assert document["recent"][-1] == {**document["recent"][-1], "partial": True, "seconds": 5, "lookups": 1}
    assert not any(p["partial"] for p in document["recent"][:-1])
    assert document["history"][-1]["partial"] is True


def test_latency_percentiles_interpolate_within_buckets_as_promql_does():
    counts = [0, 0, 0, 10] + [0] * 9  # ten requests in the 5-10 ms bucket

    assert quantile(0.5, counts) == pytest.approx(0.0075)
    assert quantile(0.99, [0] * 12 + [3]) == 5.0
    assert quantile(0.5, [0] * 13) is None


# -- request ids -------------------------------------------------------------------------------

def test_a_sane_request_id_is_echoed_on_a_fast_path_hit(client, profile_url):
    read(client, profile_url, 1)

    response = client.get(profile_url, headers={"X-Request-ID": "abc-123.X_y"})

    assert response.headers["X-Request-ID"] == "abc-123.X_y"


def test_a_fast_path_304_carries_the_request_id_and_is_counted_as_304(client, profile_url):
    etag = client.get(profile_url).headers["ETag"]

    response = client.get(profile_url, headers={"If-None-Match": etag, "X-Request-ID": "r-304"})

    assert response.status_code == 304 and response.headers["X-Request-ID"] == "r-304"
    minute = client.get("/api/v1/cache/stats").json["windows"]["last_minute"]
    assert minute["endpoints"]["profiles.get_profile"]["statuses"] == {"200": 1, "304": 1}


def test_without_the_fast_path_answers_still_carry_the_request_id(app_config, redis_client):
    app = create_app({**app_config, "CACHE_FAST_PATH": False}, redis_client=redis_client)
    with app.app_context():
        db.create_all()
    client = app.test_client()

    response = client.get("/healthz", headers={"X-Request-ID": "slow-path"})
    stats = client.get("/api/v1/cache/stats").json
    with app.app_context():
        db.engine.dispose()

    assert response.headers["X-Request-ID"] == "slow-path"
    assert stats["windows"]["last_minute"]["endpoints"]["health.healthz"]["statuses"] == {"200": 1}


@pytest.mark.parametrize("given", ["has space", "x" * 129, "semi;colon", ""])
def test_an_insane_request_id_is_replaced_by_a_new_one(client, given):
    response = client.get("/healthz", headers={"X-Request-ID": given})

    assert response.headers["X-Request-ID"] != given
    assert re.fullmatch(r"[0-9a-f]{12}\.0x[0-9a-f]+", response.headers["X-Request-ID"])


@pytest.mark.parametrize("path", ["/healthz", "/no/such/route", "/api/v1/users/999/profile", "/metrics"])
def test_every_answer_carries_a_request_id(client, path):
    first, second = client.get(path), client.get(path)

    assert first.headers["X-Request-ID"] and first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


# -- staleness audit ---------------------------------------------------------------------------

@pytest.fixture
def audited(app, app_config, redis_client):  # after `app`, which empties the tables
    app = create_app({**app_config, "CACHE_AUDIT_FRACTION": 1.0, "CACHE_AUDIT_MAX_PER_SECOND": 0},
                     redis_client=redis_client)
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def audits(app):
    app.extensions["profile_service"].audit.drain()
    return {k: v for k, v in app.extensions["profile_service"].stats.fields().items() if k.startswith("audit|")}


def new_user(client, name="dora"):
    response = client.post("/api/v1/auth/register", json={"email": f"{name}@example.com", "password": "password123",
                                                          "username": name})
    return response.json["user_id"], {"Authorization": f"Bearer {response.json['token']}"}


def test_sampled_hits_are_re_read_and_found_fresh(audited):
    client = audited.test_client()
    user_id, _ = new_user(client)

    read(client, f"/api/v1/users/{user_id}/profile", 3)   # a miss, then two hits (fast path)
    read(client, f"/api/v1/users/{user_id}/flyers", 2)    # a miss, then a hit

    assert audits(audited) == {"audit|profile|fresh": 2, "audit|flyer_page|fresh": 1}


def test_a_cached_answer_the_database_no_longer_gives_is_counted_stale(audited):
    client = audited.test_client()
    user_id, _ = new_user(client)
    read(client, f"/api/v1/users/{user_id}/profile", 1)
    with audited.app_context():  # a write that bypasses the service's invalidation
        db.session.execute(text("UPDATE users SET bio = 'changed behind the cache'"))
        db.session.commit()

    read(client, f"/api/v1/users/{user_id}/profile", 1)

    assert audits(audited) == {"audit|profile|stale": 1}
    stats = client.get("/api/v1/cache/stats").json
    assert stats["windows"]["last_minute"]["audit"] == {"fresh": 0, "stale": 1}


def test_a_write_landing_during_the_audit_is_not_counted_stale(audited):
    client = audited.test_client()
    user_id, headers = new_user(client)
    url = f"/api/v1/users/{user_id}/profile"
    read(client, url, 1)
    services = audited.extensions["profile_service"]
    services.audit.fraction = 0.0
    etag = client.get(url).headers["ETag"].strip('"')

    def reread():  # the write commits (the database gives another body), then its invalidation lands
        assert client.patch("/api/v1/users/me/profile", json={"bio": "moved on"}, headers=headers).status_code == 200
        return "an etag of the new body"

    result = services.audit.audit(Job("profile", keys.profile_key(user_id), "http://localhost", None, etag, reread))

    assert result == "fresh"


def test_audits_are_capped_per_second_whatever_the_traffic(audited):
    client = audited.test_client()
    user_id, _ = new_user(client)
    audited.extensions["profile_service"].audit._spacing = 3600.0  # one audit an hour

    read(client, f"/api/v1/users/{user_id}/profile", 6)  # a miss, then five sampled hits

    assert audits(audited) == {"audit|profile|fresh": 1}


def test_no_audit_runs_at_a_fraction_of_zero(client, profile_url, app):
    read(client, profile_url, 5)

    assert audits(app) == {}


def test_the_stats_document_matches_its_openapi_schema(client, profile_url):
    from service.schemas import CacheStatsSchema
    read(client, profile_url, 3)

    assert CacheStatsSchema().validate(client.get("/api/v1/cache/stats").json) == {}
