"""Structured JSON logs: one access line per request, error lines with route, request id and traceback."""
import io
import json
import logging

import pytest

from models import db
from service import create_app
from service.logging_setup import ACCESS_LOGGER, LOGGER

pytestmark = pytest.mark.tdd_green


@pytest.fixture
def log_lines():
    """The JSON lines the service's log handler writes, parsed (each must parse)."""
    handlers = [h for name in (LOGGER, ACCESS_LOGGER) for h in logging.getLogger(name).handlers
                if getattr(h, "_profile_service", False)]
    stream = io.StringIO()
    previous = [handler.setStream(stream) for handler in handlers]

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield lines
    for handler, old in zip(handlers, previous):
        handler.setStream(old)


def access(lines):
    return [line for line in lines if line["logger"] == "service.access"]


def test_every_request_writes_one_json_access_line_with_the_echoed_request_id(client, register, log_lines):
    user_id, _ = register("alice")
    first = client.get(f"/api/v1/users/{user_id}/profile", headers={"X-Request-ID": "req-1"})
    second = client.get(f"/api/v1/users/{user_id}/profile")  # a fast-path hit

    lines = access(log_lines())[-2:]

    assert [line["request_id"] for line in lines] == ["req-1", second.headers["X-Request-ID"]]
    assert first.headers["X-Request-ID"] == "req-1"
    assert {k: lines[0][k] for k in ("method", "path", "status", "cache", "level")} == {
        "method": "GET", "path": f"/api/v1/users/{user_id}/profile", "status": 200, "cache": "miss", "level": "INFO"}
    assert lines[1]["cache"] == "hit" and lines[1]["endpoint"] == "profiles.get_profile"
    assert lines[0]["duration_ms"] >= 0 and lines[0]["time"].startswith("20")


def test_the_access_line_names_the_authenticated_user(client, register, log_lines):
    user_id, headers = register("bob")

    client.get("/api/v1/users/me/profile", headers=headers)

    assert access(log_lines())[-1]["user_id"] == user_id


def test_a_500_logs_an_error_line_with_route_request_id_and_traceback(app, client, log_lines):
    @app.get("/boom/<int:n>")
    def boom(n):
        raise RuntimeError("kaboom")

    response = client.get("/boom/3", headers={"X-Request-ID": "trace-me"})

    assert response.status_code == 500 and response.headers["X-Request-ID"] == "trace-me"
    error = next(line for line in log_lines() if line["level"] == "ERROR")
    assert error["request_id"] == "trace-me" and error["route"] == "/boom/<int:n>" and error["path"] == "/boom/3"
    assert "RuntimeError: kaboom" in error["exc_info"] and "Traceback" in error["exc_info"]
    assert access(log_lines())[-1]["status"] == 500


@pytest.fixture
def make_app(app_config, redis_client):
    made = []

    def make(**settings):
        app = create_app({**app_config, **settings}, redis_client=redis_client)
        with app.app_context():
            db.create_all()
        made.append(app)
        return app

    yield make
    for app in made:
        with app.app_context():
            db.engine.dispose()
    logging.getLogger(LOGGER).setLevel(logging.INFO)


def test_access_lines_can_be_sampled(make_app, log_lines):
    client = make_app(ACCESS_LOG_SAMPLE=0.0).test_client()

    for _ in range(20):
        client.get("/healthz")

    assert access(log_lines()) == []


def test_a_warning_log_level_leaves_out_access_lines(make_app, log_lines):
    client = make_app(LOG_LEVEL="WARNING").test_client()

    client.get("/healthz")

    assert access(log_lines()) == []
