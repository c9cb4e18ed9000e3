"""ORM tables. Schema changes go through an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
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


class AnalysisStatus:
    """Values of ``Analysis.status``; the same words as the status events."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class Analysis(Base):
    """One run of the pipeline for one request (a completed study, an upload, a re-run).

    ``request_event_id`` makes processing idempotent: a redelivered event finds its row and
    does not create a second result.
    """

    __tablename__ = "analyses"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_event_id: Mapped[str] = mapped_column(String(36), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    source: Mapped[str] = mapped_column(String(16))  # dicom, upload, rerun
    status: Mapped[str] = mapped_column(String(16), index=True)
    step: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    findings: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]

    objects: Mapped[list[ResultObject]] = relationship(
        back_populates="analysis", cascade="all, delete-orphan", order_by="ResultObject.id"
    )


class ResultObject(Base):
    """A DICOM object the node wrote for an analysis (SEG, SR, Grad-CAM capture, PDF)."""

    __tablename__ = "result_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(
        ForeignKey("analyses.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # seg, sr, gradcam, pdf
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(255))  # relative to the storage root
    created_at: Mapped[dt.datetime]

    analysis: Mapped[Analysis] = relationship(back_populates="objects")
    exports: Mapped[list[Export]] = relationship(
        back_populates="result_object", cascade="all, delete-orphan", order_by="Export.id"
    )


class ExportStatus:
    PENDING = "pending"  # not yet sent, or to be retried at next_attempt_at
    SENT = "sent"
    FAILED = "failed"  # parked after the last attempt; re-send from the API


class Export(Base):
    """The delivery of one result object to one destination; at most one row per pair."""

    __tablename__ = "exports"
    __table_args__ = (UniqueConstraint("result_object_id", "destination"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    result_object_id: Mapped[int] = mapped_column(
        ForeignKey("result_objects.id", ondelete="CASCADE"), index=True
    )
    destination: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    dimse_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[dt.datetime | None]
    sent_at: Mapped[dt.datetime | None]
    # The exporter that took this row to send it, and until when (a lease; see the exporter).
    claim_token: Mapped[str | None] = mapped_column(String(36))
    claimed_until: Mapped[dt.datetime | None]

    result_object: Mapped[ResultObject] = relationship(back_populates="exports")


class UserRole:
    """Values of ``User.role``: what an account of the API may do."""

    ADMIN = "admin"  # manages accounts and patients; everything a clinician may do
    CLINICIAN = "clinician"  # reads every study, uploads, re-runs, re-sends
    PATIENT = "patient"  # reads the studies of the one patient its account is linked to


class Patient(Base):
    """A patient known to the portal; studies belong to it through ``Study.patient_id``."""

    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), unique=True)  # DICOM Patient ID
    name: Mapped[str | None] = mapped_column(String(324))
    birth_date: Mapped[dt.date | None] = mapped_column(Date)
    sex: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[dt.datetime]
    # Contact details of the portal (seed 003); DICOM-made patients have none.
    email: Mapped[str | None] = mapped_column(String(254))
    age: Mapped[int | None] = mapped_column(Integer)
    phone: Mapped[str | None] = mapped_column(String(32))
    address: Mapped[str | None] = mapped_column(String(256))
    updated_at: Mapped[dt.datetime | None]


class ImageScan(Base):
    """A picture classified for a patient through the portal (seed 003's scans): the stored
    original, its Grad-CAM heatmap and overlay, and the prediction; part of the history."""

    __tablename__ = "image_scans"

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[str] = mapped_column(String(32), unique=True)
    patient_ref: Mapped[int] = mapped_column(
        ForeignKey("patients.id", ondelete="RESTRICT"), index=True
    )
    original_filename: Mapped[str] = mapped_column(String(255))
    # Files relative to the storage root.
    original_path: Mapped[str] = mapped_column(String(255))
    heatmap_path: Mapped[str] = mapped_column(String(255))
    overlay_path: Mapped[str] = mapped_column(String(255))
    prediction: Mapped[str] = mapped_column(String(32))  # the classifier's label
    confidence: Mapped[float] = mapped_column(Float)  # 0-1
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    uploaded_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]

    patient: Mapped[Patient] = relationship()


class ScanReport(Base):
    """A PDF report of a patient's picture scans (seed 003's reports)."""

    __tablename__ = "scan_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[str] = mapped_column(String(32), unique=True)
    patient_ref: Mapped[int] = mapped_column(
        ForeignKey("patients.id", ondelete="RESTRICT"), index=True
    )
    report_path: Mapped[str] = mapped_column(String(255))  # relative to the storage root
    scan_count: Mapped[int] = mapped_column(Integer)
    tumor_count: Mapped[int] = mapped_column(Integer)
    no_tumor_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime]

    patient: Mapped[Patient] = relationship()


class User(Base):
    """An account of the REST API; passwords are stored as bcrypt hashes only."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(254), unique=True)
    full_name: Mapped[str | None] = mapped_column(String(128))
    title: Mapped[str | None] = mapped_column(String(64))
    department: Mapped[str | None] = mapped_column(String(128))
    institution: Mapped[str | None] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    # Patient accounts only: the one patient whose studies the account may read.
    patient_ref: Mapped[int | None] = mapped_column(
        ForeignKey("patients.id", ondelete="RESTRICT"), index=True
    )
    password_hash: Mapped[str] = mapped_column(String(128))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime]
    # Carried in every access token; raising it revokes the account's tokens issued so far
    # (sign-out, password change, an admin's change of role, activity or password).
    token_version: Mapped[int] = mapped_column(default=0, server_default="0")

    patient: Mapped[Patient | None] = relationship()


class Upload(Base):
    """Files uploaded through the API for one study, so that the study can be analysed again."""

    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    input_format: Mapped[str] = mapped_column(String(16))  # nifti
    # role (T1, T1CE, T2, FLAIR) -> file, relative to the storage root
    files: Mapped[dict[str, Any]] = mapped_column(JSON)
    uploaded_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]


class AuditOutcome:
    """Values of ``AuditEvent.outcome``."""

    SUCCESS = "success"
    FAILURE = "failure"  # refused, not found, wrong password: the attempt is recorded too


class AuditEvent(Base):
    """Who read, exported or changed what, when and from where (IHE ATNA in spirit).

    Append-only: the API only inserts; on PostgreSQL and SQLite a trigger refuses UPDATE and
    DELETE (migration 0006). Rows name studies, patients and accounts by their identifiers and
    never hold pixel data, names or passwords.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(index=True)
    # The account that acted (for a failed sign-in: the username tried) and its role then.
    username: Mapped[str | None] = mapped_column(String(64), index=True)
    role: Mapped[str | None] = mapped_column(String(16))
    peer: Mapped[str | None] = mapped_column(String(64))  # client address (see trusted_proxies)
    action: Mapped[str] = mapped_column(String(32))  # api.audit.AuditAction
    object_type: Mapped[str] = mapped_column(String(16))  # study, report, image, user, ...
    object_id: Mapped[str | None] = mapped_column(String(128))
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    # A few identifiers or counts (a reason, the fields an admin changed); never values of them.
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class RoutingAction:
    """Values of ``RoutingDecision.action``."""

    ANALYSE = "analyse"
    IGNORE = "ignore"  # not for this node: analysed by nobody


class RoutingDecision(Base):
    """What the routing rules decided for one received study (one row per request event).

    Written by the worker's router before the study is queued for analysis, so that a study
    "not for this node" is on record with the rule that said so (migration 0007).
    """

    __tablename__ = "routing_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_event_id: Mapped[str] = mapped_column(String(36), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    rule: Mapped[str | None] = mapped_column(String(64))  # None: no rule matched
    action: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(16))  # stat, routine
    model_set: Mapped[str] = mapped_column(String(64))
    # Names of EXPORT__DESTINATIONS the results go to; None: every destination.
    destinations: Mapped[list[str] | None] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text)
    # The attributes the rules looked at (modalities, body parts, descriptions, AE titles).
    facts: Mapped[dict[str, Any]] = mapped_column(JSON)
    decided_at: Mapped[dt.datetime]


class DeliveryStatus:
    PENDING = "pending"  # not yet delivered, or to be retried at next_attempt_at
    SENT = "sent"
    FAILED = "failed"  # given up after the last attempt


class WebhookDelivery(Base):
    """One notification to one webhook, with its attempts and outcome (migration 0007)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(36), unique=True)  # sent as a header
    webhook: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))  # analysis.completed, ... (WEBHOOK_EVENTS)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    analysis_id: Mapped[int | None] = mapped_column(
        ForeignKey("analyses.id", ondelete="CASCADE"), index=True
    )
    body: Mapped[bytes] = mapped_column(LargeBinary)  # the exact bytes signed and sent
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Each attempt: {"at", "http_status", "error"}, oldest first.
    outcomes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    last_error: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime]
    next_attempt_at: Mapped[dt.datetime | None]
    sent_at: Mapped[dt.datetime | None]
    claim_token: Mapped[str | None] = mapped_column(String(36))
    claimed_until: Mapped[dt.datetime | None]
