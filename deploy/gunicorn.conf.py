"""Production gunicorn settings: ``gunicorn -c deploy/gunicorn.conf.py wsgi:app``.

Per-instance metrics (each master makes its own ``METRICS_DIR``, see ``service/telemetry.py``),
JSON logs from the service itself (gunicorn's own access log stays off: the service writes one
JSON access line per request), sync workers, 2 per core, as measured best in docs/PERFORMANCE.md.
"""
import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.gunicorn_conf import child_exit, on_exit, post_worker_init, worker_exit  # noqa: E402,F401  (metrics hooks)

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
worker_class = "sync"
accesslog = None
control_socket_disable = True  # one per host path otherwise: instances on one host would share it
