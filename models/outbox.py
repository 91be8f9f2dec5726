"""The cache outbox: what each committed change to users, flyers and flyer images invalidates.

Rows are written by database triggers, in the transaction of the change, whoever makes it
(this service, the CLI, psql, a migration, another service sharing the tables), so no
invalidation can be lost between a commit and its delivery to Redis. A row names a user (its
profile and its pages) and/or a flyer (its own entry). ``service.outbox`` delivers the rows
and marks them delivered; delivered rows are kept for a while so a Redis that comes back
from its persistence files can be repaired by replaying them. On PostgreSQL the triggers
also ``NOTIFY`` every listening instance at commit.

The same triggers are created by ``db.create_all()`` (tests, embedded start) and by the
Alembic migration, from ``trigger_statements`` below.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column

from models.base import db

CHANNEL = "pf_cache_outbox"
"""PostgreSQL NOTIFY channel the triggers signal at commit."""

# Seconds since the epoch by the database's clock: one time base for every writer.
NOW_EPOCH = {
    "postgresql": "extract(epoch from clock_timestamp())",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


class CacheOutbox(db.Model):
    __tablename__ = "cache_outbox"
    __table_args__ = (Index("ix_cache_outbox_delivered_id", "delivered", "id"),
                      Index("ix_cache_outbox_created_at", "created_at"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(Integer)    # profile and pages of this user
    flyer_id: Mapped[int | None] = mapped_column(Integer)   # this flyer's own entry
    created_at: Mapped[float] = mapped_column(Float)        # epoch seconds, database clock
    delivered: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


_POSTGRES_FUNCTIONS = """
CREATE OR REPLACE FUNCTION pf_outbox_users() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE now_s double precision := {now};
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO cache_outbox(user_id, created_at) VALUES (OLD.id, now_s);
  ELSE
    INSERT INTO cache_outbox(user_id, created_at) VALUES (NEW.id, now_s);
    -- Every flyer of the creator embeds its name and avatar.
    IF TG_OP = 'UPDATE' AND (NEW.username, NEW.display_name, NEW.thumbnail_key)
         IS DISTINCT FROM (OLD.username, OLD.display_name, OLD.thumbnail_key) THEN
      INSERT INTO cache_outbox(flyer_id, created_at) SELECT id, now_s FROM flyers WHERE creator_id = NEW.id;
    END IF;
  END IF;
  PERFORM pg_notify('{channel}', '');
  RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION pf_outbox_flyers() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE now_s double precision := {now};
BEGIN
  IF TG_OP <> 'INSERT' THEN
    INSERT INTO cache_outbox(user_id, flyer_id, created_at) VALUES (OLD.creator_id, OLD.id, now_s);
  END IF;
  IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.creator_id <> OLD.creator_id) THEN
    INSERT INTO cache_outbox(user_id, flyer_id, created_at) VALUES (NEW.creator_id, NEW.id, now_s);
  END IF;
  PERFORM pg_notify('{channel}', '');
  RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION pf_outbox_flyer_images() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'INSERT' THEN
    INSERT INTO cache_outbox(user_id, flyer_id, created_at)
      SELECT creator_id, id, {now} FROM flyers WHERE id = OLD.flyer_id;
  END IF;
  IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.flyer_id <> OLD.flyer_id) THEN
    INSERT INTO cache_outbox(user_id, flyer_id, created_at)
      SELECT creator_id, id, {now} FROM flyers WHERE id = NEW.flyer_id;
  END IF;
  PERFORM pg_notify('{channel}', '');
  RETURN NULL;
END $$;
"""


def _postgres() -> list[str]:
    statements = [_POSTGRES_FUNCTIONS.format(now=NOW_EPOCH["postgresql"], channel=CHANNEL)]
    for table in ("users", "flyers", "flyer_images"):
        statements += [
            f"DROP TRIGGER IF EXISTS pf_outbox ON {table}",
            f"CREATE TRIGGER pf_outbox AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION pf_outbox_{table}()",
        ]
    return statements


def _sqlite() -> list[str]:
    now = NOW_EPOCH["sqlite"]
    creator_changed = ("NEW.username IS NOT OLD.username OR NEW.display_name IS NOT OLD.display_name "
                       "OR NEW.thumbnail_key IS NOT OLD.thumbnail_key")
    bodies = {
        ("users", "INSERT"): f"INSERT INTO cache_outbox(user_id, created_at) VALUES (NEW.id, {now});",
        ("users", "UPDATE"): (
            f"INSERT INTO cache_outbox(user_id, created_at) VALUES (NEW.id, {now});"
            f" INSERT INTO cache_outbox(flyer_id, created_at) SELECT id, {now} FROM flyers"
            f" WHERE creator_id = NEW.id AND ({creator_changed});"),
        ("users", "DELETE"): f"INSERT INTO cache_outbox(user_id, created_at) VALUES (OLD.id, {now});",
        ("flyers", "INSERT"): (
            f"INSERT INTO cache_outbox(user_id, flyer_id, created_at) VALUES (NEW.creator_id, NEW.id, {now});"),
        ("flyers", "UPDATE"): (
            f"INSERT INTO cache_outbox(user_id, flyer_id, created_at) VALUES (OLD.creator_id, OLD.id, {now});"
            f" INSERT INTO cache_outbox(user_id, flyer_id, created_at) SELECT NEW.creator_id, NEW.id, {now}"
            f" WHERE NEW.creator_id <> OLD.creator_id;"),
        ("flyers", "DELETE"): (
            f"INSERT INTO cache_outbox(user_id, flyer_id, created_at) VALUES (OLD.creator_id, OLD.id, {now});"),
        ("flyer_images", "INSERT"): (
            f"INSERT INTO cache_outbox(user_id, flyer_id, created_at)"
            f" SELECT creator_id, id, {now} FROM flyers WHERE id = NEW.flyer_id;"),
        ("flyer_images", "UPDATE"): (
            f"INSERT INTO cache_outbox(user_id, flyer_id, created_at)"
            f" SELECT creator_id, id, {now} FROM flyers WHERE id IN (NEW.flyer_id, OLD.flyer_id);"),
        ("flyer_images", "DELETE"): (
            f"INSERT INTO cache_outbox(user_id, flyer_id, created_at)"
            f" SELECT creator_id, id, {now} FROM flyers WHERE id = OLD.flyer_id;"),
    }
    return [f"CREATE TRIGGER IF NOT EXISTS pf_outbox_{table}_{op.lower()} AFTER {op} ON {table} "
            f"FOR EACH ROW BEGIN {body} END" for (table, op), body in bodies.items()]


def trigger_statements(dialect: str) -> list[str]:
    """The DDL that makes every change to users, flyers and flyer images write its outbox rows."""
    if dialect == "postgresql":
        return _postgres()
    if dialect == "sqlite":
        return _sqlite()
    raise ValueError(f"no outbox triggers for the {dialect} dialect")


def create_triggers(connection: Connection) -> None:
    """Create (or replace) the outbox triggers on `connection`'s database."""
    for statement in trigger_statements(connection.dialect.name):
        connection.exec_driver_sql(statement)


@event.listens_for(db.metadata, "after_create")
def _after_create(target: object, connection: Connection, **kw: object) -> None:
    create_triggers(connection)
