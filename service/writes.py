"""The write operations. Each commits once; cache invalidation follows the commit (see invalidation.py)."""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Callable

from flask import current_app
from sqlalchemy import delete, select

from models import Flyer, FlyerImage, User, db, queries
from service.commits import OutcomeUnknown, commit_write, safe_rollback
from service.decoder import DecoderSettings, pool_for
from service.errors import APIError, BadRequest, Forbidden, NotFound
from service.extension import services
from service.idempotency import Answer, Claim, store_answer
from service.pictures import PictureError, process_flyer_image, process_profile_picture
from service.schemas import DEFAULT_VALIDITY
from service.representations import flyer_json, media_prefix, profile_json

log = logging.getLogger(__name__)


def _user_for_update(user_id: int) -> User:
    user = db.session.scalars(select(User).where(User.id == user_id).with_for_update()).first()
    if user is None:
        raise NotFound("User not found")
    return user


def _process(function: Any, data: bytes, field: str) -> Any:
    """Run a picture pipeline in a decoder process (see service.decoder), its refusals as API errors."""
    config = current_app.config
    try:
        return pool_for(DecoderSettings.from_config(config)).run(function, data, max_bytes=config["PICTURE_MAX_BYTES"])
    except PictureError as error:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        raise APIError(error.message, {field: [error.message]}, status=error.status, headers=headers) from None


def _delete_files(keys: list[str | None], *, owner: int | None = None) -> None:
    """Delete the files behind ``keys``; given ``owner``, only those that user's row does not point at.

    Names are content hashes, so a concurrent upload of the same bytes reuses a file we are about to
    delete. Reading the row under its lock and deleting before the lock is released settles it: that
    upload either committed first (the file is kept) or takes the lock after us, finds the file gone
    and writes it again. If the database cannot say, the files stay: an orphan beats a dangling URL.
    """
    doomed = {key for key in keys if key}
    locked = owner is not None and bool(doomed)
    if locked:
        try:
            row = db.session.execute(select(User.picture_key, User.thumbnail_key)
                                     .where(User.id == owner).with_for_update()).first()
        except Exception:
            log.warning("could not check which files user %s uses; keeping %s", owner, sorted(doomed),
                        exc_info=True)
            safe_rollback()
            return
        doomed -= set(row or ())
    storage = services().storage
    for key in sorted(doomed):
        try:
            storage.delete(key)
        except OSError:
            log.warning("could not delete media file %s", key, exc_info=True)
    if locked:
        safe_rollback()  # ends the read-only transaction, releasing the row lock once the files are gone


def update_profile(user_id: int, changes: dict[str, Any], base_url: str) -> Answer:
    """Apply ``changes`` (display_name, bio) to the user's profile; return the profile.

    Every answer of a write is built inside its transaction: once COMMIT has returned nothing
    can fail any more, so a write that committed never answers an error.
    """
    user = _user_for_update(user_id)
    for name, value in changes.items():
        setattr(user, name, value)
    return _commit_with(lambda: _profile_answer(user_id, base_url))


def set_profile_picture(user_id: int, data: bytes, base_url: str, claim: Claim | None = None) -> Answer:
    """Process, store and point the profile at a new picture; return the profile; the old files go after the commit."""
    picture = _process(process_profile_picture, data, "image")
    storage = services().storage
    folder = f"avatars/{user_id}"
    old_keys: list[str | None] = []
    new_keys: list[str] = []
    try:
        user = _user_for_update(user_id)
        old_keys = [user.picture_key, user.thumbnail_key]
        # Written under the row lock, so a same-named file that a concurrent upload deleted is written again.
        new_keys.append(storage.put(folder, picture.full.data))
        new_keys.append(storage.put(folder, picture.thumbnail.data, "_128"))
        user.picture_key, user.thumbnail_key = new_keys
        answer = _commit_with(lambda: _profile_answer(user_id, base_url), claim)
    except BaseException:
        safe_rollback()
        # If the outcome is unknown the row, read again, says which files to keep (or the read fails: all stay).
        _delete_files([*old_keys, *new_keys], owner=user_id)
        raise
    _delete_files([key for key in old_keys if key not in new_keys], owner=user_id)
    return answer


def delete_profile_picture(user_id: int, base_url: str) -> Answer:
    """Remove the profile picture and return the profile; its files are deleted after the commit."""
    user = _user_for_update(user_id)
    old_keys = [user.picture_key, user.thumbnail_key]
    user.picture_key = user.thumbnail_key = None
    try:
        answer = _commit_with(lambda: _profile_answer(user_id, base_url))
    except BaseException:
        safe_rollback()
        _delete_files(old_keys, owner=user_id)
        raise
    _delete_files(old_keys, owner=user_id)
    return answer


def create_flyer(creator_id: int, fields: dict[str, Any], images: list[bytes], now: datetime,
                 base_url: str, claim: Claim | None = None) -> Answer:
    """Create a flyer with its processed images; return the 201 answer (stored with the claim, if any)."""
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
        answer = _commit_with(lambda: _flyer_answer(flyer.id, base_url, now, 201), claim)
    except OutcomeUnknown:
        raise  # the flyer may be in the database: its files stay (an orphan beats a dangling URL)
    except BaseException:
        safe_rollback()
        _delete_files(list(keys))
        raise
    return answer


def _commit_with(build: Callable[[], Answer], claim: Claim | None = None) -> Answer:
    """Commit the session's write with its answer (stored with the claim, if any); return the answer."""
    answers: list[Answer] = []

    def answer_inside_the_transaction() -> None:
        answers.append(build())
        store_answer(claim, answers[0])

    commit_write(answer_inside_the_transaction)
    return answers[0]


def _profile_answer(user_id: int, base_url: str) -> Answer:
    """The profile as this transaction leaves it (read through the session, never the cache)."""
    creator = queries.get_creator(user_id, services().clock())
    if creator is None:
        raise NotFound("User not found")
    user, stats = creator
    return Answer(200, profile_json(user, stats.valid_flyers, base_url))


def _flyer_answer(flyer_id: int, base_url: str, now: datetime, status: int = 200) -> Answer:
    """The flyer as this transaction leaves it, valid now or not (its window may start later or have passed)."""
    flyer = queries.get_flyer(flyer_id)
    if flyer is None:
        raise NotFound("Flyer not found")
    headers = {"Location": f"{base_url}/api/v1/flyers/{flyer_id}"} if status == 201 else {}
    return Answer(status, flyer_json(flyer, media_prefix(base_url), now), headers)


def _owned_flyer(flyer_id: int, caller: int) -> Flyer:
    flyer = db.session.scalars(select(Flyer).where(Flyer.id == flyer_id).with_for_update()).first()
    if flyer is None:
        raise NotFound("Flyer not found")
    if flyer.creator_id != caller:
        raise Forbidden("You can only change your own flyers")
    return flyer


def update_flyer(flyer_id: int, caller: int, changes: dict[str, Any], base_url: str) -> Answer:
    """Apply ``changes`` to the caller's flyer; return the flyer."""
    flyer = _owned_flyer(flyer_id, caller)
    valid_from = changes.get("valid_from", flyer.valid_from)
    valid_until = changes.get("valid_until", flyer.valid_until)
    if valid_until <= valid_from:
        raise BadRequest("Invalid input", {"valid_until": ["valid_until must be after valid_from."]})
    for name, value in changes.items():
        setattr(flyer, name, value)
    return _commit_with(lambda: _flyer_answer(flyer_id, base_url, services().clock()))


def delete_flyer(flyer_id: int, caller: int) -> None:
    """Delete the caller's flyer and, after the commit, its image files."""
    flyer = _owned_flyer(flyer_id, caller)
    keys = list(db.session.scalars(select(FlyerImage.storage_key).where(FlyerImage.flyer_id == flyer_id)))
    db.session.execute(delete(FlyerImage).where(FlyerImage.flyer_id == flyer_id))
    db.session.delete(flyer)
    commit_write()
    _delete_files(keys)
