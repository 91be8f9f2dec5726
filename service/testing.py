"""A kit for tests that run the service: fakeredis, SQLite, a fake clock, data helpers, a pytest plugin.

Enable the plugin in your ``conftest.py`` with ``pytest_plugins = ["service.testing"]`` (or run
``pytest -p service.testing``). Its fixtures: ``app`` (the service on fakeredis and a SQLite file in
``tmp_path``, fast password hashing, no rate limits, nothing read from ``REDIS_URL``), ``client``,
``live_service`` (the app on a real HTTP port), ``clock``, ``redis_client``, ``register``,
``add_flyer``, ``cache_events`` and ``jpeg``. Override ``database_url`` or ``app_config`` to change
the database or a setting. Outside pytest, ``make_app()`` builds the same app on in-memory SQLite.
"""
from __future__ import annotations

import io
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import fakeredis
import pytest
from flask import Flask
from PIL import Image
from sqlalchemy import text
from werkzeug.serving import make_server

from models import Flyer, FlyerImage, db
from service import create_app
from service.config import load_config
from service.extension import EXTENSION

FAST_HASH = "pbkdf2:sha256:1000"  # a registration costs ~1 ms instead of scrypt's ~180 ms
TEST_SECRET = "test-secret-key-that-is-long-enough-for-hs256"
PASSWORD = "password123"

__all__ = ["FAST_HASH", "TEST_SECRET", "PASSWORD", "FakeClock", "CacheEvents", "LiveService", "service_config",
           "make_app", "create_tables", "dispose_app", "register_user", "add_flyer", "jpeg_bytes"]


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
        """Move the clock forward by ``timedelta(**delta)`` and age every fakeredis key with it."""
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


def service_config(*, database_url: str = "sqlite://", media_root: str | None = None,
                   clock: Callable[[], datetime] | None = None, **overrides: Any) -> dict[str, Any]:
    """Return settings for a test app: no rate limits, fast hashing, no Redis taken from the environment."""
    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": load_config({"DATABASE_URL": database_url})["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": None,  # a REDIS_URL in the environment must never receive a test's writes
        "MEDIA_ROOT": media_root or tempfile.mkdtemp(prefix="profile-service-media-"),
        "RATE_LIMIT_ENABLED": False,
        "PASSWORD_HASH_METHOD": FAST_HASH,
        "SECRET_KEY": TEST_SECRET,
        "OUTBOX_POLL_INTERVAL": 0,  # no deliverer thread: a test's own writes deliver their outbox rows
        "CACHE_AUDIT_FRACTION": 0.0,  # no background re-reads of hits (the staleness audit) unless asked for
    }
    if clock is not None:
        config["CLOCK"] = clock
    config.update(overrides)
    return config


def create_tables(app: Flask) -> None:
    """Create the schema; on PostgreSQL also empty every table and restart the ids at 1."""
    with app.app_context():
        db.create_all()
        if db.engine.dialect.name == "postgresql":
            tables = ", ".join(table.name for table in db.metadata.sorted_tables)
            db.session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            db.session.commit()


def make_app(config: dict[str, Any] | None = None, *, redis_client: Any = None,
             clock: FakeClock | None = None) -> Flask:
    """Build the service with its tables, on fakeredis (``clock``'s, if given) and in-memory SQLite by default.

    ``config`` is applied over ``service_config()``; pass a ``clock`` to move time by hand.
    """
    if redis_client is None:
        redis_client = clock.redis if clock is not None else fakeredis.FakeRedis(server=fakeredis.FakeServer())
    app = create_app(service_config(clock=clock, **(config or {})), redis_client=redis_client)
    create_tables(app)
    return app


def dispose_app(app: Flask) -> None:
    """Close the app's database connections."""
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def register_user(client: Any, username: str, *, password: str = PASSWORD,
                  **fields: Any) -> tuple[int, dict[str, str]]:
    """Register ``username`` through the API with a Flask test client; return ``(user_id, auth headers)``."""
    body = {"email": f"{username}@example.com", "password": password, "username": username, **fields}
    response = client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 201, response.json
    return response.json["user_id"], {"Authorization": f"Bearer {response.json['token']}"}


def add_flyer(app: Flask, creator_id: int, *, valid_from: datetime | None = None,
              valid_until: datetime | None = None, created_at: datetime | None = None,
              title: str = "Bakery sale", images: int = 1) -> int:
    """Insert a flyer through the ORM session (so the cache is invalidated as for an API write); return its id.

    By default it is valid from an hour ago (on the app's clock) for 30 days. Its images are
    placeholders without files: post through ``POST /api/v1/flyers`` when the pictures matter.
    """
    with app.app_context():
        now = app.extensions[EXTENSION].clock()
        flyer = Flyer(creator_id=creator_id, title=title, description="Fresh bread",
                      location_address="Main St. 1, Zurich", lat=47.37, lng=8.54,
                      valid_from=valid_from or now - timedelta(hours=1),
                      valid_until=valid_until or now + timedelta(days=30),
                      created_at=created_at or now)
        flyer.images = [FlyerImage(order=n, storage_key=f"flyers/x/{n}.jpg") for n in range(images)]
        db.session.add(flyer)
        db.session.commit()
        return flyer.id


def jpeg_bytes(size: tuple[int, int] = (800, 600), color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    """Return a small solid-colour JPEG."""
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


class CacheEvents:
    """The cache's lookups and invalidations since it was made (or since ``reset()``), per key family.

    Families: ``profile``, ``flyer_page``, ``flyer``. Results: ``hit``, ``miss``, ``lease_wait``,
    ``lease_timeout``, ``stale``, ``error``.
    """

    def __init__(self, app: Flask) -> None:
        self._stats = app.extensions[EXTENSION].cache.stats
        self._start = self._stats.snapshot()

    def reset(self) -> None:
        """Count from now on."""
        self._start = self._stats.snapshot()

    def counts(self, family: str) -> dict[str, int]:
        """Lookups of ``family`` by result, plus ``invalidations``."""
        now, start = self._stats.snapshot(), self._start
        results = now["requests"].get(family, {})
        before = start["requests"].get(family, {})
        counts = {result: n - before.get(result, 0) for result, n in results.items() if n - before.get(result, 0)}
        invalidated = now["invalidations"].get(family, 0) - start["invalidations"].get(family, 0)
        return {**counts, "invalidations": invalidated} if invalidated else counts

    def hits(self, family: str) -> int:
        return self.counts(family).get("hit", 0)

    def misses(self, family: str) -> int:
        return self.counts(family).get("miss", 0)

    def invalidations(self, family: str) -> int:
        return self.counts(family).get("invalidations", 0)


@dataclass
class LiveService:
    """The app served over HTTP on a loopback port by a thread."""

    app: Flask
    url: str


# ---- the pytest plugin ------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--live-service-port", type=int, default=0,
                     help="loopback port of the live_service fixture (default: any free port)")


@pytest.fixture
def redis_server() -> fakeredis.FakeServer:
    """The fake Redis server behind ``redis_client``."""
    return fakeredis.FakeServer()


@pytest.fixture
def redis_client(redis_server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """The fake Redis the app uses for everything (cache, counters, rate limits)."""
    return fakeredis.FakeRedis(server=redis_server)


@pytest.fixture
def clock(redis_client: Any) -> FakeClock:
    """The app's clock; ``clock.advance(minutes=5)`` moves it and ages fakeredis's keys alike."""
    return FakeClock(redis_client)


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    """The test's database: a SQLite file in ``tmp_path``. Override it to use another."""
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def app_config(database_url: str, tmp_path: Any, clock: FakeClock) -> dict[str, Any]:
    """The app's settings (``service_config()``); override it to change one."""
    return service_config(database_url=database_url, media_root=str(tmp_path / "media"), clock=clock)


@pytest.fixture
def app(app_config: dict[str, Any], redis_client: Any) -> Iterator[Flask]:
    """The service with its tables, on fakeredis."""
    app = create_app(app_config, redis_client=redis_client)
    create_tables(app)
    yield app
    dispose_app(app)


@pytest.fixture
def client(app: Flask) -> Any:
    """A Flask test client of ``app``."""
    return app.test_client()


@pytest.fixture
def live_service_port(request: pytest.FixtureRequest) -> int:
    """The port ``live_service`` binds: ``--live-service-port``, or 0 for any free one."""
    return request.config.getoption("live_service_port")


@pytest.fixture
def live_service(app: Flask, live_service_port: int) -> Iterator[LiveService]:
    """``app`` served by a real HTTP server on a loopback port, for HTTP clients of your own."""
    server = make_server("127.0.0.1", live_service_port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield LiveService(app=app, url=f"http://127.0.0.1:{server.server_port}")
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def register(client: Any) -> Callable[..., tuple[int, dict[str, str]]]:
    """Register a user through the API; ``register("alice")`` returns ``(user_id, auth headers)``."""
    counter = iter(range(1, 10**6))

    def register(username: str | None = None, **fields: Any) -> tuple[int, dict[str, str]]:
        return register_user(client, username or f"user{next(counter)}", **fields)

    return register


@pytest.fixture(name="add_flyer")
def add_flyer_fixture(app: Flask) -> Callable[..., int]:
    """Insert a flyer valid now for ``creator_id`` (see ``service.testing.add_flyer``); return its id."""
    def add(creator_id: int, **fields: Any) -> int:
        return add_flyer(app, creator_id, **fields)
    return add


@pytest.fixture
def cache_events(app: Flask) -> CacheEvents:
    """Cache hits, misses and invalidations per key family, counted from the start of the test."""
    return CacheEvents(app)


@pytest.fixture
def jpeg() -> bytes:
    """An 800x600 JPEG."""
    return jpeg_bytes()
