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

import gunicorn.util

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
