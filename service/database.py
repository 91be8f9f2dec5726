"""Pool liveness: writes ping every connection they take; read-only loads only one idle for a while.

``pool_pre_ping`` costs a round trip on every checkout. A session (a write, or a read the
Flask views make) keeps it: a write that meets a dead connection could only answer 503, so
each of its checkouts is pinged and a dead connection replaced first. The cache's miss loads
(``service.reads.read_only``, inside ``read_only_checkouts()``) skip the ping unless the
connection has been idle in the pool for ``DB_PING_IDLE_SECONDS`` or more (0: always): a
connection in steady use was alive a moment ago, the ones that die unnoticed are mostly idle
ones (a server restart or an idle timeout during a quiet spell). A connection that died within
that window fails the load's statement instead; the load then marks it and every older
connection of the pool invalid (as SQLAlchemy does for a session) and runs once more on a
fresh one.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import Engine, event, exc

_IDLE_SINCE = "profile_service.idle_since"
_read_only = threading.local()


@contextmanager
def read_only_checkouts() -> Iterator[None]:
    """Checkouts made inside skip the ping of a connection idle for less than ``DB_PING_IDLE_SECONDS``."""
    _read_only.on = True
    try:
        yield
    finally:
        _read_only.on = False


def ping_idle_connections(engine: Engine, idle_seconds: float) -> None:
    """Ping on checkout every connection of ``engine``'s pool, but for read-only loads only idle ones."""
    clock = time.monotonic

    @event.listens_for(engine, "checkin")
    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = clock()

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if getattr(_read_only, "on", False):
            since = record.info.get(_IDLE_SINCE)
            if since is not None and clock() - since < idle_seconds:
                return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            if engine.dialect.is_disconnect(error, dbapi_connection, None):
                raise exc.DisconnectionError() from error  # the pool retries with a new connection
            raise
