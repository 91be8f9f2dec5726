"""The project's tests run on the testing kit it ships (service.testing): its fixtures and factories.

Here: the database backends every database test runs on, and fixtures only this project needs.
"""
from __future__ import annotations

import json
import os
import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
import redis
from sqlalchemy import event

from cache import make_client
from models import db

pytest.register_assert_rewrite("service.testing")  # before the import below, so its asserts explain themselves
from service.testing import (FAST_HASH, TEST_SECRET, FakeClock, dispose_app, jpeg_bytes,  # noqa: E402
                             make_app)

pytest_plugins = ["service.testing", "tests.deployments"]

__all__ = ["FAST_HASH", "TEST_SECRET", "FakeClock", "jpeg_bytes"]  # imported by test modules

REDIS_URL_TEST = os.environ.get("REDIS_URL_TEST", "redis://127.0.0.1:6379/15")
SQLITE = "sqlite"
POSTGRES_URL = os.environ.get("DATABASE_URL", "")
BACKENDS = [SQLITE] + (["postgresql"] if POSTGRES_URL.startswith("postgres") else [])


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Every database test runs on SQLite, and on PostgreSQL too when DATABASE_URL names one."""
    if request.param == SQLITE:
        return f"sqlite:///{tmp_path / 'test.db'}"
    return POSTGRES_URL


@pytest.fixture
def real_redis() -> Iterator[redis.Redis]:
    """The test Redis (REDIS_URL_TEST), emptied before and after; a test that needs it fails, never skips, without it."""
    client = make_client(REDIS_URL_TEST, connect_timeout=1.0, socket_timeout=1.0)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"test Redis at {REDIS_URL_TEST} is unreachable: {error}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def count_statements(app: Any):
    """Count the SQL statements run inside the ``with`` block."""
    @contextmanager
    def count_statements() -> Iterator[list[str]]:
        statements: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        with app.app_context():
            engine = db.engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            yield statements
        finally:
            event.remove(engine, "before_cursor_execute", record)
    return count_statements


# -- real servers of the operations tests (gunicorn instances, Prometheus) -----------------------

@pytest.fixture(scope="module")
def gunicorn_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, list[int]]]:
    """Two gunicorn instances (2 workers each) sharing one real Redis (REDIS_URL_TEST) and one database,
    and the ids of 10 users registered through them."""
    import redis as redis_py

    from tests.ops_servers import Instance, get

    redis_url = os.environ.get("REDIS_URL_TEST", "redis://127.0.0.1:6379/15")
    redis_py.Redis.from_url(redis_url).flushdb()  # fails (does not skip) without a Redis
    database = f"sqlite:///{tmp_path_factory.mktemp('ops') / 'ops.db'}"
    app = make_app({"SQLALCHEMY_DATABASE_URI": database})
    dispose_app(app)
    env = {"DATABASE_URL": database, "REDIS_URL": redis_url, "RATE_LIMIT_ENABLED": "false",
           "PASSWORD_HASH_METHOD": FAST_HASH, "SECRET_KEY": TEST_SECRET, "METRICS_FLUSH_INTERVAL": "0.2",
           "CACHE_AUDIT_FRACTION": "0", "METRICS_DIR": ""}
    first = Instance(env)
    second = None
    try:
        second = Instance(env)
        users = []
        for n in range(10):
            request = urllib.request.Request(
                first.url + "/api/v1/auth/register", method="POST", headers={"Content-Type": "application/json"},
                data=json.dumps({"email": f"ops{n}@example.com", "password": "password123",
                                 "username": f"ops{n}"}).encode())
            with urllib.request.urlopen(request, timeout=10) as response:
                users.append(json.loads(response.read())["user_id"])
        assert get(second.url + "/healthz")[0] == 200
        yield first, second, users
    finally:
        first.stop()
        if second is not None:
            second.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright; fails without it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                             args=["--no-sandbox"])
        yield browser
        browser.close()
