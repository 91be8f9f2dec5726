"""Serve stored pictures: content-addressed, so every answer is immutable."""
from __future__ import annotations

from flask import Blueprint, Response, send_file

from service.errors import NotFound
from service.extension import services

bp = Blueprint("media", __name__)

ONE_YEAR = 31536000


@bp.get("/media/<path:key>")
def get_media(key: str) -> Response:
    path = services().storage.path(key)
    if path is None:
        raise NotFound("Media not found")
    response = send_file(path, mimetype="image/jpeg", etag=True, conditional=True, max_age=ONE_YEAR)
    response.cache_control.public = True
    response.cache_control.immutable = True
    return response
