"""The audit trail: who read or exported which patient's study, report or images, who signed
in (or failed to) and who changed which account; when, from where, and with what outcome.

IHE ATNA in spirit: one row per event in ``audit_events`` (:class:`neurogate.db.models.AuditEvent`),
inserted in a transaction of its own so that a route's failure does not take its record with it,
and never updated or deleted (a trigger refuses both). Admins read it at ``GET /api/audit``.
A row carries identifiers (username, Study Instance UID, Patient ID, SOP Instance UID) and a few
counts or field names, never pixel data, patient names or passwords.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from neurogate.db.models import AuditEvent, AuditOutcome, User


class AuditAction(StrEnum):
    LOGIN = "login"
    LOGOUT = "logout"
    REGISTER = "user.register"
    USER_CREATE = "user.create"
    USER_UPDATE = "user.update"  # by an admin, or one's own profile or password
    PATIENT_CREATE = "patient.create"
    PATIENT_QUERY = "patient.query"
    PATIENT_READ = "patient.read"  # the patient with its studies, or its follow-up volumes
    STUDY_QUERY = "study.query"  # the scan history, with its filters
    STUDY_READ = "study.read"  # a study with its series and analyses, or its live status
    REPORT_DOWNLOAD = "report.download"
    IMAGE_CLASSIFY = "image.classify"  # pictures in, classes and Grad-CAM pictures out
    UPLOAD = "study.upload"
    REANALYZE = "analysis.rerun"
    RESEND = "export.resend"
    AUDIT_READ = "audit.read"


class AuditObject(StrEnum):
    STUDY = "study"
    REPORT = "report"
    IMAGE = "image"
    PATIENT = "patient"
    USER = "user"
    AUDIT = "audit"


@dataclass(frozen=True)
class Auditor:
    """Records events of one request: its client address is bound, the rest is per event."""

    sessions: sessionmaker[Session]
    peer: str | None

    def record(
        self,
        action: AuditAction,
        object_type: AuditObject,
        *,
        user: User | None = None,
        username: str | None = None,
        object_id: str | None = None,
        study_uid: str | None = None,
        patient_id: str | None = None,
        outcome: str = AuditOutcome.SUCCESS,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Insert one event and commit it.

        Parameters
        ----------
        user
            The account that acted; ``username`` names one that could not be identified (a
            failed sign-in) instead.
        object_id
            What was acted on: a Study or SOP Instance UID, a username, a Patient ID.
        detail
            Identifiers and counts only (a reason, changed field names, a number of results).

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            When the event cannot be stored: the request then fails rather than go unrecorded.
        """
        event = AuditEvent(
            at=dt.datetime.now(dt.UTC),
            username=user.username if user is not None else username,
            role=user.role if user is not None else None,
            peer=self.peer,
            action=action.value,
            object_type=object_type.value,
            object_id=object_id,
            study_instance_uid=study_uid,
            patient_id=patient_id,
            outcome=outcome,
            detail=detail,
        )
        with self.sessions.begin() as session:
            session.add(event)


def list_events(
    session: Session,
    *,
    username: str | None = None,
    patient_id: str | None = None,
    study_uid: str | None = None,
    action: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[Sequence[AuditEvent], int]:
    """Events matching every filter given (``since`` inclusive, ``until`` exclusive), newest
    first; and how many match in all."""
    query = select(AuditEvent)
    if username is not None:
        query = query.where(AuditEvent.username == username)
    if patient_id is not None:
        query = query.where(AuditEvent.patient_id == patient_id)
    if study_uid is not None:
        query = query.where(AuditEvent.study_instance_uid == study_uid)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit).offset(offset)
    ).all()
    return rows, total
