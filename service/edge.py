"""The HTTP edge: refuse, as JSON and before anything else runs, requests the service never serves.

Runs first in WSGI, before the cache's fast path, so a refused request costs no Redis round
trip and leaves nothing in Redis (no lease, no variant, no counter): a URI over
``REQUEST_MAX_URI_BYTES`` answers 414, and a ``Host`` that is malformed or not served 400
(RFC 9112 section 3.2 asks 400 for an invalid Host). On an ordinary request that is one
length sum and one set lookup. Header fields are limited by gunicorn (gunicorn.conf.py: 100
fields of at most 8190 bytes, refused with JSON 431): summing them here cost each cache hit
~0.5 µs, 5 %, for no bound gunicorn does not already give (see docs/SECURITY.md).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

import orjson

from service.telemetry import observing

# What werkzeug accepts as a Host (werkzeug.sansio.utils._host_re): anything else it turns into
# an empty host, so absolute URLs would come out as "http:///...".
_HOST = re.compile(r"([a-z0-9.-]+|\[[a-f0-9]*:[a-f0-9.:]+\])(?::([1-9][0-9]{0,4}))?", re.ASCII | re.IGNORECASE)
_MEMO_SIZE = 1024  # Host values already accepted, remembered so the next check is one set lookup


def number_pattern(limit: int) -> str:
    """Return a regex matching the decimal numbers 1 to ``limit`` (no sign, no leading zero).

    Routing needs the range in the pattern itself: werkzeug answers 405, not 404, when a
    converter refuses a value that another method's rule for the same path would take.
    """
    digits = str(limit)
    shorter = [f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    same_length = []
    for position, digit in enumerate(digits):
        lowest = 1 if position == 0 else 0
        if int(digit) > lowest:
            rest = len(digits) - position - 1
            same_length.append(f"{digits[:position]}[{lowest}-{int(digit) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    return "(?:" + "|".join([*shorter, *same_length, digits]) + ")"


def served_hosts(config: Mapping[str, Any]) -> frozenset[str]:
    """Return the host names the service answers for (empty: any host).

    ``PUBLIC_BASE_URL``'s host name plus every name of ``SERVED_HOSTS`` (env ``TRUSTED_HOSTS``),
    lower-cased, without port and without the brackets of an IPv6 literal.
    """
    names = {_name_of(entry) for entry in config.get("SERVED_HOSTS") or ()}
    if config.get("PUBLIC_BASE_URL"):
        names.add((urlsplit(config["PUBLIC_BASE_URL"]).hostname or "").lower())
    return frozenset(name for name in names if name)


def host_name(host: str) -> str | None:
    """Return the lower-cased name of a ``Host`` value (no port, no brackets), or None if it is malformed.

    Malformed: what werkzeug would not accept, a port outside 1-65535, or a name IDNA refuses
    (an empty label, a label over 63 characters), which Flask would answer 400 only after the
    fast path had already looked the request up in the cache.
    """
    match = _HOST.fullmatch(host)
    if match is None or (match[2] is not None and int(match[2]) > 65535):
        return None
    name = match[1].lower()
    if name[0] == "[":
        return name[1:-1]
    try:
        name.encode("idna")
    except UnicodeError:
        return None
    return name


def _name_of(entry: str) -> str:
    entry = entry.strip().lower()
    if entry.count(":") > 1 and not entry.startswith("["):
        entry = f"[{entry}]"  # an IPv6 address written without brackets
    return (host_name(entry) or "") if entry else ""


def error_body(message: str) -> bytes:
    """The contract's error JSON with no details."""
    return orjson.dumps({"error": message, "details": {}})


class Edge:
    """WSGI middleware: answer 414 or 400 (Host) as JSON before the rest of the stack sees the request."""

    def __init__(self, app: Callable, config: Mapping[str, Any], *, observe: bool = False) -> None:
        self.app = app
        self.observe = observe  # inside an Observed(wrapped=False): its refusals note their status and request id
        self.max_uri = config["REQUEST_MAX_URI_BYTES"]
        self.hosts = served_hosts(config)
        self._accepted: set[str] = set()

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        # The common case in one condition: a Host seen and accepted before, a URI within the limit.
        if (environ.get("HTTP_HOST") in self._accepted
                and len(environ.get("PATH_INFO", "")) + len(environ.get("QUERY_STRING", "")) <= self.max_uri):
            return self.app(environ, start_response)
        original = start_response
        if self.observe:
            start_response = observing(environ, start_response)
        if len(environ.get("PATH_INFO", "")) + len(environ.get("QUERY_STRING", "")) > self.max_uri:
            return _refuse(start_response, "414 URI Too Long", "URI too long")
        host = environ.get("HTTP_HOST")
        if host is None:  # HTTP/1.0 without a Host: werkzeug falls back to the server's name
            host = environ.get("SERVER_NAME", "")
        if not self._accept(host):
            return _refuse(start_response, "400 Bad Request", "Host not served")
        return self.app(environ, original)

    def _accept(self, host: str) -> bool:
        if host in self._accepted:
            return True
        name = host_name(host)
        if name is None or (self.hosts and name not in self.hosts):
            return False
        if len(self._accepted) < _MEMO_SIZE:
            self._accepted.add(host)
        return True


def _refuse(start_response: Callable, status: str, message: str) -> list[bytes]:
    body = error_body(message)
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
