"""In-process cache counters, and their per-minute roll-up in Redis shared by all processes."""
from __future__ import annotations

import threading
from typing import Any

import redis

from .keys import stats_minute_key, stats_total_key

MINUTE_BUCKET_TTL = 2 * 3600  # seconds; a bucket must outlive the last-hour window
INVALIDATIONS = "invalidations"  # pseudo-result naming the invalidation counter in Redis


class CacheStats:
    """Thread-safe counters of lookups by (family, result) and invalidations by family.

    `snapshot()` returns {"requests": {family: {result: n}}, "invalidations": {family: n}}.
    Results are "hit", "miss", "lease_wait", "error", plus "stale" (a lease holder's
    fill refused after an invalidation) and "lease_timeout" (a waiter stopped
    waiting and loaded itself without filling); each lookup counts exactly once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._flushed: dict[tuple[str, str], int] = {}

    def record(self, family: str, result: str) -> None:
        """Count one lookup of `family` answered as `result` (cheap: on the hit path)."""
        key = (family, result)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def record_invalidation(self, family: str) -> None:
        """Count one invalidation of `family`."""
        self.record(family, INVALIDATIONS)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Counts since this process started, in the shape documented on the class."""
        with self._lock:
            counts = dict(self._counts)
        return _shape(counts)

    def flush_to_redis(self, client: redis.Redis, now: float) -> bool:
        """Push the counts added since the last successful flush to Redis in one MULTI/EXEC."""
        with self._flush_lock:  # two flushers would push the same delta twice
            with self._lock:
                counts = dict(self._counts)
            deltas = {k: n - self._flushed.get(k, 0) for k, n in counts.items()}
            deltas = {k: n for k, n in deltas.items() if n}
            if not deltas:
                return True
            minute_key = stats_minute_key(int(now // 60))
            total_key = stats_total_key()
            # Transactional so a failure applies nothing and the same delta is
            # simply retried next time (both keys share the {stats} slot).
            pipe = client.pipeline(transaction=True)
            for (family, result), n in deltas.items():
                field = f"{family}|{result}"
                pipe.hincrby(minute_key, field, n)
                pipe.hincrby(total_key, field, n)
            pipe.expire(minute_key, MINUTE_BUCKET_TTL)
            try:
                pipe.execute()
            except redis.RedisError:
                return False
            self._flushed = counts
            return True


def read_from_redis(client: redis.Redis, now: float) -> dict[str, dict[str, dict[str, int]]]:
    """Counts of every process, per family: {"last_minute"|"last_hour"|"since_start": {result: n}}.

    "last_minute" is the current (partial) minute bucket and "last_hour" the 60
    buckets ending with it; invalidations appear under the result "invalidations".
    """
    return read_windows_and_history(client, now)[0]


def read_windows_and_history(client: redis.Redis, now: float) -> tuple[
        dict[str, dict[str, dict[str, int]]], list[tuple[int, dict[str, dict[str, int]]]]]:
    """`read_from_redis`'s windows, and the last hour minute by minute: [(epoch minute, {family: {result: n}})]."""
    minute = int(now // 60)
    minutes = range(minute - 59, minute + 1)
    pipe = client.pipeline(transaction=False)
    for m in minutes:
        pipe.hgetall(stats_minute_key(m))
    pipe.hgetall(stats_total_key())
    *hour, total = [_parse(bucket) for bucket in pipe.execute()]
    windows = {"last_minute": [hour[-1]], "last_hour": hour, "since_start": [total]}
    out: dict[str, dict[str, dict[str, int]]] = {}
    for window, buckets in windows.items():
        for bucket in buckets:
            for family, results in bucket.items():
                per_family = out.setdefault(family, {w: {} for w in windows})
                for result, n in results.items():
                    per_family[window][result] = per_family[window].get(result, 0) + n
    return out, list(zip(minutes, hour))


def _parse(bucket: dict[bytes, bytes]) -> dict[str, dict[str, int]]:
    """A counter hash as {family: {result: n}}."""
    out: dict[str, dict[str, int]] = {}
    for field, n in bucket.items():
        family, _, result = field.decode().rpartition("|")
        out.setdefault(family, {})[result] = int(n)
    return out


def _shape(counts: dict[tuple[str, str], int]) -> dict[str, dict[str, Any]]:
    requests: dict[str, dict[str, int]] = {}
    invalidations: dict[str, int] = {}
    for (family, result), n in sorted(counts.items()):
        if result == INVALIDATIONS:
            invalidations[family] = n
        else:
            requests.setdefault(family, {})[result] = n
    return {"requests": requests, "invalidations": invalidations}
