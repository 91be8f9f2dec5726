"""In-process copies of hot answers, kept exact by the invalidations Redis relays to every process.

Each process keeps one extra connection subscribed to the invalidation channel, on which
every invalidation publishes the hash tags it touched (``Invalidator``, after its deletions).
Before answering from its copies, the process reads whatever Redis has sent (one
non-blocking poll) and drops the copies of every tag named, so it never answers past an
invalidation that reached its socket. Writers make sure it has reached every socket before
they answer: ``Invalidator`` sends one more round trip after publishing, and Redis writes a
command's messages before it reads the next command (see ``docs/PERFORMANCE.md``).

Why a channel and not key tracking (``CLIENT TRACKING ON BCAST``, tried first): tracking
also reports every lease and fill, so each miss cost every process two messages to read
(~12 µs each); the channel carries writes only. Why not redis-py's own client-side cache:
it needs Redis >= 7.4, caches single commands (a page is a generation lookup plus a hash
read, one Lua call), deep-copies every hit, and keeps a copy until the key changes, past
the validity boundary its TTL encodes.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

import redis

from .entries import Entry
from .keys import ALL, hash_tag

Stamp = int | None
"""What `get` hands to `put`: the invalidation count then, or None when copies may not be made."""


class NearCache:
    """Bounded in-process map of (key, field) -> Entry, coherent through Redis invalidation messages.

    Thread-safe. A copy is made only from a value read after the poll that `get`
    did, and only if no invalidation was applied in between (`Stamp`), so a copy
    is never older than the last invalidation this process has seen. A copy also
    ends at the deadline of the Redis value it was read from (its PTTL), so a TTL
    cut at a flyer's validity boundary is honoured to the millisecond.
    """

    def __init__(self, connect: Callable[[], redis.Connection], channel: str, *,
                 max_bytes: int, retry_interval: float = 1.0, fence_tags: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._connect_fn = connect
        self._channel = channel
        self.max_bytes = max_bytes
        self._retry_interval = retry_interval
        self._fence_tags = fence_tags
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: redis.Connection | None = None
        self._pid = os.getpid()
        self._next_attempt = 0.0
        self._seq = 0
        self._entries: dict[tuple[str, str], tuple[Entry, float, str]] = {}
        self._tags: dict[str, set[tuple[str, str]]] = {}
        self._bytes = 0
        self.hits = 0
        self.evictions = 0  # copies dropped to stay within max_bytes (operations counter)

    @classmethod
    def for_client(cls, client: redis.Redis, channel: str, **kwargs) -> "NearCache":
        """A near cache subscribed on the same server as `client`."""
        pool = client.connection_pool
        settings = dict(pool.connection_kwargs, health_check_interval=0)
        return cls(lambda: pool.connection_class(**settings), channel, **kwargs)

    @property
    def connected(self) -> bool:
        """Whether invalidation messages are being received (copies are served only then)."""
        return self._conn is not None and self._pid == os.getpid()

    def get(self, key: str, field: str) -> tuple[Entry | None, Stamp]:
        """The copy of `field` of `key` after applying received invalidations, and a stamp for `put`."""
        with self._lock:
            if not self._sync():
                return None, None
            item = self._entries.get((key, field))
            if item is not None:
                if item[1] > self._clock():
                    self.hits += 1
                    return item[0], self._seq
                self._drop((key, field))
            return None, self._seq

    def put(self, key: str, field: str, entry: Entry, ttl_ms: int, stamp: Stamp) -> None:
        """Keep a copy of what Redis answered for `get`'s lookup, for the value's remaining `ttl_ms`."""
        size = len(entry.body or b"") + len(key) + len(field)
        if stamp is None or ttl_ms <= 0 or size > self.max_bytes:
            return
        with self._lock:
            if stamp != self._seq or not self.connected:
                return  # an invalidation was applied since the read: the value may predate it
            item_key = (key, field)
            if item_key in self._entries:
                self._drop(item_key)
            tag = hash_tag(key)
            self._entries[item_key] = (entry, self._clock() + ttl_ms / 1000, tag)
            self._tags.setdefault(tag, set()).add(item_key)
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))  # oldest copy first
                self.evictions += 1

    def usage(self) -> tuple[int, int, int]:
        """(copies held, their bytes, copies evicted so far) for the operations metrics."""
        return len(self._entries), self._bytes, self.evictions

    def close(self) -> None:
        """Drop every copy and the subscribed connection."""
        with self._lock:
            self._disconnect()

    def _sync(self) -> bool:
        """Apply every invalidation Redis has sent; False while copies may not be trusted."""
        if self._conn is None or self._pid != os.getpid():
            if not self._reconnect():
                return False
        conn = self._conn
        try:
            tags = 0
            while conn.can_read(timeout=0):
                tags += self._apply(conn.read_response(push_request=True))
            if tags >= self._fence_tags:
                self._fence(conn)
        except (redis.RedisError, OSError):
            self._disconnect()
            return False
        return True

    def _fence(self, conn: redis.Connection) -> None:
        """Read up to the answer of a PING: every message Redis queued before it is then applied.

        A backlog this large may mean Redis still holds messages it could not write yet
        (a full socket buffer, or its per-event write cap); the connection is ordered,
        so whatever precedes the answer is everything published so far.
        """
        conn.send_command("PING")
        while self._apply(conn.read_response(push_request=True)) >= 0:
            pass

    def _apply(self, message: list) -> int:
        """Drop the copies of the tags in an invalidation message; how many tags (-1: not one)."""
        if not isinstance(message, list) or message[0] != b"message":
            return -1
        self._seq += 1
        tags = message[2].decode().split()
        if ALL in tags:
            self._clear()
            return len(tags)
        for tag in tags:
            for item_key in self._tags.pop(tag, ()):
                self._forget(item_key)
        return len(tags)

    def _drop(self, item_key: tuple[str, str]) -> None:
        tag = self._forget(item_key)
        members = self._tags.get(tag)
        if members is not None:
            members.discard(item_key)
            if not members:
                del self._tags[tag]

    def _forget(self, item_key: tuple[str, str]) -> str:
        entry, _, tag = self._entries.pop(item_key)
        self._bytes -= len(entry.body or b"") + len(item_key[0]) + len(item_key[1])
        return tag

    def _clear(self) -> None:
        self._seq += 1
        self._entries.clear()
        self._tags.clear()
        self._bytes = 0

    def _reconnect(self) -> bool:
        if self._pid != os.getpid():  # forked: the parent's socket and copies are not ours
            self._pid, self._next_attempt = os.getpid(), 0.0
        self._disconnect()  # redis-py only closes a forked copy of a socket, never shuts it down
        now = time.monotonic()
        if now < self._next_attempt:
            return False
        self._next_attempt = now + self._retry_interval
        conn = self._connect_fn()
        try:
            conn.connect()
            conn.send_command("SUBSCRIBE", self._channel)
            if conn.read_response(push_request=True)[0] != b"subscribe":
                raise redis.ConnectionError("SUBSCRIBE was refused")
        except (redis.RedisError, OSError):
            conn.disconnect()
            return False
        self._clear()  # copies from before the subscription may have missed invalidations
        self._conn = conn
        return True

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
        self._conn = None
        self._clear()
