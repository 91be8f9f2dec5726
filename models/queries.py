"""The read queries behind profiles and creator pages, each a fixed number of statements."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, DateTime, Integer, and_, bindparam, case, func, literal_column, select
from sqlalchemy.orm import contains_eager, selectinload

from models.base import db
from models.flyer import Flyer, FlyerImage
from models.user import User


@dataclass(frozen=True)
class CreatorStats:
    valid_flyers: int
    next_change: datetime | None  # the next valid_from or valid_until after now, if any


def valid_at(now):
    """Return the SQL condition for a flyer being valid at ``now`` (a datetime or a bind parameter)."""
    return and_(Flyer.valid_from <= now, Flyer.valid_until > now)


# The read statements are built once with bind parameters: building a select() costs more
# CPU than running it, and these run on every cache miss.
_USER_ID, _NOW = bindparam("user_id"), bindparam("now", type_=DateTime())
_OFFSET, _LIMIT = bindparam("offset", type_=Integer()), bindparam("limit", type_=Integer())

_stats = (
    select(Flyer.creator_id,
           # Counting a constant, not a column, lets the validity index answer alone (index-only scan).
           func.count(case((valid_at(_NOW), literal_column("1")))).label("valid"),
           func.min(case((Flyer.valid_from > _NOW, Flyer.valid_from))).label("next_start"),
           func.min(case((Flyer.valid_until > _NOW, Flyer.valid_until))).label("next_end"))
    .where(Flyer.creator_id == _USER_ID, Flyer.valid_until > _NOW)
    .group_by(Flyer.creator_id)
    .subquery()
)

CREATOR = (
    select(User, _stats.c.valid, _stats.c.next_start, _stats.c.next_end)
    .outerjoin(_stats, _stats.c.creator_id == User.id)
    .where(User.id == _USER_ID)
)


def get_creator(user_id: int, now: datetime) -> tuple[User, CreatorStats] | None:
    """Return the user with its valid-flyer count and next validity boundary, in one statement; or None."""
    row = db.session.execute(CREATOR, {"user_id": user_id, "now": now}).first()
    if row is None:
        return None
    boundaries = [moment for moment in (row.next_start, row.next_end) if moment is not None]
    return row[0], CreatorStats(valid_flyers=row.valid or 0, next_change=min(boundaries) if boundaries else None)


def get_flyer(flyer_id: int) -> Flyer | None:
    """Return the flyer with its creator and images loaded, valid or not, or None."""
    return db.session.scalars(
        select(Flyer)
        .join(Flyer.creator)
        .options(contains_eager(Flyer.creator), selectinload(Flyer.images))
        .where(Flyer.id == flyer_id)
    ).first()


# -- read-only loads for cache misses ------------------------------------------------------
# The same statements as CREATOR and the ORM's page, written in Core: the rows come back as
# plain rows (no entities, no identity map, no session), on a connection in autocommit, so a
# load is its statements' round trips and nothing more (no BEGIN, no ROLLBACK). Each
# statement sees its own snapshot, as it does in the session's READ COMMITTED transaction.
# On PostgreSQL the loads go to psycopg directly (``conn`` is then a ``Psycopg``):
# SQLAlchemy's execution of an already compiled statement (events, parameter processing,
# result metadata, Row objects) cost ~90 µs of CPU per statement here, three times what the
# statement's own round trip costs (docs/PERFORMANCE.md); the SQL is SQLAlchemy's, compiled once.
_users, _flyers, _images = User.__table__, Flyer.__table__, FlyerImage.__table__
PROFILE_COLUMNS = ("id", "username", "display_name", "bio", "picture_key", "thumbnail_key",
                   "created_at", "updated_at")
CREATOR_ROW = (
    select(*(_users.c[name] for name in PROFILE_COLUMNS), _stats.c.valid, _stats.c.next_start, _stats.c.next_end)
    .select_from(_users.outerjoin(_stats, _stats.c.creator_id == _users.c.id))
    .where(_users.c.id == _USER_ID)
)
_page = (
    select(_flyers)
    .where(_flyers.c.creator_id == _USER_ID, _flyers.c.valid_from <= _NOW, _flyers.c.valid_until > _NOW)
    .order_by(_flyers.c.created_at.desc(), _flyers.c.id.desc())
    .offset(_OFFSET).limit(_LIMIT)
    .subquery()
)
PAGE_ROWS = (
    select(_page, _images.c.storage_key.label("image_key"), _images.c.order.label("image_order"))
    .select_from(_page.outerjoin(_images, _images.c.flyer_id == _page.c.id))
    .order_by(_page.c.created_at.desc(), _page.c.id.desc(), _images.c.order)
)


def stats_of(row: Any) -> CreatorStats:
    boundaries = [moment for moment in (row.next_start, row.next_end) if moment is not None]
    return CreatorStats(valid_flyers=row.valid or 0, next_change=min(boundaries) if boundaries else None)


class Psycopg:
    """A pool connection's psycopg connection, running SQLAlchemy statements compiled once.

    It tells the engine's ``before_cursor_execute`` listeners of each statement, as SQLAlchemy
    would (the test suite and the benchmark count statements with them); with none, that is
    one check of an empty list.
    """

    __slots__ = ("conn", "_before")

    def __init__(self, conn: psycopg.Connection, engine: Any) -> None:
        self.conn = conn
        self._before = engine.dispatch.before_cursor_execute

    def execute(self, statement: Any, params: dict[str, Any]) -> psycopg.Cursor:
        sql = _psycopg_sql(statement)
        cursor = self.conn.cursor(row_factory=namedtuple_row)
        if self._before:
            self._before(None, cursor, sql, params, None, False)
        return cursor.execute(sql, params)


def read_creator(conn: Connection | Psycopg, user_id: int, now: datetime) -> Any:
    """The creator's profile columns with ``valid``, ``next_start``, ``next_end`` (a row), or None."""
    params = {"user_id": user_id, "now": now}
    if isinstance(conn, Connection):
        return conn.execute(CREATOR_ROW, params).first()
    return conn.execute(CREATOR_ROW, params).fetchone()


def read_creator_page(conn: Connection | Psycopg, creator_id: int, now: datetime, offset: int,
                      limit: int) -> list[tuple[Any, list[Any]]]:
    """One page of the creator's valid flyers, newest first: (flyer row, its image rows in order)."""
    flyers: list[tuple[Any, list[Any]]] = []
    params = {"user_id": creator_id, "now": now, "offset": offset, "limit": limit}
    for row in conn.execute(PAGE_ROWS, params):
        if not flyers or flyers[-1][0].id != row.id:
            flyers.append((row, []))
        if row.image_key is not None:
            flyers[-1][1].append(row)
    return flyers


_PSYCOPG_SQL: dict[Any, str] = {}


def _psycopg_sql(statement: Any) -> str:
    """``statement`` compiled once for psycopg (``%(name)s`` parameters), as SQLAlchemy would send it."""
    sql = _PSYCOPG_SQL.get(statement)
    if sql is None:
        from sqlalchemy.dialects.postgresql.psycopg import dialect
        sql = _PSYCOPG_SQL[statement] = str(statement.compile(dialect=dialect()))
    return sql
