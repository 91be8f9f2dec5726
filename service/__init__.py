"""The profile service: a Flask application serving profiles and creators' flyer pages."""
from __future__ import annotations

import os
import random
from typing import Any, Mapping

import redis
from flask import Flask, Response, request
from sqlalchemy import event
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from werkzeug.routing import BaseConverter

from cache import Breaker, ReadThroughCache, make_client, make_near_cache
from models import base as models_base
from models import db
from models.base import MAX_ID
from service import invalidation
from service.config import load_config
from service.database import ping_idle_connections
from service.http import NoSessions
from service.edge import Edge, number_pattern
from service.errors import JSONErrors, register_error_handlers
from service.extension import EXTENSION, Services
from service.fast_path import CachedReads
from service.outbox import Outbox
from service.storage import LocalStorage, storage_from_url
from service.audit import Auditor
from service.logging_setup import configure_logging
from service.telemetry import ENDPOINT, Observed, Telemetry, default_instance

MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")


class IdConverter(BaseConverter):
    """A positive integer id that the id columns can hold (1 to MAX_ID); anything else is not a route (404)."""

    regex = number_pattern(MAX_ID)  # a larger id matches no rule: 404, never an out-of-range SQL parameter

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: Any) -> str:
        return str(value)


def create_app(config: Mapping[str, Any] | None = None, *, redis_client: Any = None) -> Flask:
    """Build the application; ``config`` overrides the environment.

    ``redis_client`` (e.g. a ``fakeredis.FakeRedis``, which needs ``fakeredis[lua]``) replaces ``REDIS_URL``;
    ``service.testing`` builds test apps this way.
    """
    app = Flask(__name__)
    app.config.update(load_config())
    app.config.update(config or {})
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False  # "//" would answer a 308 redirect with an HTML body; it is a 404 like any unknown path
    app.url_map.converters["id"] = IdConverter
    app.json.sort_keys = False
    app.session_interface = NoSessions()

    configure_logging(app.config["LOG_LEVEL"])
    db.init_app(app)
    with app.app_context():
        ping_idle_connections(db.engine, app.config["DB_PING_IDLE_SECONDS"])
    Migrate(app, db, directory=MIGRATIONS)
    invalidation.listen()

    settings = app.config
    client = redis_client if redis_client is not None else make_client(
        settings["REDIS_URL"], mode=settings["REDIS_MODE"], sentinels=settings["REDIS_SENTINELS"],
        sentinel_master=settings["REDIS_SENTINEL_MASTER"], connect_timeout=settings["REDIS_SOCKET_TIMEOUT"],
        socket_timeout=settings["REDIS_SOCKET_TIMEOUT"])
    _require_lua(client)
    breaker = Breaker(threshold=settings["CACHE_BREAKER_THRESHOLD"], base_delay=settings["CACHE_BREAKER_BASE_DELAY"],
                      max_delay=settings["CACHE_BREAKER_MAX_DELAY"])
    cache = ReadThroughCache(client, breaker=breaker, lease_ttl=settings["CACHE_LEASE_TTL"],
                             wait_timeout=settings["CACHE_LEASE_WAIT"],
                             near=make_near_cache(client, max_bytes=settings["CACHE_NEAR_MAX_BYTES"],
                                                  window=settings["CACHE_NEAR_PROOF_MS"] / 1000))
    outbox = _outbox(app, cache)
    telemetry = Telemetry(cache.stats, client, interval=settings["METRICS_FLUSH_INTERVAL"],
                          instance=settings["METRICS_INSTANCE"] or default_instance(),
                          metrics_dir=settings["METRICS_DIR"], breaker=breaker, near=cache.near,
                          # Only single mode without a URL is the in-process fakeredis (Sentinel needs no URL).
                          embedded=redis_client is None and settings["REDIS_URL"] is None
                          and settings["REDIS_MODE"] == "single",
                          redis_ok=lambda: breaker.state == "closed")
    audit = Auditor(app, cache.stats, client, fraction=settings["CACHE_AUDIT_FRACTION"],
                    grace=settings["CACHE_AUDIT_GRACE"], max_per_second=settings["CACHE_AUDIT_MAX_PER_SECOND"])
    app.extensions[EXTENSION] = Services(
        cache=cache,
        redis=client,
        storage=storage_from_url(settings["STORAGE_URL"]) if settings["STORAGE_URL"] else LocalStorage(
            settings["MEDIA_ROOT"]),
        clock=settings.get("CLOCK", models_base.utcnow),
        telemetry=telemetry,
        outbox=outbox,
        outbox_backlog=lambda: outbox.backlog,
        rng=random.Random(),
        audit=audit,
    )

    from service import auth, docs, flyers, health, media, openapi, operations, profiles
    app.config["RATELIMIT_ENABLED"] = app.config["RATE_LIMIT_ENABLED"]
    storage_uri, storage_options = _limiter_storage(client, app.config)
    limiter = Limiter(get_remote_address, app=app, storage_uri=storage_uri, storage_options=storage_options,
                      headers_enabled=True, swallow_errors=True, in_memory_fallback_enabled=True,
                      key_prefix="pf-ratelimit")
    limiter.limit(app.config["RATE_LIMIT_AUTH"])(auth.bp)
    for blueprint in (auth.bp, profiles.bp, flyers.bp, media.bp, health.bp, openapi.bp, operations.bp,
                      docs.bp):
        app.register_blueprint(blueprint)
    app.before_request(_name_endpoint)
    # First in the list, so it runs after every other after_request hook (Flask runs them in reverse).
    app.after_request_funcs.setdefault(None, []).insert(0, _retry_after_only_when_waiting)
    register_error_handlers(app)

    from service.commands import register_commands
    register_commands(app)
    if not app.testing:  # under gunicorn this runs in each worker, after the fork
        from service.decoder import DecoderSettings, pool_for
        pool_for(DecoderSettings.from_config(app.config)).warm()
    if app.config["CACHE_FAST_PATH"]:
        app.wsgi_app = CachedReads(app.wsgi_app, cache, app.config, audit=audit,
                                   app_context=app.app_context)
    app.wsgi_app = Edge(app.wsgi_app, app.config, observe=app.config["CACHE_FAST_PATH"])
    app.wsgi_app = Observed(app.wsgi_app, telemetry, access_sample=settings["ACCESS_LOG_SAMPLE"],
                            wrapped=not app.config["CACHE_FAST_PATH"])  # the fast path does it for its hits
    app.wsgi_app = JSONErrors(app.wsgi_app, settings["DB_RETRY_AFTER_SECONDS"])  # outermost: always JSON
    return app


def _sqlite_wal(dbapi_connection: Any, connection_record: Any) -> None:
    """SQLite in write-ahead-log mode: readers never wait for a writer's commit (nor starve behind writers)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _outbox(app: Flask, cache: ReadThroughCache) -> Outbox:
    """The outbox deliverer of this app; its thread starts with the first cache lookup of each process."""
    settings = app.config
    with app.app_context():
        engine = db.engine
    if engine.dialect.name == "sqlite" and not event.contains(engine, "connect", _sqlite_wal):
        event.listen(engine, "connect", _sqlite_wal)
    longest_ttl = max(settings["CACHE_DEFAULT_TTL"], settings["CACHE_NEGATIVE_TTL"], settings["CACHE_LEASE_TTL"])
    outbox = Outbox(engine, cache, write_timeout=settings["CACHE_WRITE_DEADLINE"],
                    poll_interval=settings["OUTBOX_POLL_INTERVAL"], grace=settings["OUTBOX_GRACE"],
                    retention=longest_ttl + 60)
    cache.epoch.repair = outbox.replay_window
    if settings["OUTBOX_POLL_INTERVAL"] > 0:
        # Reads wait for the deliverer's first pass in every process (see Outbox.start).
        cache.suspended = True
        cache.on_suspended = outbox.start
    return outbox


def _limiter_storage(client: Any, settings: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Keep the rate limits in the cache's Redis, through its client's pool.

    So the limiter waits on Redis no longer than the cache does (the pool's socket timeouts,
    no retries), and a client passed to `create_app` (fakeredis in tests) is the one used,
    never a Redis named by the environment. While Redis fails the limiter counts in this
    process's memory (``in_memory_fallback_enabled``). A cluster client has no one pool: the
    limiter gets its own cluster connection, with the cache's socket timeout.
    """
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        return "redis://", {"connection_pool": pool}
    if settings["REDIS_MODE"] == "cluster" and settings["REDIS_URL"]:
        node = settings["REDIS_URL"].split("://", 1)[1].split("/", 1)[0]
        timeout = settings["REDIS_SOCKET_TIMEOUT"]
        return "redis+cluster://" + node, {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return "memory://", {}


def _name_endpoint() -> None:
    """Label the request's latency with the endpoint Flask routed it to (see service.telemetry)."""
    if request.endpoint is not None:  # None: no route matched (the label stays "unmatched")
        request.environ[ENDPOINT] = request.endpoint


def _require_lua(client: Any) -> None:
    """Refuse a fakeredis without Lua: every cache lookup runs a script and would fail, silently."""
    if not type(client).__module__.startswith("fakeredis"):
        return
    try:
        client.eval("return 1", 0)
    except redis.ResponseError as error:
        raise RuntimeError("fakeredis cannot run Lua scripts, which the cache needs: "
                           "pip install 'fakeredis[lua]' (it adds lupa)") from error
    except redis.RedisError:
        pass  # a fake server that is down: the cache's breaker deals with it like a real outage


def _retry_after_only_when_waiting(response: Response) -> Response:
    """Keep Retry-After where the client should wait: 429, 503, and a 409 for an Idempotency-Key still running.

    The rate limiter adds it to every answer it counts.
    """
    if response.status_code not in (429, 503) and not (
            response.status_code == 409 and "Idempotency-Key" in request.headers):
        response.headers.pop("Retry-After", None)
    return response
