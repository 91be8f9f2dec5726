"""Gunicorn hooks: the instance's metrics directory, and for benchmark runs per-worker counters.

Loaded with ``-c python:bench.gunicorn_conf``; besides the service's own settings from
../gunicorn.conf.py (request limits, JSON error pages, the per-instance metrics directory and
its hooks), which ``-c`` keeps gunicorn from loading, it changes no server setting (workers,
bind and worker class come from the command line). Without BENCH_COUNTERS_DIR it adds nothing.
Cost inside a worker: one Python call per SQL statement and per pool checkout, and a
thread that copies the service's cache counters every 20 ms, so the service's hits run no
extra code; in the flask-caching baseline one Python call per cache get.
"""
from __future__ import annotations

import mmap
import os
import runpy
import struct
import threading
import time
from pathlib import Path

from bench.counters import INDEX, RESULTS, SIZE

_SERVICE = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py"))
limit_request_line = _SERVICE["limit_request_line"]
limit_request_fields = _SERVICE["limit_request_fields"]
limit_request_field_size = _SERVICE["limit_request_field_size"]
child_exit, worker_exit, on_exit = _SERVICE["child_exit"], _SERVICE["worker_exit"], _SERVICE["on_exit"]


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
