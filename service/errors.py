"""API errors and the one place that turns every failure into the contract's JSON."""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from flask import Flask, Response, current_app
from marshmallow import ValidationError
from sqlalchemy.exc import (DBAPIError, DisconnectionError, InterfaceError, OperationalError,
                            PendingRollbackError)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

import orjson

from models import db

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered to the client with ``status`` and ``{"error", "details"}``."""

    status = 400

    def __init__(self, message: str, details: dict[str, list[str]] | None = None,
                 *, status: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}
        if status is not None:
            self.status = status


class BadRequest(APIError):
    status = 400


class Unauthorized(APIError):
    status = 401


class Forbidden(APIError):
    status = 403


class NotFound(APIError):
    status = 404


class Conflict(APIError):
    status = 409


class UnsupportedMediaType(APIError):
    status = 415


class ServiceUnavailable(APIError):
    status = 503


def error_response(status: int, message: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """Build the contract's JSON error answer."""
    body = orjson.dumps({"error": message, "details": details or {}})
    response = Response(body, status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _flatten(messages: Any) -> dict[str, list[str]]:
    if isinstance(messages, list):
        return {"_schema": [str(m) for m in messages]}
    details: dict[str, list[str]] = {}
    for field, value in messages.items():
        if isinstance(value, dict):
            for sub, sub_messages in _flatten(value).items():
                details[f"{field}.{sub}" if sub != "_schema" else str(field)] = sub_messages
        elif isinstance(value, list):
            details[str(field)] = [str(m) for m in value]
        else:
            details[str(field)] = [str(value)]
    return details


def register_error_handlers(app: Flask) -> None:
    """Answer every error, expected or not, as JSON."""

    @app.errorhandler(APIError)
    def api_error(error: APIError) -> Response:
        return error_response(error.status, error.message, error.details, error.headers)

    @app.errorhandler(ValidationError)
    def validation_error(error: ValidationError) -> Response:
        return error_response(400, "Invalid input", _flatten(error.messages))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        headers = {}
        if error.code == 405 and error.valid_methods:
            headers["Allow"] = ", ".join(error.valid_methods)
        retry_after = error.response.headers.get("Retry-After") if error.response else None
        if error.code == 429:
            headers["Retry-After"] = retry_after or "60"
        messages = {413: "Request body too large", 404: "Not found", 405: "Method not allowed",
                    429: "Too many requests", 415: "Unsupported media type"}
        return error_response(error.code or 500, messages.get(error.code, error.name), None, headers)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(PendingRollbackError)
    @app.errorhandler(DisconnectionError)
    @app.errorhandler(PoolTimeout)
    @app.errorhandler(DBAPIError)
    def database_down(error: Exception) -> Response:
        if not database_unavailable(error):
            return unexpected(error)
        log.warning("database unavailable: %s", error)
        retry = str(current_app.config["DB_RETRY_AFTER_SECONDS"])
        return error_response(503, DATABASE_DOWN, None, {"Retry-After": retry})

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "Internal server error")

    _make_teardown_safe(app)


DATABASE_DOWN = "Database unavailable, try again later"
_UNAVAILABLE = (OperationalError, InterfaceError, PendingRollbackError, DisconnectionError, PoolTimeout)


def database_unavailable(error: BaseException) -> bool:
    """Tell whether ``error`` means the database cannot be reached (503), not a bug (500)."""
    if isinstance(error, _UNAVAILABLE):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def _make_teardown_safe(app: Flask) -> None:
    """Swap Flask-SQLAlchemy's session teardown for one that logs a failing rollback/close instead of raising.

    Teardown runs after the answer is built, outside the error handlers: an exception there would
    replace a correct answer (a committed write's 200 included) with the server's HTML 500 page.
    """
    functions = app.teardown_appcontext_funcs
    for index, function in enumerate(functions):
        if function == db._teardown_session:  # noqa: SLF001 - replacing it is the point
            functions[index] = _remove_session


def _remove_session(exc: BaseException | None) -> None:
    try:
        db.session.remove()
    except Exception:
        log.warning("could not close the database session at teardown", exc_info=True)
        try:
            db.session.invalidate()
        except Exception:
            log.debug("could not invalidate the session's connection", exc_info=True)
        db.session.registry.clear()


class JSONErrors:
    """The outermost WSGI layer: whatever escapes Flask (teardown, a middleware) answers JSON, never HTML."""

    def __init__(self, app: Callable[..., Iterable[bytes]], retry_after: int) -> None:
        self.app = app
        self.retry_after = retry_after

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # The application's start_response is held until it returns: an exception raised after it
        # (Flask tears the request down after building the answer) can then still replace the answer.
        held: list[Any] = []
        writer: list[Callable[[bytes], Any]] = []
        returned = False

        def forward() -> None:
            if held and not writer:
                writer.append(start_response(*held))

        def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], Any]:
            if writer or returned:  # forwarded already, or called while the body is iterated: pass it on
                writer[:] = [start_response(status, headers, exc_info)]
                return writer[0]
            held[:] = [status, headers, exc_info] if exc_info else [status, headers]

            def write(data: bytes) -> Any:  # the legacy write() callable forwards the headers first
                forward()
                return writer[0](data)
            return write

        try:
            result = self.app(environ, hold)
        except Exception as error:
            if writer:
                raise  # the answer has started to go out: nothing can replace it
            return self._error(error, start_response)
        forward()
        returned = True
        return result

    def _error(self, error: Exception, start_response: Callable[..., Any]) -> list[bytes]:
        if database_unavailable(error):
            log.warning("database unavailable outside a request handler: %s", error)
            status, message = "503 Service Unavailable", DATABASE_DOWN
            headers = [("Retry-After", str(self.retry_after))]
        else:
            log.exception("error outside a request handler")
            status, message, headers = "500 Internal Server Error", "Internal server error", []
        body = orjson.dumps({"error": message, "details": {}})
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(status, headers)
        return [body]
