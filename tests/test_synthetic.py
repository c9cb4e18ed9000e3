"""The synthetic data generator: anatomy, tumour types, contrasts, scanner geometry, DICOM."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from scipy import ndimage

from inference_worker.selection import SeriesInfo, select_series
from inference_worker.volume import load_series
from models.synthetic import (
    LABEL_EDEMA,
    LABEL_ENHANCING,
    LABEL_NECROTIC,
    generate_case,
    region_volumes_ml,
)
from models.synthetic.acquisition import SeriesProtocol, label_on_grid
from models.synthetic.case import SELLA_RAS
from models.synthetic.dicom import ScannerProfile, write_dicom_study
from models.synthetic.head import extended_anatomy, full_head
from models.synthetic.nifti import write_nifti

VOXEL_MM = 2.0


@pytest.fixture(scope="module")
def cases():  # type: ignore[no-untyped-def]
    return {t: generate_case(seed, t, voxel_mm=VOXEL_MM) for seed, t in
            [(4, "glioma"), (1, "meningioma"), (2, "pituitary"), (3, "none")]}  # fmt: skip


def _centroid_ras(case, mask: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    return (case.affine @ [*np.argwhere(mask).mean(axis=0), 1])[:3]


def test_generation_is_deterministic() -> None:
    a, b = generate_case(7, voxel_mm=VOXEL_MM), generate_case(7, voxel_mm=VOXEL_MM)
    c = generate_case(11, voxel_mm=VOXEL_MM)
    np.testing.assert_array_equal(a.images["flair"], b.images["flair"])
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.images["flair"], c.images["flair"])


def test_glioma_is_intra_axial_with_core_rim_and_oedema(cases) -> None:  # type: ignore[no-untyped-def]
    case = cases["glioma"]
    assert set(np.unique(case.label)) == {0, LABEL_NECROTIC, LABEL_EDEMA, LABEL_ENHANCING}
    tumour = case.label > 0
    assert np.mean(case.brain_mask[tumour]) > 0.97
    core = case.label == LABEL_NECROTIC
    rim = ndimage.binary_dilation(core, iterations=2) & ~core
    assert np.mean(case.label[rim] == LABEL_ENHANCING) > 0.5, "enhancement surrounds the core"
    assert np.sum(case.label == LABEL_EDEMA) > np.sum(case.label == LABEL_ENHANCING)
    wm = case.images["t1"][case.brain_mask & (case.label == 0)].max()
    et = case.label == LABEL_ENHANCING
    assert case.images["t1ce"][et].mean() / wm > case.images["t1"][et].mean() / wm + 0.3
    assert case.images["flair"][case.label == LABEL_EDEMA].mean() > np.percentile(
        case.images["flair"][case.brain_mask & (case.label == 0)], 95
    )


def test_meningioma_is_extra_axial_and_enhances_homogeneously(cases) -> None:  # type: ignore[no-untyped-def]
    case = cases["meningioma"]
    tumour = np.isin(case.label, (LABEL_NECROTIC, LABEL_ENHANCING))
    assert np.mean(case.label[tumour] == LABEL_ENHANCING) > 0.8
    surface = case.brain_mask & ~ndimage.binary_erosion(case.brain_mask, iterations=2)
    outside = ~case.brain_mask
    assert (tumour & surface).any() and (tumour & outside).any(), "dural-based, at the surface"


def test_pituitary_lesion_is_small_and_sellar(cases) -> None:  # type: ignore[no-untyped-def]
    case = cases["pituitary"]
    volumes = region_volumes_ml(case.label, case.voxel_ml)
    assert 0.3 < volumes["WT"] < 20
    assert np.linalg.norm(_centroid_ras(case, case.label > 0) - SELLA_RAS) < 20
    assert abs(_centroid_ras(case, case.label > 0)[0]) < 8, "on the midline"


def test_tumour_free_case_and_the_head_around_the_brain(cases) -> None:  # type: ignore[no-untyped-def]
    case = cases["none"]
    assert not case.label.any()
    ventricles = ndimage.binary_erosion(case.brain_mask, iterations=4) & (
        case.images["t2"] > np.percentile(case.images["t2"][case.brain_mask], 97)
    )
    assert ventricles.sum() > 50
    assert case.images["flair"][ventricles].mean() < 0.3 * case.images["t2"][ventricles].mean()
    scalp = ~case.brain_mask & (case.images["t1"] > 0.5)
    assert scalp.sum() > 1000, "skull marrow and scalp exist outside the brain"


PROFILE = ScannerProfile(
    vendor="siemens",
    field_strength=3.0,
    protocols={
        "t1": SeriesProtocol("t1", "sagittal", in_plane_mm=2.0, slice_mm=2.0, three_d=True),
        "t1ce": SeriesProtocol("t1ce", "axial", in_plane_mm=2.0, slice_mm=2.0, three_d=True),
        "t2": SeriesProtocol("t2", "axial", tilt_deg=15.0, in_plane_mm=2.0, slice_mm=5.0),
        "flair": SeriesProtocol("flair", "coronal", tilt_deg=-10.0, in_plane_mm=2.0, slice_mm=4.0),
    },
)


def test_dicom_study_geometry_validity_and_selection(tmp_path: Path, cases) -> None:  # type: ignore[no-untyped-def]
    case = cases["glioma"]
    study = write_dicom_study(case, tmp_path, seed=1, profile=PROFILE, extra_series=True)

    infos = []
    for series in [*study.series.values(), *study.extra]:
        first = dcmread(series.files[0])
        infos.append(SeriesInfo.from_dataset(first, slices=len(series.files)))
        report = subprocess.run(["dciodvfy", str(series.files[len(series.files) // 2])],
                                capture_output=True, text=True)  # fmt: skip
        errors = [
            ln for ln in (report.stdout + report.stderr).splitlines() if ln.startswith("Error")
        ]
        assert errors == [], series.description
    for modality, series in study.series.items():
        volume = load_series(series.files)
        np.testing.assert_allclose(volume.affine, series.affine_lps, atol=1e-3, err_msg=modality)
        assert volume.shape == series.shape
    selection = select_series(infos)
    assert {r.value: c.series_instance_uid for r, c in selection.chosen.items()} == {
        "T1": study.series["t1"].series_instance_uid,
        "T1CE": study.series["t1ce"].series_instance_uid,
        "T2": study.series["t2"].series_instance_uid,
        "FLAIR": study.series["flair"].series_instance_uid,
    }
    # Ground truth on the T1CE grid holds the whole tumour core.
    t1ce = study.series["t1ce"]
    truth = label_on_grid(case, t1ce.affine_lps, t1ce.shape)
    voxel_ml = float(np.prod(np.linalg.norm(t1ce.affine_lps[:3, :3], axis=0))) / 1000
    expected = region_volumes_ml(case.label, case.voxel_ml)["TC"]
    assert region_volumes_ml(truth, voxel_ml)["TC"] == pytest.approx(expected, rel=0.1)


def test_nifti_in_brats_layout(tmp_path: Path, cases) -> None:  # type: ignore[no-untyped-def]
    import nibabel as nib

    case = cases["meningioma"]
    paths = write_nifti(case, tmp_path)
    assert sorted(p.name for p in paths.values()) == sorted(
        f"{case.case_id}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg")
    )
    seg = nib.load(paths["seg"])
    np.testing.assert_allclose(seg.affine, case.affine)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), case.label)


@pytest.fixture(scope="module")
def whole_head():  # type: ignore[no-untyped-def]
    return generate_case(9, "meningioma", voxel_mm=VOXEL_MM, full_head=True)


def test_a_whole_head_has_a_face_and_a_neck_outside_the_skull(whole_head) -> None:  # type: ignore[no-untyped-def]
    case = whole_head
    t1 = case.images["t1"]
    outside = ~case.intracranial
    signal_outside_ml = float(((t1 > 0.2) & outside).sum()) * case.voxel_ml
    assert signal_outside_ml > 1500  # scalp, face, tongue and neck: litres, not a thin shell
    # Below the skull base: the neck holds tissue (10 cm under the brain's lowest point).
    lowest = np.argwhere(case.intracranial)[:, 2].min()
    assert (t1[:, :, max(lowest - round(100 / VOXEL_MM), 0)] > 0.2).sum() > 200
    # Fat is bright on T1: outside the skull, the brightest tissue outshines the cortex (its
    # signal is randomised per case, so not always the white matter).
    grey_matter = float(np.median(t1[case.brain_mask & (t1 > 0.4) & (t1 < 0.8)]))
    assert float(np.percentile(t1[outside & (t1 > 0.05)], 99)) > grey_matter


def test_whole_head_tumours_lie_inside_the_skull(whole_head) -> None:  # type: ignore[no-untyped-def]
    tumour = whole_head.label > 0
    assert tumour.any()
    assert not (tumour & ~whole_head.intracranial).any()


def test_the_pituitary_fossa_is_intracranial_in_a_normal_head() -> None:
    """A pituitary lesion sits in the sella, below the brain: the intracranial space must hold
    the fossa in every head, not only around a tumour (else brain extraction learns to cut it).
    (The elastic deformation moves a head by a few mm: 4 mm around the template's sella.)"""
    case = generate_case(13, "none", voxel_mm=VOXEL_MM, full_head=True)
    fossa = _mask_near(case, SELLA_RAS, 4.0)
    assert fossa.sum() >= 3
    assert case.intracranial[fossa].all()
    below = _mask_near(case, SELLA_RAS - [0, 0, 25], 4.0)  # the sphenoid sinus, the nasopharynx
    assert not case.intracranial[below].any()


def test_a_normal_gland_fills_the_sella_and_not_the_cistern_above() -> None:
    """A normal pituitary gland enhances but stays inside the sella; the suprasellar cistern
    above it is CSF. An adenoma is what grows out of the sella, so a generator that paints
    gland up to the hypothalamus teaches the networks that a normal head carries a 1-2 mL
    enhancing sellar mass."""
    anatomy = extended_anatomy(VOXEL_MM)
    head = full_head(anatomy, np.random.default_rng(13))
    fossa = anatomy.pituitary_fossa() & ~anatomy.brain
    cistern = fossa & ~anatomy.pituitary_gland()
    gland_ml = head.fractions["mucosa"][fossa].sum() * VOXEL_MM**3 / 1000
    assert 0.1 < gland_ml < 1.0
    assert head.fractions["mucosa"][cistern].max() < 0.5
    assert head.fractions["csf"][cistern & (anatomy.outside_mm > 3)].min() > 0.5


def test_pituitary_lesions_range_from_microadenomas_to_macroadenomas() -> None:
    """Sellar lesions come in every size a radiologist meets, each rising out of the fossa: a
    generator whose largest was 3 mL taught the classifier that a 3-8 mL sellar mass is a
    meningioma (an independent phantom's macroadenomas were all called meningioma or glioma)."""
    from models.synthetic.case import _pituitary

    anatomy = extended_anatomy(VOXEL_MM)
    world = anatomy.world()
    fossa = anatomy.pituitary_fossa()
    volumes, floors = [], []
    for seed in range(24):
        lesion = _pituitary(anatomy, world, np.random.default_rng(seed)) > 0
        volumes.append(lesion.sum() * VOXEL_MM**3 / 1000)
        floors.append(world[..., 2][lesion].min() - SELLA_RAS[2])
        assert (lesion & fossa).sum() >= 0.5 * min(lesion.sum(), fossa.sum()), seed
    assert min(volumes) < 1.0 and max(volumes) > 4.0, volumes
    assert min(floors) > -10 and max(floors) < 0, "the floor in the sella"


def _mask_near(case, point_ras: np.ndarray, radius_mm: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in case.label.shape), indexing="ij"), -1)
    world = grid @ case.affine[:3, :3].T + case.affine[:3, 3]
    return np.linalg.norm(world - point_ras, axis=-1) < radius_mm


def test_whole_heads_differ_in_shape_between_seeds() -> None:
    one = generate_case(11, "none", voxel_mm=4.0, full_head=True)
    two = generate_case(12, "none", voxel_mm=4.0, full_head=True)
    again = generate_case(11, "none", voxel_mm=4.0, full_head=True)
    assert np.array_equal(one.images["t2"], again.images["t2"])
    volumes = [float(c.intracranial.sum()) * c.voxel_ml for c in (one, two)]
    assert abs(volumes[0] - volumes[1]) > 20  # mL: heads of different sizes
