"""Flyers and their images."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import db, utcnow
from models.user import User


class Flyer(db.Model):
    __tablename__ = "flyers"
    __table_args__ = (
        # Serves the creator page: filter by creator, walk newest first, stop after one page.
        Index("ix_flyers_creator_created", "creator_id", db.text("created_at DESC"), db.text("id DESC")),
        # Serves the creator's valid-flyer count and next validity boundary.
        Index("ix_flyers_creator_validity", "creator_id", "valid_until", "valid_from"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    creator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    location_address: Mapped[str] = mapped_column(String(500))
    lat: Mapped[float] = mapped_column(Float)
    lng: Mapped[float] = mapped_column(Float)
    valid_from: Mapped[datetime] = mapped_column(DateTime)
    valid_until: Mapped[datetime] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    creator: Mapped[User] = relationship(lazy="raise")
    images: Mapped[list[FlyerImage]] = relationship(
        back_populates="flyer", order_by="FlyerImage.order", lazy="raise",
        cascade="all, delete-orphan", passive_deletes=True,
    )


class FlyerImage(db.Model):
    __tablename__ = "flyer_images"

    id: Mapped[int] = mapped_column(primary_key=True)
    flyer_id: Mapped[int] = mapped_column(ForeignKey("flyers.id", ondelete="CASCADE"), index=True)
    order: Mapped[int] = mapped_column(Integer, default=0)
    storage_key: Mapped[str] = mapped_column(String(255))

    flyer: Mapped[Flyer] = relationship(back_populates="images", lazy="raise")
