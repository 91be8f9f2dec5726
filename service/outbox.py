"""Delivering the cache outbox to Redis: by each write before it answers, and by every process continuously.

The database's triggers record what every committed change invalidates (``models.outbox``).
Three deliverers read those rows, and any of them may deliver a row (a deletion or a
generation bump sent twice does no harm):

- the writer, right after its commit and before its answer, retrying for up to
  ``CACHE_WRITE_DEADLINE`` seconds whatever the breaker says;
- a daemon thread in every process, woken at once by PostgreSQL ``NOTIFY`` (sent by the
  triggers at commit) and otherwise every ``OUTBOX_POLL_INTERVAL`` seconds. It delivers rows
  that have waited longer than ``OUTBOX_GRACE`` (a writer that could reach Redis has
  delivered its own by then). While it knows of such rows it *suspends* this process's
  cache reads, so a writer cut off from Redis cannot make other processes serve old data:
  they read the database until the rows are delivered. It also delivers everything pending
  when a process starts (reads stay suspended until it has), so a writer that died or was
  recycled before delivering loses nothing;
- the epoch repair (``cache.epoch``): a Redis restarted from its files or failed over
  replays every row of the retention window, delivered or not.

Delivered rows are kept for the retention window (the longest TTL of a cache entry plus a
margin) for that repair, then purged. See ``docs/RELIABILITY.md`` for the argument and the
measured bounds.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Iterable, Sequence

from sqlalchemy import Engine, bindparam, text

from cache import ReadThroughCache, keys
from models.outbox import CHANNEL, NOW_EPOCH

log = logging.getLogger(__name__)

Row = Sequence  # (id, user_id, flyer_id)


def plan(rows: Iterable[Row]) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """The keys to delete, the generations to bump and the families touched by outbox rows."""
    users: set[int] = set()
    flyers: set[int] = set()
    for _, user_id, flyer_id in rows:
        if user_id is not None:
            users.add(user_id)
        if flyer_id is not None:
            flyers.add(flyer_id)
    key_list = [keys.profile_key(uid) for uid in sorted(users)] + [keys.flyer_key(fid) for fid in sorted(flyers)]
    generations = [(keys.generation_key(uid), keys.pages_key(uid)) for uid in sorted(users)]
    families = ["profile", "flyer_page"] * bool(users) + ["flyer"] * bool(flyers)
    return key_list, generations, families


class Outbox:
    """Reads the outbox table of `engine` and delivers it through `cache` (see the module docstring)."""

    def __init__(self, engine: Engine, cache: ReadThroughCache, *, write_timeout: float = 1.0,
                 poll_interval: float = 0.5, grace: float = 0.2, retention: float = 360.0,
                 batch: int = 1000) -> None:
        self.engine = engine
        self.cache = cache
        self.write_timeout = write_timeout
        self.poll_interval = poll_interval
        self.grace = grace
        self.retention = retention
        self.batch = batch
        self._now = NOW_EPOCH[engine.dialect.name]
        self._pid = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.backlog = 0
        """Undelivered rows older than the grace period, as last seen by this process's deliverer."""

    # Delivery.

    def deliver_pending(self, *, timeout: float, min_age: float = 0.0, retried: bool = False) -> bool:
        """Deliver every undelivered row at least `min_age` seconds old; True if none is left.

        Raises the database's errors; returns False if Redis could not take them in `timeout`.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(text(
                    f"SELECT id, user_id, flyer_id FROM cache_outbox WHERE delivered = :no"
                    f" AND created_at <= {self._now} - :age ORDER BY id LIMIT :n"),
                    {"no": False, "age": min_age, "n": self.batch}).all()
                conn.rollback()
            if not rows:
                return True
            key_list, generations, families = plan(rows)
            if not self.cache.invalidate(keys=key_list, generations=generations, families=families,
                                         timeout=max(0.0, deadline - time.monotonic()), retried=retried):
                return False
            with self.engine.begin() as conn:
                conn.execute(text("UPDATE cache_outbox SET delivered = :yes WHERE id IN :ids")
                             .bindparams(bindparam("ids", expanding=True)),
                             {"yes": True, "ids": [row[0] for row in rows]})
            if len(rows) < self.batch:
                return True

    def undelivered(self, conn: Any) -> list[Row]:
        """The newest undelivered rows as `conn` sees them (a writer's own, before its commit, among them)."""
        return conn.execute(text("SELECT id, user_id, flyer_id FROM cache_outbox WHERE delivered = :no"
                                 " ORDER BY id DESC LIMIT :n"), {"no": False, "n": self.batch}).all()

    def after_write(self, rows: Sequence[Row] = ()) -> None:
        """Deliver what the write just committed before it answers; never raises.

        If Redis cannot take it within the write deadline, the rows stay in the outbox
        and every other process delivers them (suspending its reads meanwhile). If the
        database cannot be read (it went down right after the commit), `rows` (read just
        before the commit) are delivered instead; they stay undelivered in the table, and
        the deliverers deliver them again once it is back.
        """
        try:
            if not self.deliver_pending(timeout=self.write_timeout):
                log.warning("cache: invalidation not delivered within %.1f s; left in the outbox",
                            self.write_timeout)
        except Exception:  # the write has committed: its answer must not turn into an error
            key_list, generations, families = plan(rows)
            if rows and self.cache.invalidate(keys=key_list, generations=generations, families=families,
                                              timeout=self.write_timeout):
                log.warning("cache: outbox unreadable after a write; delivered the rows read before its commit")
            else:
                log.warning("cache: could not read the outbox after a write", exc_info=True)

    def replay_window(self) -> None:
        """Deliver again every row of the retention window (epoch repair); raises if it cannot.

        Rows committed after the repair began are left to their writers, who deliver them to
        this same server: so the repair ends however busy the writers are (it holds the
        lookup connection, and with it every read of this process, until it does).
        """
        with self.engine.connect() as conn:
            newest = conn.execute(text("SELECT max(id) FROM cache_outbox")).scalar() or 0
            conn.rollback()
        last, unsettled = 0, False
        while last < newest:
            with self.engine.connect() as conn:
                rows = conn.execute(text(
                    f"SELECT id, user_id, flyer_id FROM cache_outbox WHERE id > :last AND id <= :newest"
                    f" AND created_at >= {self._now} - :window ORDER BY id LIMIT :n"),
                    {"last": last, "newest": newest, "window": self.retention, "n": self.batch}).all()
                conn.rollback()
            if not rows:
                break
            key_list, generations, families = plan(rows)
            if not self.cache.invalidate(keys=key_list, generations=generations, families=families,
                                         timeout=self.write_timeout, retried=True, settle=False):
                raise ConnectionError("could not replay the outbox to Redis")
            last, unsettled = rows[-1][0], True
        if unsettled:  # the near caches' proof window, once for the whole replay (not per batch)
            self.cache.settle()

    def purge(self) -> int:
        """Delete rows older than the retention window; how many."""
        with self.engine.begin() as conn:
            return conn.execute(text(f"DELETE FROM cache_outbox WHERE created_at < {self._now} - :window"),
                                {"window": self.retention}).rowcount

    # The deliverer thread of this process.

    def start(self) -> None:
        """Start this process's deliverer (once per process; a fork starts its own)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self.cache.suspended = True  # until everything pending at start is delivered
            self._thread = threading.Thread(target=self._run, name="cache-outbox", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop this process's deliverer and wait for it to close its connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        pid = os.getpid()
        self._catch_up(min_age=0.0, first=True)
        listener = None
        last_purge = time.monotonic()
        while not self._stop.is_set() and pid == os.getpid():
            try:
                if listener is None and self.engine.dialect.name == "postgresql":
                    listener = self._listen()
                if listener is not None and self._wait_notify(listener):
                    self._stop.wait(self.grace)  # the writer's own delivery comes first
                elif listener is None:
                    self._stop.wait(self.poll_interval)
            except Exception as error:
                log.info("cache: outbox listener lost (%s); polling", error)
                listener = _close(listener)
                self._stop.wait(self.poll_interval)
            self._catch_up(min_age=self.grace)
            if time.monotonic() - last_purge > 60:
                last_purge = time.monotonic()
                try:
                    self.purge()
                except Exception:
                    log.info("cache: could not purge the outbox", exc_info=True)
        _close(listener)

    def _catch_up(self, *, min_age: float, first: bool = False) -> None:
        """Deliver rows pending longer than `min_age`, with this process's reads suspended meanwhile."""
        try:
            while not self.catch_up(min_age=min_age) and not self._stop.is_set():
                self._stop.wait(0.05)
        except Exception as error:
            # The database cannot say what is pending. If it is down nobody can write, so
            # reads go on from the cache (serving cached answers through a database outage).
            log.info("cache: outbox unreadable (%s)", error)
            if first:
                self.cache.suspended = False

    def catch_up(self, *, min_age: float) -> bool:
        """One pass of the deliverer: True once nothing older than `min_age` is pending (reads resume).

        While rows that old are pending, this process's reads are suspended: their writer
        could not deliver them in its deadline, so Redis may still hold what they invalidate.
        Raises the database's errors.
        """
        with self.engine.connect() as conn:
            self.backlog = conn.execute(text(
                f"SELECT count(*) FROM cache_outbox WHERE delivered = :no"
                f" AND created_at <= {self._now} - :age"), {"no": False, "age": min_age}).scalar_one()
            conn.rollback()
        if self.backlog:
            self.cache.suspended = True
            if not self.deliver_pending(timeout=self.poll_interval, min_age=min_age, retried=True):
                return False
            self.backlog = 0
        self.cache.suspended = False
        return True

    def _listen(self):
        import psycopg  # PostgreSQL only

        url = self.engine.url.set(drivername="postgresql")
        conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True, connect_timeout=2)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _wait_notify(self, listener) -> bool:
        """Wait up to the poll interval for a NOTIFY; True if one came."""
        got = False
        for _ in listener.notifies(timeout=self.poll_interval, stop_after=1):
            got = True
        return got


def _close(listener) -> None:
    if listener is not None:
        try:
            listener.close()
        except Exception:
            pass
    return None
