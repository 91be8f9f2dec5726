"""Request and response helpers shared by the blueprints."""
from __future__ import annotations

from typing import Any

import orjson
from flask import Response, current_app, request
from flask.sessions import NullSession, SessionInterface
from werkzeug.exceptions import RequestEntityTooLarge

from cache import Entry
from service.errors import BadRequest, NotFound, UnsupportedMediaType
from service.telemetry import CACHE_RESULT

NO_CACHE = "no-cache"


def base_url() -> str:
    """Return the base of absolute URLs: ``PUBLIC_BASE_URL`` or the request's own host."""
    return current_app.config["PUBLIC_BASE_URL"] or request.host_url[:-1]


def json_body() -> dict[str, Any]:
    """Return the request's JSON object body.

    :raises UnsupportedMediaType: when the body is not declared as JSON.
    :raises RequestEntityTooLarge: (413) when it is over ``JSON_MAX_BYTES``, before it is parsed:
        at once for its Content-Length, after that many bytes for a chunked one.
    """
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    limit = current_app.config["JSON_MAX_BYTES"]
    # Werkzeug refuses a longer Content-Length at once, and cuts a chunked body (no length) after
    # limit + 1 bytes: that byte more tells it was too long, and no more is ever read.
    request.max_content_length = limit + 1
    data = request.get_data(cache=False)
    if len(data) > limit:
        raise RequestEntityTooLarge()
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadRequest("Malformed JSON body") from None
    if not isinstance(body, dict):
        raise BadRequest("The JSON body must be an object")
    return body


def require_multipart() -> None:
    """Refuse a body that is not ``multipart/form-data``."""
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("Content-Type must be multipart/form-data")


def etag_matches(header: str, etag: str) -> bool:
    """Tell whether an If-None-Match header names ``etag`` (weak comparison, as RFC 9110 asks)."""
    if header.strip() == "*":
        return True
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate.strip('"') == etag:
            return True
    return False


def cached_answer(entry: Entry, not_found: str) -> Response:
    """Answer a cached read: 200 with the stored bytes, 304 on a matching If-None-Match, or 404."""
    request.environ[CACHE_RESULT] = entry.result  # for the access log
    if entry.body is None:
        raise NotFound(not_found)
    headers = {"ETag": f'"{entry.etag}"', "Cache-Control": NO_CACHE}
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match and etag_matches(if_none_match, entry.etag):
        return Response(status=304, headers=headers)
    return Response(entry.body, headers=headers, mimetype="application/json")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Answer ``data`` as compact JSON."""
    return Response(orjson.dumps(data), status=status, headers=headers, mimetype="application/json")


class NoSessions(SessionInterface):
    """No cookie sessions: the API authenticates with bearer tokens and never uses ``flask.session``.

    Flask's default interface builds an itsdangerous serializer on every request once a
    SECRET_KEY is set (~15 µs of each request's CPU); this one hands out the null session.
    """

    def open_session(self, app: Any, request: Any) -> NullSession:
        return self.make_null_session(app)

    def save_session(self, app: Any, session: Any, response: Any) -> None:
        return None
