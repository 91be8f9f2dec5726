"""Structured JSON logs: one object a line on stderr, for the ``service`` loggers.

Every line has ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``; lines
logged while a request is handled also carry its ``request_id``, ``method``, ``path``,
``route`` and ``user_id`` (when known), and error lines their ``exc_info`` traceback. The
access line (logger ``service.access``, one per request, written by
``service.telemetry.Observed``) adds ``status``, ``duration_ms``, ``endpoint`` and ``cache``.
"""
from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

import orjson
from flask import has_request_context, request
from pythonjsonlogger.json import JsonFormatter

from service.telemetry import REQUEST_ID, USER_ID

LOGGER = "service"
"""The parent of every logger of the service (``service.access``, ``service.errors``, the app's own)."""
ACCESS_LOGGER = "service.access"


class RequestContext(logging.Filter):
    """Adds the request's id, method, path, route and caller to lines logged while it is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context() and not hasattr(record, "request_id"):
            environ = request.environ
            record.request_id = environ.get(REQUEST_ID)
            record.method = request.method
            record.path = request.path
            record.route = request.url_rule.rule if request.url_rule is not None else None
            record.user_id = environ.get(USER_ID)
        return True


class AccessFormatter(logging.Formatter):
    """The access line's JSON, the same shape as JsonFormatter's, written with orjson from one dict.

    python-json-logger walks every attribute of every record (~25-80 µs a line here); the
    access line, written once per request, carries its fields in ``record.access`` instead.
    """

    def format(self, record: logging.LogRecord) -> str:
        line = {"level": record.levelname, "logger": record.name, "message": record.getMessage(),
                **getattr(record, "access", {}),
                "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat()}
        return orjson.dumps(line).decode()


def _handler(formatter: logging.Formatter) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler._profile_service = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter)
    return handler


def configure_logging(level: str = "INFO") -> logging.Logger:
    """Send the ``service`` loggers' lines to stderr as JSON at ``level`` (once per process; later calls set the level)."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level.upper())
    # logging.config.fileConfig (Alembic's env.py runs it for `flask db upgrade`) disables every
    # logger that exists by then: ours must keep writing.
    for name, existing in list(logging.root.manager.loggerDict.items()):
        if (name == LOGGER or name.startswith(LOGGER + ".")) and isinstance(existing, logging.Logger):
            existing.disabled = False
    if not any(getattr(handler, "_profile_service", False) for handler in logger.handlers):
        handler = _handler(JsonFormatter("%(levelname)s %(name)s %(message)s", timestamp="time",
                                         rename_fields={"levelname": "level", "name": "logger"}))
        handler.addFilter(RequestContext())
        logger.addHandler(handler)
        access = logging.getLogger(ACCESS_LOGGER)
        access.addHandler(_handler(AccessFormatter()))
        access.propagate = False  # its own handler: the general one would write the line again
    return logger
