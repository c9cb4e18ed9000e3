"""Header reading: what the listener accepts and what it refuses, on real and damaged files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicom_listener.instances import InvalidInstance, read_header
from dicom_listener.status import Status

# Explicit/implicit/big-endian, RLE, JPEG 2000 and JPEG-LS encodings of real MR images.
REAL = [
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
    "MR2_J2KR.dcm",
]


def _read(path: Path):  # type: ignore[no-untyped-def]
    ds = dcmread(path, stop_before_pixels=True)
    return read_header(path, sop_class_uid=ds.SOPClassUID, sop_instance_uid=ds.SOPInstanceUID)


@pytest.mark.parametrize("name", REAL)
def test_real_mr_files_are_read(name: str) -> None:
    header = _read(Path(get_testdata_file(name)))
    assert header.modality == "MR"
    assert header.study_instance_uid and header.series_instance_uid


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("cut", [1, 7, 301])
def test_a_stream_cut_short_anywhere_is_refused(tmp_path: Path, name: str, cut: int) -> None:
    source = Path(get_testdata_file(name))
    ds = dcmread(source, stop_before_pixels=True)
    damaged = tmp_path / name
    damaged.write_bytes(source.read_bytes()[:-cut])

    with pytest.raises(InvalidInstance) as info:
        read_header(damaged, sop_class_uid=ds.SOPClassUID, sop_instance_uid=ds.SOPInstanceUID)
    assert info.value.status == Status.CANNOT_UNDERSTAND


def test_trailing_bytes_after_the_last_element_are_refused(tmp_path: Path) -> None:
    source = Path(get_testdata_file("MR_small.dcm"))
    damaged = tmp_path / "tail.dcm"
    damaged.write_bytes(source.read_bytes() + b"\x00\x01\x02")
    with pytest.raises(InvalidInstance):
        _read(damaged)


def test_missing_identifiers_are_refused(tmp_path: Path) -> None:
    ds = dcmread(get_testdata_file("MR_small.dcm"))
    del ds.SeriesInstanceUID
    path = tmp_path / "no-series.dcm"
    ds.save_as(path)
    with pytest.raises(InvalidInstance, match="missing SeriesInstanceUID"):
        _read(path)


def test_uids_that_are_not_uids_are_refused(tmp_path: Path) -> None:
    ds = dcmread(get_testdata_file("MR_small.dcm"))
    ds.StudyInstanceUID = "../../etc"
    path = tmp_path / "evil.dcm"
    ds.save_as(path)
    with pytest.raises(InvalidInstance, match="invalid StudyInstanceUID"):
        _read(path)


def test_request_and_dataset_must_agree() -> None:
    path = Path(get_testdata_file("MR_small.dcm"))
    ds = dcmread(path, stop_before_pixels=True)
    with pytest.raises(InvalidInstance) as wrong_class:
        read_header(
            path, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=ds.SOPInstanceUID
        )
    assert wrong_class.value.status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    with pytest.raises(InvalidInstance) as wrong_instance:
        read_header(path, sop_class_uid=ds.SOPClassUID, sop_instance_uid="1.2.3")
    assert wrong_instance.value.status == Status.CANNOT_UNDERSTAND
