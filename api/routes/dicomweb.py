"""DICOMweb: STOW-RS ``POST /dicomweb/studies`` into the listener's store (:mod:`api.stow`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.audit import AuditAction, AuditObject
from api.context import ApiContext
from api.deps import AuditDep, StaffUser
from api.errors import ApiError, ErrorCode, responses
from api.stow import DICOM_JSON, BadRequest, StowReceiver

log = logging.getLogger(__name__)

STOW_PATH = "/dicomweb/studies"  # the one route with api.max_upload_mb besides uploads


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Bind the receiver once the app's database is (inside the app's own lifespan)."""
    context: ApiContext = app.state.context
    receiver = StowReceiver(
        context.settings, context.session_factory(), on_completed=context.on_change
    )
    receiver.start()
    app.state.stow = receiver
    try:
        yield
    finally:
        receiver.stop()


router = APIRouter(tags=["dicomweb"], lifespan=lifespan, responses=responses(401, 403))


def get_receiver(request: Request) -> StowReceiver:
    receiver: StowReceiver = request.app.state.stow
    return receiver


ReceiverDep = Annotated[StowReceiver, Depends(get_receiver)]

_STOW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"}
            }
        },
    },
}
_STOW_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every instance stored (ReferencedSOPSequence)"},
    202: {"description": "Some stored, some failed (FailedSOPSequence, FailureReason)"},
    409: {"description": "None stored (FailedSOPSequence, FailureReason)"},
    **responses(400, 413, 415),
}


@router.post(
    STOW_PATH, openapi_extra=_STOW_BODY, response_class=JSONResponse, responses=_STOW_ANSWERS
)
async def store_instances(
    request: Request, staff: StaffUser, receiver: ReceiverDep, auditor: AuditDep
) -> JSONResponse:
    """STOW-RS (PS3.18 10.5): each ``application/dicom`` part is a Part 10 instance, stored
    and assembled into its study as a C-STORE would be."""
    content_type = request.headers.get("content-type", "")
    client = (request.client.host, request.client.port) if request.client else ("", 0)
    with receiver.body_file() as body:
        async for chunk in request.stream():
            await run_in_threadpool(body.write, chunk)
        try:
            answer = await run_in_threadpool(
                receiver.receive, body, content_type, client=client, user=staff.username
            )
        except BadRequest as exc:
            code = ErrorCode.INVALID_FILE_TYPE if exc.status == 415 else ErrorCode.BAD_REQUEST
            raise ApiError(exc.status, code, str(exc)) from exc
    studies = Counter(r.study_instance_uid for r in answer.stored)
    for study_uid, count in studies.items():
        await run_in_threadpool(
            auditor.record,
            AuditAction.UPLOAD,
            AuditObject.STUDY,
            user=staff,
            object_id=study_uid,
            study_uid=study_uid,
            detail={"via": "stow-rs", "instances": count},
        )
    log.info(
        "STOW-RS request",
        extra={
            "user": staff.username,
            "instances": len(answer.results),
            "stored": len(answer.stored),
            "http_status": answer.http_status,
        },
    )
    return JSONResponse(answer.body(), status_code=answer.http_status, media_type=DICOM_JSON)
