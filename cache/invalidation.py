"""Sending invalidations to Redis, and keeping the ones that failed until they are replayed."""
from __future__ import annotations

import itertools
import threading
from typing import Callable, Iterable

import redis

from .breaker import Breaker
from .keys import GENERATION_SEPARATOR, INVALIDATION_CHANNEL, hash_tag
from .scripts import Scripts

Item = tuple[str, ...]  # ("key", key) or ("generation", generation_key, pages_base)


class PendingInvalidations:
    """A thread-safe set of failed invalidations, each stamped with when it was last queued."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[Item, int] = {}
        self._seq = itertools.count()

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, keys: Iterable[str], generations: Iterable[tuple[str, str]]) -> None:
        """Queue deletions of `keys` and bumps of `(generation_key, pages_base)` pairs."""
        with self._lock:
            for key in keys:
                self._items[("key", key)] = next(self._seq)
            for gen_key, base in generations:
                self._items[("generation", gen_key, base)] = next(self._seq)

    def snapshot(self) -> dict[Item, int]:
        """The queued items with their stamps, to replay and then `discard`."""
        with self._lock:
            return dict(self._items)

    def discard(self, replayed: dict[Item, int]) -> None:
        """Forget replayed items, unless one was queued again while the replay was in flight."""
        # A re-queued item belongs to a later write: the replay may have reached
        # Redis before that write committed, so it must be replayed once more.
        with self._lock:
            for item, stamp in replayed.items():
                if self._items.get(item) == stamp:
                    del self._items[item]


def split(items: Iterable[Item]) -> tuple[list[str], list[tuple[str, str]]]:
    """Keys and generation pairs of queued items."""
    keys: list[str] = []
    generations: list[tuple[str, str]] = []
    for item in items:
        if item[0] == "key":
            keys.append(item[1])
        else:
            generations.append((item[1], item[2]))
    return keys, generations


class Invalidator:
    """Deletes keys and bumps generations in one pipeline, queueing what fails (see ReadThroughCache.invalidate)."""

    def __init__(self, client: redis.Redis, scripts: Scripts, breaker: Breaker,
                 clock: Callable[[], float], generation_ttl_ms: int) -> None:
        self._client = client
        self._scripts = scripts
        self._breaker = breaker
        self._clock = clock
        self._generation_ttl_ms = generation_ttl_ms
        self.pending = PendingInvalidations()

    def invalidate(self, keys: list[str], generations: list[tuple[str, str]]) -> bool:
        """Send these invalidations, and any queued ones first; False if they were queued."""
        if not self._breaker.allow():
            self.pending.add(keys, generations)
            return False
        queued = self.pending.snapshot()
        queued_keys, queued_generations = split(queued)
        try:
            self._execute(queued_keys + keys, queued_generations + generations)
        except redis.RedisError:
            self.pending.add(keys, generations)
            self._breaker.record_failure()
            return False
        self.pending.discard(queued)
        self._breaker.record_success()
        return True

    def replay(self) -> bool:
        """Replay the queued invalidations if the breaker allows; True if none remain."""
        if not self._breaker.allow():
            return False
        queued = self.pending.snapshot()
        try:
            self._execute(*split(queued))
        except redis.RedisError:
            self._breaker.record_failure()
            return False
        self.pending.discard(queued)
        self._breaker.record_success()
        # Another invalidation may have failed meanwhile: it must land first.
        return not self.pending

    def _execute(self, keys: list[str], generations: list[tuple[str, str]]) -> None:
        """Send the deletions and generation bumps in one pipeline; raise on any Redis error."""
        if not keys and not generations:
            return
        try:
            self._send(keys, generations)
        except redis.exceptions.NoScriptError:
            # Every command is idempotent for our purpose (a bump twice is still a
            # new generation), so resending the whole batch is safe.
            self._scripts.load_bump()
            self._send(keys, generations)

    def _send(self, keys: list[str], generations: list[tuple[str, str]]) -> None:
        now_us = int(self._clock() * 1_000_000)
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)  # one DEL per key: a multi-key DEL could span Cluster slots
        for gen_key, base in generations:
            self._scripts.queue_bump(pipe, gen_key, base, GENERATION_SEPARATOR, now_us,
                                     self._generation_ttl_ms)
        # After the deletions: a near cache that drops its copies on this message and
        # reads again must find them gone.
        tags = {hash_tag(key) for key in keys} | {hash_tag(gen_key) for gen_key, _ in generations}
        pipe.publish(INVALIDATION_CHANNEL, " ".join(sorted(tags)))
        pipe.execute()
        # Fence: Redis wrote the message to every subscriber before it reads this PING,
        # so once it answers, no near cache of any process answers past this write.
        self._client.ping()
