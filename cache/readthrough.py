"""Read-through JSON cache with memcache-style leases (stale-set and stampede protection)."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import fakeredis
import redis

from .breaker import Breaker
from .client import mode_of
from .epoch import EpochGuard
from .entries import NOT_FOUND, Entry, Loaded, from_loaded, from_stored
from .invalidation import Invalidator
from .keys import GENERATION_SEPARATOR, LEASE_PREFIX, lease_field
from .near import NearCache
from .scripts import Scripts
from .sentinel import lone_primary_check
from .stats import CacheStats

__all__ = ["NOT_FOUND", "Claim", "Loaded", "Entry", "ReadThroughCache"]

HIT, MISS, LEASE_WAIT, ERROR = "hit", "miss", "lease_wait", "error"
STALE, LEASE_TIMEOUT = "stale", "lease_timeout"  # stats-only kinds of "miss": fill refused; waiter gave up
NEAR_HIT, BYPASS = "near_hit", "bypass"  # stats: a hit from this process's copy; Redis not tried (breaker, replay)
_HIT, _GRANTED = 1, 3  # LOOKUP script statuses (2: another reader holds the lease)


@dataclass(frozen=True, slots=True)
class Claim:
    """A miss seen by `ReadThroughCache.lookup`: the lease taken (granted) or held by another reader."""

    granted: bool
    hash_key: bytes
    token: str


def _new_token() -> str:
    # os.urandom-based, so forked workers never share a token sequence.
    return secrets.token_hex(8)


class ReadThroughCache:
    """Answers lookups from Redis hashes (one field per variant), filling misses under a lease."""

    def __init__(self, client: redis.Redis, *, stats: CacheStats | None = None,
                 breaker: Breaker | None = None, lease_ttl: float = 2.0,
                 wait_timeout: float = 0.2, poll_interval: float = 0.005,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 token_factory: Callable[[], str] = _new_token,
                 generation_ttl: float = 86400.0, near: NearCache | None = None,
                 repair: Callable[[], None] | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.stats = stats if stats is not None else CacheStats()
        self.breaker = breaker if breaker is not None else Breaker()
        self.epoch = EpochGuard(repair)
        # The embedded fakeredis cannot restart behind the process's back: no epoch check.
        self._scripts = Scripts(client, None if isinstance(client, fakeredis.FakeRedis) else self.epoch)
        self._lease_ttl_ms = max(1, int(lease_ttl * 1000))
        self._wait_timeout = wait_timeout
        self._poll_interval = poll_interval
        self._clock = clock
        self._wall_clock = wall_clock  # deadlines are compared with Redis's own clock
        self._sleep = sleep
        self._token_factory = token_factory
        self.near = near
        self.suspended = False
        """While True, lookups bypass Redis: invalidations known to be pending have not been delivered."""
        self.on_suspended: Callable[[], None] | None = None
        """Called by a lookup that found the cache suspended (the service starts its deliverer there)."""
        self._invalidator = Invalidator(client, self._scripts, self.breaker, clock,
                                        max(1, int(generation_ttl * 1000)),
                                        settle=near.window if near is not None else 0.0,
                                        monotonic=clock, sleep=sleep,
                                        replicas=1 if mode_of(client) == "sentinel" else 0,
                                        fan_out=mode_of(client) == "cluster",
                                        lone_check=lone_primary_check(client))

    def get_or_load(self, family: str, key: str, loader: Callable[[], Loaded], *,
                    variant: str = "", generation_key: str | None = None, claim: Claim | None = None) -> Entry:
        """Answer from the cache, or call `loader` (and fill, if granted the lease); never raises a Redis error.

        `claim` is what `lookup` returned for this entry's miss: the lease is then
        already taken (or known to be held by another reader), so Redis is not asked again.
        """
        if claim is not None:
            return self._resolve(family, variant, claim, loader)
        if self.suspended or not self.breaker.allow():
            if self.suspended and self.on_suspended is not None:
                self.on_suspended()
            return self._bypass(family, loader, BYPASS)
        try:
            answer = self._claim(key, variant, generation_key)
        except redis.RedisError:
            self.breaker.record_failure()
            return self._bypass(family, loader)
        self.breaker.record_success()
        if isinstance(answer, Claim):
            return self._resolve(family, variant, answer, loader)
        self.stats.record(family, HIT)
        return from_stored(answer[0], HIT)

    def lookup(self, family: str, key: str, *, variant: str = "",
               generation_key: str | None = None) -> Entry | Claim | None:
        """Return the stored answer on a hit (counted as one), else a Claim to pass to `get_or_load`.

        For a caller that answers hits before doing any other work: one Redis round trip,
        or none when the near cache holds the entry (a Redis hit is copied into it). On
        a miss the lease is taken (or found held) in that same round trip, so the miss
        needs only its fill after the load. None: Redis may not be used now (breaker
        open, or `suspended`); `get_or_load` then bypasses the cache.
        """
        if self.suspended or not self.breaker.allow():
            if self.suspended and self.on_suspended is not None:
                self.on_suspended()
            return None
        near, stamp = self.near, None
        if near is not None:
            entry, stamp = near.get(key, variant)
            if entry is not None:
                self.stats.record(family, NEAR_HIT)
                return entry
        try:
            answer = self._claim(key, variant, generation_key)
        except redis.RedisError:
            self.breaker.record_failure()
            return None
        self.breaker.record_success()
        if isinstance(answer, Claim):
            return answer
        self.stats.record(family, HIT)
        entry = from_stored(answer[0], HIT)
        if stamp is not None:  # the copy says where later answers come from (access log)
            near.put(key, variant, Entry(entry.body, entry.etag, NEAR_HIT), answer[1], stamp)
        return entry

    def _claim(self, key: str, variant: str, generation_key: str | None) -> tuple[bytes, int] | Claim:
        """Run the lookup script: (stored value, ms the hash has left) on a hit, else the Claim."""
        keys = [key] if generation_key is None else [key, generation_key]
        token = self._token_factory()
        status, payload, *ttl = self._scripts.lookup(keys=keys, args=[
            variant, lease_field(variant), token, int(self._clock() * 1000),
            self._lease_ttl_ms, GENERATION_SEPARATOR])
        if status == _HIT:
            return payload, ttl[0]
        return Claim(status == _GRANTED, payload, token)

    def _resolve(self, family: str, variant: str, claim: Claim, loader: Callable[[], Loaded]) -> Entry:
        if claim.granted:
            return self._load_and_fill(family, claim.hash_key, variant, claim.token, loader)
        return self._wait(family, claim.hash_key, variant, loader)

    def invalidate(self, *, keys: Iterable[str] = (), generations: Iterable[tuple[str, str]] = (),
                   families: Iterable[str] = (), timeout: float = 0.0, retried: bool = False,
                   settle: bool = True) -> bool:
        """Delete `keys` and bump each `(generation_key, pages_base)`; True once Redis has them.

        `retried`: this delivers invalidations that an earlier attempt left pending (counted apart).
        `settle=False`: return without waiting for the near caches (see `settle`); for a
        caller that sends several batches and calls `settle` after the last.

        Deleting a hash removes its values and leases together, so any fill still in
        flight for it is refused. Everything goes in one non-transactional pipeline,
        retried for up to `timeout` seconds whatever the breaker says; on success the
        call returns once no near cache of any process can still serve what was deleted.
        False: Redis could not be reached in time. The caller keeps the invalidation
        (the service's outbox does) and delivers it again later.
        """
        families = list(families)
        delivered = self._invalidator.deliver(list(keys), list(generations), timeout=timeout, settle=settle)
        for family in families:
            if delivered:
                self.stats.record_invalidation(family)
            self.stats.record_invalidation_outcome(
                family, ("retried" if retried else "delivered") if delivered else "queued")
        return delivered

    def settle(self) -> None:
        """Wait until no near cache of any process can serve a copy from before the invalidations sent so far."""
        self._invalidator.wait_settled()

    def _load_and_fill(self, family: str, hash_key: bytes, variant: str, token: str,
                       loader: Callable[[], Loaded]) -> Entry:
        """Holder of the lease: load, then write only if the lease survived (no stale set)."""
        started = self._wall_clock()
        timer = time.perf_counter()
        try:
            loaded = loader()
            entry, stored = from_loaded(loaded, MISS)
        except BaseException:
            self._release(hash_key, variant, token)
            raise
        # The loader's TTL counts from when it read the database (no earlier than `started`):
        # the deadline is absolute, so no delay before the fill can stretch it.
        deadline_ms = int((started + loaded.ttl) * 1000)
        try:
            if loaded.ttl <= 0:  # not cacheable: just let the next reader have the lease
                self._scripts.release(keys=[hash_key], args=[lease_field(variant), token])
                filled = 1
            else:
                filled = self._scripts.fill(keys=[hash_key], args=[
                    variant, lease_field(variant), token, stored, deadline_ms, LEASE_PREFIX])
        except redis.RedisError:
            self.breaker.record_failure()
            self.stats.record(family, ERROR)
            self.stats.record_fill(family, "error", time.perf_counter() - started)
            return Entry(entry.body, entry.etag, ERROR)
        self.breaker.record_success()
        # Refused: an invalidation deleted the hash (and our lease) while we loaded,
        # so what we loaded may predate the write; return it but never store it.
        self.stats.record(family, STALE if filled == 0 else MISS)
        outcome = {0: "refused", 2: "expired"}.get(filled, "stored" if loaded.ttl > 0 else "uncacheable")
        self.stats.record_fill(family, outcome, time.perf_counter() - timer)
        return entry

    def _wait(self, family: str, hash_key: bytes, variant: str,
              loader: Callable[[], Loaded]) -> Entry:
        """Another reader holds the lease: poll for its fill, else load without filling."""
        deadline = self._clock() + self._wait_timeout
        fields = (variant, lease_field(variant))
        try:
            while True:
                self._sleep(self._poll_interval)
                raw, lease = self.client.hmget(hash_key, fields)
                if raw is not None:
                    self.breaker.record_success()
                    self.stats.record(family, LEASE_WAIT)
                    return from_stored(raw, LEASE_WAIT)
                # No value and no lease: the holder failed or an invalidation
                # deleted the hash; waiting longer cannot help.
                if lease is None or self._clock() >= deadline:
                    break
        except redis.RedisError:
            self.breaker.record_failure()
            return self._bypass(family, loader)
        self.breaker.record_success()
        self.stats.record(family, LEASE_TIMEOUT)
        # Not the lease holder: filling could overwrite a fresher value.
        return from_loaded(loader(), MISS)[0]

    def _bypass(self, family: str, loader: Callable[[], Loaded], result: str = ERROR) -> Entry:
        entry = from_loaded(loader(), result)[0]
        self.stats.record(family, result)
        return entry

    def _release(self, hash_key: bytes, variant: str, token: str) -> None:
        try:
            self._scripts.release(keys=[hash_key], args=[lease_field(variant), token])
        except redis.RedisError:
            self.breaker.record_failure()  # best effort: the lease expires on its own
