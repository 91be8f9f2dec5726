"""Request latency per endpoint, and sharing this process's counters with every other through Redis.

Each process counts in memory (cheap enough for the hit path: a lock and two additions) and
adds what it counted since its last push to Redis hashes every ``METRICS_FLUSH_INTERVAL``
seconds: from the request that finds the push due, or else from a daemon thread of the
process that wakes once per interval (so an idle process's last counts arrive too). The
operations endpoints push their own process's counts before they read.
"""
from __future__ import annotations

import bisect
import os
import threading
import time
import weakref
from typing import Any, Callable, Iterable

import redis

from cache import CacheStats, keys
from cache.stats import INVALIDATIONS, read_windows_and_history

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (seconds) of the latency histogram's buckets; the last bucket is +Inf."""
LATENCY_KEY = f"{keys.PREFIX}:{{stats}}:latency"
"""Hash shared by every process: fields ``endpoint|<bucket index>`` and ``endpoint|sum``."""
ALL_PROCESSES, THIS_PROCESS = "all processes sharing the Redis", "this process only (Redis unavailable)"
ENDPOINT = "profile_service.endpoint"
"""WSGI environ key naming the endpoint that answered (Flask's endpoint name)."""
UNMATCHED = "unmatched"


class Latency:
    """Thread-safe latency histograms, one per endpoint, with their pushes to Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        self._pushed: tuple[dict[str, list[int]], dict[str, float]] = ({}, {})

    def observe(self, endpoint: str, seconds: float) -> None:
        index = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            counts = self._counts.get(endpoint)
            if counts is None:
                counts = self._counts[endpoint] = [0] * (len(BUCKETS) + 1)
                self._sums[endpoint] = 0.0
            counts[index] += 1
            self._sums[endpoint] += seconds

    def snapshot(self) -> dict[str, tuple[list[int], float]]:
        """{endpoint: (count per bucket, not cumulative; sum of seconds)} of this process."""
        with self._lock:
            return {endpoint: (list(counts), self._sums[endpoint]) for endpoint, counts in self._counts.items()}

    def flush_to_redis(self, client: redis.Redis) -> bool:
        """Add what was observed since the last successful push to LATENCY_KEY, all or nothing."""
        with self._flush_lock:
            now = self.snapshot()
            pushed_counts, pushed_sums = self._pushed
            pipe = client.pipeline(transaction=True)
            changed = False
            for endpoint, (counts, total) in now.items():
                before = pushed_counts.get(endpoint, [0] * len(counts))
                for index, (n, m) in enumerate(zip(counts, before)):
                    if n != m:
                        pipe.hincrby(LATENCY_KEY, f"{endpoint}|{index}", n - m)
                        changed = True
                if total != pushed_sums.get(endpoint, 0.0):
                    pipe.hincrbyfloat(LATENCY_KEY, f"{endpoint}|sum", total - pushed_sums.get(endpoint, 0.0))
            if not changed:
                return True
            try:
                pipe.execute()
            except redis.RedisError:
                return False
            self._pushed = ({e: c for e, (c, _) in now.items()}, {e: t for e, (_, t) in now.items()})
            return True


def read_latency(client: redis.Redis) -> dict[str, tuple[list[int], float]]:
    """Every process's histograms, in `Latency.snapshot`'s shape."""
    out: dict[str, tuple[list[int], float]] = {}
    for field, value in client.hgetall(LATENCY_KEY).items():
        endpoint, _, part = field.decode().rpartition("|")
        counts, total = out.get(endpoint, ([0] * (len(BUCKETS) + 1), 0.0))
        if part == "sum":
            total = float(value)
        elif part.isdigit() and int(part) <= len(BUCKETS):
            counts[int(part)] = int(value)
        out[endpoint] = (counts, total)
    return out


class Telemetry:
    """This process's cache counters and latency histograms, pushed to Redis when due."""

    def __init__(self, stats: CacheStats, client: redis.Redis, *, interval: float,
                 redis_ok: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.time) -> None:
        self.stats = stats
        self.latency = Latency()
        self.client = client
        self.interval = interval
        self._redis_ok = redis_ok
        self._clock = clock
        self._due = 0.0
        self._pusher_pid = 0

    def push(self) -> bool:
        """Push this process's counts now; False if Redis could not take them (they stay for next time)."""
        now = self._clock()
        self._due = now + self.interval
        counts_pushed = self.stats.flush_to_redis(self.client, now)
        return self.latency.flush_to_redis(self.client) and counts_pushed

    def shared_counts(self) -> tuple[dict, list, dict, str]:
        """(windows, history, latency, scope) of every process; this process's alone if Redis fails.

        windows: {family: {"last_minute"|"last_hour"|"since_start": {result: n}}}; history:
        [(epoch minute, {family: {result: n}})]; latency: `Latency.snapshot`'s shape.
        """
        try:
            if not self._redis_ok() or not self.push():  # an open breaker: do not wait on Redis here either
                raise redis.ConnectionError("Redis is unavailable")
            windows, history = read_windows_and_history(self.client, self._clock())
            return windows, history, read_latency(self.client), ALL_PROCESSES
        except redis.RedisError:
            local = self.stats.snapshot()
            totals = {family: dict(results) for family, results in local["requests"].items()}
            for family, n in local["invalidations"].items():
                totals.setdefault(family, {})[INVALIDATIONS] = n
            windows = {family: {"last_minute": {}, "last_hour": {}, "since_start": results}
                       for family, results in totals.items()}
            return windows, [], self.latency.snapshot(), THIS_PROCESS

    def push_if_due(self) -> None:
        """Push when the interval has passed, unless the cache's breaker is not closed."""
        if self._pusher_pid != os.getpid() and self.interval > 0:
            self._start_pusher()
        if self._clock() >= self._due:
            if self._redis_ok():
                self.push()
            else:
                self._due = self._clock() + self.interval

    def _start_pusher(self) -> None:
        """Start this process's timer thread (again after a fork: threads do not survive one)."""
        self._pusher_pid = os.getpid()
        threading.Thread(target=_push_periodically, args=(weakref.ref(self), self.interval),
                         name="telemetry-push", daemon=True).start()


def _push_periodically(telemetry: "weakref.ref[Telemetry]", interval: float) -> None:
    """Push every `interval` while the Telemetry lives (a weak reference: an app that is gone lets it end)."""
    while True:
        time.sleep(interval)
        alive = telemetry()
        if alive is None:
            return
        try:
            alive.push_if_due()
        except Exception:  # a push must never kill the timer; the next one retries
            pass
        del alive


class Timed:
    """WSGI middleware: time each request under the endpoint that answered it, then push counts if due."""

    def __init__(self, app: Callable, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        try:
            return self.app(environ, start_response)
        finally:
            self.telemetry.latency.observe(environ.get(ENDPOINT, UNMATCHED), time.perf_counter() - started)
            self.telemetry.push_if_due()
