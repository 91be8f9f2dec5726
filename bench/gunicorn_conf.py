"""Gunicorn hooks: the instance's metrics directory, and for benchmark runs per-worker counters.

Loaded with ``-c python:bench.gunicorn_conf``; it changes no server setting (workers, bind
and worker class come from the command line).

Metrics (always): the master makes a metrics directory of its own when the config is loaded
(before any worker forks) and exports it as ``METRICS_DIR``, so ``/metrics`` sums this
instance's workers (``service.telemetry``); a worker that exits writes its last counts, the
master marks it dead (its gauges stop counting, its counters stay) and removes the directory
when it stops. ``deploy/gunicorn.conf.py`` loads the same hooks for production.

Benchmark counters: without BENCH_COUNTERS_DIR nothing more happens.
Cost inside a worker: one Python call per SQL statement and per pool checkout, and a
thread that copies the service's cache counters every 20 ms, so the service's hits run no
extra code; in the flask-caching baseline one Python call per cache get.
"""
from __future__ import annotations

import mmap
import os
import struct
import threading
import time

from bench.counters import INDEX, RESULTS, SIZE

if not os.environ.get("METRICS_DIR"):
    from service.telemetry import gunicorn_make_metrics_dir
    gunicorn_make_metrics_dir()


def child_exit(server, worker) -> None:
    from service.telemetry import gunicorn_mark_process_dead
    gunicorn_mark_process_dead(worker.pid)


def worker_exit(server, worker) -> None:
    from service.telemetry import gunicorn_worker_exit
    gunicorn_worker_exit()


def on_exit(server) -> None:
    from service.telemetry import gunicorn_remove_metrics_dir
    gunicorn_remove_metrics_dir()


def post_worker_init(worker) -> None:
    from service.telemetry import gunicorn_worker_started
    gunicorn_worker_started()  # this worker counts in /metrics (and its breaker state) before its first request
    directory = os.environ.get("BENCH_COUNTERS_DIR")
    if not directory:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    path = os.path.join(directory, f"{os.getpid()}.cnt")
    with open(path, "w+b") as file:
        file.truncate(SIZE)
        slots = mmap.mmap(file.fileno(), SIZE)
    counts: dict[str, int] = {}

    def count(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1
        struct.pack_into("<q", slots, 8 * INDEX[name], counts[name])

    event.listen(Engine, "before_cursor_execute", lambda *args: count("statements"))
    event.listen(Pool, "checkout", lambda *args: count("checkouts"))

    extensions = getattr(getattr(worker, "wsgi", None), "extensions", {})
    backends = extensions.get("cache")  # Flask-Caching: {Cache: backend}
    if isinstance(backends, dict):
        for backend in backends.values():
            def get(key, _get=backend.get):  # what @cache.cached calls once per request
                value = _get(key)
                count("flask_caching|hit" if value is not None else "flask_caching|miss")
                return value
            backend.get = get
    stats = getattr(extensions.get("profile_service"), "stats", None)
    if stats is None:
        return  # a baseline app: no CacheStats

    def copy_stats() -> None:
        while True:
            time.sleep(0.02)
            for family, results in stats.snapshot()["requests"].items():
                for result, n in results.items():
                    slot = INDEX.get(f"{family}|{result}")
                    if slot is not None and result in RESULTS:
                        struct.pack_into("<q", slots, 8 * slot, n)

    threading.Thread(target=copy_stats, name="bench-counters", daemon=True).start()
