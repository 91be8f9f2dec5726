"""Serve stored pictures: content-addressed, so every answer is immutable."""
from __future__ import annotations

from flask import Blueprint, Response, send_file

from flask import request

from service.errors import NotFound, ServiceUnavailable
from service.extension import services
from service.storage import LocalStorage, StorageError

bp = Blueprint("media", __name__)

ONE_YEAR = 31536000


# merge_slashes=False: by default "/media//etc/passwd" would answer an HTML redirect instead of our 404.
@bp.get("/media/<path:key>", merge_slashes=False)
def get_media(key: str) -> Response:
    # A name starting with a dot is a temporary file that storage is still writing.
    storage = services().storage
    if key.rsplit("/", 1)[-1].startswith("."):
        raise NotFound("Media not found")
    path = storage.path(key)
    if path is None and not isinstance(storage, LocalStorage):
        return _from_object_store(storage, key)
    if path is None:
        raise NotFound("Media not found")
    # The file name is a hash of the bytes: an ETag that is the same on every server and after a rewrite.
    response = send_file(path, mimetype="image/jpeg", etag=path.stem, conditional=True, max_age=ONE_YEAR)
    response.cache_control.public = True
    response.cache_control.immutable = True
    return response


def _from_object_store(storage, key: str) -> Response:
    """S3 backend without MEDIA_BASE_URL: relay the object (a CDN in front should cache it)."""
    try:
        data = storage.read(key)
    except StorageError:
        raise ServiceUnavailable("Picture storage unavailable, try again later", headers={"Retry-After": "5"})
    if data is None:
        raise NotFound("Media not found")
    etag = key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    response = Response(data, mimetype="image/jpeg")
    response.set_etag(etag)
    response.cache_control.public = True
    response.cache_control.immutable = True
    response.cache_control.max_age = ONE_YEAR
    return response.make_conditional(request)
