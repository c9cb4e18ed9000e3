"""Grad-CAM as a picture any DICOM viewer shows: an RGB Secondary Capture image.

The classifier's plane (canonical 2 mm axial grid, radiological display orientation) appears twice
side by side: plain on the left, with the Grad-CAM heatmap blended over it on the right, so a
reader sees the anatomy the colours hide.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from inference_worker.analysis import Analysis, GradCam
from inference_worker.results.common import (
    MODEL_NAME,
    SOFTWARE_VERSION,
    assigned_class,
    new_uid,
    stamp_equipment,
)
from models.overlay import blend, to_grey
from neurogate.settings import ResultSettings

SERIES_DESCRIPTION = "NeuroGate Grad-CAM"
# GradCam.plane's rows run anterior to posterior and its columns patient right to left: the row
# direction (along a row) points to the patient's left, the column direction posterior.
PATIENT_ORIENTATION = ("L", "P")
WORKSTATION = "WSD"  # Conversion Type: made on a workstation, not captured from a video signal
BODY_PART = "BRAIN"  # what this node analyses, when the source does not say
_GAP = 4  # black columns between the two halves


def side_by_side(grad_cam: GradCam, alpha: float = 0.4) -> np.ndarray:
    """The plain plane and the blended heatmap next to each other, uint8 (rows, cols, 3)."""
    grey = np.repeat(to_grey(grad_cam.plane)[..., None], 3, axis=-1)
    overlay = blend(grad_cam.plane, grad_cam.heatmap, alpha)
    gap = np.zeros((grey.shape[0], _GAP, 3), np.uint8)
    return np.concatenate([grey, gap, overlay], axis=1)


def overlay_png(grad_cam: GradCam, alpha: float = 0.4) -> bytes:
    """The blended heatmap alone as PNG bytes (for the PDF report and the API)."""
    buffer = io.BytesIO()
    Image.fromarray(blend(grad_cam.plane, grad_cam.heatmap, alpha), mode="RGB").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def build_gradcam(
    analysis: Analysis,
    source_datasets: Sequence[Dataset],
    settings: ResultSettings,
    series_number: int,
) -> hd.sc.SCImage:
    """The Grad-CAM picture as a Secondary Capture in the source study.

    Parameters
    ----------
    source_datasets
        Any series of the study; the first dataset gives the patient and study modules.

    Raises
    ------
    ValueError
        When the analysis has no Grad-CAM, or one of a class the report does not assign (no
        tumour found, or another class), or there are no source datasets.
    """
    grad_cam = analysis.grad_cam
    if grad_cam is None:
        raise ValueError("the analysis has no Grad-CAM (no tumour was found)")
    if grad_cam.label != assigned_class(analysis.findings):
        raise ValueError(f"class {grad_cam.label!r} was not assigned: no Grad-CAM to show")
    if not source_datasets:
        raise ValueError("no source datasets to take the patient and study from")
    spacing = float(grad_cam.pixel_spacing_mm)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source_datasets[0],
        pixel_array=side_by_side(grad_cam),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=new_uid(settings),
        series_number=series_number,
        sop_instance_uid=new_uid(settings),
        instance_number=1,
        manufacturer=settings.manufacturer,
        pixel_spacing=(spacing, spacing),  # type: ignore[arg-type]  # hinted as ints, takes floats
        patient_orientation=PATIENT_ORIENTATION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SERIES_DESCRIPTION,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
    )
    sc.ConversionType = WORKSTATION
    # An unpaired body part: without it validators ask for the series' Laterality.
    sc.BodyPartExamined = source_datasets[0].get("BodyPartExamined") or BODY_PART
    sc.BurnedInAnnotation = "NO"
    sc.ImageComments = (
        f"Grad-CAM of class {grad_cam.label} (probability {grad_cam.probability:.2f}) on the "
        f"{grad_cam.series_role} series, axial plane {grad_cam.plane_index} of the 2 mm analysis "
        "grid. Left: plane; right: heatmap (blue low, red high). Research use only."
    )
    stamp_equipment(sc, settings)
    return sc
