"""Seed 003 (the admin and patient portal): logins, patients with contact details and generated
credentials (e-mailed), and the bodies of its scans and reports (whose routes, with the
dashboard stats, are in :mod:`api.seeds.seed003_scans`).

Errors take the seed's body ``{"success": false, "error": message, "code": CODE}``. Patients
are the node's (``{id}`` is the row id the seed's clients use; ``patient_id`` the Patient ID,
e.g. from DICOM); accounts, sign-in, audit and classification are the node's own.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import queries
from api.audit import AuditAction, AuditObject, Auditor
from api.deps import AdminUser, AuditDep, ContextDep, CurrentUser, SessionDep
from api.errors import ApiError, ErrorCode, ErrorDetail, not_found
from api.routes.auth import login, login_credentials
from api.schemas import EMAIL_PATTERN, LoginRequest, Role, Token
from api.seeds.common import (
    NO_TUMOUR,
    display_name,
    error_responses,
    percent,
    seed_route,
)
from api.seeds.mail import send_credentials
from neurogate.db.models import AuditOutcome, ImageScan, Patient, ScanReport, User

_SEXES = {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O"}
_GENDERS = {"M": "Male", "F": "Female", "O": "Other"}


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"success": False, "error": message, "code": code}


class ErrorResponse(BaseModel):
    """Seed 003's error body; a path none of its routes matches (``/api/patient/x``: not a
    number) gets the node's envelope, ``{"error": {"code", "message"}}``."""

    success: bool = False
    error: str | ErrorDetail
    code: str | None = None


router = APIRouter(
    tags=["seed 003"],
    route_class=seed_route(error_body),
    responses=error_responses(ErrorResponse, 401, 403, 422),
)
PatientRef = Annotated[int, Path(ge=1, le=2**31 - 1)]


# -- bodies ----------------------------------------------------------------------------------


class PatientIn(BaseModel):
    """What the admin portal sends for a new patient (fields it does not know are ignored)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=324)
    email: str | None = Field(None, pattern=EMAIL_PATTERN, max_length=254)
    age: int | None = Field(None, ge=0, le=150)
    gender: str | None = Field(None, max_length=16)
    phone: str | None = Field(None, max_length=32)
    address: str | None = Field(None, max_length=256)
    patient_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    patient_id: int = Field(ge=1, le=2**31 - 1)
    # Which of the patient's scans; none named: all of them. scan_id: just one.
    scan_ids: list[str] | None = Field(None, max_length=200)
    scan_id: str | None = None


def patient_dict(patient: Patient, account: User | None = None) -> dict[str, Any]:
    return {
        "id": patient.id,
        "patient_id": patient.patient_id,
        "name": patient.name,
        "email": patient.email,
        "age": patient.age,
        "gender": _GENDERS.get(patient.sex or ""),
        "phone": patient.phone,
        "address": patient.address,
        "birth_date": patient.birth_date.isoformat() if patient.birth_date else None,
        "username": account.username if account else None,
        "created_at": patient.created_at.isoformat(),
        "updated_at": (patient.updated_at or patient.created_at).isoformat(),
    }


def scan_dict(scan: ImageScan) -> dict[str, Any]:
    base = f"/api/scan/{scan.scan_id}/image"
    return {
        "id": scan.id,
        "patient_id": scan.patient_ref,
        "scan_id": scan.scan_id,
        "original_filename": scan.original_filename,
        "original_path": f"{base}/original",
        "heatmap_path": f"{base}/heatmap",
        "overlay_path": f"{base}/overlay",
        "prediction": display_name(scan.prediction),
        "confidence": percent(scan.confidence),
        "probability": {display_name(k): percent(v) for k, v in scan.probabilities.items()},
        "tumor_detected": scan.prediction != NO_TUMOUR,
        "created_at": scan.created_at.isoformat(),
    }


def report_dict(report: ScanReport) -> dict[str, Any]:
    return {
        "id": report.id,
        "report_id": report.report_id,
        "patient_id": report.patient_ref,
        "report_path": FilePath(report.report_path).name,
        "scan_count": report.scan_count,
        "tumor_count": report.tumor_count,
        "no_tumor_count": report.no_tumor_count,
        "created_at": report.created_at.isoformat(),
        "download_url": f"/api/report/download/{report.report_id}",
    }


# -- sign-in ---------------------------------------------------------------------------------


def _portal_login(
    request: Request,
    context: ContextDep,
    session: Session,
    auditor: Auditor,
    credentials: LoginRequest,
    roles: tuple[str, ...],
) -> tuple[Token, User]:
    token = login(request, context, session, auditor, credentials)
    user = queries.user_by_username(session, username=credentials.username)
    if user is None or user.role not in roles:
        raise ApiError(403, ErrorCode.FORBIDDEN, "this account may not use this portal")
    return token, user


Credentials = Annotated[LoginRequest, Depends(login_credentials)]


def _token_body(token: Token) -> dict[str, Any]:
    """What both portals' logins answer: seed 003's ``token`` and the node's bearer fields."""
    return {
        "success": True,
        "token": token.access_token,
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_in": token.expires_in,
    }


@router.post("/api/admin/login", responses=error_responses(ErrorResponse, 400, 415, 429))
def admin_login(
    request: Request,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    credentials: Credentials,
) -> dict[str, Any]:
    """Sign in to the admin portal (admin accounts); the token is the node's bearer token."""
    token, user = _portal_login(request, context, session, auditor, credentials, ("admin",))
    return {**_token_body(token), "admin": {"id": user.id, "username": user.username}}


@router.post("/api/patient/login", responses=error_responses(ErrorResponse, 400, 415, 429))
def patient_login(
    request: Request,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    credentials: Credentials,
) -> dict[str, Any]:
    """Sign in to the patient portal with the generated credentials."""
    token, user = _portal_login(request, context, session, auditor, credentials, ("patient",))
    patient = patient_dict(user.patient, user) if user.patient else None
    return {**_token_body(token), "patient": patient}


# -- patients --------------------------------------------------------------------------------


def patient_row(session: Session, ref: int) -> Patient:
    patient = session.get(Patient, ref)
    if patient is None:
        raise not_found("patient")
    return patient


def readable_patient(
    session: Session, user: User, ref: int, auditor: Auditor, view: str
) -> Patient:
    """The patient row ``ref`` if ``user`` may read it (staff; a patient: its own), audited."""
    patient = session.get(Patient, ref)
    allowed = patient is not None and (user.role != Role.PATIENT.value or user.patient_ref == ref)
    auditor.record(
        AuditAction.PATIENT_READ,
        AuditObject.PATIENT,
        user=user,
        object_id=patient.patient_id if patient and allowed else str(ref),
        patient_id=patient.patient_id if patient and allowed else None,
        outcome=AuditOutcome.SUCCESS if allowed else AuditOutcome.FAILURE,
        detail={"view": view} if allowed else {"view": view, "reason": "not found"},
    )
    if patient is None or not allowed:
        raise not_found("patient")
    return patient


def _username(session: Session, name: str) -> str:
    stem = re.sub(r"[^a-z0-9]", "", name.lower())[:20] or "patient"
    while True:
        candidate = f"{stem}{secrets.randbelow(10_000):04d}"
        if queries.user_by_username(session, username=candidate) is None:
            return candidate


@router.get("/api/admin/patients")
def admin_patients(_admin: AdminUser, session: SessionDep, auditor: AuditDep) -> dict[str, Any]:
    patients, total = queries.list_patients(session, limit=10_000, offset=0)
    auditor.record(
        AuditAction.PATIENT_QUERY,
        AuditObject.PATIENT,
        user=_admin,
        detail={"patients": [p.patient_id for p in patients], "view": "admin portal"},
    )
    return {
        "success": True,
        "patients": [
            patient_dict(p, queries.patient_account(session, patient_ref=p.id)) for p in patients
        ],
        "total": total,
    }


@router.post("/api/admin/patients", status_code=201, responses=error_responses(ErrorResponse, 409))
def admin_create_patient(
    admin: AdminUser,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    body: Annotated[PatientIn, Body()],
) -> dict[str, Any]:
    """A new patient and its patient account, with a generated username and password, mailed
    to the patient (``api.smtp_host``); the password is in the answer only when it was not
    mailed, for the admin to hand over."""
    sex = None
    if body.gender:
        sex = _SEXES.get(body.gender.lower())
        if sex is None:
            raise ApiError(422, ErrorCode.VALIDATION_ERROR, "gender: male, female or other")
    patient_id = body.patient_id or queries.new_patient_id(session)
    if queries.patient_by_id(session, patient_id=patient_id) is not None:
        raise ApiError(409, ErrorCode.CONFLICT, "a patient with that ID exists already")
    now = queries.now()
    patient = Patient(
        patient_id=patient_id,
        name=body.name,
        sex=sex,
        email=body.email,
        age=body.age,
        phone=body.phone,
        address=body.address,
        created_at=now,
        updated_at=now,
    )
    username, password = _username(session, body.name), secrets.token_urlsafe(12)
    session.add(patient)
    try:
        session.flush()
        account = User(
            username=username,
            role=Role.PATIENT.value,
            patient_ref=patient.id,
            full_name=body.name,
            password_hash=context.passwords.hash(password),
            active=True,
            created_at=now,
        )
        session.add(account)
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ApiError(409, ErrorCode.CONFLICT, "a patient with that ID exists already") from exc
    for action, kind, object_id in (
        (AuditAction.PATIENT_CREATE, AuditObject.PATIENT, patient_id),
        (AuditAction.USER_CREATE, AuditObject.USER, username),
    ):
        auditor.record(action, kind, user=admin, object_id=object_id, patient_id=patient_id)
    sent = body.email is not None and send_credentials(
        context.settings.api, to=body.email, name=body.name, username=username, password=password
    )
    credentials: dict[str, Any] = {"username": username}
    if not sent:
        credentials["password"] = password
    return {
        "success": True,
        "patient": patient_dict(patient, account),
        "credentials": credentials,
        "email_sent": sent,
    }


@router.get("/api/admin/patients/{patient_ref:int}", responses=error_responses(ErrorResponse, 404))
def admin_patient(
    admin: AdminUser, session: SessionDep, auditor: AuditDep, patient_ref: PatientRef
) -> dict[str, Any]:
    patient = readable_patient(session, admin, patient_ref, auditor, "admin portal")
    account = queries.patient_account(session, patient_ref=patient.id)
    return {"success": True, "patient": patient_dict(patient, account)}


def _history(session: Session, patient: Patient) -> dict[str, Any]:
    """The patient's picture scans and its studies (DICOM or uploaded), newest first."""
    from api.views import study_out

    rows, _ = queries.list_studies(session, patient_id=patient.patient_id, limit=500)
    scans = queries.image_scans(session, patient_ref=patient.id)
    return {
        "success": True,
        "scans": [scan_dict(scan) for scan in scans],
        "studies": [study_out(row).model_dump(mode="json") for row in rows],
    }


@router.get(
    "/api/admin/patients/{patient_ref:int}/scans", responses=error_responses(ErrorResponse, 404)
)
def admin_patient_scans(
    admin: AdminUser, session: SessionDep, auditor: AuditDep, patient_ref: PatientRef
) -> dict[str, Any]:
    return _history(session, readable_patient(session, admin, patient_ref, auditor, "scans"))


@router.get(
    "/api/admin/patients/{patient_ref:int}/reports", responses=error_responses(ErrorResponse, 404)
)
def admin_patient_reports(
    admin: AdminUser, session: SessionDep, auditor: AuditDep, patient_ref: PatientRef
) -> dict[str, Any]:
    patient = readable_patient(session, admin, patient_ref, auditor, "reports")
    reports = queries.scan_reports(session, patient_ref=patient.id)
    return {"success": True, "reports": [report_dict(r) for r in reports]}


@router.get("/api/patient/{patient_ref:int}", responses=error_responses(ErrorResponse, 404))
def patient_self(
    user: CurrentUser, session: SessionDep, auditor: AuditDep, patient_ref: PatientRef
) -> dict[str, Any]:
    """A patient's own record (staff: any)."""
    patient = readable_patient(session, user, patient_ref, auditor, "patient portal")
    account = queries.patient_account(session, patient_ref=patient.id)
    return {"success": True, "patient": patient_dict(patient, account)}


@router.get("/api/patient/{patient_ref:int}/scans", responses=error_responses(ErrorResponse, 404))
def patient_scans(
    user: CurrentUser, session: SessionDep, auditor: AuditDep, patient_ref: PatientRef
) -> dict[str, Any]:
    return _history(session, readable_patient(session, user, patient_ref, auditor, "scans"))


@router.get("/api/patient/{patient_ref:int}/reports", responses=error_responses(ErrorResponse, 404))
def patient_reports(
    user: CurrentUser, session: SessionDep, auditor: AuditDep, patient_ref: PatientRef
) -> dict[str, Any]:
    patient = readable_patient(session, user, patient_ref, auditor, "reports")
    reports = queries.scan_reports(session, patient_ref=patient.id)
    return {"success": True, "reports": [report_dict(r) for r in reports]}
