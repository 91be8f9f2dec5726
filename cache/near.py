"""In-process copies of hot answers, served only while this process can prove it is caught up.

Each process keeps one extra connection subscribed to the invalidation channel, on which
every invalidation publishes the hash tags it touched (``Invalidator``, after its deletions).
Lookups read whatever has arrived on it (one non-blocking poll, ~3 µs) and drop the copies
of every tag named; now and then (at most a few times per window) a lookup also sends a
``PING`` on it. Redis answers a PING after every message it published before it processed
that PING, and messages are applied in order, so once a PONG is read every invalidation
published before that PING was *sent* has been applied: the send time is this process's
proof of being caught up. Copies are served (and made) only while the proof is younger than
the window ``L``; writers wait ``L`` after their invalidation was acknowledged before they
answer (``Invalidator.settle``). So a reader that starts after a write's answer either
holds a proof from a PING sent after the write's publish (it has applied the write), or
serves nothing from its copies. This holds whatever the delay, loss or half-open state of
the subscribed connection: a silent connection stops near hits within ``L``, and one whose
round trip exceeds ``L`` never serves them. The pings ride on lookups, not on a thread of
their own: a thread would wait for the GIL behind busy request threads (measured: a fresh
proof only 59% of the time with one busy thread beside it, 13% with three), and an idle
process needs no proof.

On a Redis Cluster the same proof holds because nothing in it depends on which node owns
which slot: the subscriber sits on one node, and every writer publishes its message on every
node itself, after its deletions were acknowledged (``cache.invalidation.publish_everywhere``);
a node hands a PUBLISH to its own subscribers before it answers it, so that node's PONG
orders this process after every write that has answered. Not the cluster bus: a PUBLISH
reaches the other nodes' subscribers over it later, in no order with their PONGs (a slowed
bus makes that visible: ``tests/test_near_cluster.py``); nor sharded pub/sub per slot owner:
during a failover or a slot move the old and the new owner can both act as owner for a while,
so a PONG from the subscriber's node would not prove that writes went through it. A slot
move or a failover thus changes nothing for the copies: the subscriber's node keeps receiving
every message, as a primary or as a replica, and if it goes away the subscription is lost,
the copies dropped, and the next node of the slot map taken.

Why a channel and not key tracking (``CLIENT TRACKING ON BCAST``, tried first): tracking
also reports every lease and fill, so each miss cost every process two messages to read
(~12 µs each); the channel carries writes only. Why not redis-py's own client-side cache:
it needs Redis >= 7.4, caches single commands (a page is a generation lookup plus a hash
read, one Lua call), deep-copies every hit, and keeps a copy until the key changes, past
the validity boundary its TTL encodes.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any, Callable

import redis

from .entries import Entry
from .keys import ALL, hash_tag

log = logging.getLogger(__name__)

Stamp = int | None
"""What `get` hands to `put`: the invalidation count then, or None when copies may not be made."""

NEVER = float("-inf")


class NearCache:
    """Bounded in-process map of (key, field) -> Entry, coherent through Redis invalidation messages.

    Thread-safe. A copy is made only from a value read while the proof was fresh, and only
    if no invalidation was applied between the read and the copy (`Stamp`), so a copy is
    never older than the last invalidation this process has applied. A copy also ends at
    the deadline of the Redis value it was read from (its PTTL), so a TTL cut at a flyer's
    validity boundary is honoured to the millisecond.
    """

    def __init__(self, connect: Callable[[], redis.Connection], channel: str, *,
                 max_bytes: int, window: float = 0.03, answer_timeout: float = 1.0,
                 retry_interval: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self._connect_fn = connect
        self._channel = channel
        self.max_bytes = max_bytes
        self.window = window
        self._answer_timeout = answer_timeout
        self._retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: redis.Connection | None = None
        self._pid = os.getpid()
        self._next_attempt = NEVER
        self._pings: deque[float] = deque()  # send times of the PINGs not answered yet
        self._proof = NEVER                   # send time of the last answered PING
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
    def caught_up(self) -> bool:
        """Whether this process holds a fresh proof (copies are served only then)."""
        return self._conn is not None and self._clock() - self._proof < self.window

    def get(self, key: str, field: str) -> tuple[Entry | None, Stamp]:
        """The copy of `field` of `key`, and a stamp for `put`; (None, None) while not caught up."""
        with self._lock:
            if not self._sync():
                return None, None
            now = self._clock()
            if now - self._proof >= self.window:
                return None, None
            item = self._entries.get((key, field))
            if item is not None:
                if item[1] > now:
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
            if stamp != self._seq or not self.caught_up:
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
        """Apply every message Redis has sent and keep the proof fresh; False while copies may not be trusted."""
        if self._conn is None or self._pid != os.getpid():
            if not self._reconnect():
                return False
        conn = self._conn
        try:
            while conn.can_read(timeout=0):
                self._apply(conn.read_response(push_request=True))
            now = self._clock()
            if self._pings and now - self._pings[0] > self._answer_timeout:
                raise redis.TimeoutError("the subscribed connection stopped answering")
            # Ping when the proof is half spent, at most four times a window.
            if now - self._proof >= self.window / 2 and (not self._pings or now - self._pings[-1] >= self.window / 4):
                conn.send_command("PING")
                self._pings.append(now)
        except (redis.RedisError, OSError) as error:
            log.info("near cache: subscription lost (%s); copies dropped", error)
            self._disconnect()
            return False
        return True

    def _apply(self, message: Any) -> None:
        """Drop the copies of the tags in an invalidation message, or take a PONG as the new proof."""
        if message == b"PONG" or (isinstance(message, list) and message and message[0] == b"pong"):
            # RESP3 answers a subscriber's PING with PONG, RESP2 with ["pong", ""].
            self._proof = self._pings.popleft()
            return
        if not isinstance(message, list) or not message or message[0] != b"message":
            return
        self._seq += 1
        tags = message[2].decode().split()
        if ALL in tags:
            self._clear()
            return
        for tag in tags:
            for item_key in self._tags.pop(tag, ()):
                self._forget(item_key)

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
            self._pid, self._next_attempt = os.getpid(), NEVER
        self._disconnect()  # redis-py only closes a forked copy of a socket, never shuts it down
        now = self._clock()
        if now < self._next_attempt:
            return False
        self._next_attempt = now + self._retry_interval
        conn = None
        try:
            # Inside the try: in Sentinel mode making the connection asks the sentinels for
            # the primary, which raises when none can be reached (a lookup must not).
            conn = self._connect_fn()
            conn.connect()
            conn.send_command("SUBSCRIBE", self._channel)
            if conn.read_response(push_request=True)[0] != b"subscribe":
                raise redis.ConnectionError("SUBSCRIBE was refused")
        except (redis.RedisError, OSError):
            if conn is not None:
                conn.disconnect()
            return False
        self._clear()  # copies from before the subscription may have missed invalidations
        self._conn = conn
        return True

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
        self._conn = None
        self._pings.clear()
        self._proof = NEVER
        self._clear()
