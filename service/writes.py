"""The write operations. Each commits once; cache invalidation follows the commit (see invalidation.py)."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import delete, select

from models import Flyer, FlyerImage, User, db
from service.errors import APIError, BadRequest, Forbidden, NotFound
from service.extension import services
from service.pictures import PictureError, process_flyer_image, process_profile_picture

log = logging.getLogger(__name__)

DEFAULT_VALIDITY = timedelta(days=30)


def _user_for_update(user_id: int) -> User:
    user = db.session.scalars(select(User).where(User.id == user_id).with_for_update()).first()
    if user is None:
        raise NotFound("User not found")
    return user


def _process(function: Any, data: bytes, field: str) -> Any:
    try:
        return function(data, max_bytes=current_app.config["PICTURE_MAX_BYTES"])
    except PictureError as error:
        raise APIError(error.message, {field: [error.message]}, status=error.status) from None


def _delete_files(keys: list[str | None]) -> None:
    storage = services().storage
    for key in keys:
        if key:
            try:
                storage.delete(key)
            except OSError:
                log.warning("could not delete media file %s", key, exc_info=True)


def update_profile(user_id: int, changes: dict[str, Any]) -> None:
    """Apply ``changes`` (display_name, bio) to the user's profile."""
    user = _user_for_update(user_id)
    for name, value in changes.items():
        setattr(user, name, value)
    db.session.commit()


def set_profile_picture(user_id: int, data: bytes) -> None:
    """Process, store and point the profile at a new picture; the old files go after the commit."""
    picture = _process(process_profile_picture, data, "image")
    storage = services().storage
    folder = f"avatars/{user_id}"
    new_keys = [storage.put(folder, picture.full.data), storage.put(folder, picture.thumbnail.data, "_128")]
    try:
        user = _user_for_update(user_id)
        old_keys = [user.picture_key, user.thumbnail_key]
        user.picture_key, user.thumbnail_key = new_keys
        db.session.commit()
    except BaseException:
        db.session.rollback()
        current = db.session.execute(select(User.picture_key, User.thumbnail_key)
                                     .where(User.id == user_id)).first()
        # Same bytes give the same name: never delete a file the profile still points at.
        _delete_files([key for key in new_keys if current is None or key not in tuple(current)])
        raise
    _delete_files([key for key in old_keys if key not in new_keys])


def delete_profile_picture(user_id: int) -> None:
    """Remove the profile picture; its files are deleted after the commit."""
    user = _user_for_update(user_id)
    old_keys = [user.picture_key, user.thumbnail_key]
    user.picture_key = user.thumbnail_key = None
    db.session.commit()
    _delete_files(old_keys)


def create_flyer(creator_id: int, fields: dict[str, Any], images: list[bytes], now: datetime) -> int:
    """Create a flyer with its processed images and return its id."""
    if not images:
        raise BadRequest("Invalid input", {"image_1": ["At least one image is required."]})
    processed = [_process(process_flyer_image, data, f"image_{number}")
                 for number, data in enumerate(images, start=1)]
    valid_from = fields.get("valid_from") or now.replace(microsecond=0)
    valid_until = fields.get("valid_until") or valid_from + DEFAULT_VALIDITY
    if valid_until <= valid_from:
        raise BadRequest("Invalid input", {"valid_until": ["valid_until must be after valid_from."]})
    if db.session.get(User, creator_id) is None:
        raise NotFound("User not found")
    flyer = Flyer(creator_id=creator_id, title=fields["title"], description=fields.get("description", ""),
                  location_address=fields["location_address"], lat=fields["lat"], lng=fields["lng"],
                  valid_from=valid_from, valid_until=valid_until)
    db.session.add(flyer)
    db.session.flush()
    storage = services().storage
    keys: list[str] = []
    try:
        for order, picture in enumerate(processed):
            keys.append(storage.put(f"flyers/{flyer.id}", picture.data))
            db.session.add(FlyerImage(flyer_id=flyer.id, order=order, storage_key=keys[-1]))
        db.session.commit()
    except BaseException:
        db.session.rollback()
        _delete_files(list(keys))
        raise
    return flyer.id


def _owned_flyer(flyer_id: int, caller: int) -> Flyer:
    flyer = db.session.scalars(select(Flyer).where(Flyer.id == flyer_id).with_for_update()).first()
    if flyer is None:
        raise NotFound("Flyer not found")
    if flyer.creator_id != caller:
        raise Forbidden("You can only change your own flyers")
    return flyer


def update_flyer(flyer_id: int, caller: int, changes: dict[str, Any]) -> None:
    """Apply ``changes`` to the caller's flyer."""
    flyer = _owned_flyer(flyer_id, caller)
    valid_from = changes.get("valid_from", flyer.valid_from)
    valid_until = changes.get("valid_until", flyer.valid_until)
    if valid_until <= valid_from:
        raise BadRequest("Invalid input", {"valid_until": ["valid_until must be after valid_from."]})
    for name, value in changes.items():
        setattr(flyer, name, value)
    db.session.commit()


def delete_flyer(flyer_id: int, caller: int) -> None:
    """Delete the caller's flyer and, after the commit, its image files."""
    flyer = _owned_flyer(flyer_id, caller)
    keys = list(db.session.scalars(select(FlyerImage.storage_key).where(FlyerImage.flyer_id == flyer_id)))
    db.session.execute(delete(FlyerImage).where(FlyerImage.flyer_id == flyer_id))
    db.session.delete(flyer)
    db.session.commit()
    _delete_files(keys)
