"""The profile service: a Flask application serving profiles and creators' flyer pages."""
from __future__ import annotations

import os
import random
from typing import Any, Mapping

import redis
from flask import Flask, Response, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from werkzeug.routing import BaseConverter

from cache import Breaker, ReadThroughCache, make_client, make_near_cache
from models import base as models_base
from models import db
from service import invalidation
from service.config import load_config
from service.errors import register_error_handlers
from service.extension import EXTENSION, Services
from service.fast_path import CachedReads
from service.outbox import Outbox
from service.storage import LocalStorage, storage_from_url
from service.telemetry import ENDPOINT, Telemetry, Timed

MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")


class IdConverter(BaseConverter):
    """A positive integer id that fits a 64-bit column; anything else is not a route (404)."""

    regex = r"[1-9][0-9]{0,17}"

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
    app.url_map.converters["id"] = IdConverter
    app.json.sort_keys = False

    db.init_app(app)
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
                          redis_ok=lambda: breaker.state == "closed")
    app.extensions[EXTENSION] = Services(
        cache=cache,
        redis=client,
        storage=storage_from_url(settings["STORAGE_URL"]) if settings["STORAGE_URL"] else LocalStorage(
            settings["MEDIA_ROOT"]),
        clock=settings.get("CLOCK", models_base.utcnow),
        telemetry=telemetry,
        outbox=outbox,
        rng=random.Random(),
    )

    from service import auth, docs, flyers, health, media, openapi, operations, profiles
    app.config["RATELIMIT_ENABLED"] = app.config["RATE_LIMIT_ENABLED"]
    limiter = Limiter(get_remote_address, app=app,
                      storage_uri=_limiter_storage(app.config), headers_enabled=True,
                      swallow_errors=True, key_prefix="pf-ratelimit")
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
    if app.config["CACHE_FAST_PATH"]:
        app.wsgi_app = CachedReads(app.wsgi_app, cache, app.config)
    app.wsgi_app = Timed(app.wsgi_app, telemetry)
    return app


def _outbox(app: Flask, cache: ReadThroughCache) -> Outbox:
    """The outbox deliverer of this app; its thread starts with the first cache lookup of each process."""
    settings = app.config
    with app.app_context():
        engine = db.engine
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


def _limiter_storage(settings: Mapping[str, Any]) -> str:
    """The rate limiter's storage URI (the `limits` package's schemes) for the Redis deployment mode."""
    mode, url = settings["REDIS_MODE"], settings["REDIS_URL"]
    if mode == "sentinel" and settings["REDIS_SENTINELS"]:
        nodes = ",".join(f"{host}:{port}" for host, port in settings["REDIS_SENTINELS"])
        return f"redis+sentinel://{nodes}/{settings['REDIS_SENTINEL_MASTER']}"
    if mode == "cluster" and url:
        return "redis+cluster://" + url.split("://", 1)[1].split("/", 1)[0]
    return url or "memory://"


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
    """Keep Retry-After on 429 and 503 only; the rate limiter adds it to every answer it counts."""
    if response.status_code not in (429, 503):
        response.headers.pop("Retry-After", None)
    return response
