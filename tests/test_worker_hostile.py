"""The worker against hostile input and its own death: bombs, poison messages, half-written files.

A decompression bomb fails its analysis from its header, once, and the next study is analysed.
A message whose analysis killed its worker (SIGKILL mid-analysis, as the OOM killer does) as many
times as ``BUS__MAX_DELIVERY_ATTEMPTS`` allows goes to the dead-letter topic with its analysis
marked failed, and the queue behind it moves on. Result files left half-written are removed when
a worker starts.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from inference_worker import service
from inference_worker.pipeline import Models, StudyFiles
from inference_worker.service import GROUP_ID, Worker, WorkerService
from models.synthetic.dicom import SyntheticStudy
from neurogate.bus import Bus, Message, open_bus
from neurogate.bus.runner import ERROR_HEADER, consume
from neurogate.db import create_db_engine, session_factory, upgrade_to_head
from neurogate.db.models import Analysis, AnalysisStatus
from neurogate.settings import BusSettings, Settings
from schemas.events import AnalysisRequested, AnalysisSource, InputFormat, StudyReceived
from schemas.topics import Topic, dead_letter_topic
from tests.bombs import nifti_bomb, write_rle_bomb
from tests.conftest import Database, make_settings
from tests.harness import wait_for
from tests.test_worker import _stored_event

REPO = Path(__file__).resolve().parents[1]
NO_MODELS = Models({}, {})  # for studies that fail before any model runs


def _analysis(database: Database, event_id: uuid.UUID) -> Analysis | None:
    with database.sessions() as session:
        return session.scalar(select(Analysis).where(Analysis.request_event_id == str(event_id)))


def _failed(database: Database, event_id: uuid.UUID) -> Analysis | None:
    """The analysis row of ``event_id`` once it has failed, else None (for :func:`wait_for`)."""
    row = _analysis(database, event_id)
    return row if row is not None and row.status == AnalysisStatus.FAILED else None


def _publish(bus: Bus, *events: StudyReceived | AnalysisRequested) -> None:
    publisher = bus.publisher()
    for event in events:  # one key: one partition, in this order
        topic = (
            Topic.STUDY_RECEIVED if isinstance(event, StudyReceived) else Topic.ANALYSIS_REQUESTED
        )
        publisher.publish(str(topic), "one-queue", event.to_bytes())
    publisher.close()


@contextmanager
def _consuming(worker: Worker, bus: Bus, settings: Settings) -> Iterator[None]:
    """The worker's consume loop on the bus, in a thread, as the service runs it."""
    consumer = bus.consumer([str(Topic.STUDY_RECEIVED)], GROUP_ID)
    publisher = bus.publisher()
    stop = threading.Event()
    loop = threading.Thread(
        target=consume,
        args=(consumer, publisher, worker.handle),
        kwargs={
            "stop": stop,
            "max_attempts": settings.bus.max_delivery_attempts,
            "poll_timeout_s": 0.1,
            "retry_backoff_s": 0.01,
        },
        daemon=True,
    )
    loop.start()
    try:
        yield
    finally:
        stop.set()
        loop.join(timeout=120)
        consumer.close()
        publisher.close()


def _dead_letters(bus: Bus, topic: Topic = Topic.STUDY_RECEIVED) -> list[Message]:
    consumer = bus.consumer([dead_letter_topic(topic)], f"test-{uuid.uuid4()}")
    try:
        return consumer.poll(1.0, max_messages=100)
    finally:
        consumer.close()


def _bomb_event(settings: Settings, template: StudyReceived) -> StudyReceived:
    """A stored study whose one series is a 50 MB RLE instance declaring 6000 frames."""
    uid = generate_uid()
    write_rle_bomb(settings.storage_root / "studies" / uid / "bomb" / "bomb.dcm", study_uid=uid)
    return template.model_copy(
        update={"event_id": uuid.uuid4(), "study_instance_uid": uid, "path": f"studies/{uid}"}
    )


def test_a_6000_frame_bomb_fails_its_analysis_once_and_the_next_study_completes(
    tmp_path: Path, database: Database, models: Models, glioma: SyntheticStudy
) -> None:
    settings = make_settings(tmp_path / "node", database.url)
    study = _stored_event(settings, glioma)
    bomb = _bomb_event(settings, study)
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    _publish(bus, bomb, study)
    worker = Worker(settings, database.sessions, models)

    with _consuming(worker, bus, settings):
        finished = (AnalysisStatus.COMPLETED, AnalysisStatus.FAILED)

        def done() -> Analysis | None:
            row = _analysis(database, study.event_id)
            return row if row is not None and row.status in finished else None

        wait_for(done, timeout=240, interval=0.2)

    failed = _analysis(database, bomb.event_id)
    assert failed is not None and failed.status == AnalysisStatus.FAILED
    assert failed.attempts == 1  # a permanent failure: not retried
    reason = failed.error or ""
    assert "(6000 x 512 x 512 of 16 bits) would need 9,000 MB to decode" in reason, reason
    assert "more than the limit of 1,024 MB (NEUROGATE_MAX_DECODE_MB)" in reason
    completed = _analysis(database, study.event_id)
    assert completed is not None and completed.status == AnalysisStatus.COMPLETED
    assert _dead_letters(bus) == []
    bus.close()


def test_a_nifti_whose_header_claims_1_5_gib_fails_before_it_is_read(
    tmp_path: Path, database: Database
) -> None:
    settings = make_settings(tmp_path / "node", database.url)
    path = settings.storage_root / "uploads" / "bomb" / "t1.nii.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(nifti_bomb()[:4096])  # the header, and next to nothing of the volume
    event = AnalysisRequested(
        study_instance_uid=generate_uid(),
        source=AnalysisSource.UPLOAD,
        input_format=InputFormat.NIFTI,
        path="uploads/bomb",
        nifti_files={"T1": "uploads/bomb/t1.nii.gz"},
    )
    worker = Worker(settings, database.sessions, NO_MODELS)
    worker.handle(Message(Topic.ANALYSIS_REQUESTED, "key", event.to_bytes(), (), 0, 0))

    row = _analysis(database, event.event_id)
    assert row is not None and row.status == AnalysisStatus.FAILED and row.attempts == 1
    assert "t1.nii.gz (1536 x 1024 x 1024 of 8 bits) would need 7,680 MB" in (row.error or "")


def test_a_message_whose_attempts_never_came_back_is_dead_lettered_and_the_queue_moves_on(
    tmp_path: Path, database: Database, glioma: SyntheticStudy
) -> None:
    settings = make_settings(tmp_path / "node", database.url)
    stuck = _stored_event(settings, glioma)
    # Its worker was killed mid-analysis as often as allowed: attempts recorded, never finished.
    with database.sessions.begin() as session:
        session.add(
            Analysis(
                request_event_id=str(stuck.event_id),
                study_instance_uid=stuck.study_instance_uid,
                revision=1,
                source="dicom",
                status=AnalysisStatus.RUNNING,
                step="segmentation",
                progress=0.4,
                attempts=settings.bus.max_delivery_attempts,
                worker="node-1:4242",
                created_at=dt.datetime.now(dt.UTC),
            )
        )
    ct_folder = settings.storage_root / "studies" / "ct"
    ct_folder.mkdir(parents=True)
    ct = dcmread(glioma.series["flair"].files[0])
    ct.Modality, ct.StudyInstanceUID = "CT", generate_uid()
    ct.save_as(ct_folder / "ct.dcm")
    behind = stuck.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "study_instance_uid": ct.StudyInstanceUID,
            "path": "studies/ct",
        }
    )
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    _publish(bus, stuck, behind)

    with _consuming(Worker(settings, database.sessions, NO_MODELS), bus, settings):
        failed_behind = wait_for(lambda: _failed(database, behind.event_id), timeout=60)

    row = _analysis(database, stuck.event_id)
    assert row is not None and row.status == AnalysisStatus.FAILED
    assert row.attempts == settings.bus.max_delivery_attempts  # not tried again
    assert (row.error or "").startswith("gave up after 3 attempts that never finished")
    assert "node-1:4242" in (row.error or "")
    dead = _dead_letters(bus)
    assert [m.value for m in dead] == [stuck.to_bytes()]
    assert dead[0].header(ERROR_HEADER).decode().startswith("gave up after 3 attempts")
    assert "no usable T1, T1CE, T2 or FLAIR series" in (failed_behind.error or "")
    bus.close()


def test_a_study_whose_pixel_data_cannot_be_decoded_fails_once_with_the_reason(
    tmp_path: Path, database: Database, glioma: SyntheticStudy
) -> None:
    """Unreadable pixel data is an unusable study: failed on its first attempt, not retried."""
    settings = make_settings(tmp_path / "node", database.url)
    event = _stored_event(settings, glioma)
    for series in event.series:
        path = sorted((settings.storage_root / series.path).glob("*.dcm"))[2]
        ds = dcmread(path)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # a truncated transfer
        ds.save_as(path)
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    _publish(bus, event)

    with _consuming(Worker(settings, database.sessions, NO_MODELS), bus, settings):
        row = wait_for(lambda: _failed(database, event.event_id), timeout=120)

    assert row.attempts == 1
    reason = row.error or ""
    assert reason.startswith("no usable T1, T1CE, T2 or FLAIR series in the study"), reason
    assert "0003.dcm: pixel data or image attributes unreadable" in reason
    assert _dead_letters(bus) == []
    bus.close()


def test_other_errors_are_retried_and_dead_lettered_after_the_last_attempt(
    tmp_path: Path, database: Database, glioma: SyntheticStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed read of the storage is retried, and the retry analyses (here: finds the study
    unusable); an error that is no verdict on the study (a bug's ValueError) is retried up to
    ``BUS__MAX_DELIVERY_ATTEMPTS`` and then dead-lettered, not recorded as the study's fault."""
    settings = make_settings(tmp_path / "node", database.url)
    template = _stored_event(settings, glioma)
    events = {}
    for name in ("flaky", "buggy"):  # a CT each: no usable series, when it is analysed
        folder = settings.storage_root / "studies" / name
        folder.mkdir(parents=True)
        ct = dcmread(glioma.series["flair"].files[0])
        ct.Modality, ct.StudyInstanceUID = "CT", generate_uid()
        ct.save_as(folder / "ct.dcm")
        update = {"event_id": uuid.uuid4(), "study_instance_uid": ct.StudyInstanceUID}
        events[name] = template.model_copy(update={**update, "path": f"studies/{name}"})
    flaky, buggy = events["flaky"], events["buggy"]
    scan, scanned = service.scan_folder, []

    def failing_scan(folder: Path) -> StudyFiles:
        scanned.append(folder.name)
        if folder.name == "buggy":
            raise ValueError("a bug, not the study")
        if scanned.count("flaky") == 1:
            raise OSError(5, "Input/output error", str(folder))
        return scan(folder)

    monkeypatch.setattr(service, "scan_folder", failing_scan)
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    _publish(bus, flaky, buggy)

    with _consuming(Worker(settings, database.sessions, NO_MODELS), bus, settings):
        gave_up = wait_for(lambda: _failed(database, buggy.event_id), timeout=60)

    retried = _analysis(database, flaky.event_id)
    assert retried is not None and retried.status == AnalysisStatus.FAILED
    assert retried.attempts == 2
    assert (retried.error or "").startswith("no usable T1, T1CE, T2 or FLAIR series")
    assert gave_up.attempts == settings.bus.max_delivery_attempts == 3
    assert (
        gave_up.error == "gave up after 3 attempts; last error: ValueError('a bug, not the study')"
    )
    assert [m.value for m in _dead_letters(bus)] == [buggy.to_bytes()]
    bus.close()


def _worker_process(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """``neurogate worker`` in its own process, on the test's database, bus and storage."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NEUROGATE_")},
        "PYTHONPATH": str(REPO),
        "NEUROGATE_DATA_DIR": str(settings.data_dir),
        "NEUROGATE_DATABASE_URL": settings.sqlalchemy_url,
        "NEUROGATE_BUS__MAX_DELIVERY_ATTEMPTS": str(settings.bus.max_delivery_attempts),
        "NEUROGATE_BUS__KAFKA_SESSION_TIMEOUT_MS": "1000",
        "NEUROGATE_BUS__KAFKA_HEARTBEAT_INTERVAL_MS": "200",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "neurogate", "worker"],
            cwd=settings.data_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def sqlite_database(sqlite_url: str) -> Iterator[Database]:
    """One database kind is enough where three processes start and load the models in turn."""
    upgrade_to_head(sqlite_url)
    engine = create_db_engine(sqlite_url)
    yield Database(sqlite_url, engine, session_factory(engine))
    engine.dispose()


def test_a_study_that_kills_its_worker_is_dead_lettered_after_the_last_attempt(
    tmp_path: Path, sqlite_database: Database, glioma: SyntheticStudy
) -> None:
    database = sqlite_database
    attempts = 2
    settings = make_settings(
        tmp_path / "node", database.url, bus=BusSettings(max_delivery_attempts=attempts)
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    deadly = _stored_event(settings, glioma)
    behind = deadly.model_copy(update={"event_id": uuid.uuid4()})
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    _publish(bus, deadly, behind)
    log = tmp_path / "worker.log"

    for attempt in range(1, attempts + 1):
        process = _worker_process(settings, log)
        try:

            def mid_analysis(attempt: int = attempt) -> bool:
                row = _analysis(database, deadly.event_id)
                return (
                    row is not None
                    and row.attempts == attempt
                    and row.step == "segmentation"
                    and row.status == AnalysisStatus.RUNNING
                )

            wait_for(mid_analysis, timeout=240, interval=0.05)
        finally:
            process.send_signal(signal.SIGKILL)  # what the OOM killer does
            process.wait(timeout=30)

    process = _worker_process(settings, log)
    try:

        def behind_finished() -> bool:
            row = _analysis(database, behind.event_id)
            return row is not None and row.status == AnalysisStatus.COMPLETED

        wait_for(behind_finished, timeout=300, interval=0.2)
    finally:
        process.terminate()
        process.wait(timeout=60)

    row = _analysis(database, deadly.event_id)
    assert row is not None and row.status == AnalysisStatus.FAILED, log.read_text()[-3000:]
    assert row.attempts == attempts
    reason = row.error or ""
    assert reason.startswith(f"gave up after {attempts} attempts that never finished"), reason
    # A worker process takes received studies through its router: the routine analysis topic.
    dead = _dead_letters(bus, Topic.ANALYSIS_ROUTINE)
    assert [m.value for m in dead] == [deadly.to_bytes()]
    assert dead[0].header(ERROR_HEADER).decode() == reason
    bus.close()


def test_result_files_left_half_written_are_removed_when_a_worker_starts(
    tmp_path: Path, database: Database
) -> None:
    settings = make_settings(tmp_path / "node", database.url)
    folder = settings.storage_root / "results" / generate_uid() / "7"
    folder.mkdir(parents=True)
    orphans = [folder / "seg-1.partial", folder / "sr-2.partial"]
    for orphan in orphans:
        orphan.write_bytes(b"half a SEG")
    kept = folder / "pdf-3.dcm"
    kept.write_bytes(b"a finished object")
    in_progress = folder / "gradcam-4.partial"
    bus = open_bus(settings.bus, settings.embedded_bus_path)
    with in_progress.open("wb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)  # another worker is writing this one right now
        service = WorkerService(settings, database.sessions, bus, NO_MODELS)
        service.start()
        service.stop()
    bus.close()
    assert not any(orphan.exists() for orphan in orphans)
    assert kept.exists() and in_progress.exists()
