"""In-process copies of hot answers, kept exact by Redis server-assisted client-side caching.

Each process keeps one extra RESP3 connection on which Redis pushes the name of every key
modified under the tracked prefixes (``CLIENT TRACKING ON BCAST``). Before answering from
its copies, the process reads whatever Redis has pushed (one non-blocking poll) and drops
the copies of every hash tag named, so it never answers past an invalidation that reached
its socket. Writers make sure their invalidation has reached every socket before they
answer: ``Invalidator`` sends one more round trip after its deletions, and Redis writes
the pushes of a command before it reads the next one (see ``docs/PERFORMANCE.md``).

Why not redis-py's own client-side cache: it needs Redis >= 7.4, caches single commands
(a page is a generation lookup plus a hash read, one Lua call), deep-copies every hit,
and keeps a copy until the key is deleted, past the validity boundary its TTL encodes.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterable

import redis

from .entries import Entry

Stamp = int | None
"""What `get` hands to `put`: the invalidation count then, or None when copies may not be made."""


def hash_tag(key: str) -> str:
    """The `{...}` part of a key: invalidations drop every copy under the same tag."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start:end + 1] if start >= 0 and end > start else key


def _identity(message: list) -> list:
    return message


class NearCache:
    """Bounded in-process map of (key, field) -> Entry, coherent through Redis key-change pushes.

    Thread-safe. A copy is made only from a value read after the poll that `get`
    did, and only if no invalidation was applied in between (`Stamp`), so a copy
    is never older than the last invalidation this process has seen. A copy also
    ends at the deadline of the Redis value it was read from (its PTTL), so a TTL
    cut at a flyer's validity boundary is honoured to the millisecond.
    """

    def __init__(self, connect: Callable[[], redis.Connection], prefixes: Iterable[str], *,
                 max_bytes: int, retry_interval: float = 1.0, fence_keys: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._connect_fn = connect
        self._prefixes = list(prefixes)
        self.max_bytes = max_bytes
        self._retry_interval = retry_interval
        self._fence_keys = fence_keys
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

    @classmethod
    def for_client(cls, client: redis.Redis, prefixes: Iterable[str], **kwargs) -> "NearCache":
        """A near cache whose tracking connection goes to the same server and database as `client`."""
        pool = client.connection_pool
        settings = dict(pool.connection_kwargs, protocol=3, health_check_interval=0)
        return cls(lambda: pool.connection_class(**settings), prefixes, **kwargs)

    @property
    def connected(self) -> bool:
        """Whether invalidations are being received (copies are served only then)."""
        return self._conn is not None and self._pid == os.getpid()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, field: str) -> tuple[Entry | None, Stamp]:
        """The copy of `field` of `key` after applying pushed invalidations, and a stamp for `put`."""
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

    def clear(self) -> None:
        """Drop every copy."""
        with self._lock:
            self._clear()

    def close(self) -> None:
        """Drop every copy and the tracking connection."""
        with self._lock:
            self._disconnect()

    def _sync(self) -> bool:
        """Apply every invalidation Redis has pushed; False while copies may not be trusted."""
        if self._conn is None or self._pid != os.getpid():
            if not self._reconnect():
                return False
        conn = self._conn
        try:
            keys = 0
            while conn.can_read(timeout=0):
                keys += self._apply(conn.read_response(push_request=True))
            if keys >= self._fence_keys:
                self._fence(conn)
        except (redis.RedisError, OSError):
            self._disconnect()
            return False
        return True

    def _fence(self, conn: redis.Connection) -> None:
        """Read up to a PONG: every push Redis queued before it is then applied.

        A backlog this large may mean Redis still holds pushes it could not write yet
        (a full socket buffer, or its per-event write cap); the connection is ordered,
        so whatever precedes the PONG is everything queued so far.
        """
        conn.send_command("PING")
        while True:
            reply = conn.read_response(push_request=True)
            if not isinstance(reply, list):
                return
            self._apply(reply)

    def _apply(self, message: object) -> int:
        if not isinstance(message, list) or len(message) != 2 or message[0] != b"invalidate":
            return 0
        self._seq += 1
        names = message[1]
        if names is None:  # FLUSHDB/FLUSHALL
            self._clear()
            return 0
        for name in names:
            for item_key in self._tags.pop(hash_tag(name.decode()), ()):
                self._forget(item_key)
        return len(names)

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
            conn._parser.set_invalidation_push_handler(_identity)  # as redis-py's own cache does
            args = ["CLIENT", "TRACKING", "ON", "BCAST"]
            for prefix in self._prefixes:
                args += ["PREFIX", prefix]
            conn.send_command(*args)
            if conn.read_response() != b"OK":
                raise redis.ConnectionError("CLIENT TRACKING was refused")
        except (redis.RedisError, OSError):
            conn.disconnect()
            return False
        self._clear()  # copies from before the connection may have missed invalidations
        self._conn = conn
        return True

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
        self._conn = None
        self._clear()
