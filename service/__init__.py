"""The profile service: a Flask application serving profiles and creators' flyer pages."""
from __future__ import annotations

import os
import random
from typing import Any, Mapping

from flask import Flask, request
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
from service.storage import LocalStorage
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
    """Build the application; ``config`` overrides the environment, ``redis_client`` the cache's Redis."""
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
        settings["REDIS_URL"], connect_timeout=settings["REDIS_SOCKET_TIMEOUT"],
        socket_timeout=settings["REDIS_SOCKET_TIMEOUT"])
    breaker = Breaker(threshold=settings["CACHE_BREAKER_THRESHOLD"], base_delay=settings["CACHE_BREAKER_BASE_DELAY"],
                      max_delay=settings["CACHE_BREAKER_MAX_DELAY"])
    cache = ReadThroughCache(client, breaker=breaker, lease_ttl=settings["CACHE_LEASE_TTL"],
                             wait_timeout=settings["CACHE_LEASE_WAIT"],
                             near=make_near_cache(client, max_bytes=settings["CACHE_NEAR_MAX_BYTES"]))
    telemetry = Telemetry(cache.stats, client, interval=settings["METRICS_FLUSH_INTERVAL"],
                          redis_ok=lambda: breaker.state == "closed")
    app.extensions[EXTENSION] = Services(
        cache=cache,
        redis=client,
        storage=LocalStorage(settings["MEDIA_ROOT"]),
        clock=settings.get("CLOCK", models_base.utcnow),
        telemetry=telemetry,
        rng=random.Random(),
    )

    from service import auth, flyers, health, media, openapi, operations, profiles
    app.config["RATELIMIT_ENABLED"] = app.config["RATE_LIMIT_ENABLED"]
    limiter = Limiter(get_remote_address, app=app,
                      storage_uri=app.config["REDIS_URL"] or "memory://", headers_enabled=True,
                      swallow_errors=True, key_prefix="pf-ratelimit")
    limiter.limit(app.config["RATE_LIMIT_AUTH"])(auth.bp)
    for blueprint in (auth.bp, profiles.bp, flyers.bp, media.bp, health.bp, openapi.bp, operations.bp):
        app.register_blueprint(blueprint)
    app.before_request(_name_endpoint)
    register_error_handlers(app)

    from service.commands import register_commands
    register_commands(app)
    if not app.testing:  # under gunicorn this runs in each worker, after the fork
        from service.decoder import DecoderSettings, pool_for
        pool_for(DecoderSettings.from_config(app.config)).warm()
    if app.config["CACHE_FAST_PATH"]:
        app.wsgi_app = CachedReads(app.wsgi_app, cache, app.config)
    app.wsgi_app = Timed(app.wsgi_app, telemetry)
    return app


def _name_endpoint() -> None:
    """Label the request's latency with the endpoint Flask routed it to (see service.telemetry)."""
    if request.endpoint is not None:  # None: no route matched (the label stays "unmatched")
        request.environ[ENDPOINT] = request.endpoint
