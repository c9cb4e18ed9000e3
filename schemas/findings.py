"""What the analysis of one study found: the contract between the worker, the API and exports."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.uids import DicomUID


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelVersion(_Strict):
    name: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SeriesChoice(_Strict):
    role: str  # T1, T1CE, T2, FLAIR
    series_instance_uid: DicomUID
    reasons: list[str]


class BrainFinding(_Strict):
    """The intracranial space (brain, CSF and meninges) that every tumour finding is limited to."""

    volume_ml: float = Field(ge=0)
    series_role: str  # the series the mask was extracted from


class DetectionFinding(_Strict):
    tumour: bool
    probability: float = Field(ge=0, le=1)
    series_role: str
    # Axial planes (k, inferior to superior, on the 2 mm canonical grid) the detector judged:
    # only planes that hold brain.
    planes: list[int] = Field(default_factory=list)
    # What decided ``tumour``: "segmentation" (its largest connected region of whole tumour
    # inside the brain, at least min_lesion_ml, whatever the detector's probability) or
    # "detector" (its probability, when the segmentation could not run: a contrast missing).
    # Additive to schema version 2.
    decided_by: str = "detector"
    largest_lesion_ml: float | None = Field(default=None, ge=0)
    min_lesion_ml: float | None = Field(default=None, ge=0)


class ClassificationFinding(_Strict):
    label: str
    probabilities: dict[str, float]
    series_role: str
    # The canonical-grid planes the class was decided on, and how they were chosen:
    # "segmentation" (the planes with the largest whole-tumour area) or "detection" (the
    # detector's surest planes inside the brain, when segmentation could not run).
    planes: list[int] = Field(default_factory=list)
    planes_from: str = "detection"
    # When the class combines the classifier with the location model (the lesion's place in the
    # intracranial space, from the segmentation): each expert's own p(type). ``probabilities``
    # is then their renormalised product; None when the classifier decided alone.
    classifier_probabilities: dict[str, float] | None = None
    location_probabilities: dict[str, float] | None = None


class SegmentationFinding(_Strict):
    volumes_ml: dict[str, float]  # WT, TC, ET
    # On the reference series: the instance with the largest whole-tumour area, and areas per
    # instance (mm2) for the instances that show tumour.
    largest_tumour_sop_instance_uid: DicomUID | None = None
    slice_areas_mm2: dict[str, float] = Field(default_factory=dict)
    reference_role: str


class VolumeChange(_Strict):
    """One region's volume at a prior study and now, and the change between them."""

    previous_ml: float = Field(ge=0)
    current_ml: float = Field(ge=0)
    change_ml: float
    change_percent: float | None  # None when there was nothing before

    @classmethod
    def between(cls, previous: float, current: float) -> VolumeChange:
        percent = (current - previous) / previous * 100 if previous > 0 else None
        return cls(
            previous_ml=previous,
            current_ml=current,
            change_ml=round(current - previous, 3),
            change_percent=round(percent, 2) if percent is not None else None,
        )


class PriorComparison(_Strict):
    """The tumour volumes of this study against those of the patient's most recent prior study.

    A region the detector found no tumour in counts 0 mL (a tumour-free prior, or a tumour gone).
    """

    prior_study_instance_uid: DicomUID
    prior_study_date: str | None  # DICOM DA (YYYYMMDD), as the PACS has it
    current_study_date: str | None
    prior_analysis_id: int
    # True when the node fetched the prior from the PACS and analysed it for this comparison.
    retrieved: bool
    regions: dict[str, VolumeChange]  # WT, TC, ET
    # Other prior studies of the patient the PACS holds (most recent first, at most
    # PRIORS__MAX_PRIORS in all with the compared one): Study Instance UID -> Study Date.
    other_priors: dict[str, str | None] = Field(default_factory=dict)


class Findings(_Strict):
    schema_version: int = 2  # 2: brain, detection planes, classification planes; prior (additive)
    study_instance_uid: DicomUID
    selected: list[SeriesChoice]
    missing: list[str]
    rejected: dict[str, str]
    brain: BrainFinding | None = None
    detection: DetectionFinding | None = None
    classification: ClassificationFinding | None = None
    segmentation: SegmentationFinding | None = None
    skipped: dict[str, str] = Field(default_factory=dict)  # stage -> why it did not run
    # Volume changes since the most recent prior study (PRIORS__* settings); why not: skipped.
    prior: PriorComparison | None = None
    models: dict[str, ModelVersion]
    seconds: dict[str, float]
