"""ORM rows to response bodies."""

from __future__ import annotations

from typing import Any

from api.queries import StudyRow
from api.schemas import (
    AnalysisBrief,
    AnalysisOut,
    NotificationOut,
    PatientOut,
    ResultObjectOut,
    RoutingOut,
    SeriesOut,
    StudyDetail,
    StudyOut,
    UserOut,
)
from neurogate.db.models import Analysis, Patient, RoutingDecision, User, WebhookDelivery


def user_out(user: User) -> UserOut:
    return UserOut.model_validate(
        {
            **{name: getattr(user, name) for name in UserOut.model_fields if name != "patient_id"},
            "patient_id": user.patient.patient_id if user.patient is not None else None,
        }
    )


def patient_out(patient: Patient) -> PatientOut:
    return PatientOut.model_validate(patient)


def analysis_out(analysis: Analysis) -> AnalysisOut:
    findings: dict[str, Any] | None = analysis.findings
    models = (findings or {}).get("models") or {}
    return AnalysisOut(
        id=analysis.id,
        source=analysis.source,
        status=analysis.status,
        step=analysis.step,
        progress=analysis.progress,
        error=analysis.error,
        created_at=analysis.created_at,
        started_at=analysis.started_at,
        finished_at=analysis.finished_at,
        findings=findings,
        models={str(k): {str(a): str(b) for a, b in v.items()} for k, v in models.items()},
        objects=[ResultObjectOut.model_validate(obj) for obj in analysis.objects],
    )


def study_out(row: StudyRow) -> StudyOut:
    study = row.study
    return StudyOut(
        study_instance_uid=study.study_instance_uid,
        status=study.status,
        source="upload" if row.uploaded else "dicom",
        patient_id=study.patient_id,
        patient_name=study.patient_name,
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_description=study.study_description,
        instance_count=study.instance_count,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        completed_at=study.completed_at,
        analysis=analysis_out(row.analysis) if row.analysis is not None else None,
    )


def study_detail(
    row: StudyRow,
    analyses: list[Analysis],
    routing: list[RoutingDecision] | None = None,
    notifications: list[WebhookDelivery] | None = None,
) -> StudyDetail:
    return StudyDetail(
        **study_out(row).model_dump(),
        series=[SeriesOut.model_validate(series) for series in row.study.series],
        analyses=[AnalysisBrief.model_validate(a) for a in analyses],
        routing=[RoutingOut.model_validate(r) for r in routing or []],
        notifications=[NotificationOut.model_validate(n) for n in notifications or []],
    )
