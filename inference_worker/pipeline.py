"""The analysis pipeline: one place that knows the stages and wires them (:func:`_analyse`,
behind :func:`analyse` for a DICOM study and :func:`analyse_nifti` for NIfTI volumes).

select series → load volumes → extract the brain (the intracranial mask, from every series) →
canonical grid centred on it → detect on planes that hold brain, with everything outside the skull
set aside → segment (when a tumour is found and all four contrasts are present), the masks limited
to the intracranial space → classify on the planes the segmentation marks (else the detector's
surest brain planes) → findings. Stages take and return typed values; only loading reads files.
What could not run says why in ``Findings.skipped``; a study that cannot be analysed at all
raises :class:`UnusableStudy`, with the reason.

A study the listener stored is described from its inventory (:func:`stored_study`: the series
folders it recorded, one header read per series); :func:`scan_folder` reads every file's
header, for folders no inventory describes (the command line).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from inference_worker.analysis import REGIONS, Analysis, GradCam, RegionMasks
from inference_worker.selection import Choice, Role, Selection, SeriesInfo, select_series
from inference_worker.volume import GeometryError, UnreadableSeries, frame_masks, read_series
from models import predict
from models.brain.extract import BrainMask, extract
from models.classification import location
from models.imaging import FrameRef, Volume, resample_to
from models.preprocessing import canonical_grid_at, on_grid
from models.registry import ModelManifest, Task, load
from neurogate.budget import DEFAULT_BUDGET, DecodeBudget, DecodeBudgetExceeded
from neurogate.storage import DICOM_SUFFIX
from schemas.findings import (
    BrainFinding,
    ClassificationFinding,
    DetectionFinding,
    Findings,
    ModelVersion,
    SegmentationFinding,
    SeriesChoice,
)

# Which series each 2D model reads, best first; segmentation needs all four.
DETECTION_ORDER = (Role.FLAIR, Role.T2, Role.T1CE, Role.T1)
CLASSIFICATION_ORDER = (Role.T1CE, Role.FLAIR, Role.T2, Role.T1)
REFERENCE_ORDER = (Role.T1CE, Role.T1, Role.FLAIR, Role.T2)
CHANNELS = (Role.T1, Role.T1CE, Role.T2, Role.FLAIR)  # the segmentation network's input order
# Share of a typical run done when each stage starts (segmentation dominates on a CPU).
_PROGRESS = {
    "select_and_load": 0.0,
    "brain_extraction": 0.2,
    "detection": 0.25,
    "segmentation": 0.3,
    "classification": 0.85,
    "grad_cam": 0.88,
    "masks_to_source": 0.9,
}


class UnusableStudy(ValueError):
    """The study cannot be analysed, and would fail the same way again: no usable series, more
    pixels than the decode budget, pixel data that cannot be read, volumes that are no volumes.
    """


@dataclass
class Models:
    """Loaded models and their manifests, built once per worker."""

    manifests: dict[Task, ModelManifest]
    loaded: dict[Task, Any] = field(default_factory=dict)
    # The location model, when the classification manifest asks for it (``location = true``).
    location_model: location.LocationModel | None = None

    @classmethod
    def load_all(cls, manifests: dict[Task, ModelManifest]) -> Models:
        classifier = manifests.get(Task.CLASSIFICATION)
        where = location.load() if classifier is not None and classifier.location else None
        return cls(manifests, {task: load(m) for task, m in manifests.items()}, where)


@dataclass(frozen=True, eq=False)
class StudyFiles:
    study_instance_uid: str
    series: dict[str, list[Path]]  # SeriesInstanceUID -> files
    infos: list[SeriesInfo]


def scan_folder(folder: Path) -> StudyFiles:
    """Group the DICOM files under ``folder`` by series (one study expected)."""
    by_series: dict[str, list[Path]] = defaultdict(list)
    headers: dict[str, Any] = {}
    studies: set[str] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if "SeriesInstanceUID" not in ds:
            continue
        by_series[str(ds.SeriesInstanceUID)].append(path)
        headers.setdefault(str(ds.SeriesInstanceUID), ds)
        studies.add(str(ds.StudyInstanceUID))
    if len(studies) != 1:
        raise UnusableStudy(f"expected the files of one study under {folder}, found {len(studies)}")
    infos = []
    for uid, files in by_series.items():
        frames = int(headers[uid].get("NumberOfFrames", 1) or 1)
        infos.append(SeriesInfo.from_dataset(headers[uid], slices=max(len(files), frames)))
    return StudyFiles(studies.pop(), dict(by_series), infos)


def stored_study(study_instance_uid: str, series_folders: Iterable[Path]) -> StudyFiles:
    """A study from the series folders the listener recorded (one folder per series).

    Each series' files are listed, and only its first instance's header is read (the next one
    when the first cannot be): selection needs a few attributes of one instance, and the slice
    count, which the listing gives. A folder without a readable instance is left out.
    """
    series: dict[str, list[Path]] = {}
    infos = []
    for folder in series_folders:
        files = sorted(folder.glob(f"*{DICOM_SUFFIX}"))
        for path in files:
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError):
                continue
            if "SeriesInstanceUID" in ds:
                break
        else:
            continue
        uid = str(ds.SeriesInstanceUID)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        series[uid] = files
        infos.append(SeriesInfo.from_dataset(ds, slices=max(len(files), frames)))
    return StudyFiles(study_instance_uid, series, infos)


@dataclass(frozen=True, eq=False)
class Prepared:
    selection: Selection
    volumes: dict[Role, Volume]  # the chosen series, as loaded
    skipped: dict[str, str]
    files: dict[Role, list[Path]]  # the stored files of each loaded series
    # The reference series' datasets as loaded (pixels included), for the result objects.
    sources: tuple[Dataset, ...] = ()


@dataclass(frozen=True, eq=False)
class Canonical:
    """The study on the networks' grid, centred on its brain."""

    brain: BrainMask
    grid: Volume
    intracranial: np.ndarray  # bool (k, j, i) on ``grid``
    channels: dict[Role, np.ndarray]  # on the canonical grid, normalised


def canonical(volumes: dict[Role, Volume], net: Any) -> Canonical:
    """Extract the brain from every series, then put each on a grid centred on it."""
    ordered = [volumes[r] for r in REFERENCE_ORDER if r in volumes]
    brain = extract(net, ordered)
    grid = canonical_grid_at(brain.centre)
    intracranial = brain.on(grid)
    channels = {role: on_grid(volume, grid) for role, volume in volumes.items()}
    return Canonical(brain, grid, intracranial, channels)


def prepare(study: StudyFiles, budget: DecodeBudget = DEFAULT_BUDGET) -> Prepared:
    """Select the series and load them; a series that does not load is skipped, with why.

    Series load in :data:`REFERENCE_ORDER`, so that the first to load is the reference series,
    the only one whose datasets are kept (the result objects derive from them).

    Raises
    ------
    UnusableStudy
        When no chosen series loads, or one would need more memory than ``budget``.
    """
    selection = select_series(study.infos)
    volumes: dict[Role, Volume] = {}
    skipped: dict[str, str] = {}
    files: dict[Role, list[Path]] = {}
    sources: tuple[Dataset, ...] = ()
    for role in sorted(selection.chosen, key=REFERENCE_ORDER.index):
        paths = study.series[selection.chosen[role].series_instance_uid]
        try:
            volume, datasets = read_series(paths, budget)
        except (GeometryError, UnreadableSeries) as exc:
            skipped[f"load {role.value}"] = str(exc)
            continue
        except DecodeBudgetExceeded as exc:
            raise UnusableStudy(str(exc)) from exc
        volumes[role], files[role] = volume, paths
        sources = sources or tuple(datasets)
    if not volumes:
        why = "; ".join(f"{step}: {reason}" for step, reason in skipped.items())
        raise UnusableStudy(
            "no usable T1, T1CE, T2 or FLAIR series in the study" + (f" ({why})" if why else "")
        )
    order = list(selection.chosen)  # the selection's order, as before loading
    return Prepared(
        selection,
        {r: volumes[r] for r in order if r in volumes},
        skipped,
        {r: files[r] for r in order if r in files},
        sources,
    )


def _first(order: tuple[Role, ...], available: dict[Role, np.ndarray]) -> Role:
    return next(role for role in order if role in available)


Progress = Callable[[str, float], None]


def analyse(
    study: StudyFiles,
    models: Models,
    progress: Progress | None = None,
    budget: DecodeBudget = DEFAULT_BUDGET,
) -> Analysis:
    """Run every stage that the study's series allow; the findings say what ran and why not.

    ``progress(step, fraction)`` is called as each stage starts (for status events); a series
    whose decoded pixels would exceed ``budget`` fails the analysis before it is decoded.
    """
    return _analyse(study.study_instance_uid, lambda: prepare(study, budget), models, progress)


def analyse_nifti(
    study_instance_uid: str,
    files: Mapping[str, Path],
    models: Models,
    progress: Progress | None = None,
    budget: DecodeBudget = DEFAULT_BUDGET,
) -> Analysis:
    """Analyse uploaded NIfTI volumes, one file per role (T1, T1CE, T2, FLAIR).

    There are no DICOM frames to map back to: the findings carry volumes but no per-instance
    areas, and no result objects can be written for a PACS.
    """
    return _analyse(study_instance_uid, lambda: prepare_nifti(files, budget), models, progress)


def analyse_volumes(
    study_instance_uid: str,
    volumes: Mapping[Role, Volume],
    models: Models,
    progress: Progress | None = None,
) -> Analysis:
    """Analyse volumes already in memory, one per role (benchmarks; no result objects)."""
    reasons = {role: f"given as {role.value}" for role in volumes}
    return _analyse(study_instance_uid, lambda: prepare_volumes(volumes, reasons), models, progress)


def prepare_volumes(volumes: Mapping[Role, Volume], reasons: Mapping[Role, str]) -> Prepared:
    """A selection of the given volumes, each with the reason it was chosen as its role."""
    if not volumes:
        raise ValueError("no volumes given")
    chosen = {
        role: Choice(role, generate_uid(prefix=None), 1.0, (reasons[role],)) for role in volumes
    }
    missing = tuple(r for r in Role if r not in volumes)
    return Prepared(Selection(chosen, missing), dict(volumes), {}, {})


def prepare_nifti(files: Mapping[str, Path], budget: DecodeBudget = DEFAULT_BUDGET) -> Prepared:
    """Volumes from NIfTI files (read in patient LPS coordinates by SimpleITK)."""
    volumes: dict[Role, Volume] = {}
    for name, path in files.items():
        try:
            role = Role(name.upper())
        except ValueError as exc:
            raise UnusableStudy(f"unknown role {name!r}: expected T1, T1CE, T2 or FLAIR") from exc
        volumes[role] = read_nifti(path, budget)
    if not volumes:
        raise UnusableStudy("no NIfTI volumes given")
    reasons = {
        Role(name.upper()): f"uploaded as {name.upper()}: {path.name}"
        for name, path in files.items()
    }
    return prepare_volumes(volumes, reasons)


def read_nifti(path: Path, budget: DecodeBudget = DEFAULT_BUDGET) -> Volume:
    """A NIfTI volume, once its header shows that it fits ``budget`` (else :class:`UnusableStudy`,
    as for a file that is no readable 3D NIfTI volume)."""
    import SimpleITK as sitk

    with path.open("rb") as stream:
        try:
            budget.check_nifti(stream, path.name)
        except DecodeBudgetExceeded as exc:
            raise UnusableStudy(str(exc)) from exc
        except ValueError as exc:
            raise UnusableStudy(f"{path.name}: not a readable NIfTI volume ({exc})") from exc
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise UnusableStudy(f"{path.name}: not a readable NIfTI volume") from exc
    if image.GetDimension() != 3:
        raise UnusableStudy(f"{path.name}: expected a 3D volume, got {image.GetDimension()}D")
    return Volume(
        array=sitk.GetArrayFromImage(image).astype(np.float32),
        origin=np.array(image.GetOrigin()),
        spacing=np.array(image.GetSpacing()),
        direction=np.array(image.GetDirection()).reshape(3, 3),
    )


def _analyse(
    study_instance_uid: str,
    prepare_study: Callable[[], Prepared],
    models: Models,
    progress: Progress | None,
) -> Analysis:
    seconds: dict[str, float] = {}

    def timed(stage: str, run: Callable[[], Any]) -> Any:
        if progress is not None:
            progress(stage, _PROGRESS.get(stage, 0.0))
        started = time.perf_counter()
        value = run()
        seconds[stage] = round(time.perf_counter() - started, 3)
        return value

    prepared: Prepared = timed("select_and_load", prepare_study)
    skipped = dict(prepared.skipped)
    manifests, loaded = models.manifests, models.loaded
    study: Canonical = timed(
        "brain_extraction", lambda: canonical(prepared.volumes, loaded[Task.BRAIN_EXTRACTION])
    )
    channels, inside = study.channels, study.intracranial
    brain_role = _reference_role(prepared)

    detect_role = _first(DETECTION_ORDER, channels)
    detection = timed(
        "detection",
        lambda: predict.detect(
            loaded[Task.DETECTION], manifests[Task.DETECTION], channels[detect_role], inside
        ),
    )

    segmentation, region_masks, masks = None, None, None
    missing = [role.value for role in CHANNELS if role not in channels]
    if missing:
        skipped["segmentation"] = f"missing {', '.join(missing)}"
    else:
        image = np.stack([channels[role] for role in CHANNELS])
        net, window = loaded[Task.SEGMENTATION], manifests[Task.SEGMENTATION].window
        masks = timed("segmentation", lambda: predict.segment(net, image, window, inside))
    decision = predict.decide(detection, masks, study.grid.voxel_volume_ml)
    detection = replace(detection, tumour=decision.tumour)
    if masks is not None and not decision.tumour:
        skipped["segmentation"] = (
            f"no tumour: the largest region of whole tumour inside the brain "
            f"{decision.largest_lesion_ml:.2f} mL, under the {predict.MIN_LESION_ML} mL "
            "a finding needs"
        )
        masks = None
    elif masks is not None:
        if prepared.files:
            region_masks = timed(
                "masks_to_source", lambda: _on_reference(prepared, study.grid, masks)
            )
        segmentation = _segmentation_finding(prepared, study.grid, masks, region_masks)

    classification = None
    grad_cam = None
    if detection.tumour:
        classify_role = _first(CLASSIFICATION_ORDER, channels)
        planes, planes_from = predict.classification_planes(detection, masks)
        # What the classifier sees (its intracranial part): for its planes and Grad-CAM's.
        seen = predict.brain_only(
            channels[classify_role], inside, manifests[Task.CLASSIFICATION].preprocessing
        )
        # Where the lesion lies, when it was segmented and the classifier asks for it.
        where = None
        if models.location_model is not None and masks is not None:
            where = models.location_model.probabilities(
                location.features(masks, inside, float(study.grid.spacing[0]))
            )
        result = timed(
            "classification",
            lambda: predict.classify(
                loaded[Task.CLASSIFICATION],
                manifests[Task.CLASSIFICATION],
                seen,
                detection,
                planes,
                prior=where,
                classifier_weight=(
                    1.0
                    if models.location_model is None
                    else models.location_model.classifier_weight
                ),
            ),
        )
        classification = ClassificationFinding(
            label=result.label,
            probabilities=result.probabilities,
            series_role=classify_role.value,
            planes=[int(k) for k in planes],
            planes_from=planes_from,
            classifier_probabilities=None if where is None else result.classifier_probabilities,
            location_probabilities=where,
        )
        plane = seen[result.plane]
        heatmap = timed(
            "grad_cam",
            lambda: predict.grad_cam(
                loaded[Task.CLASSIFICATION], manifests[Task.CLASSIFICATION], plane, result.index
            ),
        )
        grad_cam = GradCam(
            plane=channels[classify_role][result.plane].astype(np.float32),
            heatmap=heatmap * inside[result.plane],
            pixel_spacing_mm=float(study.grid.spacing[0]),
            label=result.label,
            probability=result.probabilities[result.label],
            series_role=classify_role.value,
            plane_index=int(result.plane),
        )
    else:
        skipped["classification"] = "no tumour detected"

    versions = {task.value: ModelVersion(**m.version_info) for task, m in manifests.items()}
    if classification is not None and classification.location_probabilities:
        assert models.location_model is not None
        versions["location"] = ModelVersion(**models.location_model.version_info)
    findings = Findings(
        study_instance_uid=study_instance_uid,
        selected=[
            SeriesChoice(
                role=r.value, series_instance_uid=c.series_instance_uid, reasons=list(c.reasons)
            )
            for r, c in prepared.selection.chosen.items()
        ],
        missing=[r.value for r in prepared.selection.missing],
        rejected=prepared.selection.rejected,
        brain=BrainFinding(volume_ml=round(study.brain.volume_ml, 1), series_role=brain_role.value),
        detection=DetectionFinding(
            tumour=decision.tumour,
            probability=round(detection.probability, 4),
            series_role=detect_role.value,
            planes=[int(k) for k in detection.planes],
            decided_by=decision.decided_by,
            largest_lesion_ml=(
                None if decision.largest_lesion_ml is None else round(decision.largest_lesion_ml, 2)
            ),
            min_lesion_ml=(None if decision.largest_lesion_ml is None else predict.MIN_LESION_ML),
        ),
        classification=classification,
        segmentation=segmentation,
        skipped=skipped,
        models=versions,
        seconds=seconds,
    )
    sources = tuple(prepared.files.get(_reference_role(prepared), ()))
    grid_masks = None if masks is None else {r: masks[r] for r in REGIONS}
    return Analysis(
        findings,
        region_masks,
        grad_cam,
        sources,
        study.grid,
        study.intracranial,
        grid_masks,
        source_datasets=prepared.sources,
    )


def _reference_role(prepared: Prepared) -> Role:
    return next(r for r in REFERENCE_ORDER if r in prepared.volumes)


def _on_reference(prepared: Prepared, grid: Volume, masks: dict[str, np.ndarray]) -> RegionMasks:
    """The grid's masks resampled (nearest) onto the reference series' own frames."""
    role = _reference_role(prepared)
    reference = prepared.volumes[role]
    on_frames: dict[str, np.ndarray] = {}
    frames: tuple[FrameRef, ...] = ()
    for region in REGIONS:
        resampled = resample_to(
            grid.with_array(masks[region].astype(np.uint8)), reference, labels=True
        )
        pairs = frame_masks(resampled)
        frames = tuple(ref for ref, _ in pairs)
        on_frames[region] = np.stack([mask > 0 for _, mask in pairs])
    return RegionMasks(
        reference_role=role.value,
        reference_files=tuple(prepared.files[role]),
        frames=frames,
        masks=on_frames,
    )


def _segmentation_finding(
    prepared: Prepared,
    grid: Volume,
    masks: dict[str, np.ndarray],
    on_reference: RegionMasks | None,
) -> SegmentationFinding:
    """Volumes from the canonical grid; areas and the largest slice on the reference series."""
    volumes = {r: round(float(masks[r].sum()) * grid.voxel_volume_ml, 2) for r in REGIONS}
    if on_reference is None:
        return SegmentationFinding(
            volumes_ml=volumes, reference_role=_reference_role(prepared).value
        )
    reference = prepared.volumes[_reference_role(prepared)]
    pixel_mm2 = float(reference.spacing[0] * reference.spacing[1])
    areas = {
        ref.sop_instance_uid: round(float(mask.sum()) * pixel_mm2, 1)
        for ref, mask in zip(on_reference.frames, on_reference.masks["WT"], strict=True)
        if mask.any()
    }
    largest = max(areas, key=areas.__getitem__) if areas else None
    return SegmentationFinding(
        volumes_ml=volumes,
        largest_tumour_sop_instance_uid=largest,
        slice_areas_mm2=areas,
        reference_role=on_reference.reference_role,
    )
