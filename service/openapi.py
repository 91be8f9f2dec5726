"""The OpenAPI 3 document, generated from the marshmallow schemas with apispec."""
from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, current_app

from models.base import MAX_ID
from service import schemas
from service.http import json_response

bp = Blueprint("openapi", __name__)

ERROR = {413: "Request body too large", 415: "Unsupported media type",
         400: "Invalid input, or a Host the service does not serve (or a malformed one)",
         414: "URI too long (over 4 KiB)", 431: "Request header fields too large",
         401: "Missing, invalid or expired token", 403: "Not the owner", 404: "Not found",
         405: "Method not allowed", 409: "Already exists", 422: "Idempotency-Key reused with a different request",
         429: "Too many attempts",
         503: "Database unavailable", 500: "Internal error"}
HEADERS = {
    "X-Request-ID": {"description": "The request's id: the client's X-Request-ID when it is at most 128 characters "
                                    "of letters, digits, '.', '_' and '-', else one the service made; it is in "
                                    "the service's logs too", "schema": {"type": "string"}},
    "ETag": {"description": "Entity tag of the body", "schema": {"type": "string"}},
    "Cache-Control": {"description": "Caching directives", "schema": {"type": "string"}},
    "Location": {"description": "URL of the created resource", "schema": {"type": "string", "format": "uri"}},
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}},
    "Allow": {"description": "The methods the path answers", "schema": {"type": "string"}},
    "X-RateLimit-Limit": {"description": "Attempts allowed per window (sent while rate limiting is on)",
                          "schema": {"type": "integer"}},
    "X-RateLimit-Remaining": {"description": "Attempts left in the current window (sent while rate limiting is on)",
                              "schema": {"type": "integer"}},
    "X-RateLimit-Reset": {"description": "When the window resets, in seconds since the Unix epoch "
                                         "(sent while rate limiting is on)", "schema": {"type": "integer"}},
    "X-Metrics-Scope": {"description": "Whether the counts cover every process sharing the Redis, or this one only",
                        "schema": {"type": "string"}},
    "Last-Modified": {"description": "When the file was written", "schema": {"type": "string"}},
    "Expires": {"description": "When the answer goes stale (as Cache-Control's max-age)", "schema": {"type": "string"}},
    "Accept-Ranges": {"description": "Byte ranges may be requested", "schema": {"type": "string", "enum": ["bytes"]}},
    "Content-Range": {"description": "The bytes this partial answer holds", "schema": {"type": "string"}},
    "Content-Disposition": {"description": "Shown inline, with the file name", "schema": {"type": "string"}},
    "Idempotent-Replayed": {"description": "`true` when the answer is the stored answer of an earlier request "
                                           "with the same Idempotency-Key",
                            "schema": {"type": "string", "enum": ["true"]}},
}
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
FILE_HEADERS = ("ETag", "Cache-Control", "Last-Modified", "Expires", "Accept-Ranges", "Content-Disposition")
TAGS = [
    {"name": "auth", "description": "Accounts and bearer tokens (rate-limited per client address)"},
    {"name": "profiles", "description": "Public profiles and your own"},
    {"name": "flyers", "description": "Creators' flyers and their pages"},
    {"name": "media", "description": "Stored pictures"},
    {"name": "operations", "description": "Probes, metrics and cache statistics"},
    {"name": "documentation", "description": "This document and its interactive view"},
]
# (path, method) -> (operationId, tag). Client generators name their functions after the operationId.
OPERATIONS = {
    ("/api/v1/auth/register", "post"): ("register", "auth"),
    ("/api/v1/auth/login", "post"): ("login", "auth"),
    ("/api/v1/users/{user_id}/profile", "get"): ("get_profile", "profiles"),
    ("/api/v1/users/{user_id}/profile", "patch"): ("update_profile", "profiles"),
    ("/api/v1/users/me/profile", "get"): ("get_my_profile", "profiles"),
    ("/api/v1/users/me/profile", "patch"): ("update_my_profile", "profiles"),
    ("/api/v1/users/me/profile/picture", "post"): ("upload_profile_picture", "profiles"),
    ("/api/v1/users/me/profile/picture", "delete"): ("delete_profile_picture", "profiles"),
    ("/api/v1/users/{user_id}/flyers", "get"): ("list_creator_flyers", "flyers"),
    ("/api/v1/flyers", "post"): ("create_flyer", "flyers"),
    ("/api/v1/flyers/{flyer_id}", "get"): ("get_flyer", "flyers"),
    ("/api/v1/flyers/{flyer_id}", "patch"): ("update_flyer", "flyers"),
    ("/api/v1/flyers/{flyer_id}", "delete"): ("delete_flyer", "flyers"),
    ("/media/{key}", "get"): ("get_media", "media"),
    ("/healthz", "get"): ("get_health", "operations"),
    ("/readyz", "get"): ("get_readiness", "operations"),
    ("/metrics", "get"): ("get_metrics", "operations"),
    ("/api/v1/cache/stats", "get"): ("get_cache_stats", "operations"),
    ("/dashboard", "get"): ("get_dashboard", "operations"),
    ("/openapi.json", "get"): ("get_openapi_document", "documentation"),
    ("/docs", "get"): ("get_docs", "documentation"),
    ("/docs/assets/{name}", "get"): ("get_docs_asset", "documentation"),
}
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
EDGE = (400, 414, 431)  # what service.edge answers before any route, for every operation
BEARER = [{"bearerAuth": []}]


def _headers(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _errors(*codes: int) -> dict[int, Any]:
    answers = {}
    for code in dict.fromkeys((*codes, *EDGE, 405, 500)):
        answer: dict[str, Any] = {"description": ERROR[code],
                                  "content": {"application/json": {"schema": "Error"}}}
        if code in (429, 503):
            answer["headers"] = _headers("Retry-After")
        elif code == 405:
            answer["headers"] = _headers("Allow")
        answers[code] = answer
    return answers


def _upload_errors(*codes: int) -> dict[int, Any]:
    """An upload's errors: its 503 also means every picture decoder of the server is busy."""
    answers = _errors(*codes)
    answers[503] = {**answers[503], "description": "Database unavailable, or every picture decoder busy"}
    return answers


def _json(schema: Any, description: str, *headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = _headers(*headers)
    return answer


def _cached_read(schema: str, summary: str, params: list[dict], *errors: int) -> dict[str, Any]:
    return {"summary": summary, "parameters": params, "responses": {
        200: _json(schema, "OK", "ETag", "Cache-Control"),
        304: {"description": "Not modified (If-None-Match matched)", "headers": _headers("ETag", "Cache-Control")},
        **_errors(*errors)}}


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": ID}


IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7E]+$"},
    "description": "1-255 visible ASCII characters (else 400). A repeat of the key by the same user within 24 h, "
                   "on any instance, answers the first request's status and body without doing the work again "
                   "(header Idempotent-Replayed: true); the same key with a different request answers 422; a "
                   "repeat while the first still runs answers 409 with Retry-After. A request that answered an "
                   "error frees its key. Without the header nothing changes."}


def _idempotent(operation: dict[str, Any]) -> dict[str, Any]:
    """Add the Idempotency-Key parameter and its 409 and 422 answers to a POST operation."""
    responses = operation["responses"] = dict(operation["responses"])  # some answers are shared: copy
    for code, answer in responses.items():
        if 200 <= code < 300:
            responses[code] = {**answer, "headers": {**answer.get("headers", {}), **_headers("Idempotent-Replayed")}}
    responses[409] = {"description": "A request with this Idempotency-Key is still in progress",
                      "headers": _headers("Retry-After"), "content": {"application/json": {"schema": "Error"}}}
    responses.update(_errors(422))
    operation["parameters"] = [*operation.get("parameters", []), IDEMPOTENCY_KEY]
    return operation
IMAGE_TYPES = "image/jpeg, image/png, image/webp, image/gif, image/heic, image/heif"
IMAGE = {"type": "string", "format": "binary", "minLength": 1,
         "description": "A JPEG, PNG, WebP, GIF or HEIC image of at most 5 MB, recognised by its content; "
                        "anything else answers 400, a larger file 413. An image too costly to decode (over "
                        "40 megapixels, too many scans or frames, over the decoder's time or memory limit) "
                        "answers 400; while every decoder is busy, 503 with Retry-After."}
MULTIPART_IMAGE = {"multipart/form-data": {
    "schema": {"type": "object", "required": ["image"], "additionalProperties": False,
               "properties": {"image": IMAGE}},
    "encoding": {"image": {"contentType": IMAGE_TYPES}}}}


def _flyer_form(converter: Any) -> dict[str, Any]:
    """The multipart form of a new flyer: the flat flyer fields plus ``image_1`` to ``image_5``."""
    form = converter.schema2jsonschema(schemas.FlyerFieldsSchema)
    form["properties"].update({f"image_{n}": IMAGE for n in range(1, 6)})
    form["required"] = [*form.get("required", []), "image_1"]
    form["description"] = ("valid_from defaults to now, valid_until to valid_from + 30 days; "
                           "valid_until must be after valid_from.")
    return {"multipart/form-data": {"schema": form,
                                    "encoding": {f"image_{n}": {"contentType": IMAGE_TYPES} for n in range(1, 6)}}}


def _fallback_id(method: str, path: str) -> str:
    """An operationId for an operation OPERATIONS does not name yet: method and path in snake case."""
    words = [part.strip("{}").replace(".", "_").replace("-", "_") for part in path.split("/") if part]
    return "_".join([method, *words])


def _fallback_tag(path: str) -> str:
    """The tag of an operation OPERATIONS does not name yet, from its path."""
    for prefix, tag in (("/api/v1/auth", "auth"), ("/api/v1/flyers", "flyers"), ("/api/v1/users", "profiles"),
                        ("/media", "media"), ("/docs", "documentation")):
        if path.startswith(prefix):
            return tag
    return "operations"


def build_spec() -> dict[str, Any]:
    """Return the OpenAPI 3 document of the whole API as a dict."""
    marshmallow = MarshmallowPlugin()
    spec = APISpec(title="Profile service", version="1.0.0", openapi_version="3.0.3",
                   plugins=[marshmallow], tags=TAGS,
                   info={"description": "Profiles and creators' flyer pages for the pockitflyer app. "
                                        "Interactive documentation: /docs."})
    spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    for name, header in HEADERS.items():
        spec.components.header(name, header)
    for name in ("Error", "Token", "Profile", "Flyer", "FlyerPage", "Health", "Readiness",
                 "Register", "Login", "ProfileUpdate", "FlyerFields", "CacheStats"):
        spec.components.schema(name, schema=getattr(schemas, f"{name}Schema"))
    profile_write = {200: _json("Profile", "The updated profile", "ETag", "Cache-Control")}
    page_params = [_path_id("user_id"), IF_NONE_MATCH,
                   {"name": "page", "in": "query", "schema": {
                       "type": "integer", "minimum": 1, "maximum": schemas.MAX_PAGE, "default": 1}},
                   {"name": "page_size", "in": "query", "schema": {
                       "type": "integer", "minimum": 1, "default": 20,
                       "description": "Values above 50 are clamped to 50"}}]
    paths = {
        "/api/v1/auth/register": {"post": {
            "summary": "Register an account", "requestBody": {"required": True, "content": {
                "application/json": {"schema": "Register"}}},
            "responses": {201: _json("Token", "Registered"), **_errors(400, 409, 413, 415, 429, 503)}}},
        "/api/v1/auth/login": {"post": {
            "summary": "Log in", "requestBody": {"required": True, "content": {
                "application/json": {"schema": "Login"}}},
            "responses": {200: _json("Token", "Logged in"), **_errors(400, 401, 413, 415, 429, 503)}}},
        "/api/v1/users/{user_id}/profile": {
            "get": _cached_read("Profile", "Read a profile", [_path_id("user_id"), IF_NONE_MATCH], 404, 503),
            "patch": {"summary": "Edit your own profile", "security": BEARER, "parameters": [_path_id("user_id")],
                      "requestBody": {"required": True, "content": {"application/json": {"schema": "ProfileUpdate"}}},
                      "responses": {**profile_write, **_errors(400, 401, 403, 404, 413, 415, 503)}}},
        "/api/v1/users/me/profile": {
            "get": {**_cached_read("Profile", "Read your own profile", [IF_NONE_MATCH], 401, 404, 503),
                    "security": BEARER},
            "patch": {"summary": "Edit your own profile", "security": BEARER,
                      "requestBody": {"required": True, "content": {"application/json": {"schema": "ProfileUpdate"}}},
                      "responses": {**profile_write, **_errors(400, 401, 404, 413, 415, 503)}}},
        "/api/v1/users/me/profile/picture": {
            "post": _idempotent({"summary": "Upload your profile picture", "security": BEARER,
                     "description": "The image type is chosen by content: anything that is not JPEG, PNG, "
                                    "WebP, GIF or HEIC answers 400; a body that is not multipart answers 415.",
                     "requestBody": {"required": True, "content": MULTIPART_IMAGE},
                     "responses": {**profile_write, **_upload_errors(400, 401, 404, 413, 415, 503)}}),
            "delete": {"summary": "Remove your profile picture", "security": BEARER,
                       "responses": {**profile_write, **_errors(401, 404, 503)}}},
        "/api/v1/users/{user_id}/flyers": {
            "get": _cached_read("FlyerPage", "A creator's valid flyers, newest first", page_params, 400, 404, 503)},
        "/api/v1/flyers": {"post": _idempotent({
            "summary": "Create a flyer", "security": BEARER, "requestBody": {"required": True, "content": _flyer_form(marshmallow.converter)},
            "responses": {201: _json("Flyer", "Created", "Location", "ETag", "Cache-Control"),
                          **_upload_errors(400, 401, 404, 413, 415, 503)}})},
        "/api/v1/flyers/{flyer_id}": {
            "get": _cached_read("Flyer", "A flyer that is valid now", [_path_id("flyer_id"), IF_NONE_MATCH], 404, 503),
            "patch": {"summary": "Edit your flyer", "security": BEARER, "parameters": [_path_id("flyer_id")],
                      "requestBody": {"required": True, "content": {"application/json": {"schema": "FlyerUpdate"}}},
                      "responses": {200: _json("Flyer", "The updated flyer", "ETag", "Cache-Control"),
                                    **_errors(400, 401, 403, 404, 413, 415, 503)}},
            "delete": {"summary": "Delete your flyer", "security": BEARER, "parameters": [_path_id("flyer_id")],
                       "responses": {204: {"description": "Deleted"}, **_errors(401, 403, 404, 503)}}},
        "/media/{key}": {"get": {
            "summary": "A stored picture (content-addressed, immutable)",
            "parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                           IF_NONE_MATCH,
                           {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
                            "description": "A byte range, e.g. bytes=0-1023"}],
            "responses": {200: {"description": "The JPEG", "headers": _headers(*FILE_HEADERS),
                                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                          206: {"description": "The requested byte range of the JPEG",
                                "headers": _headers(*FILE_HEADERS, "Content-Range"),
                                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                          304: {"description": "Not modified", "headers": _headers(*FILE_HEADERS)},
                          416: {"description": "The range lies outside the file",
                                "content": {"application/json": {"schema": "Error"}}},
                          **_errors(404)}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {200: _json("Health", "Running"), **_errors()}}},
        "/readyz": {"get": {"summary": "Readiness", "responses": {
            200: _json("Readiness", "Ready"),
            503: {**_json("Readiness", "The database does not answer"), "headers": _headers("Retry-After")},
            **{k: v for k, v in _errors().items()}}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics of this instance (the sum over its worker processes)",
            "description": "Counters never go down while the instance runs, whatever Redis does: "
                           "cache_requests_total{family,result}, cache_invalidations_total{family}, "
                           "cache_invalidation_outcomes_total{family,outcome}, cache_fills_total{family,outcome}, "
                           "cache_fill_duration_seconds{family}, cache_audit_total{family,result}, "
                           "http_request_duration_seconds{endpoint,method,status} (histograms), "
                           "cache_breaker_state{pid,state}, cache_near_entries, cache_near_bytes, "
                           "cache_near_evictions_total, cache_outbox_backlog (once an outbox exists), "
                           "profile_service_build_info, process_* and python_* (of the answering process). "
                           "The format follows the Accept header: Prometheus text 0.0.4 by default, or OpenMetrics.",
            "responses": {200: {"description": "The metrics", "headers": _headers("Cache-Control"),
                                "content": {"text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}},
                                            "application/openmetrics-text; version=1.0.0; charset=utf-8": {
                                                "schema": {"type": "string"}}}},
                          **_errors()}}},
        "/api/v1/cache/stats": {"get": {
            "summary": "Fleet-wide figures (every instance sharing the Redis) over sliding windows",
            "description": "Hit rates with their volumes per key family, request rates, p50/p95/p99 latency and "
                           "5xx per endpoint, invalidations, the staleness audit, each process's breaker state "
                           "and the near-cache share, over the last minute, 5 minutes, hour and since start, "
                           "plus 10-second and 1-minute series. Windows are whole 10-second buckets up to now "
                           "and say how many seconds they cover. Without Redis, this process's figures alone "
                           "(scope and redis say so).",
            "responses": {200: _json("CacheStats", "The hit rates", "Cache-Control"), **_errors()}}},
        "/dashboard": {"get": {
            "summary": "A self-contained page charting /api/v1/cache/stats, refreshing itself every 5 s",
            "responses": {200: {"description": "The page", "headers": _headers("Cache-Control"),
                                "content": {"text/html; charset=utf-8": {"schema": {"type": "string"}}}},
                          **_errors()}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {
            200: {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}},
            **_errors()}}},
        "/docs": {"get": {"summary": "Interactive documentation of this document (Swagger UI, works offline)",
                          "responses": {200: {"description": "The page", "headers": _headers("Cache-Control"),
                                              "content": {"text/html; charset=utf-8": {"schema": {"type": "string"}}}},
                                        **_errors()}}},
        "/docs/assets/{name}": {"get": {
            "summary": "A script, style sheet or icon of the documentation page",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                           IF_NONE_MATCH],
            "responses": {200: {"description": "The file", "headers": _headers("ETag", "Cache-Control"),
                                "content": {media_type: {"schema": {"type": "string"}} for media_type in (
                                    "text/javascript; charset=utf-8", "text/css; charset=utf-8", "image/png",
                                    "application/json")}},
                          304: {"description": "Not modified", "headers": _headers("ETag", "Cache-Control")},
                          **_errors(404)}}},
    }
    for auth_path in ("/api/v1/auth/register", "/api/v1/auth/login"):
        for answer in paths[auth_path]["post"]["responses"].values():
            answer["headers"] = {**answer.get("headers", {}), **_headers(*RATE_LIMIT_HEADERS)}
    spec.components.schema("FlyerUpdate", schema=schemas.FlyerFieldsSchema(partial=True))
    for path, operations in paths.items():
        for method, operation in operations.items():
            operation_id, tag = OPERATIONS.get((path, method), (_fallback_id(method, path), _fallback_tag(path)))
            operation.setdefault("operationId", operation_id)
            operation.setdefault("tags", [tag])
            for answer in operation["responses"].values():  # every answer echoes or makes a request id
                answer["headers"] = {**answer.get("headers", {}), **_headers("X-Request-ID")}
        spec.path(path=path, operations=operations)
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi_json() -> Response:
    document = current_app.extensions.get("openapi_document")
    if document is None:
        document = current_app.extensions["openapi_document"] = build_spec()
    return json_response(document)
