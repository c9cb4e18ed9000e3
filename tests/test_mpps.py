"""MPPS (N-CREATE IN PROGRESS, N-SET COMPLETED) as the explicit study-complete trigger."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from dicom_listener.mpps import MAY_NO_LONGER_BE_UPDATED
from dicom_listener.status import Status
from tests.conftest import make_settings
from tests.dicomgen import GeneratedStudy, write_mr_study
from tests.harness import event_reader, running_listener, storescu

pytestmark = pytest.mark.dcmtk


def _create_attrs(study_uid: str) -> Dataset:
    ds = Dataset()
    step = Dataset()
    step.StudyInstanceUID = study_uid
    step.AccessionNumber = "ACC0001"
    ds.ScheduledStepAttributesSequence = [step]
    ds.PatientID = "NG-TEST-1"
    ds.Modality = "MR"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedSeriesSequence = []
    return ds


def _completed_attrs(study: GeneratedStudy) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    performed = []
    for series_uid in study.series_uids:
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        refs = []
        for path in study.series_files(series_uid):
            ref = Dataset()
            meta = dcmread(path, stop_before_pixels=True)
            ref.ReferencedSOPClassUID = meta.SOPClassUID
            ref.ReferencedSOPInstanceUID = meta.SOPInstanceUID
            refs.append(ref)
        item.ReferencedImageSequence = refs
        performed.append(item)
    ds.PerformedSeriesSequence = performed
    return ds


def _mpps_association(port: int):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="NEUROGATE")
    assert assoc.is_established
    return assoc


def test_mpps_completed_completes_the_study_without_waiting_for_the_quiet_timer(
    tmp_path: Path, database_url: str
) -> None:
    # A quiet period far longer than the test's timeout: only MPPS can complete the study.
    settings = make_settings(tmp_path / "node", database_url, study_quiet_seconds=3600)
    study = write_mr_study(tmp_path / "scanner", series=2, slices=3)
    mpps_uid = generate_uid()
    with running_listener(settings) as service:
        reader = event_reader(service._bus)
        port = service.address[1]
        assoc = _mpps_association(port)
        status, _ = assoc.send_n_create(
            _create_attrs(study.study_uid), ModalityPerformedProcedureStep, mpps_uid
        )
        assert status.Status == Status.SUCCESS
        # Completed before the images are sent, as many modalities do.
        status, _ = assoc.send_n_set(
            _completed_attrs(study), ModalityPerformedProcedureStep, mpps_uid
        )
        assert status.Status == Status.SUCCESS
        status, _ = assoc.send_n_set(
            _completed_attrs(study), ModalityPerformedProcedureStep, mpps_uid
        )
        assert status.Status == MAY_NO_LONGER_BE_UPDATED
        status, _ = assoc.send_n_set(
            _completed_attrs(study), ModalityPerformedProcedureStep, generate_uid()
        )
        assert status.Status == Status.NO_SUCH_OBJECT_INSTANCE
        assoc.release()

        assert storescu(port, study.files[:-1]).returncode == 0
        service.tracker.tick()
        assert reader.drain() == []  # one instance is still missing
        assert storescu(port, study.files[-1:]).returncode == 0
        (event,) = reader.wait(1, timeout=20)

    assert event.trigger == "mpps"
    assert event.instance_count == 6


def test_mpps_n_create_must_start_in_progress(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url)
    with running_listener(settings) as service:
        assoc = _mpps_association(service.address[1])
        attrs = _create_attrs(generate_uid())
        attrs.PerformedProcedureStepStatus = "COMPLETED"
        status, _ = assoc.send_n_create(attrs, ModalityPerformedProcedureStep, generate_uid())
        assoc.release()
    assert status.Status == Status.INVALID_ATTRIBUTE_VALUE
