"""When a Sentinel primary with no replica in sync may take an invalidation on its own.

In Sentinel mode an invalidation counts as delivered once a replica holds it (``WAIT 1``), so
a failover cannot lose it. A primary that has no replica in sync gets no such
acknowledgement, and there are two very different reasons for it:

1. Its replicas are down. Then no failover can happen (the sentinels promote only a replica
   they can reach), a replica that comes back resynchronises from this primary and so
   receives every deletion, and if it is promoted later its other ``run_id`` makes every
   instance replay the outbox window into it before serving from it (``cache.epoch``).
   Taking the invalidation alone loses nothing.
2. A failover is under way: the primary is being left (its replica was just promoted), or
   it was just promoted and the old primary, still up and still answering the clients
   connected to it, has not yet been turned into its replica. Then a deletion applied here
   alone is missing on the other node, which clients may be reading from: it must not count.

A primary cannot tell these apart by itself (in both it simply sees no replica). The
sentinels can: in case 1 every sentinel names this very server (by ``run_id``) as the
primary and flags every replica it knows as down or unreachable; in case 2 at least one
sentinel either names the other node, or knows the other node as a replica it can still
reach. `lone_primary_check` asks every configured sentinel, after the invalidation was
applied (so a sentinel that already switched, and any instance that learnt the new primary
from it, is seen), and answers no if any sentinel cannot be asked.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis.sentinel import SentinelConnectionPool

DOWN_FLAGS = frozenset({"s_down", "o_down", "disconnected"})
"""A replica flagged so by a sentinel cannot be promoted by it (``sentinelSelectSlave``)."""


def lone_primary_check(client: Any) -> Callable[[str], bool] | None:
    """For a Sentinel-managed `client`: ``check(run_id)``, True when a primary with no replica in sync may
    take invalidations alone (every sentinel names it, every replica is down); None for other clients."""
    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, SentinelConnectionPool):
        return None
    sentinels, service = pool.sentinel_manager.sentinels, pool.service_name

    def check(run_id: str) -> bool:
        if not run_id:
            return False
        for sentinel in sentinels:
            try:
                master = _fields(sentinel.execute_command("SENTINEL", "MASTER", service))
                replicas = [_fields(r) for r in sentinel.execute_command("SENTINEL", "REPLICAS", service)]
            except redis.RedisError:
                return False  # a sentinel we cannot ask may be the one that switched
            if master.get("runid") != run_id or not DOWN_FLAGS.isdisjoint(_flags(master)):
                return False
            if any(DOWN_FLAGS.isdisjoint(_flags(replica)) for replica in replicas):
                return False
        return True
    return check


def _fields(reply: Any) -> dict[str, str]:
    """A sentinel's flat [key, value, ...] reply as a dict of strings."""
    if isinstance(reply, dict):  # a client that parses the reply itself
        return {_text(k): _text(v) for k, v in reply.items()}
    items = [_text(item) for item in reply]
    return dict(zip(items[::2], items[1::2]))


def _flags(fields: dict[str, str]) -> set[str]:
    return set(fields.get("flags", "").split(","))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
