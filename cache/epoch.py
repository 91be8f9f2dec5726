"""Noticing a Redis that is not the one this cache last kept exact, and repairing it before use.

A Redis restarted from its RDB/AOF file, or a replica promoted by a failover, can hold
entries that were invalidated before (the deletions came after its snapshot, or were never
replicated). Every such server has a new ``run_id``. The epoch key holds the ``run_id`` of
the server whose entries were last repaired; a connection whose server's ``run_id`` differs
runs `repair` (the service replays the invalidations of the longest TTL's window from its
outbox) and only then records the new epoch and serves anything. A server restarted empty
has no epoch key: the same repair runs, and costs little. The check runs once per new
connection of the lookup path, which is the only path that answers hits from Redis.
"""
from __future__ import annotations

import logging
from typing import Callable

import redis

from .keys import PREFIX

log = logging.getLogger(__name__)

EPOCH_KEY = f"{PREFIX}:epoch"
"""String key: the run_id of the Redis server whose cache entries are known to be exact."""


def server_run_id(conn: redis.Connection) -> bytes:
    """The server's run_id (b"embedded" for a server without INFO, such as fakeredis)."""
    conn.send_command("INFO", "server")
    try:
        info = conn.read_response()
    except redis.ResponseError:
        return b"embedded"
    for line in info.splitlines():
        if line.startswith(b"run_id:"):
            return line[len(b"run_id:"):].strip()
    return b"embedded"


class EpochGuard:
    """`on_connect` hook of the lookup connection: repair a new or restored Redis before serving from it."""

    def __init__(self, repair: Callable[[], None] | None = None) -> None:
        self.repair = repair
        self.repairs = 0

    def __call__(self, conn: redis.Connection) -> None:
        run_id = server_run_id(conn)
        conn.send_command("GET", EPOCH_KEY)
        if conn.read_response() == run_id:
            return
        if self.repair is not None:
            log.warning("cache: Redis server %s is new to the cache (restart, failover or first start);"
                        " replaying recent invalidations before serving from it", run_id.decode())
            self.repair()  # raises if it could not: the connection is then not used
            self.repairs += 1
        conn.send_command("SET", EPOCH_KEY, run_id)
        conn.read_response()
