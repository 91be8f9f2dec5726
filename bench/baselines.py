"""The apps the service is compared with, each served by the same gunicorn settings.

    gunicorn -c python:bench.gunicorn_conf --workers 4 --bind 127.0.0.1:PORT "bench.baselines:create('NAME')"

- ``floor-static``: an empty Flask route answering constant bytes (what Flask + gunicorn cost).
- ``floor-redis``: a Flask route answering one Redis GET of a preset key (the least a
  Redis-backed hit can cost).
- ``flask-caching``: the profile and creator-page endpoints written the idiomatic
  Flask-Caching way: ``@cache.cached(query_string=True)`` on views that return the dict the
  service's own loaders build (same queries, same JSON; ``service.reads`` run with a cache that
  only calls the loader), a RedisCache on db 1 under the ``fc:`` prefix, ``cache.delete_cached``
  after a profile write, and werkzeug's ETag/304 handling.
- ``no-cache``: the same views with no cache, so every request queries SQL.
- ``floor-sql``: the bare-query floor of a profile miss: a plain Flask route on the profile's
  path that runs the service's own profile statement (``models.queries.CREATOR_ROW``, compiled once
  to its PostgreSQL text) with psycopg over one kept autocommit connection, and answers the row
  (the user and its valid-flyer count / next boundary) as JSON.
- ``floor-sql-page``: the same for a creator page: the creator statement, then the page
  statement (``models.queries.PAGE_ROWS``: the page's flyers with their images joined), the
  rows as JSON. Neither floor has a cache, an ORM, a session or a pool.

Settings come from the environment, read by the service's own ``load_config``.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from flask import Flask, Response, abort, request

FLOOR_KEY = "bench:floor"
FLOOR_PATH = "/floor"
FLASK_CACHING_PREFIX = "fc:"
NAMES = ("floor-static", "floor-redis", "flask-caching", "no-cache", "floor-sql", "floor-sql-page")
# A profile-sized answer: the floors send as many bytes as a profile hit does.
FLOOR_BODY = (b'{"user_id":5,"username":"user4_1_1","display_name":"Demo user 4","bio":"Festival lover '
              b'from Zurich.","profile_picture_url":"http://127.0.0.1:8000/media/avatars/demo/91be85a8af1'
              b'e8299.jpg","profile_picture_thumbnail_url":"http://127.0.0.1:8000/media/avatars/demo/b4a89'
              b'195734e58a8_128.jpg","flyer_count":121,"created_at":"2026-08-24T01:21:43Z","updated_at":'
              b'"2026-08-24T01:21:43Z"}')


def create(name: str | None = None) -> Flask:
    """Build the baseline ``name`` (default: the BASELINE environment variable)."""
    name = name or os.environ["BASELINE"]
    if name == "floor-static":
        return _floor_static()
    if name == "floor-redis":
        return _floor_redis()
    if name in ("flask-caching", "no-cache"):
        return _endpoints(cached=name == "flask-caching")
    if name in ("floor-sql", "floor-sql-page"):
        return _floor_sql(page=name == "floor-sql-page")
    raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(NAMES)}")


def _floor_static() -> Flask:
    app = Flask(__name__)

    @app.get(FLOOR_PATH)
    def floor() -> Response:
        return Response(FLOOR_BODY, mimetype="application/json")

    return app


def _floor_redis() -> Flask:
    from cache import make_client
    from service.config import load_config

    app = Flask(__name__)
    client = make_client(load_config()["REDIS_URL"])  # the service's client: same pool, parser, timeouts

    @app.get(FLOOR_PATH)
    def floor() -> Response:
        body = client.get(FLOOR_KEY)
        if body is None:
            abort(404)
        return Response(body, mimetype="application/json")

    return app


def _floor_sql(*, page: bool) -> Flask:
    import datetime as dt

    import orjson
    import psycopg
    from sqlalchemy.dialects.postgresql import psycopg as pg_dialect

    from models.queries import CREATOR_ROW, PAGE_ROWS
    from service.config import load_config

    dialect = pg_dialect.dialect()
    creator_sql = str(CREATOR_ROW.compile(dialect=dialect))
    page_sql = str(PAGE_ROWS.compile(dialect=dialect))
    url = load_config()["SQLALCHEMY_DATABASE_URI"].replace("postgresql+psycopg://", "postgresql://")
    app = Flask(__name__)
    kept: list[psycopg.Connection] = []  # one connection per worker, opened after the fork

    def connection() -> psycopg.Connection:
        if not kept:
            kept.append(psycopg.connect(url, autocommit=True))
        return kept[0]

    def now() -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

    def as_json(cursor: psycopg.Cursor, rows: list[tuple]) -> list[dict[str, Any]]:
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row)) for row in rows]

    @app.get("/api/v1/users/<int:user_id>/profile")
    def profile(user_id: int) -> Response:
        cursor = connection().execute(creator_sql, {"user_id": user_id, "now": now()})
        rows = as_json(cursor, cursor.fetchall())
        if not rows:
            abort(404)
        return Response(orjson.dumps(rows[0]), mimetype="application/json")

    @app.get("/api/v1/users/<int:user_id>/flyers")
    def flyers(user_id: int) -> Response:
        page_number = int(request.args.get("page", 1))
        size = int(request.args.get("page_size", 20))
        moment = now()
        conn = connection()
        cursor = conn.execute(creator_sql, {"user_id": user_id, "now": moment})
        creator = as_json(cursor, cursor.fetchall())
        if not creator:
            abort(404)
        cursor = conn.execute(page_sql, {"user_id": user_id, "now": moment,
                                         "offset": (page_number - 1) * size, "limit": size})
        body = {"creator": creator[0], "results": as_json(cursor, cursor.fetchall())}
        return Response(orjson.dumps(body), mimetype="application/json")

    if not page:  # each floor serves only its own kind of miss
        app.view_functions["flyers"] = lambda user_id: abort(404)
    return app


class _NoCache:
    """Stands in for the service's ReadThroughCache: every read runs the service's own loader."""

    def get_or_load(self, family: str, key: str, loader: Callable[[], Any], **kwargs: Any) -> Any:
        return loader()


def _endpoints(*, cached: bool) -> Flask:
    import random
    from types import SimpleNamespace

    from cache import NOT_FOUND
    from models import User, db
    from models.base import utcnow
    from service import reads
    from service.auth import require_owner
    from service.config import load_config
    from service.extension import EXTENSION
    from service.http import base_url, json_body
    from service.schemas import PageArgsSchema, ProfileUpdateSchema

    app = Flask(__name__)
    app.config.update(load_config())
    app.json.sort_keys = False
    db.init_app(app)
    # The views call the service's own read functions (its queries, its JSON builders) with a cache
    # that just runs the loader: the same SQL and the same dicts, whatever those functions become.
    app.extensions[EXTENSION] = SimpleNamespace(cache=_NoCache(), clock=utcnow, rng=random.Random(), audit=None)

    def value(loaded: Any) -> Any:
        if loaded.value is NOT_FOUND:
            abort(404)
        return loaded.value  # a dict: Flask serializes it (and Flask-Caching pickles it)

    decorate: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda view: view  # noqa: E731
    cache = None
    if cached:
        from flask_caching import Cache
        cache = Cache(app, config={
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": app.config["REDIS_URL"],
            "CACHE_KEY_PREFIX": FLASK_CACHING_PREFIX,
            "CACHE_DEFAULT_TIMEOUT": int(app.config["CACHE_DEFAULT_TTL"]),
        })
        decorate = cache.cached(query_string=True)

    @app.get("/api/v1/users/<int:user_id>/profile")
    @decorate
    def get_profile(user_id: int) -> Any:
        return value(reads.read_profile(user_id, base_url()))

    @app.get("/api/v1/users/<int:user_id>/flyers")
    @decorate
    def list_flyers(user_id: int) -> Any:
        args = PageArgsSchema().load(request.args)
        return value(reads.read_creator_page(user_id, args["page"], args["page_size"], base_url()))

    @app.patch("/api/v1/users/<int:user_id>/profile")
    def patch_profile(user_id: int) -> Any:
        changes = ProfileUpdateSchema().load(json_body())
        user = db.session.get(User, require_owner(user_id))
        if user is None:
            abort(404)
        for field, new in changes.items():
            setattr(user, field, new)
        db.session.commit()
        if cache is not None:
            # The idiom: delete the view's key after the commit. Pages embed only the creator's
            # name and avatar, so a bio change leaves them alone.
            cache.delete_cached(get_profile, path=f"/api/v1/users/{user_id}/profile", query_args={})
        return get_profile(user_id)

    @app.after_request
    def conditional(response: Response) -> Response:
        # werkzeug's own ETag and If-None-Match handling, the usual way to get 304s in Flask.
        if request.method == "GET" and response.status_code == 200:
            response.add_etag()
            response.make_conditional(request)
        return response

    return app
