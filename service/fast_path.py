"""Answer cache hits of the public reads before Flask routes the request.

A hit needs no routing, no request object, no app context: one Redis lookup (none when the
near cache holds it) and the stored bytes. Whatever this cannot answer exactly as the Flask
view would (a miss, a cached 404, an unusual query string, a Redis fault) goes on to Flask
unchanged, so both paths give the same answers; the tests exercise both (first read: Flask,
later reads: here). A miss leaves its claimed lease in the environ for the view to fill.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

from werkzeug.sansio.utils import get_current_url, get_host

from cache import Claim, Entry, ReadThroughCache
from models.base import MAX_ID
from service.http import NO_CACHE, etag_matches
from service.reads import PEEK, Lookup, flyer_lookup, page_lookup, profile_lookup, read_creator_page, read_profile
from service.schemas import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from service.telemetry import ENDPOINT

# Ids as service.IdConverter takes them: 1 to MAX_ID (checked below: cheaper than its exact
# pattern); others go on to Flask, which answers 404.
ROUTE = re.compile(r"/api/v1/(?:users/([1-9][0-9]{0,9})/(profile|flyers)|flyers/([1-9][0-9]{0,9}))/?")
PAGE_ARG = re.compile(r"(page|page_size)=([1-9][0-9]{0,8})")


def _page_args(query: str) -> tuple[int, int] | None:
    """Parse ``page``/``page_size`` as the view would, or None for anything less plain."""
    args = {"page": 1, "page_size": DEFAULT_PAGE_SIZE}
    seen = set()
    for part in query.split("&") if query else ():
        match = PAGE_ARG.fullmatch(part)
        if match is None or match[1] in seen:
            return None
        seen.add(match[1])
        args[match[1]] = int(match[2])
    return args["page"], min(args["page_size"], MAX_PAGE_SIZE)


class CachedReads:
    """WSGI middleware: serve GET hits of profiles, creator pages and flyers from the cache."""

    def __init__(self, app: Callable, cache: ReadThroughCache, config: Mapping[str, Any],
                 app_context: Callable[[], Any] | None = None) -> None:
        self.app = app
        self.cache = cache
        self.config = config
        # Given (the Flask app's app_context), profile and page misses are loaded here too, in
        # an app context but without routing a request through Flask.
        self.app_context = app_context
        self._bases: dict[tuple[str, str], str] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        lookup, read = self._lookup(environ) if environ["REQUEST_METHOD"] == "GET" else _NO_LOOKUP
        entry = self.cache.lookup(lookup.family, lookup.key, variant=lookup.variant,
                                  generation_key=lookup.generation_key) if lookup else None
        if isinstance(entry, Claim) and read is not None and self.app_context is not None:
            entry = self._load(entry, read)
        if not isinstance(entry, Entry) or entry.body is None:
            if entry is not None:
                # The view answers a miss (its lease already claimed) or a cached 404
                # without looking the entry up again.
                environ[PEEK] = entry
            return self.app(environ, start_response)
        environ[ENDPOINT] = lookup.endpoint
        etag = f'"{entry.etag}"'
        if_none_match = environ.get("HTTP_IF_NONE_MATCH")
        if if_none_match and etag_matches(if_none_match, entry.etag):
            start_response("304 NOT MODIFIED", [("ETag", etag), ("Cache-Control", NO_CACHE)])
            return []
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(entry.body))),
                                  ("ETag", etag), ("Cache-Control", NO_CACHE)])
        return [entry.body]

    def _load(self, claim: Claim, read: Callable[[Claim], Entry]) -> Entry | None:
        """Load a profile or page miss as its view would; None (Flask then serves the request
        from the start) when the load raised: Flask's error handlers answer it."""
        try:
            with self.app_context():
                return read(claim)
        except Exception:  # noqa: BLE001 - the view runs it again and answers the error
            return None

    def _lookup(self, environ: dict[str, Any]) -> tuple[Lookup | None, Callable[[Claim], Entry] | None]:
        """The request's cached read, and for a profile or page the function that loads its miss."""
        match = ROUTE.fullmatch(environ.get("PATH_INFO", ""))
        if match is None:
            return _NO_LOOKUP
        number = int(match[3] or match[1])
        if number > MAX_ID:
            return _NO_LOOKUP  # no lookup, so no lease, for an id no row can have
        base = self.config["PUBLIC_BASE_URL"] or self._base_url(environ)
        query = environ.get("QUERY_STRING", "")
        if query and (match[3] or match[2] == "profile"):
            return _NO_LOOKUP
        if match[3]:
            return flyer_lookup(number, base), None
        if match[2] == "profile":
            return profile_lookup(number, base), lambda claim: read_profile(number, base, claim)
        args = _page_args(query)
        if not args:
            return _NO_LOOKUP
        return (page_lookup(number, args[0], args[1], base),
                lambda claim: read_creator_page(number, args[0], args[1], base, claim))


    def _base_url(self, environ: dict[str, Any]) -> str:
        """Return ``scheme://host`` exactly as Flask's ``request.host_url`` (less its slash) gives it.

        Werkzeug lower-cases the host and decodes IDNA (``uri_to_iri``), which costs
        microseconds; so the answer is remembered per scheme and ``Host`` value, for at most
        _MAX_BASES of them. service.edge.Edge, in front of this middleware, lets through only
        Host values werkzeug takes as they are (and, when configured, only served ones).
        """
        host = environ.get("HTTP_HOST")
        if host is None:  # HTTP/1.0: werkzeug falls back to the server's name
            return _werkzeug_base_url(environ)
        key = (environ["wsgi.url_scheme"], host)
        base = self._bases.get(key)
        if base is None:
            base = _werkzeug_base_url(environ)
            if len(self._bases) < _MAX_BASES:
                self._bases[key] = base
        return base


_MAX_BASES = 1024
_NO_LOOKUP: tuple[None, None] = (None, None)


def _werkzeug_base_url(environ: dict[str, Any]) -> str:
    scheme = environ["wsgi.url_scheme"]
    return get_current_url(scheme, get_host(scheme, environ.get("HTTP_HOST"), (
        environ.get("SERVER_NAME", ""), int(environ.get("SERVER_PORT") or 0))))[:-1]  # less "/"
