"""The whole service on a Redis Cluster and on a Sentinel group: readiness, shared counters, reads and writes."""
from __future__ import annotations

import pytest

from cache.client import close_client
from service import create_app
from service.testing import create_tables, register_user, service_config

pytestmark = pytest.mark.tdd_green


@pytest.fixture(params=["cluster", "sentinel"])
def redis_settings(request):
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return {"REDIS_MODE": "cluster", "REDIS_URL": cluster.url}
    group = request.getfixturevalue("sentinel_group")
    group.flush()
    return {"REDIS_MODE": "sentinel", "REDIS_SENTINELS": group.sentinels, "REDIS_SENTINEL_MASTER": group.master}


@pytest.fixture
def deployed_app(tmp_path, redis_settings):
    app = create_app(service_config(database_url=f"sqlite:///{tmp_path / 'app.db'}", media_root=str(tmp_path),
                                    **redis_settings))
    create_tables(app)
    yield app
    services = app.extensions["profile_service"]
    services.cache._scripts.close()
    if services.cache.near is not None:
        services.cache.near.close()
    close_client(services.redis)


def test_readiness_reports_the_cache_ok(deployed_app):
    assert deployed_app.test_client().get("/readyz").json == {"database": "ok", "cache": "ok"}


def test_a_write_is_read_back_and_then_served_from_the_cache(deployed_app):
    client = deployed_app.test_client()
    user_id, headers = register_user(client, "ada")
    client.patch("/api/v1/users/me/profile", json={"display_name": "Ada"}, headers=headers)

    answers = [client.get(f"/api/v1/users/{user_id}/profile").json["display_name"] for _ in range(3)]

    assert answers == ["Ada"] * 3
    assert deployed_app.extensions["profile_service"].cache.stats.snapshot()["requests"]["profile"]["hit"] >= 1


def test_the_counters_are_pushed_to_the_shared_redis(deployed_app):
    client = deployed_app.test_client()
    user_id, _ = register_user(client, "ada")
    client.get(f"/api/v1/users/{user_id}/profile")

    assert deployed_app.extensions["profile_service"].telemetry.push()
    assert client.get("/api/v1/cache/stats").status_code == 200


def test_the_rate_limiter_counts_in_the_deployed_redis(tmp_path, redis_settings):
    app = create_app(service_config(database_url=f"sqlite:///{tmp_path / 'app.db'}", media_root=str(tmp_path),
                                    RATE_LIMIT_ENABLED=True, RATE_LIMIT_AUTH="2 per minute", **redis_settings))
    create_tables(app)
    client = app.test_client()
    body = {"email": "x@example.com", "password": "password123"}
    try:
        statuses = [client.post("/api/v1/auth/login", json=body).status_code for _ in range(3)]
    finally:
        services = app.extensions["profile_service"]
        services.cache._scripts.close()
        if services.cache.near is not None:
            services.cache.near.close()
        close_client(services.redis)

    assert statuses[-1] == 429 and 429 not in statuses[:2], statuses
