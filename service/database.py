"""Pool liveness: ping a connection only when it has been idle for a while.

``pool_pre_ping`` costs a round trip on every checkout, that is on every request that touches
SQL. A connection in steady use was alive a moment ago; the ones that die unnoticed are mostly
the idle ones (a server restart or an idle timeout during a quiet spell). So the pool pings a
connection on checkout only when it has been idle in the pool for ``DB_PING_IDLE_SECONDS`` or
more (0: always, as ``pool_pre_ping`` did); a dead one is replaced before the request sees it.
A connection that died within that window fails its statement instead: SQLAlchemy then drops
it and every older connection of the pool, and the read-only loads (service.reads.read_only)
run once more on a fresh one.
"""
from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, event, exc

_IDLE_SINCE = "profile_service.idle_since"


def ping_idle_connections(engine: Engine, idle_seconds: float) -> None:
    """Ping on checkout the connections of ``engine``'s pool idle for at least ``idle_seconds``."""
    clock = time.monotonic

    @event.listens_for(engine, "checkin")
    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = clock()

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is not None and clock() - since < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            if engine.dialect.is_disconnect(error, dbapi_connection, None):
                raise exc.DisconnectionError() from error  # the pool retries with a new connection
            raise
