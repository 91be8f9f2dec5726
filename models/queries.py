"""The read queries behind profiles and creator pages, each a fixed number of statements."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import contains_eager, selectinload

from models.base import db
from models.flyer import Flyer
from models.user import User


@dataclass(frozen=True)
class CreatorStats:
    valid_flyers: int
    next_change: datetime | None  # the next valid_from or valid_until after now, if any


def valid_at(now: datetime):
    """Return the SQL condition for a flyer being valid at ``now``."""
    return and_(Flyer.valid_from <= now, Flyer.valid_until > now)


def get_user(user_id: int) -> User | None:
    """Return the user with ``user_id``, or None."""
    return db.session.get(User, user_id)


def get_creator_stats(creator_id: int, now: datetime) -> CreatorStats:
    """Count the creator's valid flyers and find the next validity boundary, in one statement."""
    upcoming_start = func.min(case((Flyer.valid_from > now, Flyer.valid_from)))
    upcoming_end = func.min(case((Flyer.valid_until > now, Flyer.valid_until)))
    valid = func.count(case((valid_at(now), Flyer.id)))
    row = db.session.execute(
        select(valid, upcoming_start, upcoming_end)
        .where(Flyer.creator_id == creator_id, Flyer.valid_until > now)
    ).one()
    boundaries = [b for b in (row[1], row[2]) if b is not None]
    return CreatorStats(valid_flyers=row[0], next_change=min(boundaries) if boundaries else None)


def list_creator_flyers(creator_id: int, now: datetime, offset: int, limit: int) -> list[Flyer]:
    """Return one page of the creator's valid flyers, newest first, creator and images loaded."""
    return list(db.session.scalars(
        select(Flyer)
        .join(Flyer.creator)
        .options(contains_eager(Flyer.creator), selectinload(Flyer.images))
        .where(Flyer.creator_id == creator_id, valid_at(now))
        .order_by(Flyer.created_at.desc(), Flyer.id.desc())
        .offset(offset).limit(limit)
    ))


def get_flyer(flyer_id: int) -> Flyer | None:
    """Return the flyer with its creator and images loaded, valid or not, or None."""
    return db.session.scalars(
        select(Flyer)
        .join(Flyer.creator)
        .options(contains_eager(Flyer.creator), selectinload(Flyer.images))
        .where(Flyer.id == flyer_id)
    ).first()


def list_flyer_ids(creator_id: int) -> list[int]:
    """Return the ids of all the creator's flyers."""
    return list(db.session.scalars(select(Flyer.id).where(Flyer.creator_id == creator_id)))
