"""Noticing a Redis that is not the one this cache last kept exact, and repairing it before use.

A Redis restarted from its RDB/AOF file, or a replica promoted by a failover, can hold
entries that were invalidated before (the deletions came after its snapshot, or were never
replicated). Every such server has a new ``run_id``. The epoch key holds the ``run_id`` of
the server whose entries were last repaired; a connection whose server's ``run_id`` differs
runs `repair` (the service replays the invalidations of the longest TTL's window from its
outbox) and only then records the new epoch and serves anything. A server restarted empty
has no epoch key: the same repair runs, and costs little. The check runs once per new
connection of the lookup path, which is the only path that answers hits from Redis.

On a Redis Cluster every primary has its own ``run_id`` and its own data, so each has its
own epoch key: ``pf:1:{<tag>}:epoch``, with a hash tag chosen to fall in the first slot the
node serves (a key the node itself holds, and that a replica promoted in its place inherits
with the old primary's ``run_id``). Every new lookup connection checks the node it talks to.
A connection to a replica (no slots: the cluster client opens one only to read the slot map
from it) is not checked; lookups never go to a replica, and when one is promoted the client
refreshes its slot map, which closes the connections it had opened to read it, so the first
lookup there opens (and checks) a new one.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from typing import Callable

import redis
from redis.crc import key_slot

from .keys import PREFIX

log = logging.getLogger(__name__)

EPOCH_KEY = f"{PREFIX}:epoch"
"""String key: the run_id of the Redis server whose cache entries are known to be exact."""


def server_run_id(conn: redis.Connection) -> bytes:
    """The server's run_id (b"embedded" for a server without INFO, such as fakeredis)."""
    return _server_info(conn)[0]


def _server_info(conn: redis.Connection) -> tuple[bytes, bool]:
    """(run_id, whether the server is a Cluster node)."""
    conn.send_command("INFO", "server")
    try:
        info = conn.read_response()
    except redis.ResponseError:
        return b"embedded", False
    run_id, cluster = b"embedded", False
    for line in info.splitlines():
        if line.startswith(b"run_id:"):
            run_id = line[len(b"run_id:"):].strip()
        elif line.startswith(b"redis_mode:"):
            cluster = line.strip().endswith(b"cluster")
    return run_id, cluster


@lru_cache(maxsize=None)
def slot_epoch_key(slot: int) -> str:
    """An epoch key that hashes to `slot` (its hash tag found by counting; ~16k CRCs at worst, once per slot)."""
    n = 0
    while key_slot(f"e{n}".encode()) != slot:
        n += 1
    return f"{PREFIX}:{{e{n}}}:epoch"


def cluster_epoch_key(conn: redis.Connection) -> str | None:
    """The epoch key of the Cluster primary `conn` talks to; None if it serves no slot (a replica)."""
    conn.send_command("CLUSTER", "NODES")
    nodes = conn.read_response()
    if isinstance(nodes, bytes):
        nodes = nodes.decode()
    for line in nodes.splitlines():
        fields = line.split()
        if len(fields) > 2 and "myself" in fields[2].split(","):
            for part in fields[8:]:
                if part[:1].isdigit():
                    return slot_epoch_key(int(part.split("-")[0]))
    return None


class EpochGuard:
    """`on_connect` hook of the lookup connection: repair a new or restored Redis before serving from it."""

    def __init__(self, repair: Callable[[], None] | None = None) -> None:
        self.repair = repair
        self.repairs = 0

    def __call__(self, conn: redis.Connection) -> None:
        run_id, cluster = _server_info(conn)
        key = cluster_epoch_key(conn) if cluster else EPOCH_KEY
        if key is None:
            return  # a Cluster replica (see the module docstring)
        conn.send_command("GET", key)
        if conn.read_response() == run_id:
            return
        if self.repair is not None:
            log.warning("cache: Redis server %s is new to the cache (restart, failover or first start);"
                        " replaying recent invalidations before serving from it", run_id.decode())
            self.repair()  # raises if it could not: the connection is then not used
            self.repairs += 1
        conn.send_command("SET", key, run_id)
        conn.read_response()
