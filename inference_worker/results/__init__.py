"""The DICOM objects an analysis produces for the PACS: SEG, SR, Grad-CAM capture and PDF report.

Each is a new series in the source study, with a Series Number fixed relative to
``ResultSettings.series_number_base`` so a site can hang its viewer protocols on them. This is the
only package that imports highdicom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydicom.dataset import Dataset

from inference_worker.analysis import Analysis
from inference_worker.results.capture import build_gradcam, overlay_png
from inference_worker.results.common import assigned_class, tumour_found
from inference_worker.results.pdf import build_pdf_object, render_pdf
from inference_worker.results.seg import build_seg
from inference_worker.results.sr import build_sr
from neurogate.settings import ResultSettings

Kind = Literal["seg", "sr", "gradcam", "pdf"]
# Series Number of each kind: series_number_base + offset.
SERIES_OFFSETS: dict[Kind, int] = {"seg": 1, "sr": 2, "gradcam": 3, "pdf": 4}

__all__ = [
    "SERIES_OFFSETS",
    "ResultObject",
    "assigned_class",
    "build_gradcam",
    "build_pdf_object",
    "build_result_objects",
    "build_seg",
    "build_sr",
    "overlay_png",
    "render_pdf",
    "tumour_found",
]


@dataclass(frozen=True, eq=False)
class ResultObject:
    kind: Kind
    dataset: Dataset


def build_result_objects(
    analysis: Analysis, source_datasets: Sequence[Dataset], settings: ResultSettings
) -> list[ResultObject]:
    """Every result object the findings allow, in the order they should be sent.

    The detection finding's decision (:func:`~models.predict.decide`) says what is reported.
    With a tumour found: the SEG when there are masks and a segmentation finding, the Grad-CAM
    capture when there is a Grad-CAM of the class the classifier assigned. With no tumour
    found, neither: masks on a study found tumour-free are not a tumour and yield no SEG, and
    there is no class to explain. The SR and the PDF always come (they say what was found, what
    did not run and why).

    Parameters
    ----------
    source_datasets
        The reference series (with pixel data, for the PDF's key image) when there are masks;
        otherwise any series of the study.
    """
    findings = analysis.findings
    base = settings.series_number_base
    objects: list[ResultObject] = []
    seg = None
    if tumour_found(findings) and analysis.masks is not None and findings.segmentation is not None:
        seg = build_seg(analysis, source_datasets, settings, base + SERIES_OFFSETS["seg"])
        objects.append(ResultObject("seg", seg))
    sr = build_sr(analysis, source_datasets, seg, settings, base + SERIES_OFFSETS["sr"])
    objects.append(ResultObject("sr", sr))
    label = assigned_class(findings)
    if analysis.grad_cam is not None and label is not None and analysis.grad_cam.label == label:
        capture = build_gradcam(
            analysis, source_datasets, settings, base + SERIES_OFFSETS["gradcam"]
        )
        objects.append(ResultObject("gradcam", capture))
    pdf = build_pdf_object(analysis, source_datasets, settings, base + SERIES_OFFSETS["pdf"])
    objects.append(ResultObject("pdf", pdf))
    return objects
