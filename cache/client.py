"""Redis client factory: a pooled client for one node, a Redis Cluster or a Sentinel-managed primary; fakeredis otherwise.

Three deployment modes (``REDIS_MODE``):

- ``single``: one Redis at ``url``. The lease scripts run over a per-process direct
  connection (``cache.scripts.DirectConnection``), the near cache subscribes there.
- ``cluster``: ``url`` names any node of a Redis Cluster; redis-py's ``RedisCluster``
  follows MOVED/ASK, a resharding and a failover (it refreshes its slot map and retries).
  Every script and multi-key command of the cache touches one hash tag (one slot). The
  lease scripts go through a second ``RedisCluster`` (``lookup_client``) whose every new
  connection runs the epoch check of its node (``cache.epoch``). The near cache subscribes
  on one primary; invalidations are published on every node (see ``make_near_cache``).
- ``sentinel``: the primary is found through the sentinels alone. Extra connections made
  by hand (the scripts' direct connection, the near cache's subscriber) ask the sentinels
  for the primary's address and connect to it as plain connections: a sentinel-managed
  connection class used outside its pool silently connects to localhost:6379 (redis-py 8.1).
  Invalidations wait until a replica has them (``WAIT 1``), so a failover cannot lose one
  that a write has been told about (see ``cache.invalidation``), unless every sentinel says
  the primary's replicas are down (``cache.sentinel``).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import fakeredis
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from .keys import INVALIDATION_CHANNEL
from .near import NearCache

MODES = ("single", "cluster", "sentinel")


def make_client(
    url: str | None,
    *,
    mode: str = "single",
    sentinels: Sequence[tuple[str, int]] = (),
    sentinel_master: str = "mymaster",
    connect_timeout: float = 0.1,
    socket_timeout: float = 0.1,
    health_check_interval: int = 30,
    max_connections: int | None = None,
) -> Any:
    """Return a bytes-mode client for `mode`, or an embedded fakeredis when single mode has no `url`."""
    if mode not in MODES:
        raise ValueError(f"unknown Redis mode {mode!r} (one of {', '.join(MODES)})")
    if mode == "cluster":
        if not url:
            raise ValueError("REDIS_MODE=cluster needs REDIS_URL naming a node of the cluster")
        return _cluster(url, dict(socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout,
                                  health_check_interval=health_check_interval, max_connections=max_connections))
    if mode == "sentinel":
        if not sentinels:
            raise ValueError("REDIS_MODE=sentinel needs REDIS_SENTINELS=host:port,...")
        # No retries on a sentinel: discovery moves on to the next one by itself, and redis-py's
        # default (10 retries, back-off up to 1 s) held a lookup or a write for seconds while
        # the sentinels were unreachable (a cut-off host: writes of 1.8-3 s, reads of 2.5 s).
        manager = Sentinel(list(sentinels), socket_timeout=socket_timeout,
                           sentinel_kwargs={"socket_timeout": max(socket_timeout, 0.5),
                                            "socket_connect_timeout": max(connect_timeout, 0.5),
                                            "retry": Retry(NoBackoff(), 0)})
        # Commands may retry once: the pool then asks the sentinels again (the primary moved).
        return manager.master_for(sentinel_master, socket_connect_timeout=connect_timeout,
                                  socket_timeout=socket_timeout, health_check_interval=health_check_interval,
                                  max_connections=max_connections, decode_responses=False,
                                  retry=Retry(NoBackoff(), 0))
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


class CacheCluster(RedisCluster):
    """redis-py's cluster client, raising its "no node reachable" errors as Redis errors.

    ``RedisClusterException`` (e.g. every startup node unreachable while the slot map is
    refreshed) is not a ``RedisError``; the cache's breaker and fallbacks catch Redis errors
    only, so it would surface as a 5xx.
    """

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as error:
            raise redis.ConnectionError(f"Redis Cluster unavailable: {error}") from error


def _cluster(url: str, settings: dict[str, Any],
             on_connect: Callable[[redis.Connection], None] | None = None) -> RedisCluster:
    settings = {k: v for k, v in settings.items() if v is not None}
    if on_connect is not None:
        settings["redis_connect_func"] = on_connect
    try:
        client = CacheCluster.from_url(
        url, decode_responses=False,
        # A MOVED, ASK or lost node makes the client refresh its slot map and retry; a
        # few short tries ride out a failover's switch without failing the request.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 5), **settings)
    except RedisClusterException as error:  # no node reachable to read the slot map from
        raise redis.ConnectionError(f"Redis Cluster at {url} unavailable: {error}") from error
    client.pf_clone = lambda hook: _cluster(url, settings, hook)
    return client


def mode_of(client: Any) -> str:
    """`single`, `cluster` or `sentinel`: how `client` reaches Redis."""
    if isinstance(client, RedisCluster):
        return "cluster"
    pool = getattr(client, "connection_pool", None)
    return "sentinel" if isinstance(pool, SentinelConnectionPool) else "single"


def connection_factory(client: redis.Redis, **overrides: Any) -> Callable[[], redis.Connection]:
    """Make plain connections to the server `client` talks to (in sentinel mode: the primary now)."""
    pool = client.connection_pool
    settings = dict(pool.connection_kwargs, **overrides)
    if not isinstance(pool, SentinelConnectionPool):
        return lambda: pool.connection_class(**settings)
    settings.pop("connection_pool", None)
    manager, service = pool.sentinel_manager, pool.service_name

    def connect() -> redis.Connection:
        host, port = manager.discover_master(service)
        return redis.Connection(**dict(settings, host=host, port=port))
    return connect


def lookup_client(client: RedisCluster, on_connect: Callable[[redis.Connection], None]) -> RedisCluster:
    """A second cluster client whose every new connection first runs `on_connect` (the epoch check)."""
    def hook(conn: redis.Connection) -> None:
        try:
            on_connect(conn)
        except redis.RedisError:
            raise
        except BaseException as error:  # the connection must not stay open and unchecked
            conn.disconnect()
            raise redis.ConnectionError(f"cache: epoch check failed: {error}") from error
    return client.pf_clone(hook)


def make_near_cache(client: Any, *, max_bytes: int, window: float = 0.03) -> NearCache | None:
    """A near cache in front of `client`, or None if `max_bytes` or `window` is 0 or `client` is the embedded fakeredis.

    The embedded cache serves one process, which gains nothing from copies of it. On a Redis
    Cluster the subscriber sits on one primary (``cluster_subscriber``) and every invalidation
    is published on every node directly (``cache.invalidation.publish_everywhere``), so the
    PONG of that one node proves the process caught up, as on a single node.
    `window` is how old the proof of being caught up may be (see ``NearCache``); every
    write waits that long after its invalidation, so it bounds what copies cost writes.
    """
    if max_bytes <= 0 or window <= 0 or isinstance(client, fakeredis.FakeRedis):
        return None
    connect = (cluster_subscriber(client) if isinstance(client, RedisCluster)
               else connection_factory(client, health_check_interval=0))
    return NearCache(connect, INVALIDATION_CHANNEL, max_bytes=max_bytes, window=window)


def cluster_subscriber(client: RedisCluster) -> Callable[[], redis.Connection]:
    """Make plain connections to the cluster's primaries, the next one at each call (the near cache's subscriber).

    Which node does not matter for exactness (every node gets every invalidation directly);
    the process id picks the first, so the processes spread over the primaries, and a node
    that failed is left for the next one when the near cache reconnects.
    """
    turn = [0]

    def connect() -> redis.Connection:
        primaries = sorted(client.get_primaries(), key=lambda node: node.name)
        if not primaries:
            raise redis.ConnectionError("Redis Cluster: no primary in the slot map")
        node = primaries[(os.getpid() + turn[0]) % len(primaries)]
        turn[0] += 1
        pool = client.get_redis_connection(node).connection_pool
        return pool.connection_class(**dict(pool.connection_kwargs, health_check_interval=0))
    return connect


def close_client(client: Any) -> None:
    """Close `client`'s connections, and in sentinel mode its connections to the sentinels too."""
    pool = getattr(client, "connection_pool", None)
    client.close()
    if isinstance(pool, SentinelConnectionPool):
        pool.disconnect()
        for sentinel in pool.sentinel_manager.sentinels:
            sentinel.close()
