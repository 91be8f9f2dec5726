"""The cached reads: each one a cache key, a loader that builds the JSON from SQL, and a TTL.

A TTL never outlives the next ``valid_from`` or ``valid_until`` among the creator's flyers,
so a flyer appears on and leaves its creator's pages to the second with a warm cache.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

import psycopg
from flask import current_app
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from cache import NOT_FOUND, Claim, Entry, Loaded, keys
from cache.entries import from_loaded
from models import db, queries
from service.database import read_only_checkouts
from service.audit import Job
from service.extension import services
from service.representations import encode, flyer_json, media_prefix, page_json, profile_json


@dataclass(frozen=True, slots=True)
class Lookup:
    """Where one cached read lives: what ``ReadThroughCache.get_or_load`` and ``peek`` take."""

    family: str
    key: str
    variant: str
    generation_key: str | None = None
    endpoint: str = ""  # the Flask endpoint serving this read (latency label of fast-path hits)


def profile_lookup(user_id: int, base_url: str) -> Lookup:
    return Lookup("profile", keys.profile_key(user_id), base_url, endpoint="profiles.get_profile")


def page_lookup(user_id: int, page: int, page_size: int, base_url: str) -> Lookup:
    return Lookup("flyer_page", keys.pages_key(user_id), keys.page_field(page, page_size, base_url),
                  keys.generation_key(user_id), endpoint="flyers.list_creator_flyers")


def flyer_lookup(flyer_id: int, base_url: str) -> Lookup:
    return Lookup("flyer", keys.flyer_key(flyer_id), base_url, endpoint="flyers.get_flyer")


RELOAD = object()
"""``peek`` value that loads from the database without the cache (the staleness audit's re-read)."""
HITS = frozenset(("hit", "near_hit", "lease_wait"))

PEEK = "profile_service.peek"
"""WSGI environ key where the fast path leaves what its lookup found: a Claim on the miss, or a cached 404 Entry."""


@dataclass(frozen=True, slots=True)
class Failed:
    """``peek`` value: the fast path's load of this miss raised ``error``; the view raises it again."""

    error: Exception


def _read(lookup: Lookup, load, peek: Entry | Claim | Failed | None) -> Entry:
    if isinstance(peek, Failed):
        raise peek.error
    if isinstance(peek, Entry):  # a cached "not found" the fast path already looked up (and counted)
        return peek
    if peek is RELOAD:
        return from_loaded(load(), "audit")[0]
    entry = services().cache.get_or_load(lookup.family, lookup.key, load, variant=lookup.variant,
                                         generation_key=lookup.generation_key, claim=peek)
    audit = services().audit
    if audit is not None and entry.result in HITS and entry.body is not None and audit.sample() < audit.fraction:
        audit.submit(Job(lookup.family, lookup.key, lookup.variant, lookup.generation_key, entry.etag,
                         lambda: from_loaded(load(), "audit")[0].etag))
    return entry


def ttl_until(now: datetime, next_change: datetime | None, *, negative: bool = False) -> float:
    """Return a jittered TTL in seconds, cut short at the next validity boundary."""
    config = current_app.config
    if negative:
        ttl = config["CACHE_NEGATIVE_TTL"]
    else:
        jitter = config["CACHE_TTL_JITTER"]
        ttl = config["CACHE_DEFAULT_TTL"] * (1 - jitter * services().rng.random())
    if next_change is not None:
        ttl = min(ttl, (next_change - now).total_seconds())
    return max(ttl, 0.001)


_AUTOCOMMIT: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def read_only(load: Callable[[Any], Any]) -> Any:
    """Run ``load`` on a pool connection in autocommit (no BEGIN, no ROLLBACK: its statements'
    round trips only), once more on a fresh connection if the first one turns out dead.

    On PostgreSQL ``load`` gets the pool connection's psycopg connection itself
    (``models.queries.Psycopg``), elsewhere a SQLAlchemy connection. The pool pings a
    connection it hands out here only if it was idle for long (``service.database``): a
    read-only load can simply be run again instead.
    """
    engine = db.engine
    if engine.dialect.driver == "psycopg":
        return _read_only_psycopg(engine, load)
    autocommit = _AUTOCOMMIT.get(engine)
    if autocommit is None:
        autocommit = _AUTOCOMMIT[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    with read_only_checkouts():
        try:
            with autocommit.connect() as conn:
                return load(conn)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
        with autocommit.connect() as conn:  # the pool dropped the dead connections it had
            return load(conn)


def _read_only_psycopg(engine: Engine, load: Callable[[Any], Any]) -> Any:
    for attempt in (1, 2):
        try:
            with read_only_checkouts():
                pooled = engine.raw_connection()
        except psycopg.Error as error:  # no connection at all: as Engine.connect() raises it
            raise _wrapped(engine, error, dead=False) from error
        conn = pooled.driver_connection
        try:
            conn.autocommit = True  # an attribute while idle: no round trip
            try:
                return load(queries.Psycopg(conn, engine))
            finally:
                if not conn.closed:
                    conn.autocommit = False  # as the pool and the sessions expect it back
        except psycopg.Error as error:
            dead = engine.dialect.is_disconnect(error, conn, None)
            if dead:  # this one and every older connection of the pool, as a session's error does
                engine.pool._invalidate(pooled, error)
            if not dead or attempt == 2:
                raise _wrapped(engine, error, dead=dead) from error
        finally:
            pooled.close()


def _wrapped(engine: Engine, error: psycopg.Error, *, dead: bool) -> DBAPIError:
    """``error`` as SQLAlchemy raises it (the error handlers answer SQLAlchemy's exceptions)."""
    return DBAPIError.instance(None, None, error, psycopg.Error, connection_invalidated=dead,
                               dialect=engine.dialect)


def read_profile(user_id: int, base_url: str, peek: Entry | str | None = None) -> Entry:
    """Return the profile JSON of ``user_id`` from the cache, loading it on a miss."""
    def load(conn: Connection) -> Loaded:
        now = services().clock()
        row = queries.read_creator(conn, user_id, now)
        if row is None:
            return Loaded(NOT_FOUND, ttl_until(now, None, negative=True))
        stats = queries.stats_of(row)
        return Loaded(encode(profile_json(row, stats.valid_flyers, base_url)), ttl_until(now, stats.next_change))

    return _read(profile_lookup(user_id, base_url), lambda: read_only(load), peek)


def read_creator_page(user_id: int, page: int, page_size: int, base_url: str,
                      peek: Entry | str | None = None) -> Entry:
    """Return one page of the creator's valid flyers; not found for an unknown creator or a page past the end."""
    def load(conn: Connection) -> Loaded:
        now = services().clock()
        creator = queries.read_creator(conn, user_id, now)
        if creator is None:
            return Loaded(NOT_FOUND, ttl_until(now, None, negative=True))
        stats = queries.stats_of(creator)
        offset = (page - 1) * page_size
        if page > 1 and offset >= stats.valid_flyers:
            return Loaded(NOT_FOUND, ttl_until(now, stats.next_change, negative=True))
        flyers = queries.read_creator_page(conn, user_id, now, offset, page_size) if stats.valid_flyers else []
        media = media_prefix(base_url)
        body = page_json(stats.valid_flyers, page, page_size, f"{base_url}/api/v1/users/{user_id}/flyers",
                         [flyer_json(flyer, media, now, creator, images) for flyer, images in flyers])
        return Loaded(encode(body), ttl_until(now, stats.next_change))

    return _read(page_lookup(user_id, page, page_size, base_url), lambda: read_only(load), peek)


def read_flyer(flyer_id: int, base_url: str, peek: Entry | str | None = None) -> Entry:
    """Return the JSON of a flyer that is valid now; not found otherwise."""
    def load() -> Loaded:
        now = services().clock()
        flyer = queries.get_flyer(flyer_id)
        if flyer is None or flyer.valid_until <= now:
            return Loaded(NOT_FOUND, ttl_until(now, None, negative=True))
        if flyer.valid_from > now:
            return Loaded(NOT_FOUND, ttl_until(now, flyer.valid_from, negative=True))
        return Loaded(encode(flyer_json(flyer, media_prefix(base_url), now)), ttl_until(now, flyer.valid_until))

    return _read(flyer_lookup(flyer_id, base_url), load, peek)
