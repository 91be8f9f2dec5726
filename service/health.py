"""Liveness and readiness probes."""
from __future__ import annotations

from flask import Blueprint, Response
from sqlalchemy import text

from models import db
from service.extension import services
from service.http import json_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    try:
        cache = "ok" if services().redis.ping() else "degraded"
    except Exception:  # any Redis failure only degrades the cache, never readiness
        cache = "degraded"
    try:
        db.session.execute(text("SELECT 1"))
    except Exception:
        db.session.rollback()
        return json_response({"database": "unavailable", "cache": cache}, 503, {"Retry-After": "5"})
    return json_response({"database": "ok", "cache": cache})
