"""Staleness audit: a sample of cache hits re-read from the database in the background and compared.

A hit is sampled with one random-number comparison (``CACHE_AUDIT_FRACTION``, default 1%);
a sampled hit puts a small job on a bounded queue (full: the job is dropped and counted) and a
daemon thread per process does the rest, off the request path:

1. re-read the answer from the database with the same loader and the same serialization
   as a fill (``service.reads`` with ``RELOAD``), so the same body gives the same ETag;
2. equal ETags: "fresh";
3. different: a write may have landed between the fill and the re-read, which is not
   staleness as long as its invalidation follows. So wait ``grace`` seconds (longer than an
   invalidation takes to land), then check that the cache still holds the audited entry
   (same ETag under the live key, or generation, in Redis) and re-read once more. Only if the
   cache still serves the audited body and the database still says otherwise: "stale".
   If the cache moved on (invalidated, refilled): "fresh" (the write was in flight).

Results are counted as ``cache_audit_total{family,result}``; dropped jobs (queue full) as result
"dropped", audits that could not read Redis for the re-check as "unverified". At most
``CACHE_AUDIT_MAX_PER_SECOND`` hits a second per process are audited (default 5): each audit
costs a database read (about what a miss costs), so this bounds its CPU.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import redis

from cache import keys

log = logging.getLogger(__name__)

FRESH, STALE, DROPPED, UNVERIFIED = "fresh", "stale", "dropped", "unverified"


@dataclass(frozen=True, slots=True)
class Job:
    """One sampled hit: what was served, and how to read it again."""

    family: str
    key: str
    variant: str
    generation_key: str | None
    etag: str
    reread: Callable[[], str | None]  # ETag of a fresh load (None: not found), run in an app context


class Auditor:
    """A bounded queue of sampled hits and the daemon thread that audits them (started on first use per process)."""

    def __init__(self, app: Any, stats: Any, client: redis.Redis, *, fraction: float, grace: float = 1.0,
                 max_per_second: float = 5.0, capacity: int = 100, random_: Callable[[], float] | None = None) -> None:
        import random
        self.app = app
        self.stats = stats
        self.client = client
        self.fraction = fraction
        self.grace = grace
        self.sample = random_ or random.random
        self._spacing = 1.0 / max_per_second if max_per_second > 0 else 0.0
        self._next = 0.0
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=capacity)
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        """Queue a sampled hit; never blocks (a full queue drops the job).

        At most ``max_per_second`` jobs a second are taken (a sampled hit beyond that is simply
        not audited), which bounds the audit's database reads and CPU whatever the traffic.
        """
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._spacing
        if self._pid != os.getpid():
            self._start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.stats.record_audit(job.family, DROPPED)

    def _start(self) -> None:
        with self._lock:
            if self._pid != os.getpid():  # threads do not survive a fork
                self._pid = os.getpid()
                threading.Thread(target=_run, args=(weakref.ref(self), self._queue), name="cache-audit",
                                 daemon=True).start()

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued job is audited (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def audit(self, job: Job) -> str:
        """Audit one job now (the method in the module's doc); count and return its result."""
        with self.app.app_context():
            if job.reread() == job.etag:
                return self._count(job, FRESH)
            time.sleep(self.grace)
            live = self._live_etag(job)
            if live is UNVERIFIED:
                return self._count(job, UNVERIFIED)
            if live != job.etag:
                return self._count(job, FRESH)  # invalidated or refilled since: a write was in flight
            if job.reread() == job.etag:
                return self._count(job, FRESH)
            live = self._live_etag(job)
            if live is UNVERIFIED:
                return self._count(job, UNVERIFIED)
            if live != job.etag:
                return self._count(job, FRESH)
        log.error("staleness audit: the cache serves an answer the database no longer gives",
                  extra={"family": job.family, "key": job.key, "etag": job.etag})
        return self._count(job, STALE)

    def _count(self, job: Job, result: str) -> str:
        self.stats.record_audit(job.family, result)
        return result

    def _live_etag(self, job: Job) -> str | None:
        """The ETag Redis holds for the job's entry now (None: gone; UNVERIFIED: Redis unavailable)."""
        try:
            key = job.key
            if job.generation_key is not None:
                key = keys.generation_hash_key(job.key, self.client.get(job.generation_key) or b"0")
            raw = self.client.hget(key, job.variant)
        except redis.RedisError:
            return UNVERIFIED
        if raw is None or raw == keys.NEGATIVE_MARKER:
            return None
        from cache.entries import ETAG_LENGTH
        return raw[:ETAG_LENGTH].decode("ascii")


def _run(auditor: "weakref.ref[Auditor]", jobs: "queue.Queue[Job]") -> None:
    """The audit thread: audit queued jobs while the Auditor (and its app) lives, then end."""
    while True:
        try:
            job = jobs.get(timeout=5)
        except queue.Empty:
            if auditor() is None:
                return
            continue
        alive = auditor()
        try:
            if alive is not None:
                alive.audit(job)
        except Exception:  # an audit must never kill the thread
            log.warning("staleness audit of %s failed", job.key, exc_info=True)
        finally:
            jobs.task_done()
        if alive is None:
            return
        del alive
