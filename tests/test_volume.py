"""DICOM to volume geometry, resampling between series, and masks back onto source frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from inference_worker.volume import GeometryError, frame_masks, load_series
from models.imaging import Volume, resample_to
from tests.dicomgen import write_series


def rotation(x_deg: float, z_deg: float) -> np.ndarray:
    a, c = np.radians(x_deg), np.radians(z_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ rx


OBLIQUE = rotation(20, 10)
ORIGIN = np.array([-40.0, -55.0, -30.0])
SPACING = np.array([2.0, 2.2, 3.0])  # columns, rows, slices


def _grid_points(volume: Volume) -> np.ndarray:
    """LPS coordinates of every voxel centre, shaped (k, j, i, 3)."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij")
    ijk = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk @ volume.affine.T)[..., :3]


def _sphere(points: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return np.linalg.norm(points - centre, axis=-1) <= radius


@pytest.mark.parametrize("enhanced", [False, True], ids=["single-frame", "enhanced-multiframe"])
def test_oblique_series_round_trips_its_geometry(tmp_path: Path, enhanced: bool) -> None:
    array = np.random.default_rng(1).integers(0, 4000, (12, 20, 24))
    paths = write_series(
        tmp_path, array, origin=ORIGIN, spacing=SPACING, direction=OBLIQUE, enhanced=enhanced
    )

    volume = load_series(paths)

    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.origin, ORIGIN, atol=1e-4)
    np.testing.assert_allclose(volume.spacing, SPACING, atol=1e-4)
    np.testing.assert_allclose(volume.direction, OBLIQUE, atol=1e-5)
    if enhanced:
        assert [f.frame_number for f in volume.frames] == list(range(1, 13))
    else:
        positions = {
            dcmread(p).SOPInstanceUID: np.asarray(dcmread(p).ImagePositionPatient) for p in paths
        }
        for k, ref in enumerate(volume.frames):  # slice k came from the file at position k
            np.testing.assert_allclose(
                positions[ref.sop_instance_uid],
                volume.affine[:3, :3] @ [0, 0, k] + volume.origin,
                atol=1e-4,
            )


def test_resampling_puts_a_structure_where_it_is_in_patient_space(tmp_path: Path) -> None:
    centre, radius = np.array([-10.0, -20.0, 0.0]), 12.0
    # T2: axial, 1.5 x 1.5 x 3 mm, covering the sphere.
    t2_geometry = {
        "origin": np.array([-50.0, -60.0, -30.0]),
        "spacing": np.array([1.5, 1.5, 3.0]),
        "direction": np.eye(3),
    }
    t2_grid = Volume(np.zeros((21, 54, 54)), **t2_geometry)
    t2 = _sphere(_grid_points(t2_grid), centre, radius).astype(np.uint16) * 1000
    t2_volume = load_series(write_series(tmp_path / "t2", t2, **t2_geometry))
    # Reference: the oblique T1 grid.
    reference = load_series(
        write_series(
            tmp_path / "t1",
            np.zeros((16, 40, 40)),
            origin=np.array([-45.0, -60.0, -25.0]),
            spacing=np.array([2.0, 2.0, 3.0]),
            direction=OBLIQUE,
        )
    )

    on_t1 = resample_to(t2_volume, reference)
    labels = resample_to(
        t2_volume.with_array((t2_volume.array > 0).astype(np.uint8)), reference, labels=True
    )

    expected = _sphere(_grid_points(reference), centre, radius)
    assert expected.sum() > 300
    agreement = np.mean((on_t1.array > 500) == expected)
    assert agreement > 0.98
    dice = 2 * np.sum((labels.array > 0) & expected) / (np.sum(labels.array > 0) + expected.sum())
    assert dice > 0.9
    assert on_t1.frames == reference.frames


def test_mask_on_the_grid_lands_on_each_source_frame(tmp_path: Path) -> None:
    paths = write_series(
        tmp_path, np.zeros((10, 32, 32)), origin=ORIGIN, spacing=SPACING, direction=OBLIQUE
    )
    volume = load_series(paths)
    centre, radius = volume.affine @ [16, 16, 5, 1], 15.0
    mask = volume.with_array(_sphere(_grid_points(volume), centre[:3], radius).astype(np.uint8))

    by_uid = {dcmread(p).SOPInstanceUID: dcmread(p) for p in paths}
    for ref, frame_mask in frame_masks(mask):
        ds = by_uid[ref.sop_instance_uid]
        # Recompute the frame's pixel centres from its own header, independently of the loader.
        row, col = (
            np.asarray(ds.ImageOrientationPatient[:3]),
            np.asarray(ds.ImageOrientationPatient[3:]),
        )
        dy, dx = (float(v) for v in ds.PixelSpacing)
        j, i = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        points = (
            np.asarray(ds.ImagePositionPatient) + i[..., None] * dx * row + j[..., None] * dy * col
        )
        distance = np.linalg.norm(points - centre[:3], axis=-1)
        decided = np.abs(distance - radius) > 0.01  # DS values carry ~1e-5 mm of rounding
        np.testing.assert_array_equal(
            frame_mask.astype(bool)[decided], (distance <= radius)[decided]
        )
    assert mask.array.sum() * volume.voxel_volume_ml == pytest.approx(
        mask.array.sum() * 2.0 * 2.2 * 3.0 / 1000
    )


def test_stacks_that_are_not_one_volume_are_refused(tmp_path: Path) -> None:
    axial = write_series(
        tmp_path / "a", np.zeros((3, 8, 8)), origin=ORIGIN, spacing=SPACING, direction=np.eye(3)
    )
    tilted = write_series(
        tmp_path / "b", np.zeros((3, 8, 8)), origin=ORIGIN, spacing=SPACING, direction=OBLIQUE
    )
    with pytest.raises(GeometryError, match="orientations"):
        load_series(axial + tilted)
    with pytest.raises(GeometryError, match="share a position"):
        load_series(axial + axial)
    with pytest.raises(GeometryError, match="uneven"):
        load_series(
            sorted(axial)[:1]
            + sorted(axial)[2:]
            + write_series(
                tmp_path / "c",
                np.zeros((1, 8, 8)),
                origin=ORIGIN + np.array([0.0, 0.0, 100.0]),
                spacing=SPACING,
                direction=np.eye(3),
            )
        )
