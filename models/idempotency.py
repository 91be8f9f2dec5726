"""Idempotency keys and commit markers: what a write left behind so it is never done twice."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import db, utcnow

# A commit marker's key starts with a space, which no client key can (keys are visible ASCII).
MARKER_PREFIX = " "
MARKER_OWNER = 0  # commit markers belong to no user; the key alone is unique


class IdempotencyRecord(db.Model):
    """One ``Idempotency-Key`` of one user, or one write's commit marker.

    A client key is claimed ``in progress`` (``response_status`` NULL, ``token`` naming the attempt,
    ``locked_until`` its lease) in a transaction of its own; the write's own transaction stores the
    answer in the row, so the answer exists exactly when the write does. A commit marker is inserted
    by the write's transaction; finding it (or not) tells whether a commit whose answer was lost landed.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("user_id", "key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # No foreign key: markers belong to no user, and a key must not lock the user's row.
    user_id: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    token: Mapped[str | None] = mapped_column(String(32))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    response_headers: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
