"""The OpenAPI 3 document, generated from the marshmallow schemas with apispec."""
from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, current_app

from service import schemas
from service.http import json_response

bp = Blueprint("openapi", __name__)

ERROR = {413: "Request body too large", 415: "Unsupported media type", 400: "Invalid input",
         401: "Missing, invalid or expired token", 403: "Not the owner", 404: "Not found",
         405: "Method not allowed", 409: "Already exists", 429: "Too many attempts",
         503: "Database unavailable", 500: "Internal error"}
HEADERS = {
    "ETag": {"description": "Entity tag of the body", "schema": {"type": "string"}},
    "Cache-Control": {"description": "Caching directives", "schema": {"type": "string"}},
    "Location": {"description": "URL of the created resource", "schema": {"type": "string", "format": "uri"}},
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}},
}
ID = {"type": "integer", "minimum": 1, "maximum": 999999999999999999}
BEARER = [{"bearerAuth": []}]


def _headers(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _errors(*codes: int) -> dict[int, Any]:
    answers = {}
    for code in (*codes, 405, 500):
        answer: dict[str, Any] = {"description": ERROR[code],
                                  "content": {"application/json": {"schema": "Error"}}}
        if code in (429, 503):
            answer["headers"] = _headers("Retry-After")
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


def build_spec() -> dict[str, Any]:
    """Return the OpenAPI 3 document of the whole API as a dict."""
    marshmallow = MarshmallowPlugin()
    spec = APISpec(title="Profile service", version="1.0.0", openapi_version="3.0.3",
                   plugins=[marshmallow])
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
            "post": {"summary": "Upload your profile picture", "security": BEARER,
                     "description": "The image type is chosen by content: anything that is not JPEG, PNG, "
                                    "WebP, GIF or HEIC answers 400; a body that is not multipart answers 415.",
                     "requestBody": {"required": True, "content": MULTIPART_IMAGE},
                     "responses": {**profile_write, **_upload_errors(400, 401, 404, 413, 415, 503)}},
            "delete": {"summary": "Remove your profile picture", "security": BEARER,
                       "responses": {**profile_write, **_errors(401, 404, 503)}}},
        "/api/v1/users/{user_id}/flyers": {
            "get": _cached_read("FlyerPage", "A creator's valid flyers, newest first", page_params, 400, 404, 503)},
        "/api/v1/flyers": {"post": {
            "summary": "Create a flyer", "security": BEARER, "requestBody": {"required": True, "content": _flyer_form(marshmallow.converter)},
            "responses": {201: _json("Flyer", "Created", "Location", "ETag", "Cache-Control"),
                          **_upload_errors(400, 401, 404, 413, 415, 503)}}},
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
                           IF_NONE_MATCH],
            "responses": {200: {"description": "The JPEG", "headers": _headers("ETag", "Cache-Control"),
                                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                          304: {"description": "Not modified", "headers": _headers("ETag", "Cache-Control")},
                          **_errors(404)}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {200: _json("Health", "Running"), **_errors()}}},
        "/readyz": {"get": {"summary": "Readiness", "responses": {
            200: _json("Readiness", "Ready"),
            503: {**_json("Readiness", "The database does not answer"), "headers": _headers("Retry-After")},
            **{k: v for k, v in _errors().items()}}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics of every process sharing the Redis",
            "description": "cache_requests_total{family,result}, cache_invalidations_total{family} and "
                           "http_request_duration_seconds{endpoint} (histogram). The format follows the "
                           "Accept header: Prometheus text 0.0.4 by default, or OpenMetrics. The "
                           "X-Metrics-Scope header says whether other processes could be counted.",
            "responses": {200: {"description": "The metrics", "headers": _headers("Cache-Control"),
                                "content": {"text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}},
                                            "application/openmetrics-text; version=1.0.0; charset=utf-8": {
                                                "schema": {"type": "string"}}}},
                          **_errors()}}},
        "/api/v1/cache/stats": {"get": {
            "summary": "Cache hit rates per key family: last minute, last hour, since start, and per minute",
            "responses": {200: _json("CacheStats", "The hit rates", "Cache-Control"), **_errors()}}},
        "/dashboard": {"get": {
            "summary": "A page charting the cache hit rates, refreshing itself",
            "responses": {200: {"description": "The page", "headers": _headers("Cache-Control"),
                                "content": {"text/html; charset=utf-8": {"schema": {"type": "string"}}}},
                          **_errors()}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {
            200: {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}},
            **_errors()}}},
    }
    spec.components.schema("FlyerUpdate", schema=schemas.FlyerFieldsSchema(partial=True))
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi_json() -> Response:
    document = current_app.extensions.get("openapi_document")
    if document is None:
        document = current_app.extensions["openapi_document"] = build_spec()
    return json_response(document)
