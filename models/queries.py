"""The read queries behind profiles and creator pages, each a fixed number of statements."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import contains_eager, joinedload, raiseload, selectinload

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


def get_creator(user_id: int, now: datetime) -> tuple[User, CreatorStats] | None:
    """Return the user with its valid-flyer count and next validity boundary, in one statement; or None."""
    stats = (
        select(Flyer.creator_id,
               func.count(case((valid_at(now), Flyer.id))).label("valid"),
               func.min(case((Flyer.valid_from > now, Flyer.valid_from))).label("next_start"),
               func.min(case((Flyer.valid_until > now, Flyer.valid_until))).label("next_end"))
        .where(Flyer.creator_id == user_id, Flyer.valid_until > now)
        .group_by(Flyer.creator_id)
        .subquery()
    )
    row = db.session.execute(
        select(User, stats.c.valid, stats.c.next_start, stats.c.next_end)
        .outerjoin(stats, stats.c.creator_id == User.id)
        .where(User.id == user_id)
    ).first()
    if row is None:
        return None
    boundaries = [moment for moment in (row.next_start, row.next_end) if moment is not None]
    return row[0], CreatorStats(valid_flyers=row.valid or 0, next_change=min(boundaries) if boundaries else None)


def list_creator_flyers(creator_id: int, now: datetime, offset: int, limit: int) -> list[Flyer]:
    """Return one page of the creator's valid flyers, newest first, creator and images loaded."""
    # The creator comes from the identity map (get_creator loaded it); the images join the
    # limited page in the same statement (SQLAlchemy wraps the page in a subquery).
    return list(db.session.scalars(
        select(Flyer)
        .options(joinedload(Flyer.images), raiseload(Flyer.creator, sql_only=True))
        .where(Flyer.creator_id == creator_id, valid_at(now))
        .order_by(Flyer.created_at.desc(), Flyer.id.desc())
        .offset(offset).limit(limit)
    ).unique())


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
