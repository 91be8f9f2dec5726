"""Production gunicorn settings: ``gunicorn -c deploy/gunicorn.conf.py wsgi:app``.

Per-instance metrics (each master makes its own ``METRICS_DIR``, see ``service/telemetry.py``),
JSON logs from the service itself (gunicorn's own access log stays off: the service writes one
JSON access line per request), sync workers, 2 per core, as measured best in docs/PERFORMANCE.md.
"""
import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench.gunicorn_conf as hooks  # noqa: E402  (the metrics hooks; importing it makes this master's METRICS_DIR)

child_exit, on_exit, post_worker_init, worker_exit = (hooks.child_exit, hooks.on_exit, hooks.post_worker_init,
                                                      hooks.worker_exit)

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
worker_class = "sync"
accesslog = None
control_socket_disable = True  # one per host path otherwise: instances on one host would share it
