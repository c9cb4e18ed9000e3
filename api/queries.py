"""Database queries of the API: typed, keyword-only, one transaction's worth each."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, UnaryExpression, func, select, update
from sqlalchemy.orm import Session, selectinload

from api.schemas import AnalysisFilter, StudySort
from neurogate.db.models import (
    Analysis,
    AnalysisStatus,
    Export,
    ExportStatus,
    ImageScan,
    Patient,
    ResultObject,
    RoutingDecision,
    ScanReport,
    Series,
    Study,
    Upload,
    User,
    UserRole,
    WebhookDelivery,
)

_GENERATED_ID_PREFIX = "NG"
_GENERATED_ID_HEX_BYTES = 5


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- users ---------------------------------------------------------------------------------------


def user_by_username(session: Session, *, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def user_by_email(session: Session, *, email: str) -> User | None:
    return session.scalar(select(User).where(User.email == email))


def count_admins(session: Session, *, active_only: bool = True) -> int:
    stmt = select(func.count()).select_from(User).where(User.role == UserRole.ADMIN)
    if active_only:
        stmt = stmt.where(User.active.is_(True))
    return session.scalar(stmt) or 0


def list_users(session: Session, *, limit: int, offset: int) -> tuple[Sequence[User], int]:
    total = session.scalar(select(func.count()).select_from(User)) or 0
    users = session.scalars(
        select(User)
        .options(selectinload(User.patient))
        .order_by(User.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return users, total


# -- patients ------------------------------------------------------------------------------------


def patient_by_id(session: Session, *, patient_id: str) -> Patient | None:
    return session.scalar(select(Patient).where(Patient.patient_id == patient_id))


def new_patient_id(session: Session) -> str:
    """An unused Patient ID: ``NG`` and 10 hexadecimal digits."""
    while True:
        candidate = _GENERATED_ID_PREFIX + secrets.token_hex(_GENERATED_ID_HEX_BYTES).upper()
        if patient_by_id(session, patient_id=candidate) is None:
            return candidate


def list_patients(
    session: Session, *, limit: int, offset: int, only: str | None = None
) -> tuple[Sequence[Patient], int]:
    """Patients by Patient ID; ``only``: just that one (a patient account's view)."""
    where: list[ColumnElement[bool]] = []
    if only is not None:
        where.append(Patient.patient_id == only)
    total = session.scalar(select(func.count()).select_from(Patient).where(*where)) or 0
    patients = session.scalars(
        select(Patient).where(*where).order_by(Patient.patient_id).limit(limit).offset(offset)
    ).all()
    return patients, total


# -- studies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRow:
    study: Study
    analysis: Analysis | None
    uploaded: bool


def _latest_analysis_ids() -> Select[str, int]:
    return select(Analysis.study_instance_uid, func.max(Analysis.id).label("analysis_id")).group_by(
        Analysis.study_instance_uid
    )


_SORTS: dict[StudySort, tuple[UnaryExpression[Any], ...]] = {
    StudySort.RECEIVED: (Study.last_received_at.asc(), Study.id.asc()),
    StudySort.RECEIVED_DESC: (Study.last_received_at.desc(), Study.id.desc()),
    StudySort.STUDY_DATE: (Study.study_date.asc(), Study.id.asc()),
    StudySort.STUDY_DATE_DESC: (Study.study_date.desc(), Study.id.desc()),
    StudySort.PATIENT: (Study.patient_id.asc(), Study.id.asc()),
    StudySort.PATIENT_DESC: (Study.patient_id.desc(), Study.id.desc()),
}


def list_studies(
    session: Session,
    *,
    patient_id: str | None = None,
    status: AnalysisFilter | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    sort: StudySort = StudySort.RECEIVED_DESC,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[StudyRow], int]:
    """Studies with their latest analysis, filtered, sorted and paged; and how many match.

    ``date_from``/``date_to`` bound the Study Date (inclusive).
    """
    latest = _latest_analysis_ids().subquery()
    stmt = (
        select(Study, Analysis)
        .outerjoin(latest, latest.c.study_instance_uid == Study.study_instance_uid)
        .outerjoin(Analysis, Analysis.id == latest.c.analysis_id)
    )
    if patient_id is not None:
        stmt = stmt.where(Study.patient_id == patient_id)
    if status is AnalysisFilter.NONE:
        stmt = stmt.where(Analysis.id.is_(None))
    elif status is not None:
        stmt = stmt.where(Analysis.status == status.value)
    if date_from is not None:
        stmt = stmt.where(Study.study_date >= date_from.strftime("%Y%m%d"))
    if date_to is not None:
        stmt = stmt.where(Study.study_date <= date_to.strftime("%Y%m%d"))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.execute(
        stmt.options(selectinload(Analysis.objects).selectinload(ResultObject.exports))
        .order_by(*_SORTS[sort])
        .limit(limit)
        .offset(offset)
    ).all()
    uploaded = _uploaded(session, [study.study_instance_uid for study, _ in rows])
    return [
        StudyRow(study, analysis, study.study_instance_uid in uploaded) for study, analysis in rows
    ], total


def _uploaded(session: Session, uids: list[str]) -> set[str]:
    if not uids:
        return set()
    found = session.scalars(
        select(Upload.study_instance_uid).where(Upload.study_instance_uid.in_(uids))
    )
    return set(found)


def study_by_uid(session: Session, *, study_uid: str) -> StudyRow | None:
    study = session.scalar(
        select(Study)
        .where(Study.study_instance_uid == study_uid)
        .options(selectinload(Study.series))
    )
    if study is None:
        return None
    return StudyRow(
        study,
        latest_analysis(session, study_uid=study_uid),
        bool(_uploaded(session, [study_uid])),
    )


def study_uid_of(session: Session, *, study_id: int) -> str | None:
    """The Study Instance UID of the study row ``study_id`` (seed 001's scan ids)."""
    return session.scalar(select(Study.study_instance_uid).where(Study.id == study_id))


def series_descriptions(session: Session, *, study_ids: Sequence[int]) -> dict[int, list[str]]:
    """Study row id -> its series' descriptions, by series number."""
    found: dict[int, list[str]] = {study_id: [] for study_id in study_ids}
    if not study_ids:
        return found
    rows = session.execute(
        select(Series.study_id, Series.series_description)
        .where(Series.study_id.in_(study_ids))
        .order_by(Series.study_id, Series.series_number, Series.id)
    )
    for study_id, description in rows:
        found[study_id].append(description)
    return found


def user_ids(session: Session, *, usernames: Sequence[str]) -> dict[str, int]:
    if not usernames:
        return {}
    rows = session.execute(select(User.username, User.id).where(User.username.in_(usernames)))
    return {username: user_id for username, user_id in rows}


def latest_analysis(session: Session, *, study_uid: str) -> Analysis | None:
    return session.scalar(
        select(Analysis)
        .where(Analysis.study_instance_uid == study_uid)
        .options(selectinload(Analysis.objects).selectinload(ResultObject.exports))
        .order_by(Analysis.id.desc())
        .limit(1)
    )


def analyses_of(session: Session, *, study_uid: str) -> Sequence[Analysis]:
    return session.scalars(
        select(Analysis)
        .where(Analysis.study_instance_uid == study_uid)
        .order_by(Analysis.id.desc())
    ).all()


def routing_of(session: Session, *, study_uid: str) -> Sequence[RoutingDecision]:
    """The routing rules' decisions for the study, newest first."""
    return session.scalars(
        select(RoutingDecision)
        .where(RoutingDecision.study_instance_uid == study_uid)
        .order_by(RoutingDecision.id.desc())
    ).all()


def notifications_of(session: Session, *, study_uid: str) -> Sequence[WebhookDelivery]:
    """The webhook notifications about the study, newest first."""
    return session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.study_instance_uid == study_uid)
        .order_by(WebhookDelivery.id.desc())
    ).all()


def routed_destinations(
    session: Session, *, study_uid: str, destinations: Sequence[str]
) -> list[str]:
    """Of ``destinations``, those the routing decision of the study's newest results sends to
    (all of them when the analysis was not routed, an upload say, or its rule named none)."""
    event_id = session.scalar(
        select(Analysis.request_event_id)
        .join(ResultObject, ResultObject.analysis_id == Analysis.id)
        .where(Analysis.study_instance_uid == study_uid)
        .order_by(Analysis.id.desc())
        .limit(1)
    )
    chosen = session.scalar(
        select(RoutingDecision.destinations).where(RoutingDecision.request_event_id == event_id)
    )
    return list(destinations) if chosen is None else [d for d in destinations if d in chosen]


def upload_of(session: Session, *, study_uid: str) -> Upload | None:
    return session.scalar(select(Upload).where(Upload.study_instance_uid == study_uid))


def requeue_failed_exports(session: Session, *, study_uid: str) -> int:
    """Set the study's parked (failed) exports back to pending, attempts reset; how many."""
    object_ids = (
        select(ResultObject.id)
        .join(Analysis, Analysis.id == ResultObject.analysis_id)
        .where(Analysis.study_instance_uid == study_uid)
    )
    result = session.execute(
        update(Export)
        .where(Export.result_object_id.in_(object_ids), Export.status == ExportStatus.FAILED)
        .values(
            status=ExportStatus.PENDING,
            attempts=0,
            next_attempt_at=now(),
            last_error=None,
            dimse_status=None,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def add_missing_exports(session: Session, *, study_uid: str, destinations: Sequence[str]) -> int:
    """Pending exports of the study's newest result objects to the destinations that never had
    them (one added after the analysis, or renamed); how many.

    The newest analysis with result objects is what the study's results are; older analyses'
    objects are not sent anew.
    """
    latest = session.scalar(
        select(ResultObject.analysis_id)
        .join(Analysis, Analysis.id == ResultObject.analysis_id)
        .where(Analysis.study_instance_uid == study_uid)
        .order_by(ResultObject.analysis_id.desc())
        .limit(1)
    )
    if latest is None or not destinations:
        return 0
    objects = session.scalars(
        select(ResultObject).where(ResultObject.analysis_id == latest).order_by(ResultObject.id)
    ).all()
    planned = {
        (object_id, destination)
        for object_id, destination in session.execute(
            select(Export.result_object_id, Export.destination).where(
                Export.result_object_id.in_([o.id for o in objects])
            )
        )
    }
    added = 0
    for obj in objects:
        for destination in destinations:
            if (obj.id, destination) not in planned:
                session.add(
                    Export(
                        result_object_id=obj.id,
                        destination=destination,
                        status=ExportStatus.PENDING,
                        attempts=0,
                        next_attempt_at=now(),
                    )
                )
                added += 1
    return added


def export_counts(session: Session, *, study_uid: str) -> tuple[int, dict[str, int]]:
    """How many result objects the study has, and its exports by status."""
    objects = session.scalar(
        select(func.count())
        .select_from(ResultObject)
        .join(Analysis, Analysis.id == ResultObject.analysis_id)
        .where(Analysis.study_instance_uid == study_uid)
    )
    by_status = session.execute(
        select(Export.status, func.count())
        .join(ResultObject, ResultObject.id == Export.result_object_id)
        .join(Analysis, Analysis.id == ResultObject.analysis_id)
        .where(Analysis.study_instance_uid == study_uid)
        .group_by(Export.status)
    )
    return int(objects or 0), {status: int(n) for status, n in by_status}


def pdf_report(session: Session, *, study_uid: str) -> ResultObject | None:
    """The newest PDF report written for the study."""
    return session.scalar(
        select(ResultObject)
        .join(Analysis, Analysis.id == ResultObject.analysis_id)
        .where(Analysis.study_instance_uid == study_uid, ResultObject.kind == "pdf")
        .order_by(ResultObject.id.desc())
        .limit(1)
    )


# -- dashboard -----------------------------------------------------------------------------------


def study_counts(session: Session, *, patient_id: str | None = None) -> dict[str, int]:
    """How many studies there are, and how many by the status of their latest analysis."""
    studies = select(func.count()).select_from(Study)
    if patient_id is not None:
        studies = studies.where(Study.patient_id == patient_id)
    total = session.scalar(studies) or 0
    latest = _latest_analysis_ids().subquery()
    stmt = (
        select(Analysis.status, func.count())
        .join(latest, latest.c.analysis_id == Analysis.id)
        .join(Study, Study.study_instance_uid == Analysis.study_instance_uid)
        .group_by(Analysis.status)
    )
    if patient_id is not None:
        stmt = stmt.where(Study.patient_id == patient_id)
    counts: dict[str, int] = {"studies": total}
    for status, count in session.execute(stmt).all():
        counts[str(status)] = int(count)
    return counts


def study_class_counts(session: Session) -> dict[str, int]:
    """Studies by the class their latest completed analysis found (``findings.classification``)."""
    latest = (
        select(func.max(Analysis.id).label("analysis_id"))
        .where(Analysis.status == AnalysisStatus.COMPLETED)
        .group_by(Analysis.study_instance_uid)
        .subquery()
    )
    counts: dict[str, int] = {}
    for findings in session.scalars(
        select(Analysis.findings).join(latest, latest.c.analysis_id == Analysis.id)
    ):
        label = ((findings or {}).get("classification") or {}).get("label")
        if label:
            counts[str(label)] = counts.get(str(label), 0) + 1
    return counts


# -- seed 003's portal: picture scans and their reports -------------------------------------------


def count_rows(session: Session, table: type[Patient] | type[ImageScan] | type[ScanReport]) -> int:
    return session.scalar(select(func.count()).select_from(table)) or 0


def image_scans(
    session: Session, *, patient_ref: int | None = None, scan_ids: Sequence[str] | None = None
) -> Sequence[ImageScan]:
    """Picture scans, newest first; of one patient, or just those named."""
    stmt = select(ImageScan).options(selectinload(ImageScan.patient))
    if patient_ref is not None:
        stmt = stmt.where(ImageScan.patient_ref == patient_ref)
    if scan_ids is not None:
        stmt = stmt.where(ImageScan.scan_id.in_(scan_ids))
    return session.scalars(stmt.order_by(ImageScan.id.desc())).all()


def image_scan_counts(session: Session) -> dict[str, int]:
    """Picture scans by predicted class."""
    rows = session.execute(
        select(ImageScan.prediction, func.count()).group_by(ImageScan.prediction)
    )
    return {str(label): int(n) for label, n in rows}


def scan_reports(session: Session, *, patient_ref: int | None = None) -> Sequence[ScanReport]:
    stmt = select(ScanReport).options(selectinload(ScanReport.patient))
    if patient_ref is not None:
        stmt = stmt.where(ScanReport.patient_ref == patient_ref)
    return session.scalars(stmt.order_by(ScanReport.id.desc())).all()


def scan_report(session: Session, *, report_id: str) -> ScanReport | None:
    return session.scalar(
        select(ScanReport)
        .where(ScanReport.report_id == report_id)
        .options(selectinload(ScanReport.patient))
    )


def patient_account(session: Session, *, patient_ref: int) -> User | None:
    """The patient account linked to the patient row ``patient_ref``, if any."""
    return session.scalar(
        select(User).where(User.patient_ref == patient_ref, User.role == UserRole.PATIENT)
    )
