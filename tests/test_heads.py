"""The full-head evaluation phantoms (bench/heads.py): anatomy, labels, volumes and DICOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from bench import heads
from models.synthetic.acquisition import SeriesProtocol, sample
from models.synthetic.case import SyntheticCase, region_volumes_ml

VOXEL_MM = 3.0  # coarse: every test here builds heads on a shared CPU
SEEDS = {"glioma": 11, "meningioma": 12, "pituitary": 13, "none": 14}


@pytest.fixture(scope="module")
def phantoms() -> dict[str, heads.HeadPhantom]:
    return {t: heads.make_phantom(seed, t, VOXEL_MM) for t, seed in SEEDS.items()}


def _tissue(phantom: heads.HeadPhantom, name: str) -> np.ndarray:
    return phantom.tissue == heads.T[name]


def test_case_is_a_synthetic_case(phantoms: dict[str, heads.HeadPhantom]) -> None:
    case = phantoms["glioma"].case
    assert isinstance(case, SyntheticCase)
    assert set(case.images) == {"t1", "t1ce", "t2", "flair"}
    for image in case.images.values():
        assert image.dtype == np.float32 and image.shape == case.label.shape
    assert case.label.dtype == np.uint8 and case.brain_mask.dtype == bool
    assert np.allclose(np.diag(case.affine)[:3], VOXEL_MM)
    wm = _tissue(phantoms["glioma"], "wm") & (case.label == 0)
    assert 0.9 < float(np.median(case.images["t1"][wm])) < 1.1


def test_face_and_neck_lie_outside_the_intracranial_mask(
    phantoms: dict[str, heads.HeadPhantom],
) -> None:
    phantom = phantoms["none"]
    case = phantom.case
    signal = np.zeros(case.label.shape, bool)
    for image in case.images.values():
        signal |= image > 0.05
    outside_ml = float((signal & ~case.brain_mask).sum()) * case.voxel_ml
    assert outside_ml > 500
    # The mask is the cavity only: a plausible intracranial volume.
    assert 1200 < float(case.brain_mask.sum()) * case.voxel_ml < 2700  # MNI-sized, +-10 % per axis
    for name in ("vitreous", "lens", "tongue", "disc", "marrow", "mucosa", "gland"):
        assert _tissue(phantom, name).any(), name
    # Air inside the head (sinuses, nasal cavity, airway) is dark on every contrast.
    air = _tissue(phantom, "air") & ndimage.binary_erosion(phantom.head_mask, iterations=2)
    assert float(air.sum()) * case.voxel_ml > 10
    assert all(float(np.median(image[air])) < 0.2 for image in case.images.values())


def test_contrasts_follow_the_tissues(phantoms: dict[str, heads.HeadPhantom]) -> None:
    phantom = phantoms["none"]
    images = phantom.case.images
    outside = ndimage.distance_transform_edt(~phantom.case.brain_mask, sampling=VOXEL_MM) > 9
    fat = _tissue(phantom, "fat") & outside
    muscle = _tissue(phantom, "muscle") & outside
    wm, csf = _tissue(phantom, "wm"), _tissue(phantom, "csf")
    vitreous = _tissue(phantom, "vitreous")

    def median(modality: str, mask: np.ndarray) -> float:
        return float(np.median(images[modality][mask]))

    assert fat.sum() * phantom.case.voxel_ml > 50
    assert median("t1", fat) > 1.0 and median("t1", fat) > 1.5 * median("t1", muscle)
    assert median("t2", fat) > median("t2", muscle)
    assert median("t2", csf) > 1.5 * median("t2", wm) and median("flair", csf) < median("flair", wm)
    assert median("t1", vitreous) < 0.4 and median("t2", vitreous) > 0.8
    assert median("flair", vitreous) < 0.3


@pytest.mark.parametrize("tumour_type", ["glioma", "meningioma", "pituitary"])
def test_tumours_lie_where_their_type_grows(
    phantoms: dict[str, heads.HeadPhantom], tumour_type: str
) -> None:
    case = phantoms[tumour_type].case
    tumour = case.label > 0
    assert tumour.any()
    assert set(np.unique(case.label)) <= {0, 1, 2, 4}
    if tumour_type == "meningioma":
        distance = ndimage.distance_transform_edt(~case.brain_mask, sampling=VOXEL_MM)
        assert float(distance[tumour].max()) <= 4.0
    else:
        assert not (tumour & ~case.brain_mask).any()
    if tumour_type == "pituitary":  # at the sella, below the brain's centre
        centre = (case.affine @ [*np.argwhere(tumour).mean(axis=0), 1])[:3]
        assert np.linalg.norm(centre - phantoms[tumour_type].sella_ras) < 15
    enhancing = case.label == 4
    if enhancing.any():
        t1ce, t1 = case.images["t1ce"][enhancing], case.images["t1"][enhancing]
        assert float(np.median(t1ce / np.maximum(t1, 1e-3))) > 1.5


@pytest.mark.parametrize("tumour_type", ["glioma", "meningioma", "pituitary"])
def test_tumour_volumes_are_realistic(
    phantoms: dict[str, heads.HeadPhantom], tumour_type: str
) -> None:
    case = phantoms[tumour_type].case
    low, high = heads.VOLUME_RANGES_ML[tumour_type]
    wt = region_volumes_ml(case.label, case.voxel_ml)["WT"]
    assert 0.85 * low <= wt <= 1.15 * high


def test_no_tumour_has_no_labels(phantoms: dict[str, heads.HeadPhantom]) -> None:
    assert not phantoms["none"].case.label.any()


def test_a_seed_makes_one_head() -> None:
    a = heads.make_head(21, "meningioma", voxel_mm=4.0)
    b = heads.make_head(21, "meningioma", voxel_mm=4.0)
    c = heads.make_head(22, "meningioma", voxel_mm=4.0)
    assert np.array_equal(a.affine, b.affine) and np.array_equal(a.label, b.label)
    assert all(np.array_equal(a.images[m], b.images[m]) for m in a.images)
    assert a.images["t1"].shape != c.images["t1"].shape or not np.array_equal(
        a.images["t1"], c.images["t1"]
    )


def test_a_written_study_reads_back_with_its_geometry(
    phantoms: dict[str, heads.HeadPhantom], tmp_path: Path
) -> None:
    case = phantoms["glioma"].case

    def series(modality: str, orientation: str, tilt: float = 0.0) -> heads.HeadSeries:
        protocol = SeriesProtocol(
            modality, orientation, tilt, in_plane_mm=4.0, slice_mm=6.0, noise=0.01, bias=0.1
        )
        return heads.HeadSeries(protocol, fov_mm=256.0, coverage_mm=240.0)

    plan = {
        "t1": series("t1", "sagittal"),
        "t1ce": series("t1ce", "axial"),
        "t2": series("t2", "axial", 12.0),
        "flair": series("flair", "coronal"),
    }
    study = heads.write_head_study(case, tmp_path, seed=3, series=plan, vendor="siemens")
    assert set(study.series) == set(plan)
    for modality, written in study.series.items():
        datasets = [pydicom.dcmread(f) for f in written.files]
        assert len(datasets) == written.shape[0] == 40
        assert {ds.StudyInstanceUID for ds in datasets} == {study.study_instance_uid}
        assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
        orientation = np.array(datasets[0].ImageOrientationPatient, float)
        row, column = orientation[:3], orientation[3:]
        normal = np.cross(row, column)
        assert abs(row @ column) < 1e-5 and np.isclose(np.linalg.norm(normal), 1)
        positions = np.array([ds.ImagePositionPatient for ds in datasets], float)
        steps = np.diff(positions, axis=0)
        assert np.allclose(steps, 6.0 * normal, atol=1e-3)
        assert np.allclose(positions[0], written.affine_lps[:3, 3], atol=1e-3)
        # The pixels are the case sampled at the positions the header gives.
        ds = datasets[len(datasets) // 2]
        pixels = ds.pixel_array.astype(float)
        r, c = np.mgrid[: pixels.shape[0], : pixels.shape[1]]
        spacing = np.array(ds.PixelSpacing, float)
        points = (
            np.array(ds.ImagePositionPatient, float)
            + c[..., None] * spacing[1] * row
            + r[..., None] * spacing[0] * column
        )
        truth = sample(case.images[modality], case.affine, points, order=1)
        head = truth > 0.1
        assert np.corrcoef(pixels[head], truth[head])[0, 1] > 0.9, modality
    t2 = study.series["t2"]
    assert "tra" in t2.description and "sag" in study.series["t1"].description
    assert "cor" in study.series["flair"].description
    # The whole head, vertex to neck, is in the axial series' field of view.
    axial = study.series["t1ce"]
    z = axial.affine_lps[2, 3] + axial.affine_lps[2, 2] * np.arange(axial.shape[0])
    top = (case.affine @ [0, 0, np.argwhere(case.images["t1"] > 0.05)[:, 2].max(), 1])[2]
    assert z.max() >= top and z.max() - z.min() >= 230
    label, mask = heads.ground_truth_on_grid(case, axial.affine_lps, axial.shape)
    assert label.shape == mask.shape == axial.shape
    assert label.any() and not (label.astype(bool) & ~mask).any()
