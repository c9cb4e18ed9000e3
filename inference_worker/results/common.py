"""What every result object shares: UIDs, the node's identity, the source study's modules."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from neurogate import __version__
from neurogate.settings import ResultSettings
from schemas.findings import Findings

# How the node names itself in the objects it writes (model name of the "device").
MODEL_NAME = "NeuroGate"
SOFTWARE_VERSION = __version__

# The Patient and General Study modules, copied unchanged into every result object so a PACS
# files it under the study it was made from.
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)


def new_uid(settings: ResultSettings) -> UID:
    """A fresh UID under the node's root, or a UUID-derived ``2.25.`` UID when it has none."""
    return generate_uid(prefix=settings.uid_root)


def device_uid(settings: ResultSettings) -> UID:
    """The node's Device Observer UID: the same for every report this node writes."""
    name = f"{settings.manufacturer}/{settings.station_name}"
    if settings.uid_root is None:
        return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}")
    return generate_uid(prefix=settings.uid_root, entropy_srcs=["device", name])


def stamp_equipment(ds: Dataset, settings: ResultSettings) -> None:
    """Name the node in the General Equipment module: station and, when set, institution."""
    ds.StationName = settings.station_name
    if settings.institution_name:
        ds.InstitutionName = settings.institution_name


def copy_patient_study(source: Dataset, target: Dataset) -> None:
    """Copy the source's patient and study attributes onto ``target`` (present ones only)."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            target.add(copy.deepcopy(source[keyword]))


def frame_pixels(
    datasets: Sequence[Dataset], sop_instance_uid: str, frame: int | None
) -> np.ndarray:
    """The stored pixels of one source frame (``frame`` 1-based for multi-frame instances).

    Raises
    ------
    ValueError
        When no dataset has that SOP Instance UID or it has no such frame.
    """
    for ds in datasets:
        if str(ds.SOPInstanceUID) != sop_instance_uid:
            continue
        pixels = ds.pixel_array
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frame is None:
            return pixels if frames == 1 else pixels[0]
        if not 1 <= frame <= frames:
            raise ValueError(f"{sop_instance_uid} has no frame {frame}")
        return pixels if frames == 1 else pixels[frame - 1]
    raise ValueError(f"no source dataset has SOP Instance UID {sop_instance_uid}")


def tumour_found(findings: Findings) -> bool:
    """Whether the result objects report a tumour: the detection finding decides.

    Its ``tumour`` is the segmentation's whole tumour inside the brain when the segmentation ran,
    else the detector's call (``decided_by``). Classification and segmentation follow it, never
    overrule it: a study found tumour-free gets no tumour class, no tumour SEG, no tumour
    volumes and no Grad-CAM, whatever masks the segmentation network drew. Without a detection
    there is nothing that says a tumour was found.
    """
    return findings.detection is not None and findings.detection.tumour


def decision_basis(findings: Findings) -> str:
    """One sentence on what decided tumour or not, for the PDF and the FHIR conclusion."""
    detection = findings.detection
    if detection is None:
        return ""
    probability = (
        f"the detector's probability of a tumour was {detection.probability:.2f} "
        f"({detection.series_role} series)"
    )
    if detection.decided_by == "segmentation" and detection.largest_lesion_ml is not None:
        return (
            f"The 3D segmentation's largest region of whole tumour inside the brain was "
            f"{detection.largest_lesion_ml:.2f} mL (a finding needs {detection.min_lesion_ml} mL); "
            f"{probability}."
        )
    return f"Decided by the detector: {probability}."


def assigned_class(findings: Findings) -> str | None:
    """The tumour class the report states, None when no tumour was found or none assigned."""
    if not tumour_found(findings) or findings.classification is None:
        return None
    return findings.classification.label


def plane_ranges(planes: Sequence[int]) -> str:
    """Planes as short ranges for people to read: ``[60, 61, 62, 70]`` → ``"60-62, 70"``."""
    runs: list[list[int]] = []
    for k in sorted(set(planes)):
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
