"""Counting what the service does, per process in memory, and sharing it two ways.

* Per instance, for Prometheus: each process writes its cumulative counts into a snapshot
  file in the instance's metrics directory (``METRICS_DIR``, one per gunicorn master, made
  and cleaned by the gunicorn hooks below) every ``METRICS_FLUSH_INTERVAL`` seconds and when
  it exits. ``/metrics`` answers the sum of the answering process's live counts and its
  siblings' files. A file stays when its process dies (counters never go down while the
  instance runs); only its gauges stop counting. Without a directory (the embedded mode,
  tests) an instance is its one process.
* Fleet-wide, for ``/api/v1/cache/stats``: the same counts are pushed as deltas into
  10-second buckets in Redis (``cache.stats.push_deltas``), with each process's breaker
  state and near-cache size, by the same timer thread. Kept locally as well, so that
  without Redis the stats still show this process's recent windows.

The request path only counts in memory: a lock and two additions for the latency, and
the cache's own counter; see ``docs/PERFORMANCE.md`` for what that costs.
"""
from __future__ import annotations

import bisect
import glob
import itertools
import logging
import os
import random
import re
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Iterable

import orjson
import redis

from cache import CacheStats, keys
from cache.stats import BUCKET_SECONDS, deltas, push_deltas, read_buckets

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (seconds) of the latency histogram's buckets; the last bucket is +Inf."""
ENDPOINT = "profile_service.endpoint"
"""WSGI environ key naming the endpoint that answered (Flask's endpoint name)."""
REQUEST_ID = "profile_service.request_id"
"""WSGI environ key of the request id (taken from ``X-Request-ID`` when sane, else made)."""
CACHE_RESULT = "profile_service.cache"
"""WSGI environ key of the cache's answer for this request (near_hit, hit, miss, ...), for the access log."""
LABELS = "profile_service.labels"
"""WSGI environ key of a ready (endpoint, method, status) tuple: the fast path sets it for its answers."""
STATUS = "profile_service.status"
"""WSGI environ key of the answer's status code (3 characters), for the latency histogram and the access log."""
USER_ID = "profile_service.user_id"
"""WSGI environ key of the authenticated caller's id, for the access log."""
UNMATCHED = "unmatched"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_sane = SANE_REQUEST_ID.fullmatch
HISTORY_SECONDS = 3600
PROCESS_STALE_AFTER = 30.0
"""Seconds without a report after which a process is shown as not reporting."""

access_log = logging.getLogger("service.access")
log = logging.getLogger(__name__)
_live: "weakref.WeakSet[Telemetry]" = weakref.WeakSet()


class _Ids:
    """Request ids: a random per-process prefix (48 bits, new after a fork), a dot and a hex counter.

    E.g. ``3f9a1c22e7b0.0x1a2b``. Cheaper than a random id per request (``os.urandom`` is a
    system call, ~1 µs of a ~8 µs hit; this is ~0.1 µs).
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = secrets.token_hex(6) + "."
        self.counter = itertools.count(1)

    def new(self) -> str:
        return self.prefix + hex(next(self.counter))


_ids = _Ids()
_forks = [0]
"""How many forks made this process (counted in the child): cheaper to compare than os.getpid() per request."""
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


def request_id(environ: dict[str, Any]) -> str:
    """The client's ``X-Request-ID`` if it is 1-128 characters of ``[A-Za-z0-9._-]``, else a new id."""
    given = environ.get("HTTP_X_REQUEST_ID")
    if given is not None and SANE_REQUEST_ID.fullmatch(given):
        return given
    return _ids.new()


class Latency:
    """Thread-safe latency histograms by (endpoint, method, status)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], list[float]] = {}  # [count per bucket..., sum]

    def observe(self, endpoint: str, method: str, status: str, seconds: float) -> None:
        self.observe_key((endpoint, method, status), seconds)

    def observe_key(self, key: tuple[str, str, str], seconds: float) -> None:
        """`observe` with the (endpoint, method, status) tuple made by the caller (the fast path keeps its own)."""
        index = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0] * (len(BUCKETS) + 2)
            counts[index] += 1
            counts[-1] += seconds

    def snapshot(self) -> dict[str, list[float]]:
        """{"endpoint|method|status": [count per bucket (not cumulative)..., sum of seconds]}."""
        with self._lock:
            return {"|".join(key): list(counts) for key, counts in self._counts.items()}


def latency_fields(snapshot: dict[str, list[float]]) -> dict[str, float]:
    """A latency snapshot as the fleet-wide counter fields: ``req|endpoint|status``, ``lat|endpoint|i``, ``latsum|endpoint``."""
    out: dict[str, float] = {}
    for key, counts in snapshot.items():
        endpoint, _, status = key.split("|")
        out[f"req|{endpoint}|{status}"] = out.get(f"req|{endpoint}|{status}", 0) + sum(counts[:-1])
        for index, n in enumerate(counts[:-1]):
            if n:
                out[f"lat|{endpoint}|{index}"] = out.get(f"lat|{endpoint}|{index}", 0) + n
        out[f"latsum|{endpoint}"] = out.get(f"latsum|{endpoint}", 0.0) + counts[-1]
    return out


class Telemetry:
    """This process's counters, their snapshot file and their pushes to Redis."""

    def __init__(self, stats: CacheStats, client: redis.Redis, *, interval: float, instance: str,
                 metrics_dir: str | None = None, embedded: bool = False, breaker: Any = None, near: Any = None,
                 redis_ok: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.time) -> None:
        self.stats = stats
        self.latency = Latency()
        self.client = client
        self.interval = interval
        self.instance = instance
        self.metrics_dir = metrics_dir
        self.embedded = embedded
        self.breaker = breaker
        self.near = near
        self._redis_ok = redis_ok
        self._clock = clock
        self._token = secrets.token_hex(4)
        self._push_lock = threading.Lock()
        self._pushed: dict[str, float] = {}   # what Redis has of this process's counts
        self._bucketed: dict[str, float] = {}  # what the local ring has
        self._ring: deque[tuple[int, dict[str, float]]] = deque()
        self._due = 0.0
        self._pusher_generation = -1  # _forks[0] when this process's timer thread was started
        self._last_push = 0.0
        self._open_seconds = 0.0  # time this process's breaker was not closed, sampled at each push
        _live.add(self)

    # -- what this process counted ---------------------------------------------------------

    def fields(self) -> dict[str, float]:
        """Every counter of this process as flat fields (cache's and requests')."""
        return {**self.stats.fields(), **latency_fields(self.latency.snapshot()),
                "breaker_open_seconds": self._open_seconds}

    def gauges(self) -> dict[str, Any]:
        """This process's breaker state and near-cache size."""
        entries = size = evictions = 0
        if self.near is not None:
            entries, size, evictions = self.near.usage()
        return {"breaker": getattr(self.breaker, "state", "closed"), "near_entries": entries,
                "near_bytes": size, "near_evictions": evictions}

    def snapshot(self) -> dict[str, Any]:
        """This process's cumulative counts, as written to its snapshot file."""
        return {"pid": os.getpid(), "written": self._clock(),
                "counters": {**self.stats.fields(), "breaker_open_seconds": self._open_seconds},
                "fill": self.stats.fill_histograms(), "latency": self.latency.snapshot(), "gauges": self.gauges()}

    # -- per instance: snapshot files --------------------------------------------------------

    def _file(self) -> str | None:
        if not self.metrics_dir:
            return None
        return os.path.join(self.metrics_dir, f"{os.getpid()}-{self._token}.json")

    def write_snapshot(self) -> None:
        """Write this process's snapshot file atomically (nothing without a metrics directory)."""
        path = self._file()
        if path is None:
            return
        temporary = f"{path}.tmp"
        with open(temporary, "wb") as file:
            file.write(orjson.dumps(self.snapshot()))
        os.replace(temporary, path)

    def instance_snapshots(self) -> list[tuple[dict[str, Any], bool]]:
        """This process's live snapshot and its siblings' files: [(snapshot, alive)]."""
        out = [(self.snapshot(), True)]
        own = self._file()
        if own is None:
            return out
        for path in glob.glob(os.path.join(self.metrics_dir, "*.json")):
            if path == own:
                continue
            try:
                with open(path, "rb") as file:
                    snapshot = orjson.loads(file.read())
            except (OSError, orjson.JSONDecodeError):
                continue  # vanished while the directory was cleaned, or half a file from a crash
            out.append((snapshot, not path.endswith(".dead.json") and _alive(snapshot.get("pid", 0))))
        return out

    # -- fleet-wide: Redis buckets -----------------------------------------------------------

    def push(self) -> bool:
        """Write the snapshot file, bucket locally, and push to Redis; False if Redis could not take the counts."""
        with self._push_lock:
            now = self._clock()
            self._due = now + self.interval
            if self._last_push and getattr(self.breaker, "state", "closed") != "closed":
                self._open_seconds += now - self._last_push
            self._last_push = now
            try:
                self.write_snapshot()
            except OSError:
                log.warning("could not write the metrics snapshot to %s", self.metrics_dir, exc_info=True)
            fields = self.fields()
            self._add_to_ring(deltas(fields, self._bucketed), now)
            self._bucketed = fields
            if not self._redis_ok():
                return False
            try:
                report = orjson.dumps({"instance": self.instance, "pid": os.getpid(), "seen": now, **self.gauges()})
                push_deltas(self.client, deltas(fields, self._pushed), now,
                            report=(f"{self.instance}|{os.getpid()}|{self._token}", report))
            except redis.RedisError:
                return False
            self._pushed = fields
            return True

    def _add_to_ring(self, changes: dict[str, float], now: float) -> None:
        bucket = int(now // BUCKET_SECONDS) * BUCKET_SECONDS
        if changes:
            if self._ring and self._ring[-1][0] == bucket:
                last = self._ring[-1][1]
                for field, n in changes.items():
                    last[field] = last.get(field, 0) + n
            else:
                self._ring.append((bucket, dict(changes)))
        while self._ring and self._ring[0][0] <= now - HISTORY_SECONDS - BUCKET_SECONDS:
            self._ring.popleft()

    def local_buckets(self, now: float) -> tuple[list[tuple[int, dict[str, float]]], dict[str, float]]:
        """This process's own buckets of the last hour (as `read_buckets` gives), and its totals."""
        self.push_locally()
        current = int(now // BUCKET_SECONDS)
        by_start = dict(self._ring)
        starts = range(current - HISTORY_SECONDS // BUCKET_SECONDS + 1, current + 1)
        return [(b * BUCKET_SECONDS, by_start.get(b * BUCKET_SECONDS, {})) for b in starts], self.fields()

    def push_locally(self) -> None:
        with self._push_lock:
            fields = self.fields()
            self._add_to_ring(deltas(fields, self._bucketed), self._clock())
            self._bucketed = fields

    def fleet(self) -> tuple[list, dict, list[dict[str, Any]], str, float]:
        """(buckets, totals, process reports, scope, when) of every process sharing the Redis, or of this one."""
        now = self._clock()
        if self.embedded:
            buckets, totals = self.local_buckets(now)
            return buckets, totals, [self._own_report(now)], "this process only (no Redis configured)", now
        try:
            if not self._redis_ok() or not self.push():  # an open breaker: do not wait on Redis here either
                raise redis.ConnectionError("Redis is unavailable")
            now = self._clock()  # after the push: its counts are in a bucket this read covers
            buckets, totals = read_buckets(self.client, now, HISTORY_SECONDS)
            reports = [orjson.loads(raw) for raw in self.client.hvals(keys.stats_processes_key())]
        except redis.RedisError:
            buckets, totals = self.local_buckets(now)
            return buckets, totals, [self._own_report(now)], "this process only (Redis unavailable)", now
        return buckets, totals, reports, "all instances sharing the Redis", now

    def _own_report(self, now: float) -> dict[str, Any]:
        return {"instance": self.instance, "pid": os.getpid(), "seen": now, **self.gauges()}

    # -- timing ------------------------------------------------------------------------------

    def after_request(self) -> None:
        """Start this process's timer thread if it has none (after a fork); with no interval, push now (tests)."""
        if self._pusher_generation != _forks[0]:
            if self.interval > 0:
                self._start_pusher()
            else:
                self.push()

    def push_if_due(self) -> None:
        """Push when the interval has passed (the timer thread's call)."""
        if self._clock() >= self._due:
            self.push()

    def _start_pusher(self) -> None:
        """Start this process's timer thread (again after a fork: threads do not survive one)."""
        self._pusher_generation = _forks[0]
        self.push()  # the first counts of this process, at once
        threading.Thread(target=_push_periodically, args=(weakref.ref(self), self.interval),
                         name="telemetry-push", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            log.warning("telemetry push failed", exc_info=True)
        del alive


def observing(environ: dict[str, Any], start_response: Callable) -> Callable:
    """Wrap `start_response` so the answer carries ``X-Request-ID`` and its status is noted (``STATUS``)."""
    def start(status: str, headers: list, exc_info: Any = None) -> Callable:
        environ[STATUS] = status[:3]
        headers.append(("X-Request-ID", environ[REQUEST_ID]))
        return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)
    return start


class Observed:
    """WSGI middleware around everything: request id, latency by endpoint/method/status, access log, pushes.

    The request id goes into the environ (``REQUEST_ID``) and onto every answer as
    ``X-Request-ID``. With ``wrapped=False`` the app inside is responsible for that (and for
    setting ``STATUS``): the fast path does it for its hits itself, which saves a wrapper call
    per hit, and wraps `start_response` with `observing` for whatever it passes on.
    """

    def __init__(self, app: Callable, telemetry: Telemetry, *, access_sample: float = 1.0, wrapped: bool = True,
                 random_: Callable[[], float] = random.random) -> None:
        self.app = app
        self.telemetry = telemetry
        self.access_sample = access_sample
        self.wrapped = wrapped
        self._random = random_
        self._observe = telemetry.latency.observe_key
        self._after = telemetry.after_request

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        rid = environ.get("HTTP_X_REQUEST_ID")  # request_id(), inlined: this runs on every hit
        if rid is None or not _sane(rid):
            rid = _ids.prefix + hex(next(_ids.counter))
        environ[REQUEST_ID] = rid
        try:
            return self.app(environ, observing(environ, start_response) if self.wrapped else start_response)
        finally:
            seconds = time.perf_counter() - started
            labels = environ.get(LABELS)
            if labels is None:
                labels = (environ.get(ENDPOINT, UNMATCHED), environ["REQUEST_METHOD"], environ.get(STATUS, "500"))
            self._observe(labels, seconds)
            if self.access_sample and (self.access_sample >= 1.0 or self._random() < self.access_sample):
                if access_log.isEnabledFor(logging.INFO):
                    _log_access(environ, labels[0], labels[2], seconds, rid)
            self._after()


def _log_access(environ: dict[str, Any], endpoint: str, status: str, seconds: float, rid: str) -> None:
    """One access line (``service.logging_setup.AccessFormatter`` writes ``access`` as its fields)."""
    query = environ.get("QUERY_STRING")
    record = logging.LogRecord("service.access", logging.INFO, __file__, 0, "request", None, None)
    record.access = {
        "request_id": rid, "method": environ["REQUEST_METHOD"],
        "path": environ.get("PATH_INFO", "") + ("?" + query if query else ""), "endpoint": endpoint,
        "status": int(status) if status.isdigit() else status, "duration_ms": round(seconds * 1000, 3),
        "cache": environ.get(CACHE_RESULT), "user_id": environ.get(USER_ID),
        "remote_addr": environ.get("REMOTE_ADDR")}
    access_log.handle(record)  # no caller lookup: the record is made here, cheaply


# -- gunicorn hooks (see bench/gunicorn_conf.py and deploy/gunicorn.conf.py) --------------------

def gunicorn_make_metrics_dir() -> str:
    """Make this master's metrics directory and export it (``METRICS_DIR``) to the workers it forks."""
    directory = tempfile.mkdtemp(prefix=f"profile-service-metrics-{os.getpid()}-")
    os.environ["METRICS_DIR"] = directory
    os.environ.setdefault("METRICS_INSTANCE", f"{_hostname()}:{os.getpid()}")
    return directory


def gunicorn_mark_process_dead(pid: int) -> None:
    """A worker ended: its counters stay in the instance's sum, its gauges (breaker, near cache) no longer."""
    directory = os.environ.get("METRICS_DIR")
    if not directory:
        return
    for path in glob.glob(os.path.join(directory, f"{pid}-*.json")):
        if not path.endswith(".dead.json"):
            os.replace(path, path[:-len(".json")] + ".dead.json")


def gunicorn_worker_started() -> None:
    """A worker has loaded the app: start its timer thread and write its first snapshot now (runs in the worker)."""
    for telemetry in list(_live):
        try:
            telemetry.after_request()
        except Exception:
            log.warning("could not start the metrics of this worker", exc_info=True)


def gunicorn_worker_exit() -> None:
    """Write this worker's last counts before it exits (runs in the worker)."""
    for telemetry in list(_live):
        try:
            telemetry.write_snapshot()
        except OSError:
            pass


def gunicorn_remove_metrics_dir() -> None:
    """The master stops: its instance's counts end with it."""
    directory = os.environ.get("METRICS_DIR")
    if directory and os.path.basename(directory).startswith("profile-service-metrics-"):
        shutil.rmtree(directory, ignore_errors=True)


def _hostname() -> str:
    import socket
    return socket.gethostname()


def default_instance() -> str:
    """This instance's name: ``METRICS_INSTANCE``, else host name and process id."""
    return f"{_hostname()}:{os.getpid()}"
