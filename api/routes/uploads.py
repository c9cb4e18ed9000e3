"""NIfTI uploads: files in, a study row and an analysis request out (through the outbox).

The files are stored under ``<storage root>/uploads/<new StudyInstanceUID>/`` as
``<role>.nii[.gz]`` and the worker analyses them like a received study. Contrasts are told
from the file names (``*_t1.nii.gz``, ``*_t1ce.nii.gz``, ``*_t2.nii.gz``, ``*_flair.nii.gz``,
as BraTS names them) or given explicitly in the form fields ``t1``, ``t1ce``, ``t2``, ``flair``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import IO, Any

from fastapi import APIRouter, Request
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api import queries
from api.audit import AuditAction, AuditObject
from api.deps import AuditDep, ContextDep, SessionDep, StaffUser
from api.errors import ApiError, ErrorCode, responses
from api.schemas import PATIENT_ID_PATTERN, UploadOut
from neurogate.budget import DecodeBudget, DecodeBudgetExceeded
from neurogate.db.models import Patient, Study, StudyStatus, Upload
from neurogate.outbox import enqueue
from schemas.events import AnalysisRequested, AnalysisSource, InputFormat
from schemas.topics import Topic

log = logging.getLogger(__name__)
router = APIRouter(tags=["uploads"])

UPLOADS_DIR = "uploads"
UPLOAD_PATH = "/api/process-mri"  # the one route with api.max_upload_mb (api.limits)
ROLES = ("T1", "T1CE", "T2", "FLAIR")
_ROLE_ALIASES = {"t1": "T1", "t1ce": "T1CE", "t1c": "T1CE", "t1gd": "T1CE", "t2": "T2"}
_ROLE_ALIASES["flair"] = "FLAIR"
_ROLE_IN_NAME = re.compile(r"(?:^|[_.\-])(t1ce|t1gd|t1c|t1|t2|flair)\.nii(?:\.gz)?$", re.I)
_SUFFIXES = (".nii.gz", ".nii")
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_NAME = 324
_UPLOAD_TRIGGER = "upload"  # Study.completion_trigger of uploaded studies
_UPLOAD_AE = "API"  # Study.called_ae_title of uploaded studies: they came through the API
_FILES_FIELD = "files"

_FILE = {"type": "string", "format": "binary"}
_PROCESS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        _FILES_FIELD: {"type": "array", "items": _FILE},
                        **{role.lower(): _FILE for role in ROLES},
                        "patient_id": {"type": "string", "pattern": PATIENT_ID_PATTERN},
                        "patient_name": {"type": "string", "maxLength": _MAX_NAME},
                    },
                }
            }
        },
    }
}


def role_from_name(filename: str) -> str | None:
    """T1, T1CE, T2 or FLAIR from a BraTS-style file name; ``None`` when it does not say."""
    match = _ROLE_IN_NAME.search(filename)
    return _ROLE_ALIASES[match.group(1).lower()] if match else None


def nifti_suffix(filename: str) -> str:
    """``.nii.gz`` or ``.nii``; 415 ``INVALID_FILE_TYPE`` otherwise."""
    lower = filename.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    raise ApiError(415, ErrorCode.INVALID_FILE_TYPE, "only NIfTI files (.nii, .nii.gz)")


def check_nifti_header(stream: IO[bytes], suffix: str, budget: DecodeBudget) -> None:
    """Read only the header: 400 ``INVALID_IMAGE`` unless it is a NIfTI-1 or NIfTI-2 header
    (gzip-compressed for ``.nii.gz``), 413 ``FILE_TOO_LARGE`` when the volume it declares would
    take more than ``budget`` to decode."""
    stream.seek(0)
    compressed = stream.read(2) == _GZIP_MAGIC
    stream.seek(0)
    if compressed != (suffix == ".nii.gz"):
        message = "not a gzip-compressed NIfTI file" if suffix == ".nii.gz" else "not a NIfTI file"
        raise ApiError(400, ErrorCode.INVALID_IMAGE, message)
    try:
        budget.check_nifti(stream, "the NIfTI volume")
    except DecodeBudgetExceeded as exc:
        raise ApiError(413, ErrorCode.FILE_TOO_LARGE, str(exc)) from exc
    except ValueError as exc:
        raise ApiError(400, ErrorCode.INVALID_IMAGE, str(exc)) from exc


def _files_by_role(form: Any, budget: DecodeBudget) -> dict[str, tuple[UploadFile, str]]:
    found: dict[str, tuple[UploadFile, str]] = {}
    candidates: list[tuple[str | None, Any]] = [(None, item) for item in form.getlist(_FILES_FIELD)]
    candidates += [(role, form.get(role.lower())) for role in ROLES if role.lower() in form]
    for given, item in candidates:
        if not isinstance(item, UploadFile):
            if isinstance(item, str) and item == "":
                raise ApiError(400, ErrorCode.EMPTY_FILENAME, "a file field has no file name")
            raise ApiError(400, ErrorCode.NO_FILE, "a file field holds text, not a file")
        if not item.filename:
            raise ApiError(400, ErrorCode.EMPTY_FILENAME, "a file has no name")
        suffix = nifti_suffix(item.filename)
        role = given or role_from_name(item.filename)
        if role is None:
            raise ApiError(
                422,
                ErrorCode.VALIDATION_ERROR,
                "cannot tell a file's contrast from its name: name it *_t1, *_t1ce, *_t2 or "
                "*_flair .nii.gz, or send it in the t1, t1ce, t2 or flair field",
            )
        if role in found:
            raise ApiError(422, ErrorCode.VALIDATION_ERROR, f"two files for {role}")
        check_nifti_header(item.file, suffix, budget)
        found[role] = (item, suffix)
    if not found:
        raise ApiError(400, ErrorCode.NO_FILE, "no NIfTI files in the upload")
    return found


def _text_field(form: Any, name: str, max_length: int, pattern: str | None = None) -> str | None:
    value = form.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, f"{name}: at most {max_length} characters")
    value = value.strip()
    if pattern is not None and not re.fullmatch(pattern, value):
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, f"{name}: letters, digits, . _ - only")
    return value or None


def _store(files: dict[str, tuple[UploadFile, str]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=False)
    for role, (upload, suffix) in files.items():
        path = folder / f"{role.lower()}{suffix}"
        upload.file.seek(0)
        with path.open("wb") as out:
            shutil.copyfileobj(upload.file, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())


@router.post(
    UPLOAD_PATH,
    status_code=202,
    response_model=UploadOut,
    openapi_extra=_PROCESS_BODY,
    responses=responses(400, 401, 403, 413, 415, 422),
)
async def process_mri(
    staff: StaffUser,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    request: Request,
) -> UploadOut:
    """Upload NIfTI volumes of one study (any of T1, T1CE, T2, FLAIR) for analysis."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, ErrorCode.NO_FILE, "send the files as multipart/form-data")
    form = await request.form(max_files=len(ROLES) * 2)
    files = _files_by_role(form, context.settings.decode_budget)
    # camelCase too: seed 001's clients send patientId / patientName.
    patient_id = _text_field(form, "patient_id", 64, PATIENT_ID_PATTERN) or _text_field(
        form, "patientId", 64, PATIENT_ID_PATTERN
    )
    patient_name = _text_field(form, "patient_name", _MAX_NAME) or _text_field(
        form, "patientName", _MAX_NAME
    )
    root = context.settings.storage_root
    study_uid = generate_uid(prefix=context.settings.results.uid_root)
    folder = root / UPLOADS_DIR / study_uid
    await run_in_threadpool(_store, files, folder)
    try:
        out = await run_in_threadpool(
            _record,
            session,
            study_uid,
            folder.relative_to(root),
            files,
            patient_id,
            patient_name,
            staff.username,
            context.settings.listener.ae_title,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    context.on_change()
    log.info("upload accepted", extra={"study_uid": study_uid, "roles": sorted(files)})
    await run_in_threadpool(
        auditor.record,
        AuditAction.UPLOAD,
        AuditObject.STUDY,
        user=staff,
        object_id=study_uid,
        study_uid=study_uid,
        patient_id=out.patient_id,
        detail={"roles": sorted(files)},
    )
    return out


def _record(
    session: Session,
    study_uid: str,
    folder: Path,
    files: dict[str, tuple[UploadFile, str]],
    patient_id: str | None,
    patient_name: str | None,
    username: str,
    node_ae_title: str,
) -> UploadOut:
    """The study row, the upload row, the patient if new, and the analysis request: one commit."""
    now = queries.now()
    patient_id = patient_id or queries.new_patient_id(session)
    if queries.patient_by_id(session, patient_id=patient_id) is None:
        session.add(Patient(patient_id=patient_id, name=patient_name, created_at=now))
    relative = {
        role: (folder / f"{role.lower()}{suffix}").as_posix() for role, (_, suffix) in files.items()
    }
    session.add(
        Study(
            study_instance_uid=study_uid,
            status=StudyStatus.COMPLETE,
            revision=1,
            completion_trigger=_UPLOAD_TRIGGER,
            path=folder.as_posix(),
            instance_count=0,
            called_ae_title=node_ae_title or _UPLOAD_AE,
            calling_ae_titles=[],
            patient_id=patient_id,
            patient_name=patient_name,
            study_date=now.strftime("%Y%m%d"),
            study_time=now.strftime("%H%M%S"),
            study_description=("Upload " + " ".join(r for r in ROLES if r in files))[:64],
            first_received_at=now,
            last_received_at=now,
            completed_at=now,
        )
    )
    session.add(
        Upload(
            study_instance_uid=study_uid,
            input_format=InputFormat.NIFTI.value,
            files=relative,
            uploaded_by=username,
            created_at=now,
        )
    )
    event = AnalysisRequested(
        study_instance_uid=study_uid,
        source=AnalysisSource.UPLOAD,
        input_format=InputFormat.NIFTI,
        path=folder.as_posix(),
        nifti_files=relative,
        requested_by=username,
    )
    enqueue(session, topic=Topic.ANALYSIS_REQUESTED, key=study_uid, event=event)
    session.commit()
    return UploadOut(
        study_instance_uid=study_uid,
        event_id=str(event.event_id),
        patient_id=patient_id,
        files={role: upload.filename or "" for role, (upload, _) in files.items()},
    )
