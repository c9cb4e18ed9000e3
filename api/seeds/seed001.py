"""Seed 001 ("Brain Tumor Analysis System"): ``GET /api/scans``, ``GET /api/scans/{scan_id}``.

A scan is one of the node's studies (received over DICOM or uploaded with
``/api/process-mri``) with its latest analysis, in the seed's camelCase: ``id`` (the study's
row id), ``patientId``, ``patientName``, ``scanDate``, ``modalities``, ``status``,
``progress`` (percent), ``pipelineStep``, ``results`` (the findings), ``createdAt`` and
``userId`` (the uploader; ``null`` for studies sent by a modality). The seed's registration
(``fullName``), login, profile and ``/api/process-mri`` (``patientName``) are the node's own
routes, which take its payloads.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api import queries
from api.audit import AuditAction, AuditObject
from api.deps import AuditDep, CurrentUser, SessionDep
from api.errors import ApiError, not_found
from api.queries import StudyRow
from api.routes.patients import own_patient_id
from api.routes.studies import audited_study
from api.seeds.common import DetailError, detail_body, error_responses, seed_route

router = APIRouter(tags=["seed 001"], route_class=seed_route(detail_body))

MAX_SCANS = 500
MAX_ID = 2**31 - 1  # within every database's integer


class Scan(BaseModel):
    id: int
    studyInstanceUid: str
    patientId: str | None
    patientName: str | None
    scanDate: dt.date | None
    modalities: list[str]
    status: str  # queued, running, completed, failed; received: not analysed
    progress: float  # percent
    pipelineStep: str | None
    results: dict[str, Any] | None
    createdAt: dt.datetime
    userId: int | None


def _scan_date(value: str | None) -> dt.date | None:
    try:
        return dt.datetime.strptime(value or "", "%Y%m%d").date()
    except ValueError:
        return None


def _scans(session: Session, rows: list[StudyRow]) -> list[Scan]:
    ids = [row.study.id for row in rows]
    descriptions = queries.series_descriptions(session, study_ids=ids)
    uploads = {
        row.study.id: queries.upload_of(session, study_uid=row.study.study_instance_uid)
        for row in rows
        if row.uploaded
    }
    uploaders = queries.user_ids(
        session,
        usernames=sorted({u.uploaded_by for u in uploads.values() if u and u.uploaded_by}),
    )
    scans = []
    for row in rows:
        study, analysis, upload = row.study, row.analysis, uploads.get(row.study.id)
        scans.append(
            Scan(
                id=study.id,
                studyInstanceUid=study.study_instance_uid,
                patientId=study.patient_id,
                patientName=study.patient_name,
                scanDate=_scan_date(study.study_date),
                modalities=sorted(upload.files) if upload else descriptions.get(study.id, []),
                status=analysis.status if analysis else "received",
                progress=round((analysis.progress if analysis else 0.0) * 100, 1),
                pipelineStep=analysis.step if analysis else None,
                results=analysis.findings if analysis else None,
                createdAt=study.first_received_at,
                userId=uploaders.get(upload.uploaded_by or "") if upload else None,
            )
        )
    return scans


@router.get("/api/scans", response_model=list[Scan], responses=error_responses(DetailError, 401))
def list_scans(user: CurrentUser, session: SessionDep, auditor: AuditDep) -> list[Scan]:
    """The scans the account may read (a patient account: its own), newest first."""
    own = own_patient_id(user)
    rows, _ = queries.list_studies(session, patient_id=own, limit=MAX_SCANS)
    auditor.record(
        AuditAction.STUDY_QUERY,
        AuditObject.STUDY,
        user=user,
        patient_id=own,
        detail={
            "view": "scans",
            "studies": [r.study.study_instance_uid for r in rows],
            "patients": sorted({r.study.patient_id for r in rows if r.study.patient_id}),
        },
    )
    return _scans(session, rows)


@router.get(
    "/api/scans/{scan_id}", response_model=Scan, responses=error_responses(DetailError, 401, 404)
)
def get_scan(
    user: CurrentUser,
    session: SessionDep,
    auditor: AuditDep,
    scan_id: Annotated[int, Path(ge=1, le=MAX_ID)],
) -> Scan:
    """One scan, if the account may read it; 404 otherwise."""
    uid = queries.study_uid_of(session, study_id=scan_id)
    if uid is None:
        raise not_found("scan")
    try:
        row = audited_study(session, user, uid, auditor, AuditAction.STUDY_READ)
    except ApiError as exc:
        raise not_found("scan") from exc
    auditor.record(
        AuditAction.STUDY_READ,
        AuditObject.STUDY,
        user=user,
        object_id=uid,
        study_uid=uid,
        patient_id=row.study.patient_id,
        detail={"view": "scan"},
    )
    return _scans(session, [row])[0]
