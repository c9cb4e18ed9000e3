"""Study assembly: which instances belong together, and when a study is complete.

No sender says "study complete" over C-STORE, so a study is complete after a quiet period with
no new instance (the default) or, earlier, once the modality's MPPS step is COMPLETED and every
instance it lists has arrived. Completion commits the study row, its series and a
``StudyReceived`` event in one transaction (the outbox relay publishes it).

State survives restarts: the study row is committed as ``receiving`` before the first instance of
a study is acknowledged, and :meth:`StudyTracker.recover` rebuilds counts from the files on disk
(the source of truth), resuming each quiet timer from the newest file's modification time.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_listener.instances import InstanceHeader
from neurogate.db.models import PerformedProcedureStep, Series, Study, StudyStatus
from neurogate.db.patients import record_patient
from neurogate.outbox import enqueue
from neurogate.storage import DICOM_SUFFIX, InstanceStore, StoreOutcome
from schemas.events import CompletionTrigger, SeriesSummary, StudyReceived
from schemas.topics import Topic

log = logging.getLogger(__name__)

MPPS_COMPLETED = "COMPLETED"
_SERIES_TAGS = ["SOPClassUID", "Modality", "SeriesNumber", "SeriesDescription"]

InstanceRef = tuple[str, str]  # (SeriesInstanceUID, SOPInstanceUID)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class _SeriesState:
    uid: str
    modality: str
    number: int | None
    description: str
    sop_classes: set[str] = field(default_factory=set)
    # SOP Instance UIDs, not a counter: an instance counted from disk when its study is
    # (re)opened may be reported once more by the association that stored it just before.
    instances: set[str] = field(default_factory=set)

    @property
    def count(self) -> int:
        return len(self.instances)


@dataclass
class _StudyState:
    uid: str
    row_id: int
    first_received: dt.datetime
    last_received: dt.datetime
    last_activity: float  # monotonic clock, drives the quiet timer
    called_ae: str
    calling_aes: set[str]
    series: dict[str, _SeriesState] = field(default_factory=dict)
    # Instances named by a COMPLETED MPPS step that have not arrived yet; None: no such step.
    awaited: set[InstanceRef] | None = None
    dirty: bool = False

    @property
    def count(self) -> int:
        return sum(s.count for s in self.series.values())

    def add(self, header: InstanceHeader) -> None:
        series = self.series.get(header.series_instance_uid)
        if series is None:
            series = _SeriesState(
                header.series_instance_uid,
                header.modality,
                header.series_number,
                header.series_description,
            )
            self.series[series.uid] = series
        series.sop_classes.add(header.sop_class_uid)
        series.instances.add(header.sop_instance_uid)
        if self.awaited is not None:
            self.awaited.discard((header.series_instance_uid, header.sop_instance_uid))


class InstanceRecorder(Protocol):
    """What the SCP handlers report to: the part of the :class:`StudyTracker` they use."""

    def record(
        self, header: InstanceHeader, outcome: StoreOutcome, *, calling_ae: str, called_ae: str
    ) -> None:
        """Account for a durably stored instance; raise if it could not be recorded."""

    def procedure_step_completed(self, study_uid: str, referenced: Iterable[InstanceRef]) -> None:
        """A modality's MPPS step is COMPLETED."""


class StudyTracker:
    """Tracks studies being received and completes them.

    Parameters
    ----------
    sessions
        Database session factory (studies, series, MPPS steps, outbox).
    store
        Where the instances are; read on recovery and when a completed study reopens.
    quiet_seconds
        A study is complete this long after its last instance.
    on_completed
        Called after a completion has been committed (wakes the outbox relay).
    clock
        Monotonic clock, replaceable in tests.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: InstanceStore,
        *,
        quiet_seconds: float,
        on_completed: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._quiet = quiet_seconds
        self._on_completed = on_completed
        self._clock = clock
        self._lock = threading.Lock()
        self._studies: dict[str, _StudyState] = {}

    # -- receiving -------------------------------------------------------------------------

    def record(
        self, header: InstanceHeader, outcome: StoreOutcome, *, calling_ae: str, called_ae: str
    ) -> None:
        """Account for an instance that is durably stored (or was already).

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            When the study could not be marked as receiving; the caller must not acknowledge.
        """
        uid = header.study_instance_uid
        with self._lock:
            state = self._studies.get(uid)
            if state is None:
                if outcome is not StoreOutcome.STORED and self._known(uid):
                    return  # a resend of a study already received changes nothing
                # New, reopened, or stored by a listener (process) that stopped before it
                # could record the instance: its file is on disk and the sender resends it.
                state = self._open(header, calling_ae=calling_ae, called_ae=called_ae)
                self._studies[uid] = state
            else:
                state.add(header)  # counted once, resent or already counted from disk
            state.last_activity = self._clock()
            state.last_received = _utcnow()
            state.calling_aes.add(calling_ae)
            state.dirty = True

    def _known(self, study_uid: str) -> bool:
        """Whether the study has been recorded (received before, or being received)."""
        with self._sessions() as session:
            found = session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
        return found is not None

    def procedure_step_completed(self, study_uid: str, referenced: Iterable[InstanceRef]) -> None:
        """A modality's MPPS step is COMPLETED: complete the study once ``referenced`` are in."""
        refs = set(referenced)
        if not refs:
            return  # nothing to wait for: the quiet timer decides
        with self._lock:
            state = self._studies.get(study_uid)
            if state is not None:
                state.awaited = self._missing(study_uid, refs)

    def receiving(self) -> list[str]:
        """StudyInstanceUIDs currently being received."""
        with self._lock:
            return list(self._studies)

    # -- completion ------------------------------------------------------------------------

    def tick(self) -> list[str]:
        """Persist progress and complete every study that is due; the completed UIDs."""
        now = self._clock()
        completed: list[str] = []
        with self._lock:
            for uid, state in list(self._studies.items()):
                trigger = self._due(state, now)
                if trigger is None:
                    continue
                try:
                    self._complete(state, trigger)
                except (SQLAlchemyError, ValueError):
                    log.exception("could not complete study; will retry", extra={"study": uid})
                    continue
                del self._studies[uid]
                completed.append(uid)
            self._flush_progress()
        if completed:
            self._on_completed()
        return completed

    def _due(self, state: _StudyState, now: float) -> CompletionTrigger | None:
        if state.awaited is not None and not state.awaited:
            return CompletionTrigger.MPPS
        if now - state.last_activity >= self._quiet:
            return CompletionTrigger.QUIET_PERIOD
        return None

    def _complete(self, state: _StudyState, trigger: CompletionTrigger) -> None:
        with self._sessions.begin() as session:
            study = session.get_one(Study, state.row_id)
            study.revision += 1
            study.status = StudyStatus.COMPLETE
            study.completion_trigger = trigger.value
            study.completed_at = _utcnow()
            study.instance_count = state.count
            study.last_received_at = state.last_received
            study.calling_ae_titles = sorted(state.calling_aes)
            self._save_series(session, study, state)
            event = self._event(state, study, trigger)
            enqueue(session, topic=Topic.STUDY_RECEIVED, key=state.uid, event=event)
        log.info(
            "study complete",
            extra={
                "study": state.uid,
                "revision": event.revision,
                "trigger": trigger.value,
                "instances": event.instance_count,
                "series": len(event.series),
                "event_id": str(event.event_id),
            },
        )

    def _save_series(self, session: Session, study: Study, state: _StudyState) -> None:
        existing = {s.series_instance_uid: s for s in study.series}
        for series in state.series.values():
            row = existing.get(series.uid)
            if row is None:
                row = Series(study=study, series_instance_uid=series.uid)
                session.add(row)
            row.modality = series.modality
            row.series_number = series.number
            row.series_description = series.description
            row.sop_class_uids = sorted(series.sop_classes)
            row.instance_count = series.count
            row.path = self._store.relative(self._store.series_dir(state.uid, series.uid))

    def _event(self, state: _StudyState, study: Study, trigger: CompletionTrigger) -> StudyReceived:
        return StudyReceived(
            study_instance_uid=state.uid,
            revision=study.revision,
            trigger=trigger,
            calling_ae_titles=sorted(state.calling_aes),
            called_ae_title=state.called_ae,
            first_received_at=state.first_received,
            last_received_at=state.last_received,
            instance_count=state.count,
            path=study.path,
            series=[
                SeriesSummary(
                    series_instance_uid=s.uid,
                    modality=s.modality,
                    series_number=s.number,
                    series_description=s.description,
                    sop_class_uids=sorted(s.sop_classes),
                    instance_count=s.count,
                    path=self._store.relative(self._store.series_dir(state.uid, s.uid)),
                )
                for s in _series_order(state)
            ],
        )

    def _flush_progress(self) -> None:
        dirty = [s for s in self._studies.values() if s.dirty]
        if not dirty:
            return
        try:
            with self._sessions.begin() as session:
                for state in dirty:
                    study = session.get_one(Study, state.row_id)
                    study.instance_count = state.count
                    study.last_received_at = state.last_received
                    study.calling_ae_titles = sorted(state.calling_aes)
        except SQLAlchemyError:
            log.exception("could not record study progress; will retry")
            return
        for state in dirty:
            state.dirty = False

    # -- opening and recovery --------------------------------------------------------------

    def _open(self, header: InstanceHeader, *, calling_ae: str, called_ae: str) -> _StudyState:
        """Mark a study as receiving (new, or reopened by new instances) and load its state."""
        uid = header.study_instance_uid
        now = _utcnow()
        with self._sessions.begin() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
            if study is None:
                study = Study(
                    study_instance_uid=uid,
                    revision=0,
                    path=self._store.relative(self._store.study_dir(uid)),
                    called_ae_title=called_ae,
                    calling_ae_titles=[calling_ae],
                    first_received_at=now,
                    last_received_at=now,
                    instance_count=0,
                    patient_id=header.patient_id,
                    patient_name=header.patient_name,
                    patient_birth_date=header.patient_birth_date,
                    patient_sex=header.patient_sex,
                    accession_number=header.accession_number,
                    study_date=header.study_date,
                    study_time=header.study_time,
                    study_description=header.study_description,
                )
                session.add(study)
            elif study.status == StudyStatus.COMPLETE:
                log.info("completed study receives new instances; reopened", extra={"study": uid})
            study.status = StudyStatus.RECEIVING
            session.flush()
            record_patient(  # the portal's patient, made or completed from the headers
                session,
                patient_id=header.patient_id,
                name=header.patient_name,
                birth_date=header.patient_birth_date,
                sex=header.patient_sex,
            )
            state = _StudyState(
                uid=uid,
                row_id=study.id,
                first_received=study.first_received_at,
                last_received=now,
                last_activity=self._clock(),
                called_ae=study.called_ae_title,
                calling_aes={*study.calling_ae_titles, calling_ae},
            )
            awaited = _completed_step_refs(session, uid)
        self._load_from_disk(state)
        if awaited:
            state.awaited = self._missing(uid, awaited)
        return state

    def recover(self) -> int:
        """Resume the studies that were being received when the listener stopped."""
        with self._sessions() as session:
            rows = session.scalars(select(Study).where(Study.status == StudyStatus.RECEIVING)).all()
            pending = [
                (r.study_instance_uid, r, _completed_step_refs(session, r.study_instance_uid))
                for r in rows
            ]
        now_wall, now_mono = _utcnow(), self._clock()
        with self._lock:
            for uid, row, awaited in pending:
                state = _StudyState(
                    uid=uid,
                    row_id=row.id,
                    first_received=row.first_received_at,
                    last_received=row.last_received_at,
                    last_activity=now_mono,
                    called_ae=row.called_ae_title,
                    calling_aes=set(row.calling_ae_titles),
                )
                newest = self._load_from_disk(state)
                if newest is not None:
                    state.last_received = max(state.last_received, newest)
                quiet_for = (now_wall - state.last_received).total_seconds()
                state.last_activity = now_mono - max(quiet_for, 0.0)
                if awaited:
                    state.awaited = self._missing(uid, awaited)
                state.dirty = True
                self._studies[uid] = state
                log.info(
                    "resumed study after restart",
                    extra={
                        "study": uid,
                        "instances": state.count,
                        "quiet_for_s": round(quiet_for, 1),
                    },
                )
        return len(pending)

    def _load_from_disk(self, state: _StudyState) -> dt.datetime | None:
        """Fill ``state.series`` from the stored files; the newest file's mtime (UTC)."""
        state.series.clear()
        newest: float | None = None
        study_dir = self._store.study_dir(state.uid)
        if not study_dir.is_dir():
            return None
        for series_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
            for path in series_dir.glob(f"*{DICOM_SUFFIX}"):
                mtime = path.stat().st_mtime
                newest = mtime if newest is None else max(newest, mtime)
                _add_from_file(state, series_dir.name, path)
        return None if newest is None else dt.datetime.fromtimestamp(newest, dt.UTC)

    def _missing(self, study_uid: str, refs: set[InstanceRef]) -> set[InstanceRef]:
        return {
            (series, sop)
            for series, sop in refs
            if not self._store.instance_path(study_uid, series, sop).exists()
        }


def _series_order(state: _StudyState) -> list[_SeriesState]:
    return sorted(state.series.values(), key=lambda s: (s.number is None, s.number or 0, s.uid))


def _add_from_file(state: _StudyState, series_uid: str, path: Path) -> None:
    ds = dcmread(path, stop_before_pixels=True, specific_tags=_SERIES_TAGS)
    series = state.series.get(series_uid)
    if series is None:
        number = ds.get("SeriesNumber")
        series = _SeriesState(
            uid=series_uid,
            modality=str(ds.get("Modality", "")),
            number=int(number) if number not in (None, "") else None,
            description=str(ds.get("SeriesDescription", "")),
        )
        state.series[series_uid] = series
    series.sop_classes.add(str(ds.SOPClassUID))
    series.instances.add(path.name.removesuffix(DICOM_SUFFIX))


def _completed_step_refs(session: Session, study_uid: str) -> set[InstanceRef]:
    steps = session.scalars(
        select(PerformedProcedureStep).where(
            PerformedProcedureStep.study_instance_uid == study_uid,
            PerformedProcedureStep.status == MPPS_COMPLETED,
        )
    ).all()
    return {(series, sop) for step in steps for series, sop in step.referenced_instances}
