"""Profile endpoints: read (cached), edit, and the profile picture."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from service import writes
from service.auth import caller_id, require_owner
from service.errors import BadRequest
from service.http import base_url, cached_answer, json_body, require_multipart
from service.idempotency import Answer, Claim, idempotent
from service.reads import PEEK, read_profile
from service.schemas import ProfileUpdateSchema

bp = Blueprint("profiles", __name__, url_prefix="/api/v1/users")

NOT_FOUND = "User not found"


def _fresh_profile(user_id: int) -> Response:
    return cached_answer(read_profile(user_id, base_url()), NOT_FOUND)


@bp.get("/<id:user_id>/profile")
def get_profile(user_id: int) -> Response:
    return cached_answer(read_profile(user_id, base_url(), request.environ.get(PEEK)), NOT_FOUND)


@bp.get("/me/profile")
def get_my_profile() -> Response:
    return _fresh_profile(caller_id())


@bp.patch("/me/profile")
def patch_my_profile() -> Response:
    return _patch(caller_id())


@bp.patch("/<id:user_id>/profile")
def patch_profile(user_id: int) -> Response:
    return _patch(require_owner(user_id))


def _patch(user_id: int) -> Response:
    changes = ProfileUpdateSchema().load(json_body())
    return writes.update_profile(user_id, changes, base_url()).response()


@bp.post("/me/profile/picture")
def upload_picture() -> Response:
    user_id = caller_id()
    # Refuse an oversized body before it is parsed, let alone decoded.
    request.max_content_length = current_app.config["PICTURE_MAX_BYTES"] + 64 * 1024
    require_multipart()
    return idempotent(user_id, lambda claim: _upload_picture(user_id, claim))


def _upload_picture(user_id: int, claim: Claim | None) -> Answer:
    upload = request.files.get("image")
    if upload is None:
        raise BadRequest("Invalid input", {"image": ["An image file is required."]})
    unknown = [name for name in (*request.form, *request.files) if name != "image"]
    if unknown:
        raise BadRequest("Invalid input", {name: ["Unknown field."] for name in unknown})
    data = upload.stream.read(current_app.config["PICTURE_MAX_BYTES"] + 1)
    return writes.set_profile_picture(user_id, data, base_url(), claim)


@bp.delete("/me/profile/picture")
def delete_picture() -> Response:
    return writes.delete_profile_picture(caller_id(), base_url()).response()
