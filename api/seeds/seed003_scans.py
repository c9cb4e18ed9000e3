"""Seed 003's portal, continued: picture scans stored with their Grad-CAM images, PDF reports
of a patient's scans, dashboard stats with counts per tumour class (see :mod:`api.seeds.seed003`
for the patients, logins and bodies)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api import queries
from api.audit import AuditAction, AuditObject, Auditor
from api.deps import AdminUser, AuditDep, ContextDep, CurrentUser, SessionDep, StaffUser
from api.errors import ApiError, ErrorCode, not_found
from api.routes.classify import explain_picture
from api.schemas import Role
from api.seeds import portal
from api.seeds.common import DISPLAY_NAMES, NO_TUMOUR, display_name, error_responses, seed_route
from api.seeds.seed003 import (
    ErrorResponse,
    ReportIn,
    error_body,
    patient_row,
    readable_patient,
    report_dict,
    scan_dict,
)
from neurogate.db.models import ImageScan, Patient, ScanReport, User

MAX_FILES = 16
_REPORT_FILE = re.compile(r"^(RP[0-9A-F]{12})\.pdf$")

router = APIRouter(
    tags=["seed 003"],
    route_class=seed_route(error_body),
    responses=error_responses(ErrorResponse, 401, 403, 422),
)


# -- scans -----------------------------------------------------------------------------------


async def _upload(
    request: Request, context: ContextDep, session: Session, auditor: Auditor, user: User
) -> dict[str, Any]:
    """Classify each picture of the form (``files``, or ``file``) for the form's
    ``patient_id`` (the row id) and store it with its Grad-CAM images."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, ErrorCode.NO_FILE, "send the images as multipart/form-data")
    form = await request.form(max_files=MAX_FILES)
    raw = form.get("patient_id")
    if not isinstance(raw, str) or not raw.strip().isdigit():
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, "patient_id: the patient's number")
    patient = patient_row(session, int(raw))
    uploads = [*form.getlist("files"), *form.getlist("file")]
    if not uploads:
        raise ApiError(400, ErrorCode.NO_FILE, "no image in field 'files' (or 'file')")
    explained = []
    for item in uploads:  # every picture is classified before any is kept
        if not isinstance(item, UploadFile) or not item.filename:
            raise ApiError(400, ErrorCode.EMPTY_FILENAME, "a file has no name")
        data = await item.read()
        if not data:
            raise ApiError(400, ErrorCode.INVALID_IMAGE, f"{item.filename}: the file is empty")
        result = await explain_picture(item.filename, data, context, auditor, user)
        explained.append((item.filename, data, result))
    root = context.settings.storage_root
    stored = [
        await run_in_threadpool(
            portal.store_scan,
            root,
            patient=patient,
            filename=filename,
            data=data,
            result=result,
            uploaded_by=user.username,
        )
        for filename, data, result in explained
    ]
    session.add_all(stored)
    session.commit()
    return {
        "success": True,
        "message": f"{len(stored)} scan(s) analysed",
        "scans": [scan_dict(scan) for scan in stored],
    }


@router.post(
    "/api/admin/scans/upload",
    status_code=201,
    responses=error_responses(ErrorResponse, 400, 404, 413, 415),
)
async def admin_upload(
    admin: AdminUser, context: ContextDep, session: SessionDep, auditor: AuditDep, request: Request
) -> dict[str, Any]:
    """Pictures (PNG, JPEG, ...) of one patient: classified, explained, kept in its history."""
    return await _upload(request, context, session, auditor, admin)


@router.post(
    "/api/scan/upload",
    status_code=201,
    responses=error_responses(ErrorResponse, 400, 404, 413, 415),
)
async def scan_upload(
    staff: StaffUser, context: ContextDep, session: SessionDep, auditor: AuditDep, request: Request
) -> dict[str, Any]:
    """One picture (``file``) of one patient; the seed's "public" upload, here for staff
    accounts (it stores patient data)."""
    return await _upload(request, context, session, auditor, staff)


@router.get(
    "/api/scan/{scan_id}/image/{kind}",
    response_class=FileResponse,
    responses={
        **error_responses(ErrorResponse, 404),
        200: {"content": {"image/png": {}}, "description": "Image"},
    },
)
def scan_image(
    user: CurrentUser,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    scan_id: Annotated[str, Path(pattern=r"^SC[0-9A-F]{12}$")],
    kind: Annotated[str, Path(pattern=r"^(original|heatmap|overlay)$")],
) -> FileResponse:
    """A stored scan's picture: the original, the Grad-CAM heatmap or the overlay."""
    (scan,) = queries.image_scans(session, scan_ids=[scan_id]) or (None,)
    if scan is None:
        raise not_found("scan")
    readable_patient(session, user, scan.patient_ref, auditor, f"scan image {kind}")
    path = {"original": scan.original_path, "heatmap": scan.heatmap_path}.get(
        kind, scan.overlay_path
    )
    return FileResponse(context.settings.storage_root / path)


# -- reports ---------------------------------------------------------------------------------


@router.get("/api/admin/reports")
def admin_reports(_admin: AdminUser, session: SessionDep) -> dict[str, Any]:
    return {"success": True, "reports": [report_dict(r) for r in queries.scan_reports(session)]}


@router.post(
    "/api/report/generate", status_code=201, responses=error_responses(ErrorResponse, 400, 404)
)
def generate_report(
    staff: StaffUser,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    body: Annotated[ReportIn, Body()],
) -> dict[str, Any]:
    """A PDF of the patient's scans (all, ``scan_ids`` or one ``scan_id``)."""
    patient = readable_patient(session, staff, body.patient_id, auditor, "report")
    wanted = [body.scan_id] if body.scan_id else body.scan_ids
    scans = [
        scan
        for scan in queries.image_scans(session, patient_ref=patient.id, scan_ids=wanted)
        if scan.patient_ref == patient.id
    ]
    if not scans or (wanted is not None and len(scans) != len(set(wanted))):
        raise not_found("scan")
    report = portal.write_report(context.settings.storage_root, patient=patient, scans=scans)
    session.add(report)
    session.commit()
    return {
        "success": True,
        "report": report_dict(report),
        "download_url": report_dict(report)["download_url"],
    }


def _report_file(
    user: User, context: ContextDep, session: Session, auditor: Auditor, report_id: str
) -> FileResponse:
    report = queries.scan_report(session, report_id=report_id)
    if report is None:
        raise not_found("report")
    patient = readable_patient(session, user, report.patient_ref, auditor, "report download")
    auditor.record(
        AuditAction.REPORT_DOWNLOAD,
        AuditObject.REPORT,
        user=user,
        object_id=report.report_id,
        patient_id=patient.patient_id,
    )
    return FileResponse(
        context.settings.storage_root / report.report_path,
        media_type="application/pdf",
        filename=f"{report.report_id}.pdf",
    )


_PDF = {
    **error_responses(ErrorResponse, 404),
    200: {"content": {"application/pdf": {}}, "description": "PDF"},
}


@router.get("/api/report/download/{report_id}", response_class=FileResponse, responses=_PDF)
def download_report(
    user: CurrentUser,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    report_id: Annotated[str, Path(pattern=r"^RP[0-9A-F]{12}$")],
) -> FileResponse:
    return _report_file(user, context, session, auditor, report_id)


def _report_id(filename: str) -> str:
    match = _REPORT_FILE.match(filename)
    if match is None:
        raise not_found("report")
    return match.group(1)


@router.get("/api/report/file/{filename}", response_class=FileResponse, responses=_PDF)
def report_file(
    user: CurrentUser, context: ContextDep, session: SessionDep, auditor: AuditDep, filename: str
) -> FileResponse:
    return _report_file(user, context, session, auditor, _report_id(filename))


@router.get(
    "/api/report/download-by-filename/{filename}", responses=error_responses(ErrorResponse, 404)
)
def report_url(user: CurrentUser, session: SessionDep, filename: str) -> dict[str, Any]:
    """Where the report file is (local storage: a path of this API)."""
    report = queries.scan_report(session, report_id=_report_id(filename))
    if report is None:
        raise not_found("report")
    if user.role == Role.PATIENT.value and user.patient_ref != report.patient_ref:
        raise not_found("report")
    return {"success": True, "download_url": f"/api/report/file/{filename}"}


# -- dashboard -------------------------------------------------------------------------------


@router.get("/api/admin/dashboard/stats")
def dashboard_stats(_admin: AdminUser, session: SessionDep) -> dict[str, Any]:
    """Patients, scans and reports, and scans per tumour class (pictures and analysed studies)."""
    pictures = queries.image_scan_counts(session)
    studies = queries.study_class_counts(session)
    labels = {*DISPLAY_NAMES, *pictures, *studies}
    per_class = {
        display_name(label): pictures.get(label, 0) + studies.get(label, 0)
        for label in sorted(labels)
    }
    tumours = sum(n for label, n in per_class.items() if label != display_name(NO_TUMOUR))
    return {
        "success": True,
        "stats": {
            "total_patients": queries.count_rows(session, Patient),
            "total_scans": queries.count_rows(session, ImageScan),
            "total_studies": queries.study_counts(session)["studies"],
            "total_reports": queries.count_rows(session, ScanReport),
            "tumor_detected": tumours,
            "no_tumor": per_class.get(display_name(NO_TUMOUR), 0),
            "class_counts": per_class,
        },
    }
