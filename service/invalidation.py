"""Automatic cache invalidation from SQLAlchemy session events.

Whatever commits through the session (API, CLI, shell) is seen here: ``after_flush`` collects
the users, flyers and images that changed, and ``after_commit`` invalidates their cache keys.
Invalidating after the commit, never before, is what makes the leases work: a reader that
loaded the old row before the commit holds a lease that the invalidation revokes, so its
fill is refused; a reader that starts after the invalidation reads the committed row.
The write's answer is built after ``commit()`` returns, so it follows its invalidation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app, has_app_context
from sqlalchemy import event, inspect, select
from sqlalchemy.orm import Session

from cache import keys
from models import Flyer, FlyerImage, User, db

PENDING = "pending_invalidation"
# Fields of a user that flyer JSON embeds as its creator.
CREATOR_FIELDS = ("username", "display_name", "thumbnail_key")


@dataclass
class Pending:
    profiles: set[int] = field(default_factory=set)   # user ids whose profile changed
    creators: set[int] = field(default_factory=set)   # user ids whose pages changed
    flyers: set[int] = field(default_factory=set)


def _pending(session: Session) -> Pending:
    return session.info.setdefault(PENDING, Pending())


def _creator_changed(user: User) -> bool:
    state = inspect(user)
    return any(state.attrs[name].history.has_changes() for name in CREATOR_FIELDS)


def _collect(session: Session, flush_context: object) -> None:
    pending = _pending(session)
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, User):
            pending.profiles.add(obj.id)
            pending.creators.add(obj.id)
            if obj in session.dirty and _creator_changed(obj):
                # Every flyer of this creator embeds the changed name or avatar.
                pending.flyers.update(session.scalars(select(Flyer.id).where(Flyer.creator_id == obj.id)))
        elif isinstance(obj, Flyer):
            pending.profiles.add(obj.creator_id)
            pending.creators.add(obj.creator_id)
            pending.flyers.add(obj.id)
        elif isinstance(obj, FlyerImage):
            creator_id = session.scalar(select(Flyer.creator_id).where(Flyer.id == obj.flyer_id))
            if creator_id is not None:
                pending.creators.add(creator_id)
            pending.flyers.add(obj.flyer_id)


def _invalidate(session: Session) -> None:
    pending = session.info.pop(PENDING, None)
    if pending is not None and has_app_context():
        invalidate(pending)


def invalidate(pending: Pending) -> None:
    """Drop the cache entries of what ``pending`` names (also for writes that bypass the ORM session)."""
    cache = current_app.extensions["profile_service"].cache
    cache.invalidate(
        keys=[keys.profile_key(uid) for uid in pending.profiles] + [keys.flyer_key(fid) for fid in pending.flyers],
        generations=[(keys.generation_key(uid), keys.pages_key(uid)) for uid in pending.creators],
        families=(["profile"] * bool(pending.profiles) + ["flyer_page"] * bool(pending.creators)
                  + ["flyer"] * bool(pending.flyers)),
    )


def _discard(session: Session, *args: object) -> None:
    session.info.pop(PENDING, None)


def listen() -> None:
    """Attach the listeners to the Flask-SQLAlchemy session (once per process)."""
    for name, function in (("after_flush", _collect), ("after_commit", _invalidate),
                           ("after_rollback", _discard)):
        if not event.contains(db.session, name, function):
            event.listen(db.session, name, function)
