"""In-process cache counters, and the 10-second buckets in Redis that every process adds its counts to.

Each process counts in memory (`CacheStats`, a lock and a dict addition per lookup) and
exposes the counts two ways: cumulatively per process (`snapshot`, `fields`), which the
service sums per instance for Prometheus, and as deltas pushed to Redis (`push_deltas`) into
one hash per 10-second bucket plus a since-start hash, which every instance sharing the Redis
reads back for the fleet-wide view (`read_buckets`).

Counter fields are flat strings ``kind|label|label...`` (no label contains ``|``):
``lookup|family|result``, ``inval|family``, ``inval_outcome|family|outcome``,
``fill|family|outcome``, ``audit|family|result``; the service adds its own kinds
(requests and latency) through the same functions.
"""
from __future__ import annotations

import bisect
import threading
from typing import Any, Iterable

import redis

from .keys import stats_bucket_key, stats_processes_key, stats_total_key

BUCKET_SECONDS = 10
"""Width of one Redis counter bucket: windows are sums of whole buckets."""
BUCKET_TTL = 3600 + 10 * BUCKET_SECONDS  # a bucket must outlive the last-hour window
INVALIDATIONS = "invalidations"  # pseudo-result naming the invalidation counter in `snapshot`
FILL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (seconds) of the fill-duration histogram's buckets; the last bucket is +Inf."""

LOOKUP, INVAL, INVAL_OUTCOME, FILL, AUDIT = "lookup", "inval", "inval_outcome", "fill", "audit"


class CacheStats:
    """Thread-safe counters of lookups by (family, result) and invalidations by family.

    `snapshot()` returns {"requests": {family: {result: n}}, "invalidations": {family: n}}.
    Results: "near_hit" (this process's copy), "hit" (from Redis), "lease_wait" (after
    another reader's fill), "miss" (loaded and filled), "stale" (a lease holder's fill
    refused after an invalidation), "lease_timeout" (a waiter stopped waiting and loaded
    without filling), "error" (Redis failed during the lookup) and "bypass" (Redis not
    tried: breaker open or invalidations waiting for replay); each lookup counts exactly once.
    Besides: invalidation outcomes, fills with their duration, and staleness-audit results.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._events: dict[str, int] = {}
        self._fill_seconds: dict[str, list[float]] = {}  # family: [count per bucket..., sum]

    def record(self, family: str, result: str) -> None:
        """Count one lookup of `family` answered as `result` (cheap: on the hit path)."""
        key = (family, result)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def record_invalidation(self, family: str) -> None:
        """Count one invalidation of `family`."""
        self.record(family, INVALIDATIONS)

    def record_invalidation_outcome(self, family: str, outcome: str) -> None:
        """Count an invalidation of `family` "delivered" at once, "queued" for replay, or "retried" (replayed)."""
        self._count(f"{INVAL_OUTCOME}|{family}|{outcome}")

    def record_fill(self, family: str, outcome: str, seconds: float) -> None:
        """Count one lease holder's load and fill ("stored", "refused", "expired", "uncacheable", "error") and its duration."""
        index = bisect.bisect_left(FILL_BUCKETS, seconds)
        with self._lock:
            self._events[f"{FILL}|{family}|{outcome}"] = self._events.get(f"{FILL}|{family}|{outcome}", 0) + 1
            histogram = self._fill_seconds.get(family)
            if histogram is None:
                histogram = self._fill_seconds[family] = [0] * (len(FILL_BUCKETS) + 2)
            histogram[index] += 1
            histogram[-1] += seconds

    def record_audit(self, family: str, result: str) -> None:
        """Count one staleness audit of `family`: "fresh" or "stale"."""
        self._count(f"{AUDIT}|{family}|{result}")

    def _count(self, field: str) -> None:
        with self._lock:
            self._events[field] = self._events.get(field, 0) + 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Counts since this process started, in the shape documented on the class."""
        with self._lock:
            counts = dict(self._counts)
        return _shape(counts)

    def fields(self) -> dict[str, float]:
        """Every counter since this process started, as flat fields (see the module's doc)."""
        with self._lock:
            counts = dict(self._counts)
            out: dict[str, float] = dict(self._events)
        for (family, result), n in counts.items():
            out[f"{INVAL}|{family}" if result == INVALIDATIONS else f"{LOOKUP}|{family}|{result}"] = n
        return out

    def fill_histograms(self) -> dict[str, tuple[list[int], float]]:
        """{family: (fills per duration bucket, not cumulative; seconds in total)}."""
        with self._lock:
            return {family: ([int(n) for n in h[:-1]], h[-1]) for family, h in self._fill_seconds.items()}


def deltas(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """What `now` counts beyond `before`, zeros left out."""
    out = {}
    for field, n in now.items():
        d = n - before.get(field, 0)
        if d:
            out[field] = d
    return out


def push_deltas(client: redis.Redis, changes: dict[str, float], now: float,
                report: tuple[str, bytes] | None = None) -> None:
    """Add `changes` to the bucket of `now` and to the since-start hash, in one MULTI/EXEC (raises RedisError).

    Transactional, so a failure applies nothing and the same deltas can be pushed again.
    `report` (field, value) is set in the processes hash in the same transaction.
    """
    if not changes and report is None:
        return
    bucket, total = stats_bucket_key(int(now // BUCKET_SECONDS)), stats_total_key()
    pipe = client.pipeline(transaction=True)  # every key shares the {stats} slot
    if report is not None:
        pipe.hset(stats_processes_key(), *report)
    for field, n in changes.items():
        if isinstance(n, float) and not n.is_integer():
            pipe.hincrbyfloat(bucket, field, n)
            pipe.hincrbyfloat(total, field, n)
        else:
            pipe.hincrby(bucket, field, int(n))
            pipe.hincrby(total, field, int(n))
    if changes:
        pipe.expire(bucket, BUCKET_TTL)
    pipe.execute()


def read_buckets(client: redis.Redis, now: float, seconds: int = 3600) -> tuple[
        list[tuple[int, dict[str, float]]], dict[str, float]]:
    """The buckets covering the last `seconds` up to `now`, oldest first, as [(bucket start, fields)], and the totals."""
    current = int(now // BUCKET_SECONDS)
    starts = range(current - seconds // BUCKET_SECONDS + 1, current + 1)
    pipe = client.pipeline(transaction=False)
    for b in starts:
        pipe.hgetall(stats_bucket_key(b))
    pipe.hgetall(stats_total_key())
    *buckets, total = [_parse(raw) for raw in pipe.execute()]
    return [(b * BUCKET_SECONDS, fields) for b, fields in zip(starts, buckets)], total


def read_from_redis(client: redis.Redis, now: float) -> dict[str, dict[str, dict[str, int]]]:
    """Lookups of every process per family: {"last_minute"|"last_hour"|"since_start": {result: n}}.

    Windows are whole 10-second buckets ending with the current one (see `read_buckets`);
    invalidations appear under the result "invalidations".
    """
    buckets, total = read_buckets(client, now)
    windows = {"last_minute": sum_fields(fields for _, fields in buckets[-6:]),
               "last_hour": sum_fields(fields for _, fields in buckets), "since_start": total}
    out: dict[str, dict[str, dict[str, int]]] = {}
    for window, fields in windows.items():
        for field, n in fields.items():
            kind, _, rest = field.partition("|")
            if kind == LOOKUP:
                family, _, result = rest.partition("|")
            elif kind == INVAL:
                family, result = rest, INVALIDATIONS
            else:
                continue
            out.setdefault(family, {w: {} for w in windows})[window][result] = int(n)
    return out


def sum_fields(buckets: Iterable[dict[str, float]]) -> dict[str, float]:
    """Field-wise sum of counter dicts."""
    out: dict[str, float] = {}
    for fields in buckets:
        for field, n in fields.items():
            out[field] = out.get(field, 0) + n
    return out


def _parse(raw: dict[bytes, bytes]) -> dict[str, float]:
    out: dict[str, float] = {}
    for field, value in raw.items():
        number = float(value)
        out[field.decode()] = int(number) if number.is_integer() else number
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
