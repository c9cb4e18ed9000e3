"""Events published on the bus.

Every event carries ``schema_version`` and ``event_type``; :meth:`EventBase.to_bytes` is the one
way to serialise and :func:`parse_event` the one way to parse. Events carry identifiers and
storage paths, never patient names: they may end up in logs and dead-letter topics.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from schemas.uids import DicomUID

SCHEMA_VERSION: Literal[1] = 1


def _now() -> datetime:
    return datetime.now(UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventBase(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: AwareDatetime = Field(default_factory=_now)

    def to_bytes(self) -> bytes:
        """The wire form: UTF-8 JSON."""
        return self.model_dump_json().encode()


class CompletionTrigger(StrEnum):
    """Why the listener declared a study complete."""

    QUIET_PERIOD = "quiet_period"  # no instance for the configured quiet period
    MPPS = "mpps"  # the modality reported its procedure step COMPLETED and every instance is in


class SeriesSummary(_Strict):
    series_instance_uid: DicomUID
    modality: str
    series_number: int | None = None
    series_description: str = ""
    sop_class_uids: list[DicomUID]
    instance_count: int = Field(ge=1)
    # Folder of the series' files, relative to the node's storage root.
    path: str


class StudyReceived(EventBase):
    """A study has been received completely (or has grown since its last completion)."""

    event_type: Literal["study.received"] = "study.received"
    study_instance_uid: DicomUID
    # 1 on first completion; +1 each time new instances reopen and complete the study again.
    revision: int = Field(ge=1)
    trigger: CompletionTrigger
    calling_ae_titles: list[str]
    called_ae_title: str
    first_received_at: AwareDatetime
    last_received_at: AwareDatetime
    instance_count: int = Field(ge=1)
    # Folder of the study, relative to the node's storage root.
    path: str
    series: list[SeriesSummary] = Field(min_length=1)


class AnalysisSource(StrEnum):
    DICOM = "dicom"  # a study completed by the listener
    UPLOAD = "upload"  # files uploaded through the API
    RERUN = "rerun"  # a user asked for a study to be analysed again


class InputFormat(StrEnum):
    DICOM = "dicom"
    NIFTI = "nifti"


class AnalysisRequested(EventBase):
    """Analyse a study that did not arrive through the listener, or analyse one again.

    ``path`` is the study's folder relative to the storage root. For NIfTI, ``nifti_files`` maps
    each role (T1, T1CE, T2, FLAIR) to its file, relative to the storage root.
    """

    event_type: Literal["analysis.requested"] = "analysis.requested"
    study_instance_uid: DicomUID
    source: AnalysisSource
    input_format: InputFormat
    path: str
    nifti_files: dict[str, str] = Field(default_factory=dict)
    requested_by: str | None = None  # a user name, for the audit trail


class AnalysisState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class AnalysisStatusChanged(EventBase):
    """Progress of one analysis: queued, running (with its step), completed or failed."""

    event_type: Literal["analysis.status"] = "analysis.status"
    analysis_id: int
    study_instance_uid: DicomUID
    status: AnalysisState
    step: str | None = None
    progress: float = Field(ge=0, le=1, default=0.0)
    reason: str | None = None  # why it failed; never patient data


class ExportOutcome(EventBase):
    """One result object's delivery to one destination: sent, retrying or parked as failed."""

    event_type: Literal["export.status"] = "export.status"
    analysis_id: int
    study_instance_uid: DicomUID
    sop_instance_uid: DicomUID
    kind: str
    destination: str
    status: Literal["sent", "pending", "failed"]
    attempts: int = Field(ge=0)
    dimse_status: int | None = None
    reason: str | None = None


Event = Annotated[
    StudyReceived | AnalysisRequested | AnalysisStatusChanged | ExportOutcome,
    Field(discriminator="event_type"),
]
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: bytes | str) -> Event:
    """Parse a wire-form event, or raise ``ValueError`` saying what is wrong with it."""
    try:
        return _EVENT_ADAPTER.validate_json(data)
    except ValidationError as exc:
        raise ValueError(f"invalid event: {exc}") from exc
