"""ORM tables. Schema changes go through an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite returns naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: NeuroGate stores aware UTC timestamps only")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON}


class StudyStatus:
    """Values of ``Study.status`` as written by the listener."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class Study(Base):
    """A study as received by the listener; one row per StudyInstanceUID."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    # Completions so far; the next StudyReceived event carries revision + 1.
    revision: Mapped[int] = mapped_column(Integer, default=0)
    completion_trigger: Mapped[str | None] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(255))
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    called_ae_title: Mapped[str] = mapped_column(String(16))
    calling_ae_titles: Mapped[list[str]] = mapped_column(JSON, default=list)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    first_received_at: Mapped[dt.datetime]
    last_received_at: Mapped[dt.datetime]
    completed_at: Mapped[dt.datetime | None]

    series: Mapped[list[Series]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="Series.series_number"
    )


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("study_id", "series_instance_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    sop_class_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    path: Mapped[str] = mapped_column(String(255))

    study: Mapped[Study] = relationship(back_populates="series")


class OutboxEvent(Base):
    """An event committed together with the state change it announces (transactional outbox).

    A relay publishes pending rows in ``id`` order and stamps ``published_at``; a crash between
    the two republishes the same ``event_id``, which consumers deduplicate.
    """

    __tablename__ = "outbox_events"
    __table_args__ = (Index("ix_outbox_pending", "published_at", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    topic: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime]
    published_at: Mapped[dt.datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class PerformedProcedureStep(Base):
    """An MPPS instance created by a modality (N-CREATE) and updated by it (N-SET)."""

    __tablename__ = "performed_procedure_steps"

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    status: Mapped[str] = mapped_column(String(16))
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    # [[series_uid, sop_instance_uid], ...] from the Performed Series Sequence
    referenced_instances: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
