"""Build the JSON-ready dicts of the API from models (the shapes ProfileSchema and FlyerSchema document)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import current_app, has_app_context

from models import Flyer, User


def iso(moment: datetime) -> str:
    """Format a naive UTC datetime as ISO 8601 with a ``Z``."""
    return moment.isoformat(timespec="seconds") + "Z"


def media_url(base_url: str, key: str | None) -> str | None:
    """Return the absolute URL of a stored media file (under ``MEDIA_BASE_URL`` if set), or None."""
    if not key:
        return None
    media_base = current_app.config.get("MEDIA_BASE_URL") if has_app_context() else None
    return f"{media_base}/{key}" if media_base else f"{base_url}/media/{key}"


def profile_json(user: User, flyer_count: int, base_url: str) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "bio": user.bio,
        "profile_picture_url": media_url(base_url, user.picture_key),
        "profile_picture_thumbnail_url": media_url(base_url, user.thumbnail_key),
        "flyer_count": flyer_count,
        "created_at": iso(user.created_at),
        "updated_at": iso(user.updated_at),
    }


def flyer_json(flyer: Flyer, base_url: str, now: datetime, creator: Any = None,
               images: list[Any] | None = None) -> dict[str, Any]:
    """The flyer's JSON; ``creator`` and ``images`` (rows of a read-only load, whose images carry
    ``image_key`` and ``image_order``) default to the flyer's own relationships."""
    creator = flyer.creator if creator is None else creator
    return {
        "id": flyer.id,
        "title": flyer.title,
        "description": flyer.description,
        "creator": {
            "id": creator.id,
            "username": creator.username,
            "display_name": creator.display_name,
            "profile_picture_url": media_url(base_url, creator.thumbnail_key),
        },
        "images": [{"url": media_url(base_url, image.storage_key), "order": image.order}
                   for image in flyer.images] if images is None else
                  [{"url": media_url(base_url, image.image_key), "order": image.image_order} for image in images],
        "location": {"address": flyer.location_address, "lat": flyer.lat, "lng": flyer.lng},
        "validity": {
            "valid_from": iso(flyer.valid_from),
            "valid_until": iso(flyer.valid_until),
            "is_valid": flyer.valid_from <= now < flyer.valid_until,
        },
        "created_at": iso(flyer.created_at),
        "updated_at": iso(flyer.updated_at),
    }


def page_json(count: int, page: int, page_size: int, page_url: str,
              results: list[dict[str, Any]]) -> dict[str, Any]:
    """Wrap one page of results DRF-style; ``page_url`` is the page's URL without its query."""
    def link(number: int) -> str:
        return f"{page_url}?page={number}&page_size={page_size}"

    has_next = page * page_size < count
    return {
        "count": count,
        "next": link(page + 1) if has_next else None,
        "previous": link(page - 1) if page > 1 else None,
        "results": results,
    }
