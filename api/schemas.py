"""Request and response bodies of the API (the ORM tables stay in ``neurogate.db.models``)."""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)

from api.security import BCRYPT_MAX_BYTES
from neurogate.settings import MIN_PASSWORD, USERNAME_PATTERN

EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"
# Patient IDs the portal creates or accepts: safe in a URL path and a DICOM LO element.
PATIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# Patient IDs the node refers to, as DICOM allows them (LO: no backslash or control characters,
# at most 64): a study pushed by a scanner makes its patient with whatever ID it carries.
DICOM_PATIENT_ID_PATTERN = r"^[^\\\x00-\x1f]{1,64}$"

T = TypeVar("T")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _iso_date_only(value: object) -> object:
    """Dates as ``YYYY-MM-DD`` only (pydantic would take numbers as Unix timestamps)."""
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("expected a date as YYYY-MM-DD")
    return value


IsoDate = Annotated[dt.date, BeforeValidator(_iso_date_only)]


class Role(StrEnum):
    ADMIN = "admin"
    CLINICIAN = "clinician"
    PATIENT = "patient"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def _check_password(value: str | None) -> str | None:
    if value is not None and len(value.encode()) > BCRYPT_MAX_BYTES:
        raise ValueError(f"at most {BCRYPT_MAX_BYTES} bytes")
    return value


# -- identity ------------------------------------------------------------------------------------


class LoginRequest(_In):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int  # seconds


class Profile(_In):
    email: str | None = Field(None, pattern=EMAIL_PATTERN, max_length=254)
    # fullName: seed 001's clients' spelling
    full_name: str | None = Field(
        None, max_length=128, validation_alias=AliasChoices("full_name", "fullName")
    )
    title: str | None = Field(None, max_length=64)
    department: str | None = Field(None, max_length=128)
    institution: str | None = Field(None, max_length=128)


class RegisterRequest(Profile):
    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=MIN_PASSWORD, max_length=BCRYPT_MAX_BYTES)

    _password = field_validator("password")(_check_password)


class UserCreate(RegisterRequest):
    role: Role
    # Patient accounts: the Patient ID of the one patient the account may read.
    patient_id: str | None = Field(None, pattern=DICOM_PATIENT_ID_PATTERN)
    active: bool = True


class MeUpdate(Profile):
    """Changes to one's own account; a new password needs the current one."""

    password: str | None = Field(None, min_length=MIN_PASSWORD, max_length=BCRYPT_MAX_BYTES)
    current_password: str | None = Field(None, max_length=256)

    _password = field_validator("password")(_check_password)


class UserUpdate(Profile):
    role: Role | None = None
    patient_id: str | None = Field(None, pattern=DICOM_PATIENT_ID_PATTERN)
    active: bool | None = None
    password: str | None = Field(None, min_length=MIN_PASSWORD, max_length=BCRYPT_MAX_BYTES)

    _password = field_validator("password")(_check_password)


class UserOut(_Out):
    id: int
    username: str
    email: str | None
    full_name: str | None
    title: str | None
    department: str | None
    institution: str | None
    role: Role
    patient_id: str | None = None
    active: bool
    created_at: dt.datetime


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


# -- patients ------------------------------------------------------------------------------------


class PatientCreate(_In):
    # None: the node makes one up (``NG`` and 10 hexadecimal digits).
    patient_id: str | None = Field(None, pattern=PATIENT_ID_PATTERN)
    name: str | None = Field(None, max_length=324)
    birth_date: IsoDate | None = None
    sex: Literal["M", "F", "O"] | None = None


class PatientOut(_Out):
    patient_id: str
    name: str | None
    birth_date: dt.date | None
    sex: str | None
    created_at: dt.datetime


# -- studies and analyses ------------------------------------------------------------------------


class ExportOut(_Out):
    destination: str
    status: str
    attempts: int
    dimse_status: int | None
    last_error: str | None
    next_attempt_at: dt.datetime | None
    sent_at: dt.datetime | None


class ResultObjectOut(_Out):
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    created_at: dt.datetime
    exports: list[ExportOut]


class AnalysisOut(_Out):
    id: int
    source: str
    status: str
    step: str | None
    progress: float
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    findings: dict[str, Any] | None
    # Model name -> {name, version, sha256}, from the findings.
    models: dict[str, dict[str, str]] = Field(default_factory=dict)
    objects: list[ResultObjectOut] = Field(default_factory=list)


class AnalysisBrief(_Out):
    id: int
    source: str
    status: str
    created_at: dt.datetime
    finished_at: dt.datetime | None


class SeriesOut(_Out):
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    instance_count: int


class StudyOut(BaseModel):
    study_instance_uid: str
    status: str  # receiving, complete (the listener's view)
    source: Literal["dicom", "upload"]
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    instance_count: int
    first_received_at: dt.datetime
    last_received_at: dt.datetime
    completed_at: dt.datetime | None
    analysis: AnalysisOut | None  # the latest


class RoutingOut(_Out):
    """What the routing rules decided for one completion of the study (routing_rules.toml)."""

    revision: int
    rule: str | None  # None: no rule matched
    action: Literal["analyse", "ignore"]  # ignore: not for this node, analysed by nobody
    priority: Literal["stat", "routine"]
    model_set: str
    destinations: list[str] | None  # None: every export destination
    reason: str
    facts: dict[str, Any]  # the attributes the rules looked at
    decided_at: dt.datetime


class NotificationOut(_Out):
    """One webhook notification about the study (NOTIFY__WEBHOOKS) and how it went."""

    delivery_id: str
    webhook: str
    event: str  # analysis.completed, analysis.failed, export.parked
    analysis_id: int | None
    status: Literal["pending", "sent", "failed"]
    attempts: int
    http_status: int | None  # of the last attempt
    last_error: str | None
    outcomes: list[dict[str, Any]]  # each attempt: at, http_status, error
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None
    sent_at: dt.datetime | None


class StudyDetail(StudyOut):
    series: list[SeriesOut]
    analyses: list[AnalysisBrief]  # every run, newest first
    routing: list[RoutingOut] = Field(default_factory=list)  # every decision, newest first
    notifications: list[NotificationOut] = Field(default_factory=list)  # newest first


class AnalysisFilter(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    NONE = "none"  # never analysed


class StudySort(StrEnum):
    RECEIVED = "received"
    RECEIVED_DESC = "-received"
    STUDY_DATE = "study_date"
    STUDY_DATE_DESC = "-study_date"
    PATIENT = "patient_id"
    PATIENT_DESC = "-patient_id"


class PatientDetail(PatientOut):
    studies: list[StudyOut]


class FollowUpPoint(BaseModel):
    study_instance_uid: str
    study_date: str | None
    analysis_id: int
    volumes_ml: dict[str, float]  # WT, TC, ET


class VolumeChange(BaseModel):
    previous_ml: float
    current_ml: float
    change_ml: float
    change_percent: float | None  # None when there was nothing before


class FollowUpStep(BaseModel):
    from_study: str
    to_study: str
    from_date: str | None = None  # Study Date (YYYYMMDD) of each
    to_date: str | None = None
    regions: dict[str, VolumeChange]


class FollowUpOut(BaseModel):
    """Tumour volumes over a patient's analysed studies, oldest first, and each change."""

    patient_id: str
    points: list[FollowUpPoint]
    changes: list[FollowUpStep]


class Accepted(BaseModel):
    study_instance_uid: str
    event_id: str
    status: Literal["queued"] = "queued"


class ResendOut(BaseModel):
    study_instance_uid: str
    requeued: int  # failed exports set back to pending
    added: int = 0  # exports to destinations that never had the objects (added since)
    # Why nothing was queued (requeued and added both 0); None otherwise.
    reason: str | None = None


class UploadOut(Accepted):
    patient_id: str
    files: dict[str, str]  # role -> the uploaded file's name


# -- classification ------------------------------------------------------------------------------


class ClassifyOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(alias="class")
    class_id: int
    confidence: float
    probabilities: dict[str, float]
    heatmap_overlay: str  # base64 PNG: Grad-CAM blended over the image
    original_image: str  # base64 PNG
    heatmap_only: str  # base64 PNG
    processing_time_ms: float
    timestamp: dt.datetime
    model: dict[str, str]


class PredictRequest(_In):
    image: list[str] = Field(min_length=1, max_length=32)  # base64 pictures


class Detection(BaseModel):
    # camelCase: the wire format of the portal's older clients
    classId: int
    className: str
    confidence: float


class PredictResult(BaseModel):
    id: int  # index in the request
    detections: list[Detection]  # every class, most probable first


class PredictOut(BaseModel):
    results: list[PredictResult]


class ClassInfo(BaseModel):
    id: int
    name: str
    description: str


class ClassesOut(BaseModel):
    model: dict[str, str]
    classes: list[ClassInfo]


# -- service -------------------------------------------------------------------------------------


class HealthState(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


class Check(BaseModel):
    status: HealthState
    detail: dict[str, Any] = Field(default_factory=dict)


class HealthOut(BaseModel):
    """Every check with its detail (destinations, model versions): for admins only."""

    status: HealthState
    checks: dict[str, Check]


class HealthSummary(BaseModel):
    """What anyone may know of the node's health: no names, paths or versions."""

    status: HealthState
    model_loaded: bool  # the classifier is loaded in this process
    classes: int  # how many classes the configured classifier tells apart (0: unreadable)
    uptime_seconds: float
    # The seeds' keys (api/seeds/seed002.py): when, the model's state, its input.
    timestamp: str
    services: dict[str, dict[str, Any]]
    details: dict[str, Any]


class ApiInfo(BaseModel):
    name: str
    version: str
    docs: str
    openapi: str
    health: str
    message: str  # seed 004's key
    endpoints: dict[str, dict[str, str]]  # seed 002's key: path -> method, description


# -- audit trail -----------------------------------------------------------------------------------


class AuditEventOut(BaseModel):
    """One event of the audit trail (``GET /api/audit``)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: dt.datetime
    username: str | None
    role: str | None
    peer: str | None
    action: str
    object_type: str
    object_id: str | None
    study_instance_uid: str | None
    patient_id: str | None
    outcome: str
    detail: dict[str, Any] | None
