"""Redis client factory: a real pooled client for a URL, in-process fakeredis otherwise."""
from __future__ import annotations

import fakeredis
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .keys import INVALIDATION_CHANNEL
from .near import NearCache


def make_client(
    url: str | None,
    *,
    connect_timeout: float = 0.1,
    socket_timeout: float = 0.1,
    health_check_interval: int = 30,
    max_connections: int | None = None,
) -> redis.Redis:
    """Return a bytes-mode Redis client for `url`, or an embedded fakeredis when `url` is None."""
    if url is None:
        # Lua scripts run through lupa; the server lives as long as the client.
        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    pool = redis.ConnectionPool.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        health_check_interval=health_check_interval,
        max_connections=max_connections,
        decode_responses=False,
        # Fail fast: the breaker and the loader fallback handle an outage, and a
        # retried stats MULTI/EXEC whose reply was lost would count twice.
        retry=Retry(NoBackoff(), 0),
    )
    return redis.Redis(connection_pool=pool)


def make_near_cache(client: redis.Redis, *, max_bytes: int, window: float = 0.03) -> NearCache | None:
    """A near cache in front of `client`, or None if `max_bytes` or `window` is 0 or `client` is the embedded fakeredis.

    The embedded cache serves one process, which gains nothing from copies of it.
    `window` is how old the proof of being caught up may be (see ``NearCache``); every
    write waits that long after its invalidation, so it bounds what copies cost writes.
    """
    if max_bytes <= 0 or window <= 0 or isinstance(client, fakeredis.FakeRedis):
        return None
    return NearCache.for_client(client, INVALIDATION_CHANNEL, max_bytes=max_bytes, window=window)
