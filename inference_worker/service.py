"""The worker as a service: consume study events, analyse, store results, hand them to export.

At-least-once delivery meets idempotent results: each request event owns one ``analyses`` row
(unique on the event id), so a redelivered event finds its finished row and does nothing more.
A study whose data cannot be analysed (the pipeline's ``UnusableStudy``: no usable series, broken
geometry or pixel data, more pixels than the decode budget) is marked failed with the reason and
the worker moves on; any other error (a bug, the disk, the database) is retried by the consume
loop and, after the last attempt, the analysis is marked failed and the message dead-lettered.
Attempts are counted in the ``analyses`` row before each starts, so those that killed their
worker count as well: a study that takes its worker down every time ends in the dead-letter
topic too, instead of being redelivered to each restarted worker for ever.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pydicom import Dataset, dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from inference_worker.analysis import Analysis
from inference_worker.exporter import Exporter, plan_exports
from inference_worker.notify import Event, Notifier, notify_analysis
from inference_worker.pipeline import (
    Models,
    StudyFiles,
    UnusableStudy,
    analyse,
    analyse_nifti,
    scan_folder,
    stored_study,
)
from inference_worker.priors import FollowUp, PriorNotAnalysed, analysed_as_prior
from inference_worker.routing import (
    ROUTER_GROUP,
    PriorityConsumer,
    Router,
    decision_for,
    load_model_sets,
    load_routing_rules,
    routed_destinations,
)
from neurogate.bus import Bus, BusUnavailable, Message, ensure_service_topics
from neurogate.bus.runner import PoisonMessage, consume
from neurogate.db.models import Analysis as AnalysisRow
from neurogate.db.models import AnalysisStatus, ResultObject, Study
from neurogate.outbox import enqueue, service_relay
from neurogate.settings import Settings
from schemas.events import (
    AnalysisRequested,
    AnalysisSource,
    AnalysisState,
    AnalysisStatusChanged,
    InputFormat,
    StudyReceived,
    parse_event,
)
from schemas.topics import Topic

log = logging.getLogger(__name__)

# Received studies go through the router (routing rules), which queues those to analyse on the
# stat or routine topic; the analysis loop takes stat before routine work (routing.py).
ROUTED_TOPICS = (Topic.STUDY_RECEIVED,)
STAT_TOPICS = (Topic.ANALYSIS_STAT,)
ROUTINE_TOPICS = (Topic.ANALYSIS_ROUTINE, Topic.ANALYSIS_REQUESTED)
CONSUMED_TOPICS = (*ROUTED_TOPICS, *STAT_TOPICS, *ROUTINE_TOPICS)
PUBLISHED_TOPICS = (Topic.ANALYSIS_STATUS, Topic.EXPORT_STATUS)
GROUP_ID = "neurogate-inference-worker"
STAT_GROUP_ID = f"{GROUP_ID}-stat"  # its own group: a long routine analysis never holds it up
RESULTS_DIR = "results"
PARTIAL_SUFFIX = ".partial"  # a result object being written; renamed once complete
HEARTBEAT_FILE = "worker.heartbeat"


def heartbeat_path(settings: Settings) -> Path:
    """The file the consume loop touches before each poll (see deploy/healthcheck.py)."""
    return settings.data_dir / HEARTBEAT_FILE


class AnalysisFailed(Exception):
    """The study's data cannot be analysed; retrying would fail the same way."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Worker:
    """Turns one request event into one finished analysis row with its result objects.

    Parameters
    ----------
    settings
        Node settings (storage root, result objects, export destinations, retries).
    sessions
        Database session factory.
    models
        Loaded once per process; loading is the slow part of a worker's start.
    build_objects
        Makes the DICOM result objects of an analysis; the default writes SEG, SR, Grad-CAM
        capture and PDF with highdicom.
    on_change
        Called after each committed change (wakes the outbox relay and the exporter).
    model_sets
        The model sets routing rules may name (:func:`~inference_worker.routing.load_model_sets`);
        ``models`` serves every other study.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        models: Models,
        *,
        on_change: Callable[[], None] = lambda: None,
        model_sets: Mapping[str, Models] | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._models = models
        self._model_sets = dict(model_sets or {})
        self._on_change = on_change
        self._name = f"{socket.gethostname()}:{threading.get_native_id()}"
        self._follow_up = (
            FollowUp(settings, sessions, self._analyse_prior) if settings.priors.enabled else None
        )

    def handle(self, message: Message) -> None:
        """The consume loop's handler for one message."""
        try:
            event = parse_event(message.value)
        except ValueError as exc:
            raise PoisonMessage(str(exc)) from exc
        if not isinstance(event, StudyReceived | AnalysisRequested):
            raise PoisonMessage(f"unexpected {event.event_type} on {message.topic}")
        if isinstance(event, StudyReceived) and analysed_as_prior(self._sessions, event):
            log.info(
                "study analysed as a prior already", extra={"study_uid": event.study_instance_uid}
            )
            return
        analysis_id = self._claim(event)
        if analysis_id is None:
            return
        try:
            analysis = self._run(event, analysis_id)
        except AnalysisFailed as exc:
            self._finish_failed(analysis_id, event.study_instance_uid, str(exc))
            return
        except Exception as exc:
            attempts = self._attempts(analysis_id)
            if attempts >= self._settings.bus.max_delivery_attempts:
                reason = f"gave up after {attempts} attempts; last error: {exc!r}"
                self._finish_failed(analysis_id, event.study_instance_uid, reason)
                raise PoisonMessage(reason) from exc
            raise
        if self._follow_up is not None and isinstance(event, StudyReceived):
            analysis = self._follow_up.attach(analysis)
        self._finish_completed(analysis_id, event, analysis)

    def _analyse_prior(self, event: StudyReceived) -> None:
        """Analyse a prior retrieved for follow-up, as its own analysis with its own results.

        A failure is recorded on the prior's analysis; the current study's analysis goes on.
        """
        try:
            analysis_id = self._claim(event)
        except PoisonMessage:  # attempts used up: the claim marked it failed
            return
        if analysis_id is None:
            return
        try:
            analysis = self._run(event, analysis_id)
        except AnalysisFailed as exc:
            self._finish_failed(analysis_id, event.study_instance_uid, str(exc))
            return
        except Exception as exc:  # unexpected: recorded on the prior, not the current study's
            self._finish_failed(analysis_id, event.study_instance_uid, repr(exc))
            raise PriorNotAnalysed(f"its analysis failed: {exc!r}") from exc
        self._finish_completed(analysis_id, event, analysis)

    # -- the steps, each its own transaction --------------------------------------------------

    def _claim(self, event: StudyReceived | AnalysisRequested) -> int | None:
        """The analysis row to work on, or ``None`` when this event was already handled.

        The attempt is counted (and committed) before any work starts, so attempts whose worker
        never came back (killed mid-analysis, e.g. for memory) count as well as those that
        raised: once they reach ``BUS__MAX_DELIVERY_ATTEMPTS`` the analysis is marked failed and
        :class:`PoisonMessage` sends the message to the dead-letter topic; the queue moves on.
        """
        key = str(event.event_id)
        abandoned: tuple[int, str] | None = None
        with self._sessions.begin() as session:
            row = session.scalar(select(AnalysisRow).where(AnalysisRow.request_event_id == key))
            if row is not None and row.status in (AnalysisStatus.COMPLETED, AnalysisStatus.FAILED):
                log.info(
                    "analysis already finished; event redelivered",
                    extra={"study_uid": event.study_instance_uid, "analysis_id": row.id},
                )
                return None
            if row is None:
                source = AnalysisSource.DICOM if isinstance(event, StudyReceived) else event.source
                row = AnalysisRow(
                    request_event_id=key,
                    study_instance_uid=event.study_instance_uid,
                    revision=event.revision if isinstance(event, StudyReceived) else 1,
                    source=source.value,
                    status=AnalysisStatus.QUEUED,
                    progress=0.0,
                    attempts=0,
                    created_at=_now(),
                )
                session.add(row)
                session.flush()
                _announce(session, row, AnalysisState.QUEUED)
            if row.attempts >= self._settings.bus.max_delivery_attempts:
                reason = (
                    f"gave up after {row.attempts} attempts that never finished: the worker "
                    f"stopped (killed or crashed) while analysing this study, last on {row.worker}"
                )
                row.status, row.error, row.finished_at = AnalysisStatus.FAILED, reason, _now()
                _announce(session, row, AnalysisState.FAILED, reason=reason)
                notify_analysis(session, self._settings, row, Event.ANALYSIS_FAILED)
                abandoned = row.id, reason
            else:
                row.status = AnalysisStatus.RUNNING
                row.attempts += 1
                row.worker = self._name
                row.started_at = _now()
                row.error = None
                _announce(session, row, AnalysisState.RUNNING)
            analysis_id = row.id
        self._on_change()
        if abandoned is not None:
            log.error(
                "analysis abandoned",
                extra={
                    "study_uid": event.study_instance_uid,
                    "analysis_id": analysis_id,
                    "reason": abandoned[1],
                },
            )
            raise PoisonMessage(abandoned[1])
        log.info(
            "analysis started",
            extra={"study_uid": event.study_instance_uid, "analysis_id": analysis_id},
        )
        return analysis_id

    def _progress(self, analysis_id: int) -> Callable[[str, float], None]:
        def report(step: str, fraction: float) -> None:
            with self._sessions.begin() as session:
                row = session.get_one(AnalysisRow, analysis_id)
                row.step, row.progress = step, round(fraction, 3)
                _announce(session, row, AnalysisState.RUNNING)
            self._on_change()

        return report

    def _run(self, event: StudyReceived | AnalysisRequested, analysis_id: int) -> Analysis:
        root = self._settings.storage_root
        progress = self._progress(analysis_id)
        budget = self._settings.decode_budget
        with self._sessions() as session:
            decision = decision_for(session, str(event.event_id))
        models = (
            self._model_sets.get(decision.model_set, self._models) if decision else self._models
        )
        try:
            if isinstance(event, AnalysisRequested) and event.input_format is InputFormat.NIFTI:
                files = {role: root / path for role, path in event.nifti_files.items()}
                return analyse_nifti(event.study_instance_uid, files, models, progress, budget)
            study = self._inventory(event) or scan_folder(root / event.path)
            return analyse(study, models, progress, budget)
        except UnusableStudy as exc:
            raise AnalysisFailed(str(exc)) from exc

    def _inventory(self, event: StudyReceived | AnalysisRequested) -> StudyFiles | None:
        """The study as the listener recorded it: the series of its completion event, or for a
        re-run the study's series rows; ``None`` when neither describes ``event.path``."""
        root, folder = self._settings.storage_root, Path(event.path)
        if isinstance(event, StudyReceived):
            paths = [Path(s.path) for s in event.series]
        else:
            with self._sessions() as session:
                uid = event.study_instance_uid
                row = session.scalar(select(Study).where(Study.study_instance_uid == uid))
                paths = [] if row is None else [Path(s.path) for s in row.series]
        if not paths or not all(p.is_relative_to(folder) for p in paths):
            return None  # not the listener's inventory of this folder: an upload, a test's
        return stored_study(event.study_instance_uid, [root / p for p in paths])

    def _attempts(self, analysis_id: int) -> int:
        with self._sessions() as session:
            return session.get_one(AnalysisRow, analysis_id).attempts

    def _finish_failed(self, analysis_id: int, study_uid: str, reason: str) -> None:
        with self._sessions.begin() as session:
            row = session.get_one(AnalysisRow, analysis_id)
            row.status, row.error, row.finished_at = AnalysisStatus.FAILED, reason, _now()
            _announce(session, row, AnalysisState.FAILED, reason=reason)
            notify_analysis(session, self._settings, row, Event.ANALYSIS_FAILED)
        self._on_change()
        log.warning(
            "analysis failed",
            extra={"study_uid": study_uid, "analysis_id": analysis_id, "reason": reason},
        )

    def _finish_completed(
        self, analysis_id: int, event: StudyReceived | AnalysisRequested, analysis: Analysis
    ) -> None:
        started = time.perf_counter()
        objects = self._write_objects(analysis_id, analysis)
        elapsed = round(time.perf_counter() - started, 3)  # as the pipeline's stages are
        seconds = {**analysis.findings.seconds, "result_objects": elapsed}
        findings = analysis.findings.model_copy(update={"seconds": seconds})
        with self._sessions.begin() as session:
            row = session.get_one(AnalysisRow, analysis_id)
            row.findings = findings.model_dump(mode="json")
            for obj in objects:
                session.add(obj)
                obj.analysis_id = row.id
            session.flush()
            decision = decision_for(session, str(event.event_id))
            destinations = routed_destinations(decision, self._settings.export.destinations)
            plan_exports(session, objects, destinations)
            row.status, row.step, row.progress = AnalysisStatus.COMPLETED, None, 1.0
            row.finished_at = _now()
            _announce(session, row, AnalysisState.COMPLETED)
            notify_analysis(session, self._settings, row, Event.ANALYSIS_COMPLETED)
        self._on_change()
        log.info(
            "analysis completed",
            extra={
                "study_uid": event.study_instance_uid,
                "analysis_id": analysis_id,
                "tumour": bool(findings.detection and findings.detection.tumour),
                "result_objects": len(objects),
            },
        )

    def _write_objects(self, analysis_id: int, analysis: Analysis) -> list[ResultObject]:
        """Write the result objects to storage (atomically, fsync'ed); rows are not yet added."""
        from inference_worker.results import build_result_objects

        sources = _source_datasets(analysis)
        if not sources:
            return []  # an upload without DICOM: nothing a PACS could file with the study
        built = build_result_objects(analysis, sources, self._settings.results)
        root = self._settings.storage_root
        folder = root / RESULTS_DIR / analysis.findings.study_instance_uid / str(analysis_id)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for obj in built:
            ds = obj.dataset
            path = folder / f"{obj.kind}-{ds.SOPInstanceUID}.dcm"
            partial = path.with_suffix(PARTIAL_SUFFIX)
            with partial.open("wb") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)  # held until renamed: see remove_orphan_partials
                ds.save_as(fh, enforce_file_format=True)
                fh.flush()
                os.fsync(fh.fileno())
                partial.replace(path)
            rows.append(
                ResultObject(
                    kind=obj.kind,
                    sop_class_uid=str(ds.SOPClassUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    path=str(path.relative_to(root)),
                    created_at=_now(),
                )
            )
        return rows


def remove_orphan_partials(results: Path) -> int:
    """Delete the result files that a worker killed while writing them left behind; how many.

    A writer holds an exclusive ``flock`` on its ``*.partial`` file until the file is renamed,
    and the kernel drops the lock of a process that dies, so a partial file whose lock can be
    taken belongs to nobody, while one being written (by another worker) is left alone.
    """
    removed = 0
    for path in results.rglob(f"*{PARTIAL_SUFFIX}"):
        try:
            with path.open("rb") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)
        except BlockingIOError:
            continue  # another worker is writing it
        except FileNotFoundError:
            continue  # renamed or removed meanwhile
        removed += 1
    return removed


def _source_datasets(analysis: Analysis) -> list[Dataset]:
    """The reference series' datasets the result objects derive from (pixel data included), as
    the pipeline loaded them (read here only for an analysis that holds just their paths)."""
    if analysis.source_datasets:
        return list(analysis.source_datasets)
    return [dcmread(path) for path in analysis.source_files]


def _announce(
    session: Session, row: AnalysisRow, state: AnalysisState, reason: str | None = None
) -> None:
    enqueue(
        session,
        topic=Topic.ANALYSIS_STATUS,
        key=row.study_instance_uid,
        event=AnalysisStatusChanged(
            analysis_id=row.id,
            study_instance_uid=row.study_instance_uid,
            status=state,
            step=row.step if state is AnalysisState.RUNNING else None,
            progress=row.progress,
            reason=reason,
        ),
    )


class WorkerService:
    """The worker process: consume loop, outbox relay and exporter, on their own threads."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], bus: Bus, models: Models
    ) -> None:
        self._settings = settings
        self._bus = bus
        self.relay = service_relay(
            sessions, bus, settings.bus, (*CONSUMED_TOPICS, *PUBLISHED_TOPICS)
        )
        self.notifier = Notifier(settings, sessions)
        self.exporter = Exporter(settings, sessions, on_change=self._exported)
        self.rules = load_routing_rules(settings)
        model_sets = load_model_sets(self.rules, models)
        self.worker = Worker(
            settings, sessions, models, on_change=self._changed, model_sets=model_sets
        )
        self._sessions = sessions
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _changed(self) -> None:
        self.relay.wake()
        self.exporter.wake()
        self.notifier.wake()

    def _exported(self) -> None:
        self.relay.wake()
        self.notifier.wake()

    def start(self) -> None:
        removed = remove_orphan_partials(self._settings.storage_root / RESULTS_DIR)
        if removed:
            log.warning("removed result files left half-written", extra={"files": removed})
        self._ensure_topics_quietly()
        self._spawn("outbox-relay", lambda: self.relay.run(self._stop))
        self._spawn("exporter", lambda: self.exporter.run(self._stop))
        self._spawn("notifier", lambda: self.notifier.run(self._stop))
        self._spawn("router", self._route)
        self._spawn("consumer", self._consume)
        log.info(
            "worker started",
            extra={
                "group": GROUP_ID,
                "destinations": [d.name for d in self._settings.export.destinations],
            },
        )

    def stop(self) -> None:
        """Finish the message in hand, then stop every thread."""
        self._stop.set()
        self.relay.wake()
        self.exporter.wake()
        self.notifier.wake()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self.relay.close()
        log.info("worker stopped")

    def _route(self) -> None:
        consumer = self._bus.consumer([str(t) for t in ROUTED_TOPICS], ROUTER_GROUP)
        publisher = self._bus.publisher()
        router = Router(self._settings, self.rules, self._sessions, publisher, self._stop)
        try:
            consume(
                consumer,
                publisher,
                router.handle,
                stop=self._stop,
                max_attempts=self._settings.bus.max_delivery_attempts,
            )
        finally:
            consumer.close()
            publisher.close()

    def _consume(self) -> None:
        consumer = PriorityConsumer(
            self._bus.consumer([str(t) for t in STAT_TOPICS], STAT_GROUP_ID),
            self._bus.consumer([str(t) for t in ROUTINE_TOPICS], GROUP_ID),
            [str(t) for t in STAT_TOPICS],
        )
        publisher = self._bus.publisher()
        try:
            consume(
                consumer,
                publisher,
                self.worker.handle,
                stop=self._stop,
                max_attempts=self._settings.bus.max_delivery_attempts,
                heartbeat=self._beat,
            )
        finally:
            consumer.close()
            publisher.close()

    def _beat(self) -> None:
        """Stamp the heartbeat file that the container's health probe reads."""
        path = heartbeat_path(self._settings)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError as exc:  # the probe will say so; the work goes on
            log.warning("cannot write the heartbeat file", extra={"error": str(exc)})

    def _ensure_topics(self) -> None:
        ensure_service_topics(self._bus, self._settings.bus, (*CONSUMED_TOPICS, *PUBLISHED_TOPICS))

    def _ensure_topics_quietly(self) -> None:
        try:
            self._ensure_topics()
        except BusUnavailable as exc:  # the relay retries; consuming waits for the broker
            log.warning("could not create topics yet", extra={"error": repr(exc)})

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
