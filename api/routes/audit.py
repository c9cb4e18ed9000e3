"""The audit trail, for admins: who read, exported or changed what (see :mod:`api.audit`).

There is no route that changes or deletes an event; reading the trail is itself recorded.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BeforeValidator

from api import audit
from api.audit import AuditAction, AuditObject
from api.deps import AdminUser, AuditDep, Limit, Offset, SessionDep
from api.errors import responses
from api.schemas import DICOM_PATIENT_ID_PATTERN, AuditEventOut, Page
from schemas.uids import MAX_UID_LENGTH

router = APIRouter(prefix="/api/audit", tags=["audit"], responses=responses(401, 403, 422))

_ISO_START = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _iso_only(value: object) -> object:
    """Times as ISO 8601 only (pydantic would take numbers as Unix timestamps)."""
    if isinstance(value, str) and not _ISO_START.match(value):
        raise ValueError("expected an ISO 8601 time, e.g. 2026-12-03T10:00:00Z")
    return value


IsoTime = Annotated[dt.datetime, BeforeValidator(_iso_only)]


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """Times without a zone are taken as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


@router.get("", response_model=Page[AuditEventOut])
def list_audit_events(
    admin: AdminUser,
    session: SessionDep,
    auditor: AuditDep,
    user: Annotated[str | None, Query(max_length=64, description="username")] = None,
    patient: Annotated[
        str | None, Query(pattern=DICOM_PATIENT_ID_PATTERN, description="Patient ID")
    ] = None,
    study: Annotated[
        str | None,
        Query(
            pattern=r"^[0-9]+(\.[0-9]+)*$",
            max_length=MAX_UID_LENGTH,
            description="Study Instance UID",
        ),
    ] = None,
    action: AuditAction | None = None,
    since: Annotated[IsoTime | None, Query(description="inclusive; UTC if no zone")] = None,
    until: Annotated[IsoTime | None, Query(description="exclusive; UTC if no zone")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AuditEventOut]:
    """Events matching every filter given, newest first."""
    filters = {"user": user, "patient": patient, "study": study, "action": action}
    events, total = audit.list_events(
        session,
        username=user,
        patient_id=patient,
        study_uid=study,
        action=action.value if action is not None else None,
        since=_utc(since),
        until=_utc(until),
        limit=limit,
        offset=offset,
    )
    auditor.record(
        AuditAction.AUDIT_READ,
        AuditObject.AUDIT,
        user=admin,
        patient_id=patient,
        study_uid=study,
        detail={
            "filters": {k: str(v) for k, v in filters.items() if v is not None},
            "returned": len(events),
        },
    )
    return Page(
        items=[AuditEventOut.model_validate(e) for e in events],
        total=total,
        limit=limit,
        offset=offset,
    )
