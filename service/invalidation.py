"""Cache invalidation after every commit of the service's own session.

What a change invalidates is not worked out here: the database's triggers record it in the
outbox, in the change's own transaction (``models.outbox``), whoever makes the change. This
module only makes the service's own writes deliver those rows before they answer: a session
that wrote something (an ORM flush, or a bulk INSERT/UPDATE/DELETE statement) delivers the
outbox after its commit (``service.outbox.Outbox.after_write``). Invalidating after the
commit, never before, is what makes the leases work: a reader that loaded the old row before
the commit holds a lease that the invalidation revokes, so its fill is refused; a reader that
starts after the invalidation reads the committed row. The write's answer is built after
``commit()`` returns, so it follows its invalidation.

Just before the commit, a session that wrote reads back the undelivered outbox rows (its own
among them: the triggers wrote them in its transaction). Delivery after the commit reads the
table again, and marks what it delivered; if the database is gone by then (it can crash right
after the COMMIT), the write delivers the rows it read before, so it still never answers
before its invalidation reached Redis.
"""
from __future__ import annotations

from flask import current_app, has_app_context
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

from models import db

WROTE = "wrote_outbox_tables"
ROWS = "outbox_rows_before_commit"


def _wrote(session: Session, *args: object) -> None:
    session.info[WROTE] = True


def _wrote_statement(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info[WROTE] = True


def _read_rows(session: Session) -> None:
    if session.info.get(WROTE) and has_app_context():
        outbox = current_app.extensions["profile_service"].outbox
        session.info[ROWS] = outbox.undelivered(session.connection())


def _deliver(session: Session) -> None:
    rows = session.info.pop(ROWS, ())
    if session.info.pop(WROTE, False) and has_app_context():
        current_app.extensions["profile_service"].outbox.after_write(rows)


def _discard(session: Session, *args: object) -> None:
    session.info.pop(WROTE, None)
    session.info.pop(ROWS, None)


def listen() -> None:
    """Attach the listeners to the Flask-SQLAlchemy session (once per process)."""
    for name, function in (("after_flush", _wrote), ("do_orm_execute", _wrote_statement),
                           ("before_commit", _read_rows), ("after_commit", _deliver),
                           ("after_rollback", _discard)):
        if not event.contains(db.session, name, function):
            event.listen(db.session, name, function)
