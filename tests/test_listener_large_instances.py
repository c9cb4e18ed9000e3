"""Instances larger than what the listener reads into memory: checked, and never loaded."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_listener.instances import InvalidInstance, read_header
from dicom_listener.status import Status
from tests.dicomgen import write_mr_study

_MB = 1 << 20


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2048 x 2048 16-bit MR image: 8 MB of pixel data, above the 1 MB read in memory."""
    study = write_mr_study(tmp_path_factory.mktemp("large"), series=1, slices=1, size=2048)
    return study.files[0]


def _read(path: Path, reference: Path) -> object:
    ds = dcmread(reference, stop_before_pixels=True)
    return read_header(path, sop_class_uid=ds.SOPClassUID, sop_instance_uid=ds.SOPInstanceUID)


def test_a_large_instance_is_read_without_loading_its_pixel_data(large: Path) -> None:
    tracemalloc.start()
    try:
        _read(large, large)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert large.stat().st_size > 8 * _MB
    assert peak < _MB


def test_a_large_instance_cut_short_is_refused(large: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "cut.dcm"
    damaged.write_bytes(large.read_bytes()[:-5])
    with pytest.raises(InvalidInstance) as info:
        _read(damaged, large)
    assert info.value.status == Status.CANNOT_UNDERSTAND
