"""Fixtures for the world (app, database, fake Redis, clock) and factories for data."""
from __future__ import annotations

import io
import json
import os
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import fakeredis
import pytest
from PIL import Image
from sqlalchemy import event, text

from models import Flyer, FlyerImage, db
from service import create_app

SQLITE = "sqlite"
POSTGRES_URL = os.environ.get("DATABASE_URL", "")
BACKENDS = [SQLITE] + (["postgresql"] if POSTGRES_URL.startswith("postgres") else [])
FAST_HASH = "pbkdf2:sha256:1000"
TEST_SECRET = "test-secret-key-that-is-long-enough-for-hs256"


class FakeClock:
    """A clock the test moves by hand; it starts at the real time, to the second.

    Moving it also ages the fake Redis's keys by as much, so expiries follow the same clock.
    """

    def __init__(self, redis: Any) -> None:
        self.now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
        self.redis = redis

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        step = timedelta(**delta)
        self.now += step
        elapsed_ms = int(step.total_seconds() * 1000)
        for key in self.redis.scan_iter():
            remaining = self.redis.pttl(key)
            if remaining < 0:
                continue
            if remaining <= elapsed_ms:
                self.redis.delete(key)
            else:
                self.redis.pexpire(key, remaining - elapsed_ms)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == SQLITE:
        return f"sqlite:///{tmp_path / 'test.db'}"
    return POSTGRES_URL


@pytest.fixture
def clock(redis_client: Any) -> FakeClock:
    return FakeClock(redis_client)


@pytest.fixture
def redis_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def redis_client(redis_server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=redis_server)


@pytest.fixture
def app_config(database_url: str, tmp_path: Any, clock: FakeClock) -> dict[str, Any]:
    from service.config import load_config
    return {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": load_config({"DATABASE_URL": database_url})["SQLALCHEMY_DATABASE_URI"],
        "MEDIA_ROOT": str(tmp_path / "media"),
        "RATE_LIMIT_ENABLED": False,
        "PASSWORD_HASH_METHOD": FAST_HASH,
        "SECRET_KEY": TEST_SECRET,
        "CLOCK": clock,
        "CACHE_AUDIT_FRACTION": 0.0,  # the staleness audit's background reads only where a test asks for them
    }


@pytest.fixture
def app(app_config: dict[str, Any], redis_client: Any) -> Iterator[Any]:
    app = create_app(app_config, redis_client=redis_client)
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            db.create_all()
            db.session.execute(text("TRUNCATE flyer_images, flyers, users RESTART IDENTITY CASCADE"))
            db.session.commit()
        else:
            db.create_all()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def register(client: Any):
    """Register a user through the API; return ``(user_id, auth headers)``."""
    counter = iter(range(1, 10**6))

    def register(username: str | None = None, **fields: Any) -> tuple[int, dict[str, str]]:
        name = username or f"user{next(counter)}"
        body = {"email": f"{name}@example.com", "password": "password123", "username": name, **fields}
        response = client.post("/api/v1/auth/register", json=body)
        assert response.status_code == 201, response.json
        return response.json["user_id"], {"Authorization": f"Bearer {response.json['token']}"}

    return register


@pytest.fixture
def add_flyer(app: Any, clock: FakeClock):
    """Insert a flyer through the ORM session (so invalidation runs); return its id."""
    def add_flyer(creator_id: int, *, valid_from: datetime | None = None, valid_until: datetime | None = None,
                  created_at: datetime | None = None, title: str = "Bakery sale", images: int = 1) -> int:
        with app.app_context():
            flyer = Flyer(creator_id=creator_id, title=title, description="Fresh bread",
                          location_address="Main St. 1, Zurich", lat=47.37, lng=8.54,
                          valid_from=valid_from or clock.now - timedelta(hours=1),
                          valid_until=valid_until or clock.now + timedelta(days=30),
                          created_at=created_at or clock.now)
            flyer.images = [FlyerImage(order=n, storage_key=f"flyers/x/{n}.jpg") for n in range(images)]
            db.session.add(flyer)
            db.session.commit()
            return flyer.id
    return add_flyer


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


def jpeg_bytes(size: tuple[int, int] = (800, 600), color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def jpeg() -> bytes:
    return jpeg_bytes()


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
    app = create_app({"SQLALCHEMY_DATABASE_URI": database}, redis_client=fakeredis.FakeRedis())
    with app.app_context():
        db.create_all()
        db.engine.dispose()
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
