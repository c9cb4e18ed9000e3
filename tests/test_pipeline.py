"""The analysis pipeline end to end on generated DICOM studies, and ``neurogate analyze``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from inference_worker.pipeline import (
    UnusableStudy,
    analyse,
    analyse_nifti,
    prepare,
    scan_folder,
    stored_study,
)
from inference_worker.selection import Role
from models.classification.location import combine
from models.synthetic import generate_case, region_volumes_ml
from models.synthetic.acquisition import SeriesProtocol
from models.synthetic.dicom import ScannerProfile, write_dicom_study
from models.synthetic.nifti import write_nifti
from neurogate import cli
from neurogate.settings import get_settings

PROFILE = ScannerProfile(
    vendor="ge",
    field_strength=1.5,
    protocols={
        "t1": SeriesProtocol("t1", "sagittal", in_plane_mm=1.5, slice_mm=1.5, three_d=True),
        "t1ce": SeriesProtocol("t1ce", "axial", in_plane_mm=1.5, slice_mm=1.5, three_d=True),
        "t2": SeriesProtocol("t2", "axial", tilt_deg=12.0, in_plane_mm=1.5, slice_mm=5.0),
        "flair": SeriesProtocol("flair", "axial", tilt_deg=-8.0, in_plane_mm=1.5, slice_mm=4.0),
    },
)


@pytest.fixture(scope="module")
def glioma_study(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    case = generate_case(700004, "glioma", voxel_mm=2.0)
    folder = tmp_path_factory.mktemp("glioma")
    study = write_dicom_study(case, folder, seed=3, profile=PROFILE, extra_series=True)
    return case, study, folder


def test_a_full_study_is_detected_classified_and_segmented(glioma_study, models) -> None:  # type: ignore[no-untyped-def]
    case, study, folder = glioma_study
    analysis = analyse(scan_folder(folder), models)
    findings = analysis.findings

    assert findings.study_instance_uid == study.study_instance_uid
    chosen = {c.role: c.series_instance_uid for c in findings.selected}
    assert chosen == {
        "T1": study.series["t1"].series_instance_uid,
        "T1CE": study.series["t1ce"].series_instance_uid,
        "T2": study.series["t2"].series_instance_uid,
        "FLAIR": study.series["flair"].series_instance_uid,
    }
    assert len(findings.rejected) == 2  # the localiser and the diffusion trace
    detection = findings.detection
    assert detection is not None and detection.tumour and detection.decided_by == "segmentation"
    assert findings.classification is not None and findings.classification.label == "glioma"
    segmentation = findings.segmentation
    assert segmentation is not None and findings.skipped == {}
    truth = region_volumes_ml(case.label, case.voxel_ml)
    assert segmentation.volumes_ml["WT"] == pytest.approx(truth["WT"], rel=0.3)
    reference_uids = {
        dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in study.series["t1ce"].files
    }
    assert segmentation.largest_tumour_sop_instance_uid in reference_uids
    assert set(segmentation.slice_areas_mm2) <= reference_uids
    assert set(findings.models) == {
        "brain_extraction", "detection", "classification", "segmentation", "location"
    }  # fmt: skip
    assert all(len(m.sha256) == 64 for m in findings.models.values())
    # The intracranial space, and the class decided where the tumour is.
    assert findings.brain is not None
    intracranial_ml = float(case.intracranial.sum()) * case.voxel_ml
    assert findings.brain.volume_ml == pytest.approx(intracranial_ml, rel=0.15)
    assert findings.classification.planes_from == "segmentation"
    assert findings.classification.planes
    # The class is the classifier's and the location model's renormalised (weighted) product; each
    # expert's own answer is in the findings.
    found = findings.classification
    assert found.classifier_probabilities is not None and found.location_probabilities
    weight = models.location_model.classifier_weight
    joint = combine(found.classifier_probabilities, found.location_probabilities, weight)
    assert found.probabilities == pytest.approx(joint)
    assert max(found.location_probabilities, key=found.location_probabilities.__getitem__) == (
        "glioma"
    )

    # What the SEG is built from: one mask per reference frame, pixel-aligned with it.
    masks = analysis.masks
    assert masks is not None and masks.reference_role == "T1CE"
    first = dcmread(study.series["t1ce"].files[0])
    assert {f.sop_instance_uid for f in masks.frames} == reference_uids
    assert masks.masks["WT"].shape == (len(reference_uids), first.Rows, first.Columns)
    assert not (masks.masks["ET"] & ~masks.masks["TC"]).any()
    # Grad-CAM explains a plane that shows the tumour, and is aligned with it.
    cam = analysis.grad_cam
    assert cam is not None and cam.label == "glioma" and cam.heatmap.shape == cam.plane.shape


def test_a_flair_only_study_skips_segmentation_and_says_why(
    tmp_path: Path, glioma_study, models
) -> None:  # type: ignore[no-untyped-def]
    _, study, _ = glioma_study
    folder = tmp_path / "flair-only"
    folder.mkdir()
    for path in study.series["flair"].files:
        (folder / path.name).write_bytes(path.read_bytes())

    findings = analyse(scan_folder(folder), models).findings

    assert findings.missing == ["T1", "T1CE", "T2"]
    detection = findings.detection
    assert detection is not None and detection.series_role == "FLAIR"
    # Without the segmentation, the detector decides.
    assert detection.tumour and detection.decided_by == "detector"
    assert detection.largest_lesion_ml is None
    assert findings.classification is not None
    assert findings.segmentation is None
    assert findings.skipped == {"segmentation": "missing T1, T1CE, T2"}
    # No masks, no location: the classifier decides alone.
    assert findings.classification.location_probabilities is None
    assert "location" not in findings.models


def test_neurogate_analyze_prints_the_findings(
    glioma_study, tmp_path: Path, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    _, study, folder = glioma_study
    monkeypatch.setenv("NEUROGATE_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    try:
        assert cli.main(["analyze", str(folder)]) == 0
    finally:
        get_settings.cache_clear()
    printed = json.loads(capsys.readouterr().out)
    assert printed["study_instance_uid"] == study.study_instance_uid
    assert printed["detection"]["tumour"] is True
    assert np.isfinite(printed["segmentation"]["volumes_ml"]["WT"])


def test_uploaded_nifti_volumes_are_analysed_without_dicom(tmp_path: Path, models) -> None:  # type: ignore[no-untyped-def]
    """BraTS-style NIfTI (RAS affine) is read in patient coordinates; volumes match the truth."""
    case = generate_case(700011, "meningioma", voxel_mm=2.0)
    paths = write_nifti(case, tmp_path)
    files = {role: paths[name] for role, name in
             (("T1", "t1"), ("T1CE", "t1ce"), ("T2", "t2"), ("FLAIR", "flair"))}  # fmt: skip
    analysis = analyse_nifti("1.2.826.0.1.3680043.2.1125.1", files, models)

    findings = analysis.findings
    assert findings.missing == [] and analysis.masks is None and analysis.source_files == ()
    assert findings.detection is not None and findings.detection.tumour
    assert findings.classification is not None and findings.classification.label == "meningioma"
    assert findings.segmentation is not None
    truth = region_volumes_ml(case.label, case.voxel_ml)
    assert findings.segmentation.volumes_ml["WT"] == pytest.approx(truth["WT"], rel=0.3)
    assert findings.segmentation.slice_areas_mm2 == {}


def test_a_file_that_is_not_nifti_is_refused_with_its_name(tmp_path: Path, models) -> None:  # type: ignore[no-untyped-def]
    bogus = tmp_path / "scan_flair.nii.gz"
    bogus.write_bytes(b"not a volume")
    with pytest.raises(ValueError, match=r"scan_flair\.nii\.gz"):
        analyse_nifti("1.2.3", {"FLAIR": bogus}, models)


def test_a_stored_study_is_described_from_one_header_per_series(
    glioma_study, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The inventory reads each series' first instance only: with every other instance turned
    to garbage it describes the study as a full header scan of the intact files does, and the
    study, whose chosen series no longer load, is unusable, naming a file that broke."""
    _, study, folder = glioma_study
    scanned = scan_folder(folder)
    copy = tmp_path / "study"
    shutil.copytree(folder, copy)
    folders = sorted(p for p in copy.iterdir() if p.is_dir())
    for series in folders:
        for path in sorted(series.glob("*.dcm"))[1:]:
            path.write_bytes(b"not DICOM: the inventory must not read this file")

    stored = stored_study(study.study_instance_uid, folders)

    by_uid = {info.series_instance_uid: info for info in stored.infos}
    assert by_uid == {info.series_instance_uid: info for info in scanned.infos}
    assert len(by_uid) == 6  # four contrasts, the localiser and the diffusion trace
    assert {uid: [p.name for p in files] for uid, files in stored.series.items()} == {
        uid: [p.name for p in files] for uid, files in scanned.series.items()
    }
    with pytest.raises(UnusableStudy, match=r"no usable T1, T1CE, T2 or FLAIR series.*0002\.dcm"):
        prepare(stored)


def test_a_series_whose_pixel_data_cannot_be_decoded_is_skipped_with_the_reason(
    glioma_study, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Truncated pixel data is the series' problem: the others load, and the findings will say
    why the broken one did not; with all of them broken the study is unusable."""
    _, study, folder = glioma_study
    copy = tmp_path / "study"
    shutil.copytree(folder, copy)
    broken = copy / study.series["t2"].files[0].parent.name
    for path in sorted(broken.glob("*.dcm"))[3:4]:
        ds = dcmread(path)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        ds.save_as(path)

    prepared = prepare(scan_folder(copy))

    assert set(prepared.volumes) == {"T1", "T1CE", "FLAIR"}
    assert "0004.dcm: pixel data or image attributes unreadable" in prepared.skipped["load T2"]
    # The reference series (T1CE) is kept as read, for the result objects.
    assert [str(ds.SOPInstanceUID) for ds in prepared.sources] == [
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in prepared.files[Role.T1CE]
    ]
    assert all("PixelData" in ds for ds in prepared.sources)
