"""The listener against dcmtk's storescu/echoscu as the scanner, end to end."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from sqlalchemy import select

from dicom_listener.service import ListenerService
from dicom_listener.status import Status
from neurogate.db import create_db_engine, session_factory
from neurogate.db.models import OutboxEvent
from neurogate.settings import Settings
from tests.conftest import free_port, make_settings
from tests.dicomgen import write_mr_study
from tests.harness import (
    echo,
    event_reader,
    reference_storescp,
    running_listener,
    storescu,
    study_row,
    wait_for,
)

pytestmark = pytest.mark.dcmtk

# Real MR instances from pydicom-data, and the storescu option that proposes each one's own
# transfer syntax (as a PACS forwarding compressed images would), so nothing is converted.
REAL_MR = {
    "MR-SIEMENS-DICOM-WithOverlays.dcm": [],  # explicit VR little endian
    "MR2_J2KR.dcm": ["--propose-j2k-lossless"],
    "emri_small_jpeg_ls_lossless.dcm": ["--propose-jls-lossless"],  # Enhanced MR, multi-frame
}


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file: what travels in a C-STORE, after the file meta."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR LE
    return data[144 + group_length :]


def stored_files(settings: Settings) -> list[Path]:
    return sorted((settings.storage_root / "studies").rglob("*.dcm"))


def stored_path(settings: Settings, source: Path) -> Path:
    ds = dcmread(source, stop_before_pixels=True)
    return (
        settings.storage_root
        / "studies"
        / ds.StudyInstanceUID
        / ds.SeriesInstanceUID
        / f"{ds.SOPInstanceUID}.dcm"
    )


@pytest.fixture(params=["fast-store", "pynetdicom-store"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Settings:
    """Each test runs on both receive paths: the listener's C-STORE fast path and pynetdicom's
    service class (what the fast path declines goes there)."""
    return make_settings(tmp_path / "node", database_url, fast_store=request.param == "fast-store")


@pytest.fixture
def listener(settings: Settings) -> Iterator[ListenerService]:
    with running_listener(settings) as service:
        yield service


def test_storescu_study_is_stored_byte_for_byte_and_announced_once(
    tmp_path: Path, settings: Settings, listener: ListenerService
) -> None:
    study = write_mr_study(tmp_path / "scanner", series=3, slices=6)
    real = [Path(get_testdata_file(name)) for name in REAL_MR]
    reader = event_reader(listener._bus)

    sends = [(study.files, []), *[([p], REAL_MR[p.name]) for p in real]]
    for files, options in sends:
        result = storescu(listener.address[1], files, extra=options)
        assert result.returncode == 0, result.stderr
    # The same sends to dcmtk's storescp in bit-preserving mode record what was on the wire.
    reference_port = free_port()
    with reference_storescp(tmp_path / "reference", reference_port) as reference:
        for files, options in sends:
            assert storescu(reference_port, files, extra=options).returncode == 0
    wire = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in reference.iterdir()}

    for source in [*study.files, *real]:
        stored = stored_path(settings, source)
        ds = dcmread(source, stop_before_pixels=True)
        assert dataset_bytes(stored) == dataset_bytes(wire[ds.SOPInstanceUID]), source.name
        stored_syntax = dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert stored_syntax == ds.file_meta.TransferSyntaxUID
    for source in study.files:  # our own files go out unchanged: the source is the wire too
        assert dataset_bytes(stored_path(settings, source)) == dataset_bytes(source)
    events = reader.wait(1 + len(real))
    assert len(stored_files(settings)) == len(study.files) + len(real)

    (event,) = [e for e in events if e.study_instance_uid == study.study_uid]
    assert event.revision == 1
    assert event.trigger == "quiet_period"
    assert event.instance_count == 18
    assert event.calling_ae_titles == ["SCANNER"]
    assert event.called_ae_title == "NEUROGATE"
    assert [s.series_instance_uid for s in event.series] == study.series_uids
    assert [s.series_description for s in event.series] == [
        "t1_mprage_sag",
        "t1_mprage_post_gd",
        "t2_tse_tra",
    ]
    for series in event.series:
        assert series.modality == "MR"
        assert series.instance_count == 6
        assert len(list((settings.storage_root / series.path).glob("*.dcm"))) == 6
    assert sorted(e.study_instance_uid for e in events) == sorted(
        {dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in [*study.files, *real]}
    )
    row = study_row(settings, study.study_uid)
    assert row is not None and row.status == "complete" and row.instance_count == 18
    assert row.patient_id == "NG-TEST-1"


def test_same_study_sent_twice_gives_no_duplicate_files_or_events(
    tmp_path: Path, settings: Settings, listener: ListenerService
) -> None:
    study = write_mr_study(tmp_path / "scanner", series=2, slices=4)
    reader = event_reader(listener._bus)
    assert storescu(listener.address[1], study.files).returncode == 0
    (first,) = reader.wait(1)
    assert first.instance_count == 8
    # Once more after completion: a resend reopens nothing.
    assert storescu(listener.address[1], study.files).returncode == 0
    assert listener.tracker.receiving() == []
    listener.tracker.tick()

    assert len(stored_files(settings)) == 8
    assert not list((settings.storage_root / "conflicts").iterdir())
    engine = create_db_engine(settings.sqlalchemy_url)
    with session_factory(engine)() as session:
        assert len(session.scalars(select(OutboxEvent)).all()) == 1
    engine.dispose()
    assert len(reader.for_study(study.study_uid)) == 1


def test_new_instances_reopen_a_completed_study_as_a_new_revision(
    tmp_path: Path, settings: Settings, listener: ListenerService
) -> None:
    study = write_mr_study(tmp_path / "scanner", series=2, slices=3)
    first_series = study.series_files(study.series_uids[0])
    reader = event_reader(listener._bus)
    assert storescu(listener.address[1], first_series).returncode == 0
    reader.wait(1)
    assert storescu(listener.address[1], study.files).returncode == 0
    events = reader.wait(2)

    assert [(e.revision, e.instance_count, len(e.series)) for e in events] == [(1, 3, 1), (2, 6, 2)]


def test_same_uid_with_different_content_is_kept_aside_not_lost(
    tmp_path: Path, settings: Settings, listener: ListenerService
) -> None:
    study = write_mr_study(tmp_path / "scanner", series=1, slices=1)
    original = study.files[0]
    assert storescu(listener.address[1], [original]).returncode == 0
    changed = tmp_path / "changed.dcm"
    ds = dcmread(original)
    ds.SeriesDescription = "edited at the console"
    ds.save_as(changed)

    assert storescu(listener.address[1], [changed]).returncode == 0

    assert dataset_bytes(stored_path(settings, original)) == dataset_bytes(original)
    (kept,) = (settings.storage_root / "conflicts").iterdir()
    assert dataset_bytes(kept) == dataset_bytes(changed)


def test_echoscu_and_association_access_control(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(
        tmp_path / "node", sqlite_url, allowed_calling_ae_titles=["SCANNER", "PACS"]
    )
    with running_listener(settings) as service:
        port = str(service.address[1])
        ok = _echoscu("-aet", "SCANNER", "-aec", "NEUROGATE", "127.0.0.1", port)
        wrong_calling = _echoscu("-aet", "INTRUDER", "-aec", "NEUROGATE", "127.0.0.1", port)
        wrong_called = _echoscu("-aet", "SCANNER", "-aec", "SOMEONE", "127.0.0.1", port)

    assert ok.returncode == 0, ok.stderr
    assert wrong_calling.returncode != 0
    assert "Calling AE Title Not Recognized" in wrong_calling.stderr
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stderr


def _echoscu(*args: str):  # type: ignore[no-untyped-def]
    import subprocess

    return subprocess.run(["echoscu", *args], capture_output=True, text=True, timeout=60)


def _send_raw(port: int, path: Path, sop_class: str) -> int:
    """C-STORE a file's bytes as they are: the request names the file meta's SOP Class and
    Instance, and the dataset is streamed from the file without decoding it."""
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)  # what the crafted files use
    assoc = ae.associate("127.0.0.1", port, ae_title="NEUROGATE")
    assert assoc.is_established
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


def _with_meta(tmp_path: Path, source: Path, body: bytes) -> Path:
    """``source``'s preamble and file meta followed by ``body``."""
    data = source.read_bytes()
    group_length = int.from_bytes(data[140:144], "little")
    path = tmp_path / f"crafted-{len(body)}.dcm"
    path.write_bytes(data[: 144 + group_length] + body)
    return path


def test_truncated_and_garbage_datasets_are_refused_and_the_scp_carries_on(
    tmp_path: Path, settings: Settings, listener: ListenerService
) -> None:
    study = write_mr_study(tmp_path / "scanner", series=1, slices=2)
    source = study.files[0]
    body = dataset_bytes(source)
    sop_class = str(dcmread(source, stop_before_pixels=True).SOPClassUID)
    port = listener.address[1]

    truncated = _with_meta(tmp_path, source, body[: len(body) - 700])
    garbage = _with_meta(tmp_path, source, bytes(range(256)) * 8)

    assert _send_raw(port, truncated, sop_class) == Status.CANNOT_UNDERSTAND
    assert _send_raw(port, garbage, sop_class) == Status.CANNOT_UNDERSTAND
    assert stored_files(settings) == []
    assert not list(settings.storage_root.joinpath("tmp").iterdir())
    # Still serving, and the intact instances go through.
    assert echo(port) == Status.SUCCESS
    assert storescu(port, study.files).returncode == 0
    assert len(stored_files(settings)) == 2


def test_dataset_that_contradicts_its_request_is_refused(
    tmp_path: Path, settings: Settings, listener: ListenerService
) -> None:
    study = write_mr_study(tmp_path / "scanner", series=1, slices=1)
    ds = dcmread(study.files[0])
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # says CT Image Storage
    mismatched = tmp_path / "mismatch.dcm"
    ds.save_as(mismatched)

    status = _send_raw(listener.address[1], mismatched, "1.2.840.10008.5.1.4.1.1.2")

    assert status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert stored_files(settings) == []


@pytest.mark.parametrize("fast_store", [True, False], ids=["fast-store", "pynetdicom-store"])
def test_low_disk_is_refused_with_out_of_resources(
    tmp_path: Path, sqlite_url: str, fast_store: bool
) -> None:
    free_mb = shutil.disk_usage(tmp_path).free >> 20
    settings = make_settings(
        tmp_path / "node", sqlite_url, min_free_disk_mb=free_mb + 1024, fast_store=fast_store
    )
    study = write_mr_study(tmp_path / "scanner", series=1, slices=2)
    with running_listener(settings) as service:
        result = storescu(service.address[1], study.files, extra=["--verbose"])

    assert result.returncode != 0
    assert "Received Store Response (Refused: OutOfResources)" in result.stderr
    assert stored_files(settings) == []


def test_association_limit_rejects_the_one_too_many(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path / "node", sqlite_url, max_associations=1)
    with running_listener(settings) as service:
        port = service.address[1]
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        held = ae.associate("127.0.0.1", port, ae_title="NEUROGATE")
        assert held.is_established
        refused = _echoscu("-aet", "SCANNER", "-aec", "NEUROGATE", "127.0.0.1", str(port))
        held.release()
        wait_for(lambda: echo(port) == Status.SUCCESS)

    assert refused.returncode != 0
    assert "Local Limit Exceeded" in refused.stderr
