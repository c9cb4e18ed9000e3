"""About the service: API info, health, metrics, dashboard numbers."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api import queries
from api.context import ApiContext
from api.deps import AdminUser, ContextDep, CurrentUser, SessionDep
from api.errors import responses
from api.inference import ClassifierUnavailable
from api.routes.patients import own_patient_id
from api.schemas import ApiInfo, Check, HealthOut, HealthState, HealthSummary
from api.seeds import seed002
from models.registry import Task, manifest_for
from neurogate.outbox import pending_count

router = APIRouter(tags=["service"])

API_VERSION = "1"


@router.get("/", response_model=ApiInfo)
def info() -> ApiInfo:
    return ApiInfo(
        name="NeuroGate API",
        version=API_VERSION,
        docs="/docs",
        openapi="/openapi.json",
        health="/api/health",
        message="NeuroGate API",
        endpoints=seed002.ENDPOINTS,
    )


def _database_check(context: ApiContext) -> Check:
    try:
        with context.session_factory()() as session:
            session.execute(text("SELECT 1"))
            pending = pending_count(session)
    except SQLAlchemyError as exc:
        return Check(status=HealthState.UNHEALTHY, detail={"error": type(exc).__name__})
    return Check(status=HealthState.HEALTHY, detail={"outbox_pending": pending})


def _models_check(context: ApiContext) -> Check:
    """Each task's manifest (read and validated) and weights; the API's classifier's state:
    ``ready`` (loaded, start-up check passed), ``failed`` (and why) or ``not_loaded``."""
    paths = {Task(name): path for name, path in context.settings.models.by_task().items()}
    detail: dict[str, object] = {}
    healthy = True
    for task, path in paths.items():
        try:
            manifest = manifest_for(task, path)
        except (OSError, ValueError) as exc:
            healthy = False
            detail[task.value] = {"state": "failed", "error": str(exc)[:300]}
            continue
        present = manifest.file.is_file()
        healthy = healthy and present
        detail[task.value] = {
            "name": manifest.name,
            "version": manifest.version,
            "weights_present": present,
        }
    classifier = context.classifier.state()
    if isinstance(detail.get(Task.CLASSIFICATION.value), dict):
        detail[Task.CLASSIFICATION.value] |= classifier  # type: ignore[operator]
    healthy = healthy and classifier["state"] != "failed"
    detail["classifier_loaded"] = context.classifier.loaded
    return Check(status=HealthState.HEALTHY if healthy else HealthState.DEGRADED, detail=detail)


def _exports_check(context: ApiContext) -> Check:
    """Healthy either way: a node without a PACS destination still receives and analyses (its
    results wait in the portal); that is a configuration note, not a degradation."""
    names = [d.name for d in context.settings.export.destinations]
    detail: dict[str, object] = {"destinations": names}
    if not names:
        detail["note"] = "no export destination configured: results are not sent to a PACS"
    return Check(status=HealthState.HEALTHY, detail=detail)


def health_report(context: ApiContext) -> HealthOut:
    """Healthy when everything is; unhealthy without the database; degraded otherwise."""
    checks = {
        "database": _database_check(context),
        "models": _models_check(context),
        "exports": _exports_check(context),
    }
    states = {check.status for check in checks.values()}
    status = HealthState.HEALTHY
    if checks["database"].status is HealthState.UNHEALTHY:
        status = HealthState.UNHEALTHY
    elif states != {HealthState.HEALTHY}:
        status = HealthState.DEGRADED
    return HealthOut(status=status, checks=checks)


def _status_code(status: HealthState) -> int:
    return 503 if status is HealthState.UNHEALTHY else 200


def _class_count(context: ApiContext) -> int:
    try:
        return len(context.classifier.manifest().labels)
    except ClassifierUnavailable:
        return 0


_SUMMARY_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": HealthSummary, "description": "The database is unreachable"}
}


@router.get("/api/health", response_model=HealthSummary, responses=_SUMMARY_RESPONSES)
def health(context: ContextDep) -> JSONResponse:
    """Healthy, degraded (200) or unhealthy (503: no database); for anyone, so without names,
    paths or versions (admins read those at ``/api/health/details``)."""
    report = health_report(context)
    summary = HealthSummary(
        status=report.status,
        model_loaded=context.classifier.loaded,
        classes=_class_count(context),
        uptime_seconds=round(time.monotonic() - context.started, 1),
        **seed002.health_fields(context, report.checks["models"].status is HealthState.HEALTHY),
    )
    return JSONResponse(summary.model_dump(mode="json"), status_code=_status_code(report.status))


@router.get("/healthcheck", response_model=HealthSummary, responses=_SUMMARY_RESPONSES)
def healthcheck(context: ContextDep) -> JSONResponse:
    """The same as ``/api/health``, where load balancers look for it."""
    return health(context)


@router.get(
    "/api/health/details",
    response_model=HealthOut,
    responses={
        **responses(401, 403),
        503: {"model": HealthOut, "description": "The database is unreachable"},
    },
)
def health_details(_admin: AdminUser, context: ContextDep) -> JSONResponse:
    """Every check with its detail: database (outbox backlog), models (names, versions,
    weights present), export destinations (names). Admins only."""
    report = health_report(context)
    return JSONResponse(report.model_dump(mode="json"), status_code=_status_code(report.status))


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}},
)
def metrics(context: ContextDep) -> Response:
    return Response(generate_latest(context.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/stats", response_model=dict[str, int], responses=responses(401))
def stats(user: CurrentUser, session: SessionDep) -> dict[str, int]:
    """Dashboard numbers: studies, and studies by the status of their latest analysis."""
    own = own_patient_id(user)
    return queries.study_counts(session, patient_id=own)
