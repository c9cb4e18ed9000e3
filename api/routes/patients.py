"""Patients and their studies; a patient account sees only its own record."""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import queries
from api.audit import AuditAction, AuditObject, Auditor
from api.deps import AuditDep, CurrentUser, Limit, Offset, SessionDep, StaffUser
from api.errors import ApiError, ErrorCode, not_found, responses
from api.schemas import (
    DICOM_PATIENT_ID_PATTERN,
    AnalysisFilter,
    FollowUpOut,
    FollowUpPoint,
    FollowUpStep,
    Page,
    PatientCreate,
    PatientDetail,
    PatientOut,
    Role,
    StudySort,
    VolumeChange,
)
from api.views import patient_out, study_out
from neurogate.db.models import AuditOutcome, Patient, User
from schemas.findings import VolumeChange as ChangeOfVolume

router = APIRouter(prefix="/api/patients", tags=["patients"], responses=responses(401, 403, 422))

# Any DICOM-legal Patient ID, "/" included (hence the path converter), as a scanner sends it.
PatientIdPath = Annotated[str, Path(pattern=DICOM_PATIENT_ID_PATTERN)]


def own_patient_id(user: User) -> str | None:
    """The Patient ID a patient account is confined to (``""`` when unlinked); ``None``: any."""
    if user.role != Role.PATIENT.value:
        return None
    return user.patient.patient_id if user.patient is not None else ""


@router.get("", response_model=Page[PatientOut])
def list_patients(
    user: CurrentUser,
    session: SessionDep,
    auditor: AuditDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[PatientOut]:
    patients, total = queries.list_patients(
        session, limit=limit, offset=offset, only=own_patient_id(user)
    )
    auditor.record(
        AuditAction.PATIENT_QUERY,
        AuditObject.PATIENT,
        user=user,
        detail={"patients": [p.patient_id for p in patients]},
    )
    return Page(items=[patient_out(p) for p in patients], total=total, limit=limit, offset=offset)


@router.post("", status_code=201, response_model=PatientOut, responses=responses(409))
def create_patient(
    staff: StaffUser, session: SessionDep, auditor: AuditDep, body: PatientCreate
) -> PatientOut:
    """Register a patient; without ``patient_id`` the node assigns one."""
    patient_id = body.patient_id or queries.new_patient_id(session)
    if queries.patient_by_id(session, patient_id=patient_id) is not None:
        raise ApiError(409, ErrorCode.CONFLICT, "a patient with that ID exists already")
    patient = Patient(
        patient_id=patient_id,
        name=body.name,
        birth_date=body.birth_date,
        sex=body.sex,
        created_at=queries.now(),
    )
    session.add(patient)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ApiError(409, ErrorCode.CONFLICT, "a patient with that ID exists already") from exc
    auditor.record(
        AuditAction.PATIENT_CREATE,
        AuditObject.PATIENT,
        user=staff,
        object_id=patient.patient_id,
        patient_id=patient.patient_id,
    )
    return patient_out(patient)


def readable_patient(session: Session, user: User, patient_id: str) -> Patient:
    """The patient, if ``user`` may read it; 404 otherwise (existence is not revealed)."""
    own = own_patient_id(user)
    patient = queries.patient_by_id(session, patient_id=patient_id)
    if patient is None or (own is not None and own != patient_id):
        raise not_found("patient")
    return patient


def audited_patient(
    session: Session, user: User, patient_id: str, auditor: Auditor, view: str
) -> Patient:
    """:func:`readable_patient`, with the read (or the refused attempt) in the audit trail."""
    try:
        patient = readable_patient(session, user, patient_id)
    except ApiError:
        outcome, detail = AuditOutcome.FAILURE, {"view": view, "reason": "not found"}
        patient = None
    else:
        outcome, detail = AuditOutcome.SUCCESS, {"view": view}
    auditor.record(
        AuditAction.PATIENT_READ,
        AuditObject.PATIENT,
        user=user,
        object_id=patient_id,
        patient_id=patient_id,
        outcome=outcome,
        detail=detail,
    )
    if patient is None:
        raise not_found("patient")
    return patient


@router.get("/{patient_id:path}/follow-up", response_model=FollowUpOut, responses=responses(404))
def follow_up(
    user: CurrentUser, session: SessionDep, auditor: AuditDep, patient_id: PatientIdPath
) -> FollowUpOut:
    """Segmented tumour volumes across the patient's completed analyses, and their changes."""
    patient = audited_patient(session, user, patient_id, auditor, "follow-up")
    rows, _ = queries.list_studies(
        session,
        patient_id=patient.patient_id,
        status=AnalysisFilter.COMPLETED,
        sort=StudySort.STUDY_DATE,
        limit=500,
    )
    points = []
    for row in rows:
        assert row.analysis is not None
        segmentation = (row.analysis.findings or {}).get("segmentation") or {}
        volumes = segmentation.get("volumes_ml")
        if volumes:
            points.append(
                FollowUpPoint(
                    study_instance_uid=row.study.study_instance_uid,
                    study_date=row.study.study_date,
                    analysis_id=row.analysis.id,
                    volumes_ml={str(k): float(v) for k, v in volumes.items()},
                )
            )
    changes = [
        FollowUpStep(
            from_study=before.study_instance_uid,
            to_study=after.study_instance_uid,
            from_date=before.study_date,
            to_date=after.study_date,
            regions={
                region: _change(before.volumes_ml[region], after.volumes_ml[region])
                for region in sorted(before.volumes_ml.keys() & after.volumes_ml.keys())
            },
        )
        for before, after in pairwise(points)
    ]
    return FollowUpOut(patient_id=patient.patient_id, points=points, changes=changes)


def _change(previous: float, current: float) -> VolumeChange:
    """The worker's arithmetic (the SR's and PDF's follow-up comparison), as the API shows it."""
    return VolumeChange.model_validate(ChangeOfVolume.between(previous, current).model_dump())


@router.get("/{patient_id:path}", response_model=PatientDetail, responses=responses(404))
def get_patient(
    user: CurrentUser, session: SessionDep, auditor: AuditDep, patient_id: PatientIdPath
) -> PatientDetail:
    """The patient with its studies (newest first) and their latest analyses."""
    patient = audited_patient(session, user, patient_id, auditor, "detail")
    rows, _ = queries.list_studies(session, patient_id=patient.patient_id, limit=500)
    return PatientDetail(
        **patient_out(patient).model_dump(), studies=[study_out(row) for row in rows]
    )
