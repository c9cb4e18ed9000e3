"""Studies and their analyses: scan history, detail, re-analysis, re-sending, live status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import queries
from api.audit import AuditAction, AuditObject, Auditor
from api.context import ApiContext
from api.deps import AuditDep, ContextDep, CurrentUser, Limit, Offset, SessionDep, StaffUser
from api.errors import ApiError, ErrorCode, not_found, responses
from api.queries import StudyRow
from api.routes.patients import own_patient_id
from api.schemas import (
    Accepted,
    AnalysisFilter,
    IsoDate,
    Page,
    ResendOut,
    StudyDetail,
    StudyOut,
    StudySort,
)
from api.views import study_detail, study_out
from neurogate.db.models import AnalysisStatus, AuditOutcome, ExportStatus, StudyStatus, User
from neurogate.outbox import enqueue
from schemas.events import AnalysisRequested, AnalysisSource, InputFormat
from schemas.topics import Topic
from schemas.uids import MAX_UID_LENGTH

router = APIRouter(prefix="/api/studies", tags=["studies"], responses=responses(401, 403, 422))

StudyUid = Annotated[str, Path(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=MAX_UID_LENGTH)]
_FINISHED = (AnalysisStatus.COMPLETED, AnalysisStatus.FAILED)
_KEEPALIVE_POLLS = 15
_PDF_PAD = b"\x00"


def readable_study(session: Session, user: User, study_uid: str) -> StudyRow:
    """The study, if ``user`` may read it; 404 otherwise (existence is not revealed)."""
    row = queries.study_by_uid(session, study_uid=study_uid)
    own = own_patient_id(user)
    if row is None or (own is not None and row.study.patient_id != own):
        raise not_found("study")
    return row


def audited_study(
    session: Session,
    user: User,
    study_uid: str,
    auditor: Auditor,
    action: AuditAction,
    detail: dict[str, Any] | None = None,
) -> StudyRow:
    """:func:`readable_study`; a refused attempt goes into the audit trail (a success is
    recorded by the route, once it has done what was asked)."""
    try:
        return readable_study(session, user, study_uid)
    except ApiError:
        auditor.record(
            action,
            AuditObject.STUDY,
            user=user,
            object_id=study_uid,
            study_uid=study_uid,
            outcome=AuditOutcome.FAILURE,
            detail={**(detail or {}), "reason": "not found"},
        )
        raise


def _record_study(
    auditor: Auditor,
    action: AuditAction,
    user: User,
    row: StudyRow,
    detail: dict[str, Any] | None = None,
    *,
    object_type: AuditObject = AuditObject.STUDY,
    object_id: str | None = None,
) -> None:
    uid = row.study.study_instance_uid
    auditor.record(
        action,
        object_type,
        user=user,
        object_id=object_id or uid,
        study_uid=uid,
        patient_id=row.study.patient_id,
        detail=detail,
    )


@router.get("", response_model=Page[StudyOut])
def list_studies(
    user: CurrentUser,
    session: SessionDep,
    auditor: AuditDep,
    status: Annotated[AnalysisFilter | None, Query(description="latest analysis status")] = None,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    date_from: Annotated[IsoDate | None, Query(description="Study Date, inclusive")] = None,
    date_to: Annotated[IsoDate | None, Query(description="Study Date, inclusive")] = None,
    sort: StudySort = StudySort.RECEIVED_DESC,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[StudyOut]:
    """Scan history: studies with their latest analysis (findings, result objects, exports)."""
    own = own_patient_id(user)
    filters = {"patient_id": patient_id, "status": status, "from": date_from, "to": date_to}
    if own is not None:
        if patient_id not in (None, own):
            return Page(items=[], total=0, limit=limit, offset=offset)
        patient_id = own
    rows, total = queries.list_studies(
        session,
        patient_id=patient_id,
        status=status,
        date_from=date_from,
        date_to=date_to,
        sort=sort,
        limit=limit,
        offset=offset,
    )
    auditor.record(
        AuditAction.STUDY_QUERY,
        AuditObject.STUDY,
        user=user,
        patient_id=patient_id,
        detail={
            "filters": {k: str(v) for k, v in filters.items() if v is not None},
            "studies": [r.study.study_instance_uid for r in rows],
            "patients": sorted({r.study.patient_id for r in rows if r.study.patient_id}),
        },
    )
    return Page(items=[study_out(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{study_uid}", response_model=StudyDetail, responses=responses(404))
def get_study(
    user: CurrentUser, session: SessionDep, auditor: AuditDep, study_uid: StudyUid
) -> StudyDetail:
    """One study: its series, its latest analysis and the history of its analyses."""
    row = audited_study(session, user, study_uid, auditor, AuditAction.STUDY_READ)
    analyses = list(queries.analyses_of(session, study_uid=study_uid))
    routing = list(queries.routing_of(session, study_uid=study_uid))
    notifications = list(queries.notifications_of(session, study_uid=study_uid))
    detail = study_detail(row, analyses, routing, notifications)
    series = [s.series_instance_uid for s in detail.series]
    _record_study(auditor, AuditAction.STUDY_READ, user, row, {"series": series})
    return detail


@router.post(
    "/{study_uid}/reanalyze",
    status_code=202,
    response_model=Accepted,
    responses=responses(404, 409),
)
def reanalyze(
    staff: StaffUser,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    study_uid: StudyUid,
) -> Accepted:
    """Analyse the study again (the request goes to the workers through the outbox)."""
    row = audited_study(session, staff, study_uid, auditor, AuditAction.REANALYZE)
    study = row.study
    if study.status != StudyStatus.COMPLETE:
        raise ApiError(409, ErrorCode.CONFLICT, "the study is still being received")
    upload = queries.upload_of(session, study_uid=study_uid)
    event = AnalysisRequested(
        study_instance_uid=study_uid,
        source=AnalysisSource.RERUN,
        input_format=InputFormat.NIFTI if upload is not None else InputFormat.DICOM,
        path=study.path,
        nifti_files=dict(upload.files) if upload is not None else {},
        requested_by=staff.username,
    )
    enqueue(session, topic=Topic.ANALYSIS_REQUESTED, key=study_uid, event=event)
    session.commit()
    context.on_change()
    _record_study(auditor, AuditAction.REANALYZE, staff, row, {"event_id": str(event.event_id)})
    return Accepted(study_instance_uid=study_uid, event_id=str(event.event_id))


@router.post("/{study_uid}/resend", response_model=ResendOut, responses=responses(404))
def resend(
    staff: StaffUser,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    study_uid: StudyUid,
) -> ResendOut:
    """Send the study's results again where they did not arrive: parked (failed) exports go
    back to pending, and destinations configured since the analysis get its newest objects."""
    row = audited_study(session, staff, study_uid, auditor, AuditAction.RESEND)
    requeued = queries.requeue_failed_exports(session, study_uid=study_uid)
    configured = [d.name for d in context.settings.export.destinations]
    destinations = queries.routed_destinations(
        session, study_uid=study_uid, destinations=configured
    )
    added = queries.add_missing_exports(session, study_uid=study_uid, destinations=destinations)
    reason = None
    if not requeued and not added:
        reason = _why_nothing_to_resend(session, study_uid, destinations)
    session.commit()
    if requeued or added:
        context.on_change()
    _record_study(auditor, AuditAction.RESEND, staff, row, {"requeued": requeued, "added": added})
    return ResendOut(study_instance_uid=study_uid, requeued=requeued, added=added, reason=reason)


def _why_nothing_to_resend(session: Session, study_uid: str, destinations: list[str]) -> str:
    objects, exports = queries.export_counts(session, study_uid=study_uid)
    if not destinations:
        return "no export destinations are configured (NEUROGATE_EXPORT__DESTINATIONS)"
    if not objects:
        return "the study has no result objects yet (no finished analysis)"
    pending = exports.get(ExportStatus.PENDING, 0)
    sent = exports.get(ExportStatus.SENT, 0)
    return (
        f"nothing failed and every destination has the results: {sent} exports sent, "
        f"{pending} pending"
    )


@router.get(
    "/{study_uid}/report",
    response_class=Response,
    responses={
        **responses(404),
        200: {"content": {"application/pdf": {}}, "description": "The PDF report"},
    },
)
def report(
    user: CurrentUser,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    study_uid: StudyUid,
) -> Response:
    """The newest PDF report of the study (the document inside the Encapsulated PDF)."""
    from pydicom import dcmread

    row = audited_study(session, user, study_uid, auditor, AuditAction.REPORT_DOWNLOAD)
    obj = queries.pdf_report(session, study_uid=study_uid)
    if obj is None:
        raise not_found("report")
    path = context.settings.storage_root / obj.path
    try:
        document = bytes(dcmread(path).EncapsulatedDocument)
    except (OSError, AttributeError) as exc:
        raise not_found("report file") from exc
    if document.endswith(_PDF_PAD) and b"%%EOF" in document[-16:]:
        document = document.rstrip(_PDF_PAD)
    _record_study(
        auditor,
        AuditAction.REPORT_DOWNLOAD,
        user,
        row,
        {"bytes": len(document)},
        object_type=AuditObject.REPORT,
        object_id=obj.sop_instance_uid,
    )
    return Response(
        document,
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="report-{study_uid}.pdf"'},
    )


@router.get(
    "/{study_uid}/events",
    response_class=StreamingResponse,
    responses={
        **responses(404),
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
    },
)
def events(
    user: CurrentUser,
    context: ContextDep,
    session: SessionDep,
    auditor: AuditDep,
    study_uid: StudyUid,
    request: Request,
) -> StreamingResponse:
    """Server-Sent Events: the latest analysis' status whenever it changes, until it is
    completed or failed (the database is looked at every second)."""
    view = {"view": "status events"}
    row = audited_study(session, user, study_uid, auditor, AuditAction.STUDY_READ, view)
    _record_study(auditor, AuditAction.STUDY_READ, user, row, view)
    return StreamingResponse(
        _status_stream(context, study_uid, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _snapshot(context: ApiContext, study_uid: str) -> dict[str, Any] | None:
    with context.session_factory()() as session:
        analysis = queries.latest_analysis(session, study_uid=study_uid)
        if analysis is None:
            return None
        return {
            "analysis_id": analysis.id,
            "status": analysis.status,
            "step": analysis.step,
            "progress": analysis.progress,
            "error": analysis.error,
        }


async def _status_stream(
    context: ApiContext, study_uid: str, request: Request
) -> AsyncIterator[str]:
    last: dict[str, Any] | bool | None = False  # nothing sent yet
    quiet = 0
    while not await request.is_disconnected():
        snapshot = await run_in_threadpool(_snapshot, context, study_uid)
        if snapshot != last:
            last, quiet = snapshot, 0
            yield f"event: status\ndata: {json.dumps(snapshot)}\n\n"
            if snapshot is not None and snapshot["status"] in _FINISHED:
                return
        else:
            quiet += 1
            if quiet >= _KEEPALIVE_POLLS:
                quiet = 0
                yield ": keep-alive\n\n"
        await asyncio.sleep(context.sse_poll_seconds)
