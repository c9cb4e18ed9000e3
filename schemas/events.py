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


Event = Annotated[StudyReceived, Field(discriminator="event_type")]
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: bytes | str) -> Event:
    """Parse a wire-form event, or raise ``ValueError`` saying what is wrong with it."""
    try:
        return _EVENT_ADAPTER.validate_json(data)
    except ValidationError as exc:
        raise ValueError(f"invalid event: {exc}") from exc
