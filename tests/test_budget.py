"""The decode budget: geometry from headers alone (DICOM, NIfTI-1 and -2, either byte order)."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest
from pydicom import Dataset

from neurogate.budget import DecodeBudget, DecodeBudgetExceeded, dicom_geometry, nifti_geometry


@pytest.mark.parametrize("kind", [nib.Nifti1Image, nib.Nifti2Image])
@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("compressed", [False, True])
def test_a_nifti_header_gives_the_volume_it_declares(
    kind: type[nib.Nifti1Image], order: str, compressed: bool
) -> None:
    image = kind(np.zeros((5, 6, 7, 2), dtype=f"{order}i2"), np.eye(4))
    raw = image.to_bytes()
    stream = io.BytesIO(gzip.compress(raw) if compressed else raw)
    stream.seek(3)

    geometry = nifti_geometry(stream)

    assert geometry.shape == (2, 7, 6, 5) and geometry.bytes_per_value == 2
    assert geometry.decode_bytes == 5 * 6 * 7 * 2 * (2 + 4)
    assert stream.tell() == 0  # rewound for whoever reads the file next


@pytest.mark.parametrize(
    "data", [b"", b"\x00" * 400, gzip.compress(b"\x00" * 400, mtime=0), b"\x1f\x8bxx"]
)
def test_what_is_not_a_nifti_header_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a"):
        nifti_geometry(io.BytesIO(data))


def test_a_dicom_header_gives_frames_rows_columns_and_samples() -> None:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.SamplesPerPixel, ds.BitsAllocated = 4, 5, 6, 3, 8
    geometry = dicom_geometry(ds)
    assert geometry.shape == (6, 4, 5, 3) and geometry.decode_bytes == 360 * 5
    assert dicom_geometry(Dataset()).decode_bytes == 0  # no pixels, nothing to decode

    budget = DecodeBudget(360 * 5)
    budget.check_dicom([ds], "one")
    with pytest.raises(DecodeBudgetExceeded, match=r"two \(2 instances, the largest 6 x 4 x 5"):
        budget.check_dicom([ds, ds], "two")
