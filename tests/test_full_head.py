"""Whole heads in the field of view (face, orbits, sinuses, neck): findings stay in the skull."""

from __future__ import annotations

import numpy as np
import pytest

from bench import heads
from inference_worker.pipeline import analyse, analyse_volumes, scan_folder
from inference_worker.selection import Role
from inference_worker.volume import load_series
from models import predict
from models.registry import Task, manifest_for
from models.synthetic import generate_case
from models.synthetic.acquisition import (
    SeriesProtocol,
    acquire,
    grid_points,
    label_on_grid,
    sample,
)
from models.synthetic.dicom import ScannerProfile, write_dicom_study
from models.training.data import as_volume, make_example, random_protocol

# Held out from training (seeds 0.. and 50000..) and from the benchmark (500000..).
GLIOMA_SEED = 720_002
CLASSIFY_SEED = 720_006
PITUITARY_SEED = 720_010  # a 3.9 mL macroadenoma
MICROADENOMA_SEED = 720_114  # 0.7 mL
PHANTOM_ADENOMA_SEED = 730_003  # bench/heads.py, not the benchmark's seeds (540000..)

# As a clinical protocol takes a head: slabs from above the vertex down to the neck (axial
# slabs centred 40-50 mm below the brain's centre), a 12-degree oblique T2, a 1 mm 3D T1CE.
FULL_HEAD = ScannerProfile(
    vendor="siemens",
    field_strength=3.0,
    protocols={
        "t1": SeriesProtocol(
            "t1", "sagittal", in_plane_mm=1.2, slice_mm=1.5, three_d=True, fov_mm=256
        ),
        "t1ce": SeriesProtocol(
            "t1ce",
            "axial",
            in_plane_mm=1.0,
            slice_mm=1.0,
            three_d=True,
            coverage_mm=230,
            shift_mm=-30,
            fov_mm=240,
        ),
        "t2": SeriesProtocol(
            "t2",
            "axial",
            tilt_deg=12.0,
            in_plane_mm=1.0,
            slice_mm=3.0,
            coverage_mm=240,
            shift_mm=-40,
        ),
        "flair": SeriesProtocol(
            "flair", "axial", in_plane_mm=1.0, slice_mm=3.0, coverage_mm=250, shift_mm=-45
        ),
    },
)


ROLES = {"t1": Role.T1, "t1ce": Role.T1CE, "t2": Role.T2, "flair": Role.FLAIR}


def _intracranial_on(case, volume) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The true intracranial mask on a loaded series' voxels (k, j, i)."""
    points = grid_points(volume.origin, volume.spacing, volume.direction, volume.shape)
    return sample(case.intracranial.astype(np.uint8), case.affine, points, order=0) > 0


def test_a_full_head_study_has_no_tumour_outside_the_skull(tmp_path, models) -> None:  # type: ignore[no-untyped-def]
    case = generate_case(GLIOMA_SEED, "glioma", voxel_mm=2.0, full_head=True)
    study = write_dicom_study(case, tmp_path, seed=5, profile=FULL_HEAD)
    analysis = analyse(scan_folder(tmp_path), models)
    findings = analysis.findings

    assert findings.detection is not None and findings.detection.tumour
    masks = analysis.masks
    assert masks is not None and masks.reference_role == "T1CE"
    reference = load_series(list(study.series["t1ce"].files))
    by_uid = {f.sop_instance_uid: n for n, f in enumerate(reference.frames)}
    order = [by_uid[f.sop_instance_uid] for f in masks.frames]
    inside = _intracranial_on(case, reference)[order]
    voxel_ml = float(np.prod(reference.spacing)) / 1000
    outside_ml = float((masks.masks["WT"] & ~inside).sum()) * voxel_ml
    assert outside_ml < 1.0, f"{outside_ml:.2f} mL of whole tumour outside the skull"
    # The key image shows brain, and so does the plane Grad-CAM explains.
    segmentation = findings.segmentation
    assert segmentation is not None and segmentation.largest_tumour_sop_instance_uid
    key = next(
        n
        for n, f in enumerate(masks.frames)
        if f.sop_instance_uid == segmentation.largest_tumour_sop_instance_uid
    )
    assert inside[key].sum() > 0.2 * inside.sum(axis=(1, 2)).max()
    cam = analysis.grad_cam
    assert cam is not None
    assert findings.classification is not None
    assert cam.plane_index in findings.classification.planes
    assert findings.brain is not None and findings.brain.volume_ml > 500


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(PITUITARY_SEED, id="macroadenoma-3.9mL"),
        pytest.param(
            MICROADENOMA_SEED,
            id="microadenoma-0.7mL",
            marks=pytest.mark.xfail(
                strict=True,
                reason="issue #12: the brain-extraction weights 0.2.0 keep 27 % of this 0.7 mL "
                "lesion (14 % and 4 % of two other held-out lesions under 1 mL; 99 % of a 3.9 mL "
                "macroadenoma): at 4 mm the fossa is three voxels across. Needs a 2 mm mask or "
                "a longer training with more small sellar masses (models/MODEL_CARD.md).",
            ),
        ),
    ],
)
def test_brain_extraction_keeps_a_pituitary_tumour_in_its_fossa(models, seed: int) -> None:  # type: ignore[no-untyped-def]
    """The sella lies below the brain, between the skull base's bones: an intracranial mask that
    stops at the brain's surface cuts a pituitary tumour off, and every finding with it."""
    case = generate_case(seed, "pituitary", voxel_mm=2.0, full_head=True)
    rng = np.random.default_rng(seed)
    volumes = {
        ROLES[m]: as_volume(acquire(case, random_protocol(m, rng, full_head=True), rng))
        for m in ROLES
    }
    analysis = analyse_volumes(f"2.25.{seed}", volumes, models)

    assert analysis.grid is not None and analysis.intracranial is not None
    tumour = label_on_grid(case, analysis.grid.affine, analysis.grid.shape) > 0
    assert tumour.sum() > 50
    kept = float((tumour & analysis.intracranial).sum()) / float(tumour.sum())
    assert kept > 0.9, f"only {kept:.0%} of the pituitary tumour inside the extracted brain"


def test_the_class_is_decided_on_the_tumour_planes_not_on_the_detectors_surest(models) -> None:  # type: ignore[no-untyped-def]
    """A detector surest on planes below the brain (face, skull base) does not pick the planes."""
    example = make_example(CLASSIFY_SEED, "glioma", full_head=True)
    image = example.image.astype(np.float32)
    inside = example.intracranial
    tumour_planes = np.flatnonzero((example.label > 0).sum(axis=(1, 2)))
    planes = np.arange(image.shape[1])
    wrong = np.where(planes < tumour_planes.min() - 10, 1.0, 0.2).astype(np.float32)
    detection = predict.Detection(True, 1.0, wrong, planes)
    masks = {"WT": example.label > 0}

    chosen, source = predict.classification_planes(detection, masks)

    assert source == "segmentation"
    assert set(chosen) <= set(tumour_planes)
    manifest = manifest_for(Task.CLASSIFICATION)
    result = predict.classify(
        models.loaded[Task.CLASSIFICATION], manifest, image[1], detection, chosen, inside
    )
    assert result.label == "glioma"
    assert result.plane in set(chosen)
    # Without the segmentation the detector's surest planes would have been used: not these.
    fallback, source = predict.classification_planes(detection, None)
    assert source == "detection" and not set(fallback) & set(tumour_planes)


def test_a_sellar_mass_in_a_head_never_trained_on_is_called_pituitary_from_where_it_lies(
    models,
) -> None:  # type: ignore[no-untyped-def]
    """A pituitary macroadenoma of the independent phantom (bench/heads.py: not MNI152). Its
    axial planes alone look like an enhancing glioma to the 2D classifier (glioma 0.43, pituitary
    0.23 when this test was written; 3 of 6 such seeds wrong); the location model reads a mass
    at the floor of the intracranial space on the midline, and the study's class is pituitary."""
    case = heads.make_head(PHANTOM_ADENOMA_SEED, "pituitary")
    rng = np.random.default_rng(PHANTOM_ADENOMA_SEED)
    volumes = {
        ROLES[m]: as_volume(acquire(case, random_protocol(m, rng, full_head=True), rng))
        for m in ROLES
    }
    findings = analyse_volumes(f"2.25.{PHANTOM_ADENOMA_SEED}", volumes, models).findings

    found = findings.classification
    assert found is not None and found.planes_from == "segmentation"
    where = found.location_probabilities
    assert where is not None and max(where, key=where.__getitem__) == "pituitary"
    assert found.label == "pituitary"
    assert found.classifier_probabilities is not None and "location" in findings.models
