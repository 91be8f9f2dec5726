"""Serve stored pictures: content-addressed, so every answer is immutable."""
from __future__ import annotations

from flask import Blueprint, Response, send_file

from service.errors import NotFound
from service.extension import services

bp = Blueprint("media", __name__)

ONE_YEAR = 31536000


# merge_slashes=False: by default "/media//etc/passwd" would answer an HTML redirect instead of our 404.
@bp.get("/media/<path:key>", merge_slashes=False)
def get_media(key: str) -> Response:
    # A name starting with a dot is a temporary file that storage is still writing.
    path = None if key.rsplit("/", 1)[-1].startswith(".") else services().storage.path(key)
    if path is None:
        raise NotFound("Media not found")
    # The file name is a hash of the bytes: an ETag that is the same on every server and after a rewrite.
    response = send_file(path, mimetype="image/jpeg", etag=path.stem, conditional=True, max_age=ONE_YEAR)
    response.cache_control.public = True
    response.cache_control.immutable = True
    return response
