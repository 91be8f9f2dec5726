"""Health, readiness and the OpenAPI document."""
import pytest

pytestmark = pytest.mark.tdd_green


def test_healthz_answers_ok(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_answers_ok_when_database_and_cache_answer(client):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json == {"database": "ok", "cache": "ok"}


def test_readyz_stays_ready_with_the_cache_down(client, redis_server):
    redis_server.connected = False

    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json["cache"] == "degraded"


def test_openapi_documents_every_route(app, client):
    document = client.get("/openapi.json").json
    routes = {rule.rule.replace("<id:", "{").replace("<path:", "{").replace(">", "}")
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"}

    documented = set(document["paths"])

    assert document["openapi"].startswith("3.")
    assert {r.replace("{user_id}", "{user_id}") for r in routes} <= documented


def test_openapi_marks_picture_urls_nullable(client):
    profile = client.get("/openapi.json").json["components"]["schemas"]["Profile"]

    assert profile["properties"]["profile_picture_url"]["nullable"] is True


def test_an_unknown_path_is_404_json(client):
    response = client.get("/nope")

    assert response.status_code == 404
    assert response.json["error"]
