"""Typed, versioned contracts shared by every NeuroGate service.

Importing this package is cheap: it depends on pydantic only.
"""

from schemas.events import (
    SCHEMA_VERSION,
    AnalysisRequested,
    AnalysisSource,
    AnalysisState,
    AnalysisStatusChanged,
    CompletionTrigger,
    Event,
    ExportOutcome,
    InputFormat,
    SeriesSummary,
    StudyReceived,
    parse_event,
)
from schemas.topics import Topic, dead_letter_topic
from schemas.uids import DicomUID

__all__ = [
    "SCHEMA_VERSION",
    "AnalysisRequested",
    "AnalysisSource",
    "AnalysisState",
    "AnalysisStatusChanged",
    "CompletionTrigger",
    "DicomUID",
    "Event",
    "ExportOutcome",
    "InputFormat",
    "SeriesSummary",
    "StudyReceived",
    "Topic",
    "dead_letter_topic",
    "parse_event",
]
