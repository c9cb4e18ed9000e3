"""Priors from the PACS for follow-up, against a real Orthanc as the PACS.

A prior brain MR study of the patient is in Orthanc; the current study is pushed to the
listener with storescu. The worker finds the prior (C-FIND), has Orthanc send it to the
listener (C-MOVE), analyses it as its own study, and reports the volume changes with both
dates in the SR (dciodvfy clean), the PDF and the API's follow-up view. The listener's own
completion event for the prior does not make a second analysis. Without a usable PACS or
prior the findings say why there is no comparison.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from inference_worker.analysis import Analysis
from inference_worker.pipeline import Models
from inference_worker.priors import STAGE, FollowUp, PriorsPacs, prior_event_id
from inference_worker.service import WorkerService
from models.synthetic import generate_case
from models.synthetic.dicom import SyntheticStudy, write_dicom_study
from neurogate.bus import open_bus
from neurogate.db import create_db_engine, session_factory
from neurogate.db.models import Analysis as AnalysisRow
from neurogate.db.models import AnalysisStatus, Study
from neurogate.settings import ApiSettings, PriorSettings
from schemas.findings import DetectionFinding, Findings, ModelVersion, SegmentationFinding
from tests.conftest import Database, free_port, make_settings
from tests.dicomgen import write_mr_study
from tests.harness import running_listener, storescu, study_row, wait_for
from tests.orthanc import AE_TITLE, OrthancServer
from tests.studies import PROFILE
from tests.test_api_support import ADMIN, admin_headers, running_app
from tests.test_results import dciodvfy_errors, pdf_text

PATIENT = "NG-PRIOR-1"
PRIOR_DATE, CURRENT_DATE = "20250304", "20260302"


def _study(folder: Path, case_seed: int, date: str) -> SyntheticStudy:
    """A small four-series glioma study of the patient, dated ``date``."""
    case = generate_case(case_seed, "glioma", voxel_mm=2.0)
    study = write_dicom_study(
        case, folder, seed=case_seed % 97, profile=PROFILE, patient_id=PATIENT
    )
    for path in _files(study):
        ds = dcmread(path)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.save_as(path)
    return study


def _files(study: SyntheticStudy) -> list[Path]:
    return [f for series in study.series.values() for f in series.files]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path / "orthanc", free_port(), free_port())
    server.start()
    yield server
    server.stop()


def _put_modality(orthanc: OrthancServer, ae_title: str, port: int) -> None:
    """Make the listener a known modality of Orthanc (the C-MOVE destination)."""
    body = json.dumps({"AET": ae_title, "Host": "127.0.0.1", "Port": port}).encode()
    request = urllib.request.Request(
        f"{orthanc.url}/modalities/{ae_title}", data=body, method="PUT"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def _upload(orthanc: OrthancServer, files: list[Path]) -> None:
    for path in files:
        request = urllib.request.Request(
            f"{orthanc.url}/instances", data=path.read_bytes(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10):
            pass


def _priors(orthanc: OrthancServer, **extra: object) -> PriorSettings:
    return PriorSettings.model_validate(
        {
            "ae_title": AE_TITLE,
            "port": orthanc.dicom_port,
            "timeout_seconds": 10,
            "retrieve_timeout_seconds": 120,
            **extra,
        }
    )


def test_a_prior_in_the_pacs_is_retrieved_analysed_and_compared(
    tmp_path: Path,
    sqlite_url: str,
    orthanc: OrthancServer,
    models: Models,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prior = _study(tmp_path / "prior", 820011, PRIOR_DATE)
    current = _study(tmp_path / "current", 820023, CURRENT_DATE)
    _upload(orthanc, _files(prior))
    settings = make_settings(tmp_path / "node", sqlite_url)
    settings = settings.model_copy(
        update={
            "priors": _priors(orthanc),
            "api": ApiSettings(admin_username=ADMIN[0], admin_password=ADMIN[1]),
        }
    )
    engine = create_db_engine(settings.sqlalchemy_url)
    sessions = session_factory(engine)
    caplog.set_level(logging.INFO, logger="inference_worker")
    with running_listener(settings) as listener:
        _put_modality(orthanc, settings.listener.ae_title, listener.address[1])
        bus = open_bus(settings.bus, settings.embedded_bus_path)
        worker = WorkerService(settings, sessions, bus, models)
        worker.start()
        try:
            sent = storescu(listener.address[1], _files(current))
            assert sent.returncode == 0, sent.stderr
            row = wait_for(
                lambda: _completed(sessions, current.study_instance_uid), timeout=600, interval=1
            )
            # The listener completes the retrieved prior too; its event finds it analysed.
            wait_for(lambda: "study analysed as a prior already" in caplog.text, timeout=120)
        finally:
            worker.stop()
            bus.close()

    assert row is not None and row.status == AnalysisStatus.COMPLETED, row and row.error
    prior_uid = prior.study_instance_uid
    with sessions() as session:
        stored = session.scalar(select(Study).where(Study.study_instance_uid == prior_uid))
        assert stored is not None and stored.patient_id == PATIENT
        assert stored.instance_count == len(_files(prior))  # every instance came by C-MOVE
        assert stored.calling_ae_titles == [AE_TITLE]
        prior_rows = session.scalars(
            select(AnalysisRow).where(AnalysisRow.study_instance_uid == prior_uid)
        ).all()
        assert len(prior_rows) == 1  # analysed once, for the follow-up
        prior_row = prior_rows[0]
        assert prior_row.status == AnalysisStatus.COMPLETED
        assert prior_row.request_event_id == str(prior_event_id(prior_uid, stored.revision))
        assert prior_row.findings is not None
        previous = prior_row.findings["segmentation"]["volumes_ml"]
        assert sorted(o.kind for o in prior_row.objects) == ["gradcam", "pdf", "seg", "sr"]
        sr_path = next(o.path for o in row.objects if o.kind == "sr")
        pdf_path = next(o.path for o in row.objects if o.kind == "pdf")
    engine.dispose()

    findings = Findings.model_validate(row.findings)
    comparison = findings.prior
    assert comparison is not None, findings.skipped
    assert comparison.prior_study_instance_uid == prior_uid and comparison.retrieved
    assert (comparison.prior_study_date, comparison.current_study_date) == (
        PRIOR_DATE,
        CURRENT_DATE,
    )
    assert comparison.prior_analysis_id == prior_row.id
    assert findings.segmentation is not None
    now = findings.segmentation.volumes_ml
    assert set(comparison.regions) == {"WT", "TC", "ET"}
    for region, change in comparison.regions.items():
        assert change.previous_ml == pytest.approx(previous[region])
        assert change.current_ml == pytest.approx(now[region])
        assert change.change_ml == pytest.approx(now[region] - previous[region], abs=1e-3)
    ordered = [comparison.regions[r] for r in ("WT", "TC", "ET")]
    wt = comparison.regions["WT"]
    assert wt.previous_ml > 0 and wt.change_ml != 0  # two different tumours
    assert wt.change_percent == pytest.approx(wt.change_ml / wt.previous_ml * 100, abs=0.01)

    # The SR: one follow-up group per region, with both dates and the days between.
    sr_file = settings.storage_root / sr_path
    values = _values(dcmread(sr_file))
    assert values["Volume at prior study"] == [round(c.previous_ml, 2) for c in ordered]
    assert values["Volume change since prior study"] == [round(c.change_ml, 2) for c in ordered]
    assert values["Fractional Change"] == [
        round(c.change_percent, 2) for c in ordered if c.change_percent is not None
    ]
    # The Time Point Context: both dates, and the days from the prior (2025-03-04 to 2026-03-02).
    assert values["Longitudinal Temporal Offset from Event"] == [363.0] * 3
    assert values["Time Point"] == ["2026-03-02 vs prior 2025-03-04"] * 3
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(sr_file) == []

    # The PDF: the follow-up table.
    pdf = dcmread(settings.storage_root / pdf_path)
    document = bytes(pdf.EncapsulatedDocument)[: int(pdf.EncapsulatedDocumentLength)]
    pdf_words = pdf_text(document)
    assert "Follow-up" in pdf_words and "Compared with the prior study of 2025-03-04" in pdf_words
    assert "Prior 2025-03-04" in pdf_words and "2026-03-02 (mL)" in pdf_words  # the headings
    assert f"{wt.previous_ml:.2f}" in pdf_words and f"{wt.change_ml:+.2f}" in pdf_words
    assert f"{wt.change_percent:+.1f} %" in pdf_words

    # The API: the follow-up view has both studies, their dates and the same changes.
    with running_app(settings) as client:
        headers = admin_headers(client)  # the patient was recorded from the studies' headers
        body = client.get(f"/api/patients/{PATIENT}/follow-up", headers=headers).json()
        assert [p["study_instance_uid"] for p in body["points"]] == [
            prior_uid,
            current.study_instance_uid,
        ]
        (step,) = body["changes"]
        assert (step["from_date"], step["to_date"]) == (PRIOR_DATE, CURRENT_DATE)
        assert step["regions"]["WT"] == wt.model_dump()
        detail = client.get(f"/api/studies/{current.study_instance_uid}", headers=headers)
        assert detail.json()["analysis"]["findings"]["prior"]["prior_study_date"] == PRIOR_DATE


def _completed(sessions: sessionmaker[Session], study_uid: str) -> AnalysisRow | None:
    with sessions() as session:
        row = session.scalar(
            select(AnalysisRow).where(
                AnalysisRow.study_instance_uid == study_uid,
                AnalysisRow.status.in_([AnalysisStatus.COMPLETED, AnalysisStatus.FAILED]),
            )
        )
        if row is not None:
            row.objects  # noqa: B018  (loaded before the session closes)
        return row


def _values(ds: Dataset) -> dict[str, list[float | str]]:
    """Every NUM and TEXT content item of an SR, by concept name, in document order."""
    found: dict[str, list[float | str]] = {}
    for item in ds.get("ContentSequence", []):
        name = str(item.ConceptNameCodeSequence[0].CodeMeaning)
        if item.ValueType == "NUM" and "MeasuredValueSequence" in item:
            found.setdefault(name, []).append(float(item.MeasuredValueSequence[0].NumericValue))
        elif item.ValueType == "TEXT":
            found.setdefault(name, []).append(str(item.TextValue))
        for name, values in _values(item).items():
            found.setdefault(name, []).extend(values)
    return found


# -- the query, and what the findings say without a comparison ----------------------------------


def _pacs_study(folder: Path, orthanc: OrthancServer, patient_id: str, date: str, what: str) -> str:
    """A tiny MR study of ``patient_id`` in Orthanc, dated ``date``, described ``what``."""
    study = write_mr_study(folder, series=1, slices=2, size=16, patient_id=patient_id)
    for path in study.files:
        ds = dcmread(path)
        ds.StudyDate, ds.StudyDescription = date, what
        ds.save_as(path)
    _upload(orthanc, study.files)
    return study.study_uid


def test_the_query_keeps_the_patients_earlier_brain_mr_studies_newest_first(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    def add(name: str, date: str, what: str = "MR BRAIN W/WO", patient: str = PATIENT) -> str:
        return _pacs_study(tmp_path / name, orthanc, patient, date, what)

    older, newer = add("older", "20240105"), add("newer", "20251120")
    add("knee", "20251201", "MR KNEE LEFT")  # another body part
    add("same-day", CURRENT_DATE)  # not before the study
    add("too-old", "20190101")  # outside the look-back window
    add("other", "20251125", patient="SOMEONE-ELSE")
    _put_modality(orthanc, "NEUROGATE", free_port())  # Orthanc answers known modalities only
    pacs = PriorsPacs(_priors(orthanc, lookback_days=1000), "NEUROGATE")
    found = pacs.find(PATIENT, _day(CURRENT_DATE))
    assert [(p.study_instance_uid, p.study_date) for p in found] == [
        (newer, "20251120"),
        (older, "20240105"),
    ]


def _day(da: str) -> dt.date:
    return dt.date(int(da[:4]), int(da[4:6]), int(da[6:]))


VERSION = ModelVersion(name="m", version="1", sha256="0" * 64)


def _findings(uid: str, volumes: dict[str, float] | None) -> Findings:
    """Findings of a study with a tumour of ``volumes`` (None: no tumour found)."""
    return Findings(
        study_instance_uid=uid,
        selected=[],
        missing=[],
        rejected={},
        detection=DetectionFinding(
            tumour=volumes is not None, probability=0.9, series_role="FLAIR"
        ),
        segmentation=SegmentationFinding(volumes_ml=volumes, reference_role="T1CE")
        if volumes is not None
        else None,
        models={"segmentation": VERSION},
        seconds={},
    )


def _add_study(database: Database, uid: str, date: str) -> None:
    now = dt.datetime.now(dt.UTC)
    with database.sessions.begin() as session:
        session.add(
            Study(
                study_instance_uid=uid,
                status="complete",
                revision=1,
                path=f"studies/{uid}",
                instance_count=1,
                called_ae_title="NEUROGATE",
                calling_ae_titles=["SCANNER"],
                patient_id=PATIENT,
                study_date=date,
                first_received_at=now,
                last_received_at=now,
                completed_at=now,
            )
        )


def _add_analysis(database: Database, findings: Findings) -> int:
    now = dt.datetime.now(dt.UTC)
    with database.sessions.begin() as session:
        row = AnalysisRow(
            request_event_id=str(uuid.uuid4()),
            study_instance_uid=findings.study_instance_uid,
            source="dicom",
            status=AnalysisStatus.COMPLETED,
            findings=findings.model_dump(mode="json"),
            created_at=now,
        )
        session.add(row)
        session.flush()
        return row.id


def test_without_a_pacs_or_a_prior_the_findings_say_why_and_a_local_prior_is_compared(
    tmp_path: Path, database: Database, orthanc: OrthancServer
) -> None:
    current_uid = generate_uid()
    _add_study(database, current_uid, CURRENT_DATE)
    current = Analysis(_findings(current_uid, {"WT": 30.0, "TC": 12.0, "ET": 4.0}))
    analysed: list[str] = []

    def follow_up(priors: PriorSettings) -> FollowUp:
        settings = make_settings(tmp_path / "node", database.url)
        settings = settings.model_copy(update={"priors": priors})
        return FollowUp(settings, database.sessions, lambda e: analysed.append(e.path))

    down = follow_up(_priors(orthanc, port=free_port()))
    reason = down.attach(current).findings.skipped[STAGE]
    assert "association" in reason and "ORTHANC@127.0.0.1:" in reason

    unknown = follow_up(_priors(orthanc))  # Orthanc does not know NEUROGATE yet
    assert "does it know this node's AE title" in unknown.attach(current).findings.skipped[STAGE]

    _put_modality(orthanc, "NEUROGATE", free_port())
    empty = follow_up(_priors(orthanc))
    assert empty.attach(current).findings.skipped[STAGE].startswith("no prior brain MR study")

    # In the PACS, never analysed, and the PACS does not know where to send it.
    in_pacs = _pacs_study(tmp_path / "p", orthanc, PATIENT, "20251001", "MR HEAD")
    nowhere = follow_up(_priors(orthanc, move_destination="NOWHERE"))
    reason = nowhere.attach(current).findings.skipped[STAGE]
    assert "C-MOVE to NOWHERE failed with status 0x" in reason, reason
    assert in_pacs in reason and analysed == []

    # Analysed here already (a later study than the PACS's, tumour-free then): compared as is.
    local_uid = generate_uid()
    _add_study(database, local_uid, "20251215")
    analysis_id = _add_analysis(database, _findings(local_uid, None))
    attached = empty.attach(current).findings
    assert STAGE not in attached.skipped and analysed == []
    prior = attached.prior
    assert prior is not None and not prior.retrieved
    assert (prior.prior_study_instance_uid, prior.prior_analysis_id) == (local_uid, analysis_id)
    assert prior.prior_study_date == "20251215" and prior.current_study_date == CURRENT_DATE
    assert prior.regions["WT"].model_dump() == {
        "previous_ml": 0.0,
        "current_ml": 30.0,
        "change_ml": 30.0,
        "change_percent": None,
    }

    # Three priors considered: the older ones are listed, the newest is compared; the one in
    # the PACS cannot be retrieved (nothing listens where Orthanc sends it) and is not analysed.
    older_uid = generate_uid()
    _add_study(database, older_uid, "20250110")
    _add_analysis(database, _findings(older_uid, {"WT": 5.0, "TC": 1.0, "ET": 0.5}))
    three = follow_up(_priors(orthanc, max_priors=3)).attach(current).findings.prior
    assert three is not None and three.prior_study_instance_uid == local_uid
    assert list(three.other_priors.items()) == [(in_pacs, "20251001"), (older_uid, "20250110")]
    assert analysed == []

    # A PACS that cannot be asked leaves the node's own priors.
    local_only = down.attach(current).findings
    assert local_only.prior is not None and local_only.prior.prior_study_instance_uid == local_uid


def test_c_get_brings_a_prior_into_the_listener_without_a_route_back_from_the_pacs(
    tmp_path: Path, sqlite_url: str, orthanc: OrthancServer
) -> None:
    prior = write_mr_study(tmp_path / "prior", series=2, slices=3, size=16, patient_id=PATIENT)
    _upload(orthanc, prior.files)
    settings = make_settings(tmp_path / "node", sqlite_url)
    with running_listener(settings) as listener:
        # Orthanc knows the node's AE title, but at a port where nothing listens: no C-MOVE.
        _put_modality(orthanc, settings.listener.ae_title, free_port())
        priors = _priors(orthanc, retrieve_method="c-get", listener_port=listener.address[1])
        pacs = PriorsPacs(priors, settings.listener.ae_title)
        assert pacs.retrieve(prior.study_uid, tmp_path / "spool") == len(prior.files)

        def all_in() -> Study | None:
            row = study_row(settings, prior.study_uid)
            return row if row is not None and row.instance_count == len(prior.files) else None

        stored = wait_for(all_in, timeout=30)
    assert stored.patient_id == PATIENT
    assert stored.calling_ae_titles == [settings.priors.calling_ae_title]
    folder = settings.storage_root / stored.path
    kept = {dcmread(f).SOPInstanceUID: dcmread(f).PixelData for f in folder.rglob("*.dcm")}
    sent = {dcmread(f).SOPInstanceUID: dcmread(f).PixelData for f in prior.files}
    assert kept == sent
