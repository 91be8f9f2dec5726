"""Answer cache hits of the public reads before Flask routes the request.

A hit needs no routing, no request object, no app context: one Redis lookup (none when the
near cache holds it) and the stored bytes. A profile or page miss is loaded here
too, with the view's own loader in an app context: Flask's routing and request objects cost
more than the load's statements. Whatever this cannot answer exactly as the Flask view would
(a flyer miss, a cached 404, an unusual query string, a Redis fault, a load that raised) goes
on to Flask, so both paths give the same answers; the tests exercise both. A flyer miss leaves
its claimed lease in the environ for the view to fill.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

from werkzeug.sansio.utils import get_current_url, get_host

from cache import Claim, Entry, ReadThroughCache
from models.base import MAX_ID
from service.http import NO_CACHE, etag_matches
from service.audit import Auditor, Job
from service.reads import (HITS, PEEK, RELOAD, Failed, Lookup, flyer_lookup, page_lookup, profile_lookup, read_creator_page,
                           read_flyer, read_profile)
from service.schemas import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from service.telemetry import CACHE_RESULT, LABELS, REQUEST_ID, observing

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
    """WSGI middleware: serve GET hits of profiles, creator pages and flyers from the cache.

    It runs inside ``telemetry.Observed(wrapped=False)``: an answer made here adds
    ``X-Request-ID`` and sets its latency labels (``environ[LABELS]``) itself; what goes on to
    Flask is wrapped (``observing``).
    """

    def __init__(self, app: Callable, cache: ReadThroughCache, config: Mapping[str, Any], *,
                 audit: Auditor | None = None, app_context: Callable[[], Any] | None = None) -> None:
        self.app = app
        self.cache = cache
        self.config = config
        self.app_context = app_context  # given: profile and page misses are loaded here
        self._bases: dict[tuple[str, str], str] = {}
        self.audit = audit
        self.audit_fraction = audit.fraction if audit is not None else 0.0
        self._sample = audit.sample if audit is not None else None
        self._ok: dict[str, tuple[str, str, str]] = {}  # endpoint: its latency labels for a 200, made once

    def _labels(self, endpoint: str, status: str) -> tuple[str, str, str]:
        labels = (endpoint, "GET", status)
        if status == "200":
            self._ok[endpoint] = labels
        return labels

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        lookup = self._lookup(environ) if environ["REQUEST_METHOD"] == "GET" else None
        entry = self.cache.lookup(lookup.family, lookup.key, variant=lookup.variant,
                                  generation_key=lookup.generation_key) if lookup else None
        if not isinstance(entry, Entry) or entry.body is None:
            if isinstance(entry, Claim) and self.app_context is not None and lookup.family != "flyer":
                entry = self._load(environ, entry)
            if not isinstance(entry, Entry) or entry.body is None:
                if entry is not None:
                    # The view answers a miss (its lease already claimed), a cached 404 or the
                    # load's error without looking the entry up again.
                    environ[PEEK] = entry
                return self.app(environ, observing(environ, start_response))
        environ[CACHE_RESULT] = entry.result
        if self.audit_fraction and self._sample() < self.audit_fraction and entry.result in HITS:
            self._submit_audit(environ, lookup, entry)
        etag = f'"{entry.etag}"'
        if_none_match = environ.get("HTTP_IF_NONE_MATCH")
        # Every answer made here carries the request id and notes its status (see telemetry.Observed).
        request_id = ("X-Request-ID", environ[REQUEST_ID])
        if if_none_match and etag_matches(if_none_match, entry.etag):
            environ[LABELS] = self._labels(lookup.endpoint, "304")
            start_response("304 NOT MODIFIED", [("ETag", etag), ("Cache-Control", NO_CACHE), request_id])
            return []
        environ[LABELS] = self._ok.get(lookup.endpoint) or self._labels(lookup.endpoint, "200")
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(entry.body))),
                                  ("ETag", etag), ("Cache-Control", NO_CACHE), request_id])
        return [entry.body]

    def _base(self, environ: dict[str, Any]) -> str:
        return self.config["PUBLIC_BASE_URL"] or self._base_url(environ)

    def _submit_audit(self, environ: dict[str, Any], lookup: Lookup, entry: Entry) -> None:
        """Queue a sampled hit for the staleness audit: it re-reads this route from the database later."""
        path, query, base = environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""), self._base(environ)
        self.audit.submit(Job(lookup.family, lookup.key, lookup.variant, lookup.generation_key, entry.etag,
                              lambda: _reread(path, query, base)))

    def _load(self, environ: dict[str, Any], claim: Claim) -> Entry | Failed:
        """Load a profile or page miss with the view's loader; what it raised goes to the view
        (``Failed``), which raises it again for Flask's error handlers to answer."""
        match = ROUTE.fullmatch(environ["PATH_INFO"])  # parsed again here, to keep hits from building closures
        number, base = int(match[1]), self._base(environ)
        try:
            with self.app_context():
                if match[2] == "profile":
                    return read_profile(number, base, claim)
                page, page_size = _page_args(environ.get("QUERY_STRING", ""))
                return read_creator_page(number, page, page_size, base, claim)
        except Exception as error:  # noqa: BLE001 - answered by Flask, as if the view had raised it
            return Failed(error)

    def _lookup(self, environ: dict[str, Any]) -> Lookup | None:
        match = ROUTE.fullmatch(environ.get("PATH_INFO", ""))
        if match is None:
            return None
        number = int(match[3] or match[1])
        if number > MAX_ID:
            return None  # no lookup, so no lease, for an id no row can have
        base = self._base(environ)
        query = environ.get("QUERY_STRING", "")
        if match[3]:
            return flyer_lookup(number, base) if not query else None
        if match[2] == "profile":
            return profile_lookup(number, base) if not query else None
        args = _page_args(query)
        return page_lookup(number, args[0], args[1], base) if args else None


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


def _werkzeug_base_url(environ: dict[str, Any]) -> str:
    scheme = environ["wsgi.url_scheme"]
    return get_current_url(scheme, get_host(scheme, environ.get("HTTP_HOST"), (
        environ.get("SERVER_NAME", ""), int(environ.get("SERVER_PORT") or 0))))[:-1]  # less "/"


def _reread(path: str, query: str, base: str) -> str | None:
    """ETag of this route's answer loaded from the database now (the staleness audit; runs in an app context)."""
    match = ROUTE.fullmatch(path)
    if match[3]:
        return read_flyer(int(match[3]), base, RELOAD).etag
    if match[2] == "profile":
        return read_profile(int(match[1]), base, RELOAD).etag
    page, page_size = _page_args(query)
    return read_creator_page(int(match[1]), page, page_size, base, RELOAD).etag
