"""Operations: /metrics, /api/v1/cache/stats and /dashboard, counted over every process sharing the Redis."""
import time

import fakeredis
import pytest

from cache import read_from_redis
from models import db
from service import create_app

pytestmark = pytest.mark.tdd_green


@pytest.fixture
def app_config(app_config):
    return {**app_config, "METRICS_FLUSH_INTERVAL": 0.0}  # push after every request: exact counts in tests


@pytest.fixture
def other_process(app_config, redis_server):
    """A second application on the same database and Redis, standing in for another worker process."""
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


def test_cache_stats_give_hit_rates_per_family_and_window(client, profile_url):
    read(client, profile_url, 4)  # a miss, then three hits

    stats = client.get("/api/v1/cache/stats").json

    for window in ("last_minute", "last_hour", "since_start"):
        assert stats["families"]["profile"][window] == {
            "lookups": 4, "hits": 3, "hit_rate": 0.75, "results": {"hit": 3, "miss": 1}}
    assert stats["scope"] == "all processes sharing the Redis"


def test_cache_stats_keep_the_last_hour_minute_by_minute(client, profile_url):
    read(client, profile_url, 2)

    history = client.get("/api/v1/cache/stats").json["history"]

    assert len(history) == 60 and history[-1]["families"]["profile"] == {"lookups": 2, "hits": 1, "hit_rate": 0.5}
    assert history[0]["minute"] < history[-1]["minute"]


def test_cache_stats_sum_every_process_sharing_the_redis(client, profile_url, other_process):
    read(client, profile_url, 2)
    read(other_process.test_client(), profile_url, 3)

    since_start = client.get("/api/v1/cache/stats").json["families"]["profile"]["since_start"]

    assert since_start["lookups"] == 5 and since_start["hits"] == 4


def test_metrics_are_prometheus_text_with_the_cache_counters(client, profile_url):
    read(client, profile_url, 3)

    response = client.get("/metrics")

    assert response.status_code == 200 and response.content_type.startswith("text/plain; version=0.0.4")
    text = response.get_data(as_text=True)
    assert 'cache_requests_total{family="profile",result="hit"} 2.0' in text
    assert 'cache_requests_total{family="profile",result="miss"} 1.0' in text


def test_metrics_count_invalidations_per_family(client, register):
    _, headers = register("bob")
    client.patch("/api/v1/users/me/profile", json={"bio": "hi"}, headers=headers)

    text = client.get("/metrics").get_data(as_text=True)

    assert 'cache_invalidations_total{family="profile"} 2.0' in text  # the registration, then the edit


def test_metrics_have_a_latency_histogram_per_endpoint_including_hits_answered_before_flask(client, profile_url):
    read(client, profile_url, 3)
    client.get("/no/such/route")

    text = client.get("/metrics").get_data(as_text=True)

    assert 'http_request_duration_seconds_bucket{endpoint="profiles.get_profile",le="+Inf"} 3.0' in text
    assert 'http_request_duration_seconds_count{endpoint="unmatched"} 1.0' in text
    assert 'http_request_duration_seconds_sum{endpoint="profiles.get_profile"}' in text


def test_metrics_sum_every_process_sharing_the_redis(client, profile_url, other_process):
    read(client, profile_url, 1)
    read(other_process.test_client(), profile_url, 2)

    text = client.get("/metrics").get_data(as_text=True)

    assert 'cache_requests_total{family="profile",result="hit"} 2.0' in text
    assert 'http_request_duration_seconds_count{endpoint="profiles.get_profile"} 3.0' in text


def test_metrics_speak_openmetrics_when_asked(client):
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})

    assert response.content_type.startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")


def test_with_redis_down_the_counts_of_this_process_are_served_and_labelled(client, profile_url, redis_server):
    read(client, profile_url, 2)
    redis_server.connected = False

    stats = client.get("/api/v1/cache/stats")
    metrics = client.get("/metrics")

    assert stats.status_code == 200 and stats.json["scope"] == "this process only (Redis unavailable)"
    assert stats.json["families"]["profile"]["since_start"]["lookups"] >= 2
    assert metrics.status_code == 200 and metrics.headers["X-Metrics-Scope"].startswith("this process only")


def test_the_dashboard_is_a_page_that_charts_the_stats_and_refreshes_itself(client):
    response = client.get("/dashboard")

    assert response.status_code == 200 and response.content_type == "text/html; charset=utf-8"
    page = response.get_data(as_text=True)
    assert 'fetch("/api/v1/cache/stats"' in page and "setInterval(refresh" in page and "<svg" in page


@pytest.mark.parametrize("path", ["/metrics", "/api/v1/cache/stats", "/dashboard"])
def test_operations_answers_are_never_cached_by_clients(client, path):
    assert client.get(path).headers["Cache-Control"] == "no-store"


def test_an_idle_process_pushes_its_last_counts_within_an_interval(app_config, redis_client, profile_url):
    app = create_app({**app_config, "METRICS_FLUSH_INTERVAL": 0.05}, redis_client=redis_client)
    client = app.test_client()
    read(client, profile_url, 3)  # the first request pushes at once; the others wait for the timer
    deadline = time.monotonic() + 5

    while read_from_redis(redis_client, time.time()).get("profile", {}).get("since_start", {}).get("hit") != 2:
        assert time.monotonic() < deadline, "the idle process never pushed its counts"
        time.sleep(0.02)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
