"""Commit a write so that its answer and its outcome agree, also when the connection dies around the COMMIT.

Every write's transaction inserts a commit marker (a row with a random key). When ``COMMIT`` raises,
the outcome is asked of the database on a fresh connection by inserting the same marker again:
a unique-key violation means the write committed; a successful insert (rolled back at once) means it
did not. While the first transaction still runs (its connection was cut, its backend lives on), the
probe waits on the marker's index entry; past a lock timeout it terminates that backend (its process
id is known and, while it holds the marker, cannot have been reused) and asks again. The probe is
retried for ``WRITE_VERIFY_SECONDS``; if the database stays unreachable that long the outcome is
unknown, the answer is 503 and says so (see docs/SECURITY.md, "Writes").
"""
from __future__ import annotations

import logging
import secrets
import time
from datetime import timedelta
from typing import Callable

from flask import current_app
from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from models import IdempotencyRecord, db
from models.idempotency import MARKER_OWNER, MARKER_PREFIX
from service import invalidation
from service.errors import ServiceUnavailable
from service.extension import services

log = logging.getLogger(__name__)

MARKER_TTL = timedelta(hours=1)  # a marker is only read within seconds of its commit
LOCK_NOT_AVAILABLE = "55P03"     # PostgreSQL: lock_timeout expired


class WriteNotMade(ServiceUnavailable):
    """The commit failed and the database confirms the write is not there."""


class OutcomeUnknown(ServiceUnavailable):
    """The commit failed and the database could not be asked whether it landed."""


def commit_write(before_commit: Callable[[], None] | None = None) -> None:
    """Commit the session's write, or raise 503 (WriteNotMade, OutcomeUnknown) when it did not commit.

    ``before_commit`` runs after the flush (so generated ids are known) inside the same transaction.
    """
    session = db.session
    marker = MARKER_PREFIX + secrets.token_hex(15)
    now = services().clock()
    session.add(IdempotencyRecord(user_id=MARKER_OWNER, key=marker, created_at=now, expires_at=now + MARKER_TTL))
    session.flush()  # a failure here is before COMMIT: certainly not committed, answered 503 by the handler
    if before_commit is not None:
        before_commit()
        session.flush()
    backend_pid = _backend_pid()
    try:
        session.commit()
    except Exception as error:
        log.warning("commit raised (%s); asking the database whether it landed", type(error).__name__)
        rows = session.info.get(invalidation.ROWS, ())  # the rollback below forgets them
        safe_rollback()
        committed = verify(marker, backend_pid)
        retry = {"Retry-After": str(current_app.config["DB_RETRY_AFTER_SECONDS"])}
        if committed is None:
            log.error("write outcome unknown: database unreachable for %ss after COMMIT raised",
                      current_app.config["WRITE_VERIFY_SECONDS"])
            raise OutcomeUnknown("Database unavailable; the write may or may not have been made, "
                                 "retry it (with the same Idempotency-Key)", headers=retry) from None
        if not committed:
            raise WriteNotMade("Database unavailable, the write was not made; try again", headers=retry) from None
        log.warning("commit raised but the write is in the database: answering success")
        services().outbox.after_write(rows)  # after_commit did not run: deliver its outbox rows now


def safe_rollback() -> None:
    """Roll the session back; a dead connection is dropped and logged instead of raising."""
    try:
        db.session.rollback()
    except Exception:
        log.warning("rollback failed; discarding the session's connection", exc_info=True)
        try:
            db.session.invalidate()
        except Exception:
            log.warning("could not discard the session's connection", exc_info=True)


def verify(marker: str, backend_pid: int | None) -> bool | None:
    """Tell whether the transaction that inserted ``marker`` committed; None when the database cannot say."""
    deadline = time.monotonic() + current_app.config["WRITE_VERIFY_SECONDS"]
    delay = 0.05
    while True:
        try:
            return _probe(marker, backend_pid)
        except SQLAlchemyError as error:
            log.info("commit check failed (%s); retrying", type(error).__name__)
        if time.monotonic() + delay > deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _probe(marker: str, backend_pid: int | None) -> bool:
    now = services().clock()
    row = {"user_id": MARKER_OWNER, "key": marker, "created_at": now, "expires_at": now}
    with db.engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.execute(text("SET LOCAL lock_timeout = '1s'"))
        try:
            conn.execute(insert(IdempotencyRecord).values(**row))
        except IntegrityError:
            return True
        except DBAPIError as error:
            if postgres and backend_pid and getattr(error.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                # The old transaction holds the marker, so it is alive and its backend is ours: end it.
                conn.rollback()
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend_pid})
                conn.commit()
            raise
        conn.rollback()  # the marker was free: the write is not there, and the probe leaves nothing
        return False


def _backend_pid() -> int | None:
    """The PostgreSQL backend serving the session's transaction (libpq knows it without a query)."""
    try:
        connection = db.session.connection().connection.dbapi_connection
        return getattr(getattr(connection, "info", None), "backend_pid", None)
    except Exception:
        return None
