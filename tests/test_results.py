"""The DICOM result objects of an analysis: SEG, SR, Grad-CAM capture and PDF report.

Inputs are real but cheap: a synthetic glioma written as a DICOM T1CE series, with its ground
truth resampled onto the series' own frames standing in for the network's masks, and findings
written by hand. Every object is written to disk and checked the way a PACS would meet it:
``dciodvfy`` (dicom3tools) for the IODs, ``dsrdump`` (DCMTK) for the report, highdicom for reading
the segmentation back.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid
from pypdf import PdfReader

from inference_worker.analysis import REGIONS, Analysis, GradCam, RegionMasks
from inference_worker.results import SERIES_OFFSETS, ResultObject, build_result_objects
from inference_worker.results.capture import build_gradcam, overlay_png
from inference_worker.results.contour import largest_part, outline_polygon
from inference_worker.results.seg import SEGMENTS, build_seg
from inference_worker.results.sr import build_sr
from inference_worker.volume import load_series
from models.imaging import Volume
from models.overlay import blend, heatmap_rgb, outline
from models.synthetic import LABEL_ENHANCING, LABEL_NECROTIC, generate_case
from models.synthetic.acquisition import SeriesProtocol, label_on_grid
from models.synthetic.case import SyntheticCase
from models.synthetic.dicom import ScannerProfile, SyntheticStudy, write_dicom_study
from neurogate.settings import ResultSettings
from schemas.findings import (
    BrainFinding,
    ClassificationFinding,
    DetectionFinding,
    Findings,
    ModelVersion,
    SegmentationFinding,
    SeriesChoice,
)

# An oblique axial T1CE at 2 x 2 x 3 mm: small enough to be quick, tilted so that nothing
# lines up with the patient axes by accident.
PROFILE = ScannerProfile(
    vendor="siemens",
    field_strength=3.0,
    protocols={
        "t1ce": SeriesProtocol("t1ce", "axial", tilt_deg=10.0, in_plane_mm=2.0, slice_mm=3.0),
    },
)
SETTINGS = ResultSettings(series_number_base=7000, station_name="NG-TEST")
DESCRIPTIONS = {
    "seg": "NeuroGate tumour segmentation",
    "sr": "NeuroGate tumour report",
    "gradcam": "NeuroGate Grad-CAM",
    "pdf": "NeuroGate tumour report (PDF)",
}
PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
)
needs_dicom3tools = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed"
)
needs_dcmtk = pytest.mark.skipif(shutil.which("dsrdump") is None, reason="DCMTK not installed")


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy reports for ``path`` (warnings are allowed)."""
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def _model(name: str) -> ModelVersion:
    return ModelVersion(name=name, version="1.2.3", sha256=f"{abs(hash(name)):064x}"[-64:])


MODELS = {
    "brain_extraction": _model("neurogate-brain-extractor"),
    "detection": _model("neurogate-detector"),
    "classification": _model("neurogate-slice-classifier"),
    "segmentation": _model("neurogate-segmenter"),
    "location": _model("neurogate-location-model"),
}
PROBABILITIES = {"glioma": 0.91, "meningioma": 0.05, "notumor": 0.01, "pituitary": 0.03}
BRAIN = BrainFinding(volume_ml=1432.46, series_role="T1CE")
CLASSIFIER_ALONE = {"glioma": 0.6, "meningioma": 0.3, "notumor": 0.0, "pituitary": 0.1}
LOCATION = {"glioma": 0.9, "meningioma": 0.08, "pituitary": 0.02}
CLASS_PLANES = [61, 62, 63, 65]  # canonical-grid planes the class was decided on


Written = tuple[list[ResultObject], dict[str, Path]]  # the objects and where each was saved


@dataclass(frozen=True, eq=False)
class Reference:
    """A written reference series with the masks on its frames."""

    files: list[Path]
    volume: Volume
    masks: dict[str, np.ndarray]

    def datasets(self) -> list[Dataset]:
        # Any order: the builders must find each frame's source by its UID.
        order = np.random.default_rng(0).permutation(len(self.files))
        return [dcmread(self.files[i]) for i in order]


def _region_masks(case: SyntheticCase, volume: Volume) -> dict[str, np.ndarray]:
    label = label_on_grid(case, volume.affine, volume.array.shape)
    return {
        "WT": label > 0,
        "TC": np.isin(label, (LABEL_NECROTIC, LABEL_ENHANCING)),
        "ET": label == LABEL_ENHANCING,
    }


@pytest.fixture(scope="module")
def case() -> SyntheticCase:
    return generate_case(700004, "glioma", voxel_mm=2.0)


@pytest.fixture(scope="module")
def study(case: SyntheticCase, tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    folder = tmp_path_factory.mktemp("study")
    return write_dicom_study(case, folder, seed=3, profile=PROFILE, modalities=("t1ce",))


@pytest.fixture(scope="module")
def reference(case: SyntheticCase, study: SyntheticStudy) -> Reference:
    files = study.series["t1ce"].files
    volume = load_series(files)
    return Reference(files, volume, _region_masks(case, volume))


def _findings(
    study_uid: str,
    series_uid: str,
    volume: Volume | None,
    masks: dict[str, np.ndarray] | None = None,
) -> Findings:
    segmentation = None
    if masks is not None and volume is not None:
        segmentation = SegmentationFinding(
            volumes_ml={
                r: round(float(masks[r].sum()) * volume.voxel_volume_ml, 2) for r in REGIONS
            },
            reference_role="T1CE",
        )
    return Findings(
        study_instance_uid=study_uid,
        selected=[
            SeriesChoice(role="T1CE", series_instance_uid=series_uid, reasons=["post-contrast 3D"])
        ],
        missing=["T1", "T2", "FLAIR"] if segmentation is None else [],
        rejected={"1.2.3.4.5": "localiser"},
        detection=DetectionFinding(tumour=True, probability=0.97, series_role="T1CE"),
        brain=BRAIN,
        classification=ClassificationFinding(
            label="glioma",
            probabilities=PROBABILITIES,
            series_role="T1CE",
            planes=CLASS_PLANES,
            planes_from="segmentation" if segmentation is not None else "detection",
            # With masks, the class combines the classifier with the location model.
            classifier_probabilities=None if segmentation is None else CLASSIFIER_ALONE,
            location_probabilities=None if segmentation is None else LOCATION,
        ),
        segmentation=segmentation,
        skipped={} if segmentation is not None else {"segmentation": "missing T1, T2, FLAIR"},
        models=MODELS,
        seconds={},
    )


def _grad_cam(reference: Reference) -> GradCam:
    """A plane through the tumour with a heatmap centred on it."""
    wt = reference.masks["WT"]
    k = int(np.argmax(wt.reshape(len(wt), -1).sum(axis=1)))
    plane = reference.volume.array[k] / np.percentile(reference.volume.array, 99)
    rows, cols = np.mgrid[: plane.shape[0], : plane.shape[1]]
    centre = np.argwhere(wt[k]).mean(axis=0)
    heat = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * 8.0**2))
    return GradCam(
        plane.astype(np.float32), heat.astype(np.float32), 2.0, "glioma", 0.91, "T1CE", k
    )


def _analysis(study: SyntheticStudy, reference: Reference) -> Analysis:
    series = study.series["t1ce"]
    masks = RegionMasks(
        reference_role="T1CE",
        reference_files=tuple(reference.files),
        frames=reference.volume.frames,
        masks=reference.masks,
    )
    findings = _findings(
        study.study_instance_uid, series.series_instance_uid, reference.volume, reference.masks
    )
    return Analysis(findings, masks, _grad_cam(reference), tuple(reference.files))


@pytest.fixture(scope="module")
def written(
    study: SyntheticStudy, reference: Reference, tmp_path_factory: pytest.TempPathFactory
) -> Written:
    """The objects of a full analysis, as built and as written to disk."""
    objects = build_result_objects(_analysis(study, reference), reference.datasets(), SETTINGS)
    folder = tmp_path_factory.mktemp("results")
    paths: dict[str, Path] = {}
    for obj in objects:
        paths[obj.kind] = folder / f"{obj.kind}.dcm"
        obj.dataset.save_as(paths[obj.kind], enforce_file_format=True)
    return objects, paths


def test_a_full_analysis_gives_seg_sr_capture_and_pdf_in_the_source_study(
    written: Written, reference: Reference
) -> None:
    objects, paths = written
    assert [o.kind for o in objects] == ["seg", "sr", "gradcam", "pdf"]
    source = dcmread(reference.files[0], stop_before_pixels=True)
    series_uids = set()
    for obj in objects:
        ds = dcmread(paths[obj.kind])
        assert ds.SeriesNumber == SETTINGS.series_number_base + SERIES_OFFSETS[obj.kind]
        assert ds.SeriesDescription == DESCRIPTIONS[obj.kind]
        for keyword in PATIENT_STUDY:
            assert ds.get(keyword) == source.get(keyword), (obj.kind, keyword)
        assert ds.SOPInstanceUID.startswith("2.25.")  # no uid_root: UUID-derived UIDs
        series_uids.add(ds.SeriesInstanceUID)
    assert len(series_uids) == 4 and source.SeriesInstanceUID not in series_uids


@needs_dicom3tools
@pytest.mark.parametrize("kind", ["seg", "sr", "gradcam", "pdf"])
def test_every_object_passes_dciodvfy(written: Written, kind: str) -> None:
    _, paths = written
    assert dciodvfy_errors(paths[kind]) == []


def test_the_seg_references_every_source_frame_and_reads_back_as_the_masks(
    written: Written, study: SyntheticStudy, reference: Reference
) -> None:
    _, paths = written
    seg = hd.seg.segread(paths["seg"])
    frames = len(reference.files)
    source_uids = [ref.sop_instance_uid for ref in reference.volume.frames]

    assert seg.SegmentationType == "BINARY" and seg.SegmentsOverlap == "YES"
    assert seg.ContentQualification == "RESEARCH"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [
        "Whole tumour",
        "Tumour core",
        "Enhancing tumour",
    ]
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == MODELS["segmentation"].name
        assert algorithm.AlgorithmVersion == "1.2.3"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence] == [
        "52988006",
        "108369006",
        "C113842",
    ]
    # Empty frames kept: one frame per source frame and segment.
    assert int(seg.NumberOfFrames) == 3 * frames
    per_segment = np.bincount(
        [
            f.SegmentIdentificationSequence[0].ReferencedSegmentNumber
            for f in seg.PerFrameFunctionalGroupsSequence
        ]
    )
    assert per_segment.tolist() == [0, frames, frames, frames]
    # References: the series, and each frame its source instance.
    assert (
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        == study.series["t1ce"].series_instance_uid
    )
    referenced = {
        i.ReferencedSOPInstanceUID
        for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == set(source_uids)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID in referenced
    # Pixel data, read back by source instance, equals the masks.
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=source_uids, segment_numbers=[1, 2, 3], combine_segments=False
    )
    expected = np.stack([reference.masks[r] for r in REGIONS], axis=-1)
    assert pixels.shape == expected.shape
    assert np.array_equal(pixels.astype(bool), expected)


@needs_dcmtk
def test_dsrdump_shows_the_volumes_and_the_class(written: Written) -> None:
    objects, paths = written
    result = subprocess.run(
        ["dsrdump", str(paths["sr"])], capture_output=True, text=True, timeout=60, check=True
    )
    text = result.stdout
    sr = next(o for o in objects if o.kind == "sr").dataset
    assert "Imaging Measurement Report" in text
    assert '"Glioma"' in text and "(C3059,NCIt" in text and "99NEUROGATE" not in text
    assert '(52101004,SCT,"Present")' in text
    for region in REGIONS:
        volume = _volumes(sr)[region]
        assert f'="{volume:g}" (ml,UCUM' in text or f'="{volume}" (ml,UCUM' in text


def _report(sr: Dataset) -> hd.sr.MeasurementReport:
    content = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def _volumes(sr: Dataset) -> dict[str, float]:
    report = _report(sr)
    groups = report.get_volumetric_roi_measurement_groups()
    keys = {"Whole tumour": "WT", "Tumour core": "TC", "Enhancing tumour": "ET"}
    return {keys[str(g.tracking_identifier)]: float(g.get_measurements()[0].value) for g in groups}


def test_the_sr_measures_each_region_on_its_seg_segment(
    written: Written, reference: Reference
) -> None:
    objects, paths = written
    seg = dcmread(paths["seg"])
    groups = _report(dcmread(paths["sr"])).get_volumetric_roi_measurement_groups()
    assert len(groups) == 3
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    findings_volumes = {
        "Whole tumour": reference.masks["WT"].sum(),
        "Tumour core": reference.masks["TC"].sum(),
        "Enhancing tumour": reference.masks["ET"].sum(),
    }
    for group in groups:
        segment = group.referenced_segment
        assert segment is not None
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        (number,) = segment.referenced_segment_numbers or []
        # The group tracks the same region as the segment it points at.
        assert str(group.tracking_uid) == segments[number].TrackingUID
        assert str(group.tracking_identifier) == segments[number].SegmentLabel
        (volume,) = group.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume"))
        assert volume.unit.value == "ml"
        voxels = findings_volumes[segments[number].SegmentLabel]
        assert float(volume.value) == pytest.approx(
            voxels * reference.volume.voxel_volume_ml, abs=0.01
        )
    # The SR names the node as its observer and the models that found what it reports.
    dataset = next(o for o in objects if o.kind == "sr").dataset
    assert dataset.CompletionFlag == "COMPLETE" and dataset.VerificationFlag == "UNVERIFIED"
    values = _content_values(dataset)
    assert SETTINGS.station_name in values and MODELS["segmentation"].name in values
    # The classifier's run names the planes it decided on, and how they were chosen.
    assert {"planes_from=segmentation", "planes=61,62,63,65"} <= values
    # ... and, the class being combined with the location model, that model and both answers.
    assert {
        f"location_model=neurogate-location-model 1.2.3 sha256={MODELS['location'].sha256}",
        "classifier_probabilities=glioma:0.600,meningioma:0.300,notumor:0.000,pituitary:0.100",
        "location_probabilities=glioma:0.900,meningioma:0.080,pituitary:0.020",
    } <= values
    groups = _report(dataset).get_image_measurement_groups()
    brain = next(g for g in groups if str(g.tracking_identifier) == "Intracranial volume")
    (volume,) = brain.get_measurements()
    assert float(volume.value) == pytest.approx(1432.5)


def test_the_sr_outlines_each_region_on_the_key_image_tracked_as_its_segment(
    written: Written, reference: Reference
) -> None:
    _, paths = written
    seg, sr = dcmread(paths["seg"]), dcmread(paths["sr"])
    report = _report(sr)
    volumetric = {
        str(g.tracking_identifier): g for g in report.get_volumetric_roi_measurement_groups()
    }
    planar = report.get_planar_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in planar] == [r.label for r in SEGMENTS]
    segments = {str(s.SegmentLabel): s for s in seg.SegmentSequence}
    wt = reference.masks["WT"]
    key = int(np.argmax(wt.reshape(len(wt), -1).sum(axis=1)))  # the largest whole-tumour slice
    spacing = reference.datasets()[0].PixelSpacing
    for group, region in zip(planar, SEGMENTS, strict=True):
        # One finding, two groups: the volume on the SEG segment, the outline on the key image.
        assert str(group.tracking_uid) == segments[region.label].TrackingUID
        assert str(group.tracking_uid) == str(volumetric[region.label].tracking_uid)
        mask = reference.masks[region.key]
        index = key if mask[key].any() else int(np.argmax(mask.reshape(len(mask), -1).sum(1)))
        scoord = group.roi
        assert scoord is not None and scoord.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = scoord.value
        assert (points[0] == points[-1]).all()  # closed
        (image,) = scoord.ContentSequence
        referenced = image.ReferencedSOPSequence[0]
        assert (
            referenced.ReferencedSOPInstanceUID == reference.volume.frames[index].sop_instance_uid
        )
        # The outline encloses exactly the region's largest part on that image.
        x, y = points[:, 0], points[:, 1]
        enclosed = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
        assert enclosed == largest_part(mask[index]).sum() >= 0.9 * mask[index].sum()
        (area,) = group.get_measurements(name=hd.sr.CodedConcept("42798000", "SCT", "Area"))
        assert area.unit.value == "mm2"
        expected = mask[index].sum() * float(spacing[0]) * float(spacing[1])
        assert float(area.value) == pytest.approx(expected, abs=0.05)
    assert planar[0].roi is not None
    assert planar[0].roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        reference.volume.frames[key].sop_instance_uid
    )
    assert viewer_unplaceable_groups(sr) == []


def test_a_region_no_frame_shows_has_its_volume_placed_on_the_key_image(
    study: SyntheticStudy, reference: Reference, tmp_path: Path
) -> None:
    """A few enhancing voxels on the analysis grid can vanish when resampled onto the frames."""
    analysis = _analysis(study, reference)
    assert analysis.masks is not None
    masks = {**analysis.masks.masks, "ET": np.zeros_like(analysis.masks.masks["ET"])}
    analysis = dataclasses.replace(analysis, masks=dataclasses.replace(analysis.masks, masks=masks))
    objects = {
        o.kind: o.dataset for o in build_result_objects(analysis, reference.datasets(), SETTINGS)
    }
    sr = objects["sr"]
    report = _report(sr)
    assert [str(g.tracking_identifier) for g in report.get_planar_roi_measurement_groups()] == [
        "Whole tumour",
        "Tumour core",
    ]
    volumetric = report.get_volumetric_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in volumetric] == ["Whole tumour", "Tumour core"]
    # The empty segment's volume, still reported and tracked as the segment, on the key image.
    (enhancing,) = (
        g
        for g in report.get_image_measurement_groups()
        if str(g.tracking_identifier) == "Enhancing tumour"
    )
    segment = next(
        s for s in objects["seg"].SegmentSequence if s.SegmentLabel == "Enhancing tumour"
    )
    assert str(enhancing.tracking_uid) == segment.TrackingUID
    (volume,) = enhancing.get_measurements()
    assert float(volume.value) == analysis.findings.segmentation.volumes_ml["ET"] > 0
    assert viewer_unplaceable_groups(sr) == []
    if shutil.which("dciodvfy"):
        path = tmp_path / "sr.dcm"
        sr.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []


def viewer_unplaceable_groups(sr: Dataset) -> list[str]:
    """Tracking identifiers of findings with no image coordinates, which OHIF 3.13 fails on.

    OHIF merges the groups of one Tracking Unique Identifier; each finding needs an SCOORD or
    SCOORD3D in a group, or one under (INFERRED FROM) every NUM of it.
    """
    root = sr.ContentSequence
    measurements = next(i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    placed: dict[str, bool] = {}
    names: dict[str, str] = {}
    for group in measurements.ContentSequence:
        items = list(group.ContentSequence)
        uid = next(str(i.UID) for i in items if i.ValueType == "UIDREF" and "UID" in i)
        names[uid] = next(str(i.TextValue) for i in items if i.ValueType == "TEXT")
        nums = [i for i in items if i.ValueType == "NUM"]
        here = any(i.ValueType in ("SCOORD", "SCOORD3D") for i in items) or (
            bool(nums)
            and all(
                any(c.ValueType in ("SCOORD", "SCOORD3D") for c in n.get("ContentSequence", []))
                for n in nums
            )
        )
        placed[uid] = placed.get(uid, False) or here
    return [names[uid] for uid, ok in placed.items() if not ok]


def _content_values(item: Dataset) -> set[str]:
    """Every TEXT and UIDREF value in an SR content tree."""
    values = {str(item[k].value) for k in ("TextValue", "UID") if k in item}
    for child in item.get("ContentSequence", []):
        values |= _content_values(child)
    return values


def test_the_capture_shows_the_plane_and_its_heatmap(
    written: Written, reference: Reference
) -> None:
    _, paths = written
    capture = dcmread(paths["gradcam"])
    assert capture.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert capture.PhotometricInterpretation == "RGB" and capture.SamplesPerPixel == 3
    pixels = capture.pixel_array
    rows, cols = reference.volume.array.shape[1:]
    assert pixels.shape == (rows, 2 * cols + 4, 3)
    left, right = pixels[:, :cols], pixels[:, -cols:]
    assert (left[..., 0] == left[..., 2]).all()  # the plain plane is grey
    assert (right[..., 0].astype(int) - right[..., 2]).max() > 50  # the hot spot is red
    assert [str(v) for v in capture.PatientOrientation] == ["L", "P"]


def test_the_pdf_report_says_what_was_found_and_that_it_is_research(
    written: Written, study: SyntheticStudy
) -> None:
    objects, paths = written
    volumes = _volumes(next(o for o in objects if o.kind == "sr").dataset)
    pdf = dcmread(paths["pdf"])
    assert pdf.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert pdf.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert pdf.BurnedInAnnotation == "YES"
    document = bytes(pdf.EncapsulatedDocument)[: int(pdf.EncapsulatedDocumentLength)]
    assert document.startswith(b"%PDF-") and document.rstrip().endswith(b"%%EOF")
    assert len(document) > 20_000  # two key images at least
    text = pdf_text(document)
    assert "Not for clinical use" in text and "research software" in text
    assert f"{volumes['WT']:.2f}" in text and f"{volumes['ET']:.2f}" in text
    assert "glioma" in text and "0.910" in text and "0.97" in text
    assert MODELS["segmentation"].name in text and MODELS["classification"].name in text
    # Whole UIDs, in lines where they are wider than their cells.
    unbroken = re.sub(r"(?<=[\d.]) (?=[\d.])", "", text)
    assert study.series["t1ce"].series_instance_uid in unbroken
    assert study.study_instance_uid in unbroken
    assert "Key images" in text and "green: whole tumour" in text
    # Where the class was decided, and the intracranial volume.
    assert "Class decided on axial planes 61-63, 65 of the 2 mm analysis grid" in text
    assert "the planes with the largest" in text  # whole-tumour area (wrapped)
    assert "1432.5 mL" in text and "No tumour found" not in text
    # The class combines two experts; each one's own answer is printed beside it.
    assert "combines the slice classifier" in text and "location model" in text
    assert "Classifier alone Location alone" in text
    assert "0.600 0.900" in text  # glioma: the classifier alone, the location model alone


def pdf_text(document: bytes) -> str:
    """The text of every page, as pypdf extracts it, each run of white space made one space.

    Joining the lines lets an assertion span a line that the layout wrapped.
    """
    reader = PdfReader(io.BytesIO(document))
    return " ".join(" ".join(page.extract_text() or "" for page in reader.pages).split())


@pytest.mark.parametrize("tumour", [True, False], ids=["tumour", "no-tumour"])
def test_without_segmentation_the_sr_and_pdf_still_report(
    study: SyntheticStudy, reference: Reference, tmp_path: Path, tumour: bool
) -> None:
    series = study.series["t1ce"]
    findings = _findings(study.study_instance_uid, series.series_instance_uid, None)
    if not tumour:
        findings = findings.model_copy(
            update={
                "detection": DetectionFinding(tumour=False, probability=0.04, series_role="T1CE"),
                "classification": None,
                "skipped": {**findings.skipped, "classification": "no tumour detected"},
            }
        )
    grad_cam = _grad_cam(reference) if tumour else None
    objects = build_result_objects(
        Analysis(findings, None, grad_cam), reference.datasets(), SETTINGS
    )
    assert [o.kind for o in objects] == (["sr", "gradcam", "pdf"] if tumour else ["sr", "pdf"])
    for obj in objects:
        path = tmp_path / f"{obj.kind}.dcm"
        obj.dataset.save_as(path, enforce_file_format=True)
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(path) == [], obj.kind
    report = _report(objects[0].dataset)
    assert report.get_volumetric_roi_measurement_groups() == []
    evaluations = [
        e[0].ConceptCodeSequence[0].CodeMeaning  # the CODE item's value
        for group in report.get_image_measurement_groups()
        for e in group.get_qualitative_evaluations()
    ]
    assert ("Present" in evaluations) is tumour and ("Absent" in evaluations) is not tumour
    findings_types = [
        g.finding_type.meaning
        for g in report.get_image_measurement_groups()
        if g.finding_type is not None
    ]
    assert ("Glioma" in findings_types) is tumour


def _negative_analysis(
    study: SyntheticStudy, reference: Reference, *, everything: bool
) -> Analysis:
    """A study the detector calls tumour-free, with spurious tiny masks on the reference frames.

    ``everything`` adds what the pipeline does not produce for such a study but other paths
    might: a tumour class and a Grad-CAM of it.
    """
    speck = {r: np.zeros_like(m) for r, m in reference.masks.items()}
    k, j, i = (n // 2 for n in speck["WT"].shape)
    for region in REGIONS:
        speck[region][k, j : j + 2, i : i + 2] = True  # four voxels of "tumour" in each region
    masks = RegionMasks("T1CE", tuple(reference.files), reference.volume.frames, speck)
    series = study.series["t1ce"]
    positive = _findings(
        study.study_instance_uid, series.series_instance_uid, reference.volume, speck
    )
    findings = positive.model_copy(
        update={
            "detection": DetectionFinding(tumour=False, probability=0.04, series_role="FLAIR"),
            "classification": positive.classification if everything else None,
            "skipped": {"classification": "no tumour detected"},
        }
    )
    grad_cam = _grad_cam(reference) if everything else None
    return Analysis(findings, masks, grad_cam, tuple(reference.files))


@pytest.mark.parametrize("everything", [False, True], ids=["as-pipeline", "stale-class"])
def test_a_tumour_free_study_gets_an_absent_sr_and_a_plain_pdf_and_nothing_else(
    study: SyntheticStudy, reference: Reference, tmp_path: Path, everything: bool
) -> None:
    analysis = _negative_analysis(study, reference, everything=everything)
    assert analysis.findings.segmentation is not None and analysis.masks is not None
    objects = build_result_objects(analysis, reference.datasets(), SETTINGS)

    # No SEG of a "whole tumour", no Grad-CAM of a class that was never assigned.
    assert [o.kind for o in objects] == ["sr", "pdf"]
    paths = {}
    for obj in objects:
        paths[obj.kind] = tmp_path / f"{obj.kind}.dcm"
        obj.dataset.save_as(paths[obj.kind], enforce_file_format=True)
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(paths[obj.kind]) == [], obj.kind

    # The SR: Neoplasm absent with the detector's probability, and the intracranial volume.
    sr = objects[0].dataset
    report = _report(sr)
    assert report.get_volumetric_roi_measurement_groups() == []
    groups = report.get_image_measurement_groups()
    detection = next(g for g in groups if str(g.tracking_identifier) == "Tumour detection")
    evaluations = {
        e[0].ConceptNameCodeSequence[0].CodeValue: e[0].ConceptCodeSequence[0]
        for e in detection.get_qualitative_evaluations()
    }
    absent = evaluations["108369006"]  # Neoplasm
    assert (absent.CodeValue, absent.CodingSchemeDesignator) == ("272519000", "SCT")
    (probability,) = detection.get_measurements()
    assert float(probability.value) == pytest.approx(0.04)
    brain = next(g for g in groups if str(g.tracking_identifier) == "Intracranial volume")
    assert brain.finding_type is not None and brain.finding_type.value == "128319008"
    (volume,) = brain.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume"))
    assert float(volume.value) == pytest.approx(1432.5) and volume.unit.value == "ml"
    assert MODELS["brain_extraction"].name in _content_values(sr)
    assert len(groups) == 2  # no tumour class, no tumour volumes
    assert report.get_planar_roi_measurement_groups() == []
    assert viewer_unplaceable_groups(sr) == []  # both inferred from the series' middle image
    assert "CodingSchemeIdentificationSequence" not in sr  # nothing private to declare
    codes_used = _code_values(sr)
    assert not codes_used & {"C3059", "C3230", "C3329", "52988006", "C113842"}

    # The PDF says plainly that no tumour was found, and nothing about a tumour.
    pdf = objects[1].dataset
    text = pdf_text(bytes(pdf.EncapsulatedDocument)[: int(pdf.EncapsulatedDocumentLength)])
    assert "No tumour found." in text
    assert "probability of a tumour was 0.04" in text and "1432.5 mL" in text
    for absent in ("Tumour present", "Tumour class", "glioma", "Tumour volumes", "Key images"):
        assert absent not in text, absent


def _code_values(item: Dataset) -> set[str]:
    """Every code value in an SR content tree (concept names and coded values)."""
    values = set()
    for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
        values |= {str(code.CodeValue) for code in item.get(keyword, [])}
    for child in item.get("ContentSequence", []):
        values |= _code_values(child)
    return values


def test_tumour_objects_refuse_a_tumour_free_study(
    study: SyntheticStudy, reference: Reference
) -> None:
    analysis = _negative_analysis(study, reference, everything=True)
    with pytest.raises(ValueError, match="no tumour"):
        build_seg(analysis, reference.datasets(), SETTINGS, 7001)
    with pytest.raises(ValueError, match="not assigned"):
        build_gradcam(analysis, reference.datasets(), SETTINGS, 7003)
    # A Grad-CAM of another class than the one the report states is refused too.
    positive = _analysis(study, reference)
    assert positive.grad_cam is not None
    other = dataclasses.replace(positive.grad_cam, label="meningioma")
    mismatched = dataclasses.replace(positive, grad_cam=other)
    assert [o.kind for o in build_result_objects(mismatched, reference.datasets(), SETTINGS)] == [
        "seg",
        "sr",
        "pdf",
    ]


# Each label's code, and where it was checked: NCIt codes as OBO/EFO/Mondo cross-references give
# them (C3059 Glioma, C3230 Meningioma, C3329 Pituitary Gland Adenoma); SCT Absent as PS3.16 does.
EXPECTED_CLASS_CODES = {
    "glioma": ("C3059", "NCIt", "Glioma"),
    "meningioma": ("C3230", "NCIt", "Meningioma"),
    "pituitary": ("C3329", "NCIt", "Pituitary Gland Adenoma"),
    "notumor": ("272519000", "SCT", "Absent"),
}


@pytest.mark.parametrize("label", ["glioma", "meningioma", "pituitary", "oligodendroglioma"])
def test_the_sr_codes_each_class_in_its_real_scheme(
    study: SyntheticStudy, reference: Reference, tmp_path: Path, label: str
) -> None:
    """The shipped labels in NCIt, "no tumour" as SCT Absent; a site's own label in 99NEUROGATE."""
    series = study.series["t1ce"]
    findings = _findings(study.study_instance_uid, series.series_instance_uid, None)
    probabilities = {"glioma": 0.1, "meningioma": 0.1, "pituitary": 0.1, "notumor": 0.0}
    probabilities[label] = 0.7
    assert findings.classification is not None
    classification = findings.classification.model_copy(
        update={"label": label, "probabilities": probabilities}
    )
    sr = build_sr(
        Analysis(findings.model_copy(update={"classification": classification})),
        reference.datasets(),
        None,
        SETTINGS,
        7002,
    )
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(path) == []
    group = next(
        g
        for g in _report(dcmread(path)).get_image_measurement_groups()
        if str(g.tracking_identifier) == "Tumour class"
    )
    expected = EXPECTED_CLASS_CODES.get(label, (label[:16], "99NEUROGATE", label))  # SH value
    assert group.finding_type is not None
    found = group.finding_type
    assert (found.value, found.scheme_designator, found.meaning) == expected
    names = {
        (m.name.value, m.name.scheme_designator, m.name.meaning) for m in group.get_measurements()
    }
    assert {EXPECTED_CLASS_CODES[name] for name in ("meningioma", "notumor")} <= names
    declared = [
        str(i.CodingSchemeDesignator) for i in sr.get("CodingSchemeIdentificationSequence", [])
    ]
    assert ("99NEUROGATE" in declared) is (label not in EXPECTED_CLASS_CODES)


def _legacy_converted(files: list[Path]) -> Dataset:
    """The single-frame series converted by highdicom to one Legacy Converted Enhanced MR."""
    return hd.legacy.LegacyConvertedEnhancedMRImage(
        [dcmread(f) for f in files],
        series_instance_uid=generate_uid(),
        series_number=20,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )


def _enhanced_mr(files: list[Path]) -> Dataset:
    """The single-frame series as one Enhanced MR Image, frames stored in a shuffled order.

    A minimal Enhanced MR Image Storage instance (geometry in functional groups, patient and
    study copied): enough for a SEG's source, not a full scanner object.
    """
    slices = [dcmread(f) for f in files]
    order = np.random.default_rng(1).permutation(len(slices))
    first = slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    for element in first:
        if element.tag.group in (0x0010, 0x0020) or element.keyword in (
            "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "Modality",
            "SpecificCharacterSet", "Manufacturer", "SamplesPerPixel", "PhotometricInterpretation",
            "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
        ):  # fmt: skip
            ds.add(copy.deepcopy(element))
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber"):
        delattr(ds, keyword)
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(slices)
    measures, orientation, shared = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for index in order:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = slices[index].ImagePositionPatient
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.stack([slices[i].pixel_array for i in order]).tobytes()
    return ds


@pytest.mark.parametrize("convert", [_legacy_converted, _enhanced_mr], ids=["legacy", "enhanced"])
def test_a_multi_frame_source_gets_a_seg_on_its_frames(
    case: SyntheticCase,
    study: SyntheticStudy,
    tmp_path: Path,
    convert: Callable[[list[Path]], Dataset],
) -> None:
    source_path = tmp_path / "multiframe.dcm"
    convert(study.series["t1ce"].files).save_as(source_path, enforce_file_format=True)
    volume = load_series([source_path])
    masks = _region_masks(case, volume)
    assert {ref.frame_number for ref in volume.frames} == set(range(1, len(volume.frames) + 1))
    assert [ref.frame_number for ref in volume.frames] != sorted(  # stored out of spatial order
        ref.frame_number or 0 for ref in volume.frames
    )
    source = dcmread(source_path)
    findings = _findings(study.study_instance_uid, source.SeriesInstanceUID, volume, masks)
    region_masks = RegionMasks("T1CE", (source_path,), volume.frames, masks)
    analysis = Analysis(findings, region_masks, None)
    seg = build_seg(analysis, [source], SETTINGS, 7001)
    sr = build_sr(analysis, [source], seg, SETTINGS, 7002)
    for name, dataset in (("seg", seg), ("sr", sr)):
        path = tmp_path / f"{name}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(path) == [], name

    frames = len(volume.frames)
    assert int(seg.NumberOfFrames) == 3 * frames
    for item in seg.PerFrameFunctionalGroupsSequence:
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert 1 <= int(reference.ReferencedFrameNumber) <= frames
    numbers = [ref.frame_number or 0 for ref in volume.frames]
    pixels = hd.seg.segread(tmp_path / "seg.dcm").get_pixels_by_source_frame(
        source.SOPInstanceUID,
        source_frame_numbers=numbers,
        segment_numbers=[1, 2, 3],
        combine_segments=False,
    )
    expected = np.stack([masks[r] for r in REGIONS], axis=-1)
    assert np.array_equal(pixels.astype(bool), expected)


def test_masks_that_do_not_match_the_sources_are_refused(
    study: SyntheticStudy, reference: Reference
) -> None:
    analysis = _analysis(study, reference)
    with pytest.raises(ValueError, match="not among the source datasets"):
        build_seg(analysis, reference.datasets()[:-1], SETTINGS, 7001)
    assert analysis.masks is not None
    cropped = {r: m[:, :-1] for r, m in analysis.masks.masks.items()}
    bad = Analysis(analysis.findings, RegionMasks("T1CE", (), analysis.masks.frames, cropped), None)
    with pytest.raises(ValueError, match="source frames"):
        build_seg(bad, reference.datasets(), SETTINGS, 7001)


def test_uids_follow_the_configured_root(study: SyntheticStudy, reference: Reference) -> None:
    settings = ResultSettings(uid_root="1.2.826.0.1.3680043.10.1410")
    objects: list[ResultObject] = build_result_objects(
        _analysis(study, reference), reference.datasets(), settings
    )
    for obj in objects:
        assert obj.dataset.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.1410.")
        assert obj.dataset.SeriesInstanceUID.startswith("1.2.826.0.1.3680043.10.1410.")


def test_the_colour_map_runs_from_blue_to_red_and_cold_pixels_stay_grey() -> None:
    ramp = np.linspace(0, 1, 5, dtype=np.float32)[None, :]
    colours = heatmap_rgb(ramp)[0]
    assert colours.dtype == np.uint8
    assert colours[0, 2] > colours[0, 0]  # cold: blue
    assert colours[-1, 0] > colours[-1, 2]  # hot: red
    plane = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (8, 1))
    heat = np.zeros_like(plane)
    heat[2:4, 2:4] = 1.0
    blended = blend(plane, heat, alpha=0.4)
    assert blended.shape == (8, 8, 3)
    cold = blended[heat == 0]
    assert (cold[:, 0] == cold[:, 1]).all() and (cold[:, 1] == cold[:, 2]).all()
    assert (blended[heat == 1][:, 0] > blended[heat == 1][:, 2]).all()
    with pytest.raises(ValueError):
        blend(plane, heat[:4])


def test_outline_keeps_only_the_boundary() -> None:
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    edge = outline(mask)
    assert edge.sum() == 16 and not edge[3, 3]


def test_overlay_png_is_the_blended_plane(reference: Reference) -> None:
    grad_cam = _grad_cam(reference)
    with Image.open(io.BytesIO(overlay_png(grad_cam))) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert np.array_equal(np.asarray(image), blend(grad_cam.plane, grad_cam.heatmap))


def test_the_pdf_report_prints_dates_as_readers_expect() -> None:
    from pydicom.dataset import Dataset

    from inference_worker.results.pdf import _patient_rows

    source = Dataset()
    source.PatientBirthDate, source.StudyDate, source.PatientSex = "19650101", "20260105", "F"
    rows = dict(_patient_rows(source))
    assert rows["Birth date / sex"] == "1965-01-01 / F"
    assert rows["Study"] == "— (2026-01-05)"
    source.PatientBirthDate = ""
    assert dict(_patient_rows(source))["Birth date / sex"] == "— / F"


def test_the_pdf_embeds_every_font_it_uses(written: Written) -> None:
    """Standard fonts are not embedded: a viewer's substitute of other widths clips the text."""
    _, paths = written
    pdf = dcmread(paths["pdf"])
    reader = PdfReader(io.BytesIO(bytes(pdf.EncapsulatedDocument)))
    fonts = {}
    for page in reader.pages:
        for font in page["/Resources"]["/Font"].values():
            font = font.get_object()
            fonts[str(font["/BaseFont"])] = "/FontFile2" in font.get("/FontDescriptor", {})
    assert fonts and all(fonts.values()), fonts
    assert any(name.endswith("VeraSans-Bold") for name in fonts)  # the banner, the headings


@pytest.mark.parametrize(
    "uid",
    ["1.2.826.0.1.3680043.8.498.92279182876676722312242176498758836285", "2.25." + "9" * 39],
)
@pytest.mark.parametrize("width_mm", [20, 70, 125])
def test_uids_are_cut_into_lines_that_fit_their_cell(uid: str, width_mm: float) -> None:
    from reportlab.lib.units import mm
    from reportlab.pdfbase.pdfmetrics import stringWidth

    from inference_worker.results.pdf import FONT, uid_lines

    lines = uid_lines(uid, width_mm * mm)
    assert "".join(lines) == uid
    assert all(stringWidth(line, FONT, 8) <= width_mm * mm for line in lines)
    assert (len(lines) == 1) is (width_mm == 125)  # 64 digits fit the patient table's cell
    if len(lines) > 1:
        assert lines[0].endswith(".")  # broken after a dot where one fits


def test_the_outline_encloses_exactly_the_largest_part() -> None:
    square = np.zeros((6, 6), dtype=bool)
    square[1:3, 1:4] = True  # rows 1-2, columns 1-3
    square[4, 5] = True  # a smaller part apart from it
    assert outline_polygon(square).tolist() == [[1, 1], [4, 1], [4, 3], [1, 3], [1, 1]]
    rng = np.random.default_rng(7)  # ragged parts: diagonal touches, holes, notches
    for _ in range(50):
        mask = rng.random((16, 16)) > 0.4
        polygon = outline_polygon(mask)
        x, y = polygon[:, 0], polygon[:, 1]
        enclosed = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
        assert (polygon[0] == polygon[-1]).all()
        assert enclosed == largest_part(mask).sum()
    with pytest.raises(ValueError, match="empty"):
        outline_polygon(np.zeros((4, 4), dtype=bool))
