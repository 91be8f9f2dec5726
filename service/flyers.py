"""Flyer endpoints: a creator's pages (cached), one flyer (cached), create, edit, delete."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from service import writes
from service.auth import caller_id
from service.errors import BadRequest
from service.extension import services
from service.http import base_url, cached_answer, json_body, require_multipart
from service.idempotency import Answer, Claim, idempotent
from service.reads import PEEK, read_creator_page, read_flyer
from service.schemas import FlyerFieldsSchema, PageArgsSchema

bp = Blueprint("flyers", __name__, url_prefix="/api/v1")

MAX_IMAGES = 5
IMAGE_FIELDS = [f"image_{number}" for number in range(1, MAX_IMAGES + 1)]


@bp.get("/users/<id:user_id>/flyers")
def list_creator_flyers(user_id: int) -> Response:
    args = PageArgsSchema().load(request.args)
    entry = read_creator_page(user_id, args["page"], args["page_size"], base_url(), request.environ.get(PEEK))
    return cached_answer(entry, "User not found" if args["page"] == 1 else "Page not found")


@bp.get("/flyers/<id:flyer_id>")
def get_flyer(flyer_id: int) -> Response:
    return cached_answer(read_flyer(flyer_id, base_url(), request.environ.get(PEEK)), "Flyer not found")


@bp.post("/flyers")
def create_flyer() -> Response:
    creator = caller_id()
    require_multipart()
    return idempotent(creator, lambda claim: _create_flyer(creator, claim))


def _create_flyer(creator: int, claim: Claim | None) -> Answer:
    unexpected = [name for name in request.files if name not in IMAGE_FIELDS]
    if unexpected:
        raise BadRequest("Invalid input", {name: ["Unknown field."] for name in unexpected})
    fields = FlyerFieldsSchema().load(request.form.to_dict())
    limit = current_app.config["PICTURE_MAX_BYTES"] + 1
    images = [request.files[name].stream.read(limit) for name in IMAGE_FIELDS if name in request.files]
    return writes.create_flyer(creator, fields, images, services().clock(), base_url(), claim)


@bp.patch("/flyers/<id:flyer_id>")
def update_flyer(flyer_id: int) -> Response:
    caller = caller_id()
    changes = FlyerFieldsSchema(partial=True).load(json_body())
    return writes.update_flyer(flyer_id, caller, changes, base_url()).response()


@bp.delete("/flyers/<id:flyer_id>")
def delete_flyer(flyer_id: int) -> Response:
    writes.delete_flyer(flyer_id, caller_id())
    return Response(status=204)
