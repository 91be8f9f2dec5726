"""Gunicorn settings of the profile service; gunicorn loads this file by itself when run from here.

Limits: a request line of at most 8190 bytes (the most gunicorn allows short of no limit at
all, which lets one request line grow without bound in memory), at most 100 header fields of
at most 8190 bytes each, so at most ~820 KB of head is buffered per request. The application
answers a URI over 4 KiB itself (service/edge.py: 414 JSON). What gunicorn refuses (a header
field over 8190 bytes, 101 fields, a longer request line, a malformed request) it answers with
an HTML page;
`write_json_error` below replaces that page with the contract's JSON. See docs/SECURITY.md.
"""
import json
import os

import gunicorn.util

from service.telemetry import (gunicorn_make_metrics_dir, gunicorn_mark_process_dead, gunicorn_remove_metrics_dir,
                               gunicorn_worker_exit)

limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190


def write_json_error(sock, status_int, reason, mesg):
    """Answer as gunicorn.util.write_error does, with ``{"error", "details"}`` JSON instead of HTML."""
    # `mesg` echoes parts of the request (a header name, the request line): it stays in gunicorn's log.
    body = json.dumps({"error": reason, "details": {}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


# The workers look write_error up on the module at each error (gunicorn/workers/base.py), and they
# are forked from the process that read this file.
gunicorn.util.write_error = write_json_error


# Per-instance metrics: this master's own directory of per-worker snapshot files, made before any
# worker forks, so /metrics sums this instance's workers and no one else's (service/telemetry.py).
if not os.environ.get("METRICS_DIR"):
    gunicorn_make_metrics_dir()


def child_exit(server, worker) -> None:
    gunicorn_mark_process_dead(worker.pid)  # its counters stay in the sum, its gauges stop counting


def worker_exit(server, worker) -> None:
    gunicorn_worker_exit()  # its last counts


def on_exit(server) -> None:
    gunicorn_remove_metrics_dir()
