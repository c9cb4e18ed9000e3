"""Event-bus topic names. Every topic is keyed by StudyInstanceUID."""

from __future__ import annotations

from enum import StrEnum


class Topic(StrEnum):
    STUDY_RECEIVED = "neurogate.study.received"  # listener -> worker
    ANALYSIS_REQUESTED = "neurogate.analysis.requested"  # API (uploads, re-runs) -> worker
    # worker's router -> worker: studies the routing rules send to analysis, by priority
    ANALYSIS_STAT = "neurogate.analysis.stat"
    ANALYSIS_ROUTINE = "neurogate.analysis.routine"
    ANALYSIS_STATUS = "neurogate.analysis.status"  # worker -> API, dashboards
    EXPORT_STATUS = "neurogate.export.status"  # worker -> API: delivery per object, destination


DLQ_SUFFIX = ".dlq"


def dead_letter_topic(topic: str) -> str:
    """The dead-letter topic that poison messages of ``topic`` are moved to."""
    return f"{topic}{DLQ_SUFFIX}"
