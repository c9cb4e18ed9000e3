"""The inference worker against real peers: dcmtk as the scanner, Orthanc as the PACS.

A generated brain MR study is pushed with storescu to the listener; the worker analyses it and
the SEG, SR, Grad-CAM capture and PDF arrive in Orthanc in the same study. Redelivered events do
not make second results, unusable studies fail with a reason, and a PACS that is down gets every
object once it is back.
"""

from __future__ import annotations

import datetime as dt
import io
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from inference_worker import pipeline, service, volume
from inference_worker.exporter import Exporter, plan_exports
from inference_worker.pipeline import Models
from inference_worker.service import Worker, WorkerService
from models.synthetic import generate_case
from models.synthetic.dicom import SyntheticStudy
from models.synthetic.nifti import write_nifti
from neurogate.bus import Message, open_bus
from neurogate.bus.runner import PoisonMessage
from neurogate.db import create_db_engine, session_factory, upgrade_to_head
from neurogate.db.models import (
    Analysis,
    AnalysisStatus,
    Export,
    ExportStatus,
    ResultObject,
    Series,
    Study,
    StudyStatus,
)
from neurogate.settings import ExportSettings, PacsDestination, Settings
from schemas.events import (
    AnalysisRequested,
    AnalysisSource,
    CompletionTrigger,
    InputFormat,
    SeriesSummary,
    StudyReceived,
)
from schemas.topics import Topic
from tests.conftest import Database, free_port, make_settings
from tests.harness import running_listener, storescu, wait_for
from tests.orthanc import AE_TITLE, OrthancServer

RESULT_MODALITIES = {"SEG": 1, "SR": 1, "OT": 1, "DOC": 1}  # Grad-CAM capture: OT


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path / "orthanc", free_port(), free_port())
    server.start()
    yield server
    server.stop()


def _with_pacs(settings: Settings, server: OrthancServer, **policy: float) -> Settings:
    destination = PacsDestination(
        name="pacs", ae_title=AE_TITLE, host="127.0.0.1", port=server.dicom_port
    )
    export = ExportSettings(destinations=[destination], **policy)  # type: ignore[arg-type]
    return settings.model_copy(update={"export": export})


def _files(study: SyntheticStudy) -> list[Path]:
    return [f for series in study.series.values() for f in series.files]


def test_a_pushed_study_comes_back_to_the_pacs_as_seg_sr_capture_and_pdf(
    tmp_path: Path, sqlite_url: str, orthanc: OrthancServer, models: Models, glioma: SyntheticStudy
) -> None:
    settings = _with_pacs(make_settings(tmp_path / "node", sqlite_url), orthanc)
    engine = create_db_engine(settings.sqlalchemy_url)
    with running_listener(settings) as listener:
        bus = open_bus(settings.bus, settings.embedded_bus_path)
        worker = WorkerService(settings, session_factory(engine), bus, models)
        worker.start()
        try:
            sent = storescu(listener.address[1], _files(glioma))
            assert sent.returncode == 0, sent.stderr
            uid = glioma.study_instance_uid
            for modality, count in RESULT_MODALITIES.items():
                found = orthanc.wait_for_instances(uid, modality, count, timeout=240)
                assert len(found) == count, modality
        finally:
            worker.stop()
            bus.close()

    with session_factory(engine)() as session:
        analysis = session.scalars(select(Analysis)).one()
        assert analysis.status == AnalysisStatus.COMPLETED and analysis.source == "dicom"
        assert analysis.findings is not None
        assert analysis.findings["classification"]["label"] == "glioma"
        exports = session.scalars(select(Export)).all()
        assert len(exports) == 4
        assert {(e.status, e.dimse_status, e.attempts) for e in exports} == {
            (ExportStatus.SENT, 0, 1)
        }
    engine.dispose()

    # The SEG in the PACS is on the T1CE series and each frame names its source instance.
    seg_id = orthanc.post(
        "/tools/find",
        {"Level": "Instance", "Query": {"StudyInstanceUID": uid, "Modality": "SEG"}},
    )[0]
    with urllib.request.urlopen(f"{orthanc.url}/instances/{seg_id}/file", timeout=10) as r:
        seg = dcmread(io.BytesIO(r.read()))
    reference = glioma.series["t1ce"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == reference.series_instance_uid
    sources = {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in reference.files}
    referenced = {
        item.SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for item in frame.DerivationImageSequence
    }
    assert referenced == sources
    assert seg.PatientID == "NG-TEST-1" and seg.StudyInstanceUID == uid


def _stored_event(settings: Settings, study: SyntheticStudy) -> StudyReceived:
    """Put ``study`` in the node's storage as the listener would, and its event."""
    root = settings.storage_root
    folder = root / "studies" / study.study_instance_uid
    series = []
    for written in study.series.values():
        target = folder / written.series_instance_uid
        target.mkdir(parents=True)
        for path in written.files:
            (target / path.name).write_bytes(path.read_bytes())
        series.append(
            SeriesSummary(
                series_instance_uid=written.series_instance_uid,
                modality="MR",
                sop_class_uids=["1.2.840.10008.5.1.4.1.1.4"],
                instance_count=len(written.files),
                path=str(target.relative_to(root)),
            )
        )
    now = dt.datetime.now(dt.UTC)
    return StudyReceived(
        study_instance_uid=study.study_instance_uid,
        revision=1,
        trigger=CompletionTrigger.QUIET_PERIOD,
        calling_ae_titles=["SCANNER"],
        called_ae_title="NEUROGATE",
        first_received_at=now,
        last_received_at=now,
        instance_count=sum(s.instance_count for s in series),
        path=str(folder.relative_to(root)),
        series=series,
    )


def _message(event: StudyReceived | bytes, offset: int = 0) -> Message:
    value = event if isinstance(event, bytes) else event.to_bytes()
    return Message(Topic.STUDY_RECEIVED, "key", value, (), 0, offset)


def test_redelivery_is_idempotent_and_unusable_studies_fail_with_a_reason(
    tmp_path: Path, database: Database, models: Models, glioma: SyntheticStudy
) -> None:
    settings = make_settings(tmp_path / "node", database.url)
    worker = Worker(settings, database.sessions, models)
    event = _stored_event(settings, glioma)

    worker.handle(_message(event))
    worker.handle(_message(event, offset=1))  # at-least-once: the same event again

    with database.sessions() as session:
        analysis = session.scalars(select(Analysis)).one()
        assert analysis.status == AnalysisStatus.COMPLETED and analysis.attempts == 1
        kinds = sorted(o.kind for o in analysis.objects)
        assert kinds == ["gradcam", "pdf", "seg", "sr"]
        for obj in analysis.objects:
            assert (settings.storage_root / obj.path).is_file()
        assert session.scalar(select(func.count()).select_from(Export)) == 0  # no destinations

    # Only a FLAIR: detection and classification, and the reason segmentation did not run.
    flair = glioma.series["flair"]
    flair_only = event.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "path": next(
                s.path for s in event.series if s.series_instance_uid == flair.series_instance_uid
            ),
        }
    )
    worker.handle(_message(flair_only))
    with database.sessions() as session:
        partial = session.scalars(
            select(Analysis).where(Analysis.request_event_id == str(flair_only.event_id))
        ).one()
        assert partial.status == AnalysisStatus.COMPLETED and partial.findings is not None
        assert partial.findings["skipped"] == {"segmentation": "missing T1, T1CE, T2"}
        assert partial.findings["classification"]["label"] == "glioma"
        assert sorted(o.kind for o in partial.objects) == ["gradcam", "pdf", "sr"]

    # A study with no MR series (a CT sent to the wrong node): failed, with the reason, and the
    # worker carries on.
    ct_folder = settings.storage_root / "studies" / "ct"
    ct_folder.mkdir(parents=True)
    ct = dcmread(glioma.series["flair"].files[0])
    ct.Modality, ct.StudyInstanceUID = "CT", generate_uid()
    ct.save_as(ct_folder / "ct.dcm")
    bad = event.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "study_instance_uid": ct.StudyInstanceUID,
            "path": "studies/ct",
        }
    )
    worker.handle(_message(bad))
    with database.sessions() as session:
        failed = session.scalars(
            select(Analysis).where(Analysis.request_event_id == str(bad.event_id))
        ).one()
        assert failed.status == AnalysisStatus.FAILED
        assert "no usable T1, T1CE, T2 or FLAIR series" in (failed.error or "")

    with pytest.raises(PoisonMessage):
        worker.handle(_message(b'{"event_type": "study.received"}'))


def test_the_worker_reads_one_header_per_series_and_every_file_once(
    tmp_path: Path,
    database: Database,
    models: Models,
    glioma: SyntheticStudy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The listener's inventory describes the study (one header read per series, for what
    selection needs), each file is then read once, and the result objects derive from the
    reference series as loaded, not from a second read of it."""
    settings = make_settings(tmp_path / "node", database.url)
    event = _stored_event(settings, glioma)
    reads: list[tuple[str, bool]] = []  # (path, header only)
    for module in (pipeline, volume, service):
        read = module.dcmread

        def counted(path, *args, _read=read, **kwargs):  # type: ignore[no-untyped-def]
            reads.append((str(path), bool(kwargs.get("stop_before_pixels"))))
            return _read(path, *args, **kwargs)

        monkeypatch.setattr(module, "dcmread", counted)

    Worker(settings, database.sessions, models).handle(_message(event))

    with database.sessions() as session:
        analysis = session.scalars(select(Analysis)).one()
        assert analysis.status == AnalysisStatus.COMPLETED and analysis.attempts == 1
        assert sorted(o.kind for o in analysis.objects) == ["gradcam", "pdf", "seg", "sr"]
    stored = [sorted((settings.storage_root / s.path).glob("*.dcm")) for s in event.series]
    assert sorted(path for path, header in reads if header) == sorted(str(f[0]) for f in stored)
    full = [path for path, header in reads if not header]
    assert sorted(full) == sorted(str(path) for files in stored for path in files)


def test_a_rerun_takes_the_series_from_the_rows_the_listener_wrote(
    tmp_path: Path, database: Database, glioma: SyntheticStudy
) -> None:
    """A re-run finds the study's series in the database and reads one header of each: with
    every other instance garbage, the chosen series fail to load on the files the header scan
    would have skipped (the reason names one); no model runs."""
    settings = make_settings(tmp_path / "node", database.url)
    event = _stored_event(settings, glioma)
    with database.sessions.begin() as session:
        record_listener_rows(session, event)
    for s in event.series:
        for path in sorted((settings.storage_root / s.path).glob("*.dcm"))[1:]:
            path.write_bytes(b"garbage")
    rerun = AnalysisRequested(
        study_instance_uid=event.study_instance_uid,
        source=AnalysisSource.RERUN,
        input_format=InputFormat.DICOM,
        path=event.path,
    )

    Worker(settings, database.sessions, Models({}, {})).handle(
        Message(Topic.ANALYSIS_REQUESTED, "key", rerun.to_bytes(), (), 0, 0)
    )

    with database.sessions() as session:
        row = session.scalars(select(Analysis)).one()
        assert row.status == AnalysisStatus.FAILED and row.attempts == 1
        assert "0002.dcm: not a readable DICOM instance" in (row.error or ""), row.error


def record_listener_rows(session: Session, event: StudyReceived) -> Study:
    """The study and series rows the listener commits with ``event`` when a study completes."""
    now = dt.datetime.now(dt.UTC)
    study = Study(
        study_instance_uid=event.study_instance_uid,
        status=StudyStatus.COMPLETE,
        revision=1,
        path=event.path,
        instance_count=event.instance_count,
        called_ae_title=event.called_ae_title,
        calling_ae_titles=event.calling_ae_titles,
        first_received_at=now,
        last_received_at=now,
        completed_at=now,
    )
    session.add(study)
    for s in event.series:
        session.add(
            Series(
                study=study,
                series_instance_uid=s.series_instance_uid,
                modality=s.modality,
                sop_class_uids=s.sop_class_uids,
                instance_count=s.instance_count,
                path=s.path,
            )
        )
    return study


def _planned_exports(
    settings: Settings, sessions: sessionmaker[Session], study_uid: str, files: list[Path]
) -> None:
    """A finished analysis whose result objects are ``files``, with exports planned."""
    root = settings.storage_root
    now = dt.datetime.now(dt.UTC)
    with sessions.begin() as session:
        analysis = Analysis(
            request_event_id=str(uuid.uuid4()),
            study_instance_uid=study_uid,
            revision=1,
            source="dicom",
            status=AnalysisStatus.COMPLETED,
            progress=1.0,
            attempts=1,
            created_at=now,
        )
        session.add(analysis)
        session.flush()
        objects = []
        for n, path in enumerate(files):
            target = root / "results" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            ds = dcmread(target, stop_before_pixels=True)
            objects.append(
                ResultObject(
                    analysis_id=analysis.id,
                    kind=f"obj{n}",
                    sop_class_uid=str(ds.SOPClassUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    path=str(target.relative_to(root)),
                    created_at=now,
                )
            )
        session.add_all(objects)
        session.flush()
        plan_exports(session, objects, settings.export.destinations)


def test_export_waits_for_a_pacs_that_is_down_and_sends_each_object_once(
    tmp_path: Path, sqlite_url: str, glioma: SyntheticStudy
) -> None:
    server = OrthancServer(tmp_path / "orthanc", free_port(), free_port())
    settings = _with_pacs(
        make_settings(tmp_path / "node", sqlite_url), server, backoff_seconds=0.2, max_attempts=5
    )
    upgrade_to_head(sqlite_url)
    engine = create_db_engine(sqlite_url)
    sessions = session_factory(engine)
    _planned_exports(
        settings, sessions, glioma.study_instance_uid, glioma.series["flair"].files[:3]
    )

    exporter = Exporter(settings, sessions)
    assert exporter.export_due() == 0  # the PACS is down
    with sessions() as session:
        rows = session.scalars(select(Export)).all()
        assert all(r.status == ExportStatus.PENDING and r.attempts == 1 for r in rows)
        assert all("association failed" in (r.last_error or "") for r in rows)

    server.start()
    try:
        assert wait_for(exporter.export_due, timeout=10, interval=0.1) == 3
        assert exporter.export_due() == 0  # nothing is sent twice
        assert len(server.instances(glioma.study_instance_uid)) == 3
        with sessions() as session:
            rows = session.scalars(select(Export)).all()
            assert {(r.status, r.attempts, r.dimse_status) for r in rows} == {
                (ExportStatus.SENT, 2, 0)
            }
    finally:
        server.stop()
        engine.dispose()


def test_a_destination_that_refuses_is_parked_as_failed_after_the_last_attempt(
    tmp_path: Path, sqlite_url: str, orthanc: OrthancServer, glioma: SyntheticStudy
) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url)
    wrong = PacsDestination(
        name="wrong-ae", ae_title="NOT-ORTHANC", host="127.0.0.1", port=orthanc.dicom_port
    )
    settings = settings.model_copy(
        update={
            "export": ExportSettings(destinations=[wrong], backoff_seconds=0.05, max_attempts=2)
        }
    )
    upgrade_to_head(sqlite_url)
    engine = create_db_engine(sqlite_url)
    sessions = session_factory(engine)
    _planned_exports(
        settings, sessions, glioma.study_instance_uid, glioma.series["flair"].files[:1]
    )

    exporter = Exporter(settings, sessions)

    def parked() -> bool:
        exporter.export_due()
        with sessions() as session:
            return session.scalars(select(Export)).one().status == ExportStatus.FAILED

    wait_for(parked, timeout=10, interval=0.1)
    with sessions() as session:
        row = session.scalars(select(Export)).one()
        assert row.attempts == 2
        assert (row.last_error or "").startswith(
            "association rejected: Called AE title not recognised (rejected (permanent), by the "
        ), row.last_error
    assert exporter.export_due() == 0  # parked: not retried until someone re-sends it
    assert orthanc.instances(glioma.study_instance_uid) == []
    engine.dispose()


def test_uploads_and_reruns_from_the_api_are_analysed(
    tmp_path: Path, sqlite_url: str, models: Models, glioma: SyntheticStudy
) -> None:
    """What the API asks for: a NIfTI upload (no DICOM: findings, no objects), a re-run."""
    settings = make_settings(tmp_path / "node", sqlite_url)
    upgrade_to_head(sqlite_url)
    engine = create_db_engine(sqlite_url)
    sessions = session_factory(engine)
    worker = Worker(settings, sessions, models)
    root = settings.storage_root

    case = generate_case(810007, "pituitary", voxel_mm=2.0)
    paths = write_nifti(case, root / "uploads")
    upload = AnalysisRequested(
        study_instance_uid=generate_uid(),
        source=AnalysisSource.UPLOAD,
        input_format=InputFormat.NIFTI,
        path=f"uploads/{case.case_id}",
        nifti_files={
            role: str(paths[name].relative_to(root))
            for role, name in (("T1", "t1"), ("T1CE", "t1ce"), ("T2", "t2"), ("FLAIR", "flair"))
        },
    )
    rerun = AnalysisRequested(
        study_instance_uid=glioma.study_instance_uid,
        source=AnalysisSource.RERUN,
        input_format=InputFormat.DICOM,
        path=_stored_event(settings, glioma).path,
        requested_by="dr.who",
    )
    for n, event in enumerate((upload, rerun)):
        worker.handle(Message(Topic.ANALYSIS_REQUESTED, "key", event.to_bytes(), (), 0, n))

    with sessions() as session:
        rows = {r.source: r for r in session.scalars(select(Analysis))}
        assert set(rows) == {"upload", "rerun"}
        assert all(r.status == AnalysisStatus.COMPLETED for r in rows.values())
        uploaded = rows["upload"].findings
        assert uploaded is not None and uploaded["classification"]["label"] == "pituitary"
        assert uploaded["segmentation"]["volumes_ml"]["WT"] > 0
        assert rows["upload"].objects == []  # nothing a PACS could file without DICOM sources
        assert sorted(o.kind for o in rows["rerun"].objects) == ["gradcam", "pdf", "seg", "sr"]
    engine.dispose()
