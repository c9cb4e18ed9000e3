"""The tumour masks as a DICOM Segmentation on the reference series, for PACS viewers (OHIF).

One BINARY segmentation with three overlapping segments (whole tumour, tumour core, enhancing
tumour), one frame per source frame and segment, empty frames kept: OHIF places a SEG's frames by
their references to the source instances and shows nothing when frames or references are missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from inference_worker.analysis import REGIONS, Analysis, RegionMasks
from inference_worker.results.common import (
    MODEL_NAME,
    SOFTWARE_VERSION,
    device_uid,
    new_uid,
    stamp_equipment,
    tumour_found,
)
from neurogate.settings import ResultSettings

SERIES_DESCRIPTION = "NeuroGate tumour segmentation"
CONTENT_LABEL = "TUMOUR"
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
# BraTS regions as coded concepts. The whole tumour includes the oedema, so it is the lesion as
# a whole; the tumour core is the neoplasm proper; the enhancing part uses the concept of DICOM
# CID 7169 "Brain Lesion Segmentation Types".
LESION = codes.SCT.Lesion  # SCT 52988006
NEOPLASM = codes.SCT.Neoplasm  # SCT 108369006
ENHANCING_LESION = codes.NCIt.EnhancingLesion  # NCIt C113842
ARTIFICIAL_INTELLIGENCE = codes.DCM.ArtificialIntelligence  # DCM 123110, CID 7162


@dataclass(frozen=True)
class Region:
    number: int  # the segment number in the SEG
    key: str  # WT, TC, ET
    label: str
    property_type: Code
    colour: tuple[int, int, int]  # RGB, the usual BraTS display colours


SEGMENTS = (
    Region(1, "WT", "Whole tumour", LESION, (0, 200, 0)),
    Region(2, "TC", "Tumour core", NEOPLASM, (255, 215, 0)),
    Region(3, "ET", "Enhancing tumour", ENHANCING_LESION, (230, 0, 0)),
)
assert tuple(r.key for r in SEGMENTS) == REGIONS


def segment_descriptions(
    model_name: str, model_version: str, tracking_uids: dict[str, str]
) -> list[hd.seg.SegmentDescription]:
    """The three segments, each naming the algorithm that drew it and a tracking UID."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name, family=ARTIFICIAL_INTELLIGENCE, version=model_version, source=MODEL_NAME
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=region.number,
            segment_label=region.label,
            segmented_property_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            segmented_property_type=region.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=tracking_uids[region.key],
            tracking_id=region.label,
            display_color=hd.color.CIELabColor.from_rgb(*region.colour),
        )
        for region in SEGMENTS
    ]


def _aligned(masks: RegionMasks, sources: Sequence[Dataset]) -> tuple[list[Dataset], np.ndarray]:
    """Source images in the order highdicom expects and the masks stacked to match them.

    highdicom pairs mask frame ``i`` with ``source_images[i]`` (single-frame series) or with
    frame ``i + 1`` of the one multi-frame source, so the masks are reordered to the sources.

    Returns
    -------
    tuple
        The source datasets and a uint8 array (frames, rows, columns, segments).
    """
    stacked = np.stack([masks.masks[region.key] for region in SEGMENTS], axis=-1)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    instances = {ref.sop_instance_uid for ref in masks.frames}
    missing = instances - set(by_uid)
    if missing:
        raise ValueError(f"masks refer to {len(missing)} instances not among the source datasets")
    multi_frame = any(ref.frame_number is not None for ref in masks.frames)
    if not multi_frame:
        ordered = [by_uid[ref.sop_instance_uid] for ref in masks.frames]
        if len(instances) != len(ordered):
            raise ValueError("masks name one source instance more than once")
        pixels = stacked
    else:
        if len(instances) != 1:
            raise ValueError("a multi-frame source must be one instance holding all frames")
        source = by_uid[instances.pop()]
        numbers = [ref.frame_number or 0 for ref in masks.frames]
        if sorted(numbers) != list(range(1, int(source.NumberOfFrames) + 1)):
            raise ValueError("masks must cover each frame of the multi-frame source once")
        ordered, pixels = [source], stacked[np.argsort(numbers)]
    first = ordered[0]
    if pixels.shape[1:3] != (int(first.Rows), int(first.Columns)):
        raise ValueError(
            f"masks are {pixels.shape[1:3]}, source frames {(first.Rows, first.Columns)}"
        )
    return ordered, pixels.astype(np.uint8)


def build_seg(
    analysis: Analysis,
    source_datasets: Sequence[Dataset],
    settings: ResultSettings,
    series_number: int,
    tracking_uids: dict[str, str] | None = None,
) -> hd.seg.Segmentation:
    """The analysis' masks as a DICOM SEG on the reference series.

    Parameters
    ----------
    analysis
        Must carry masks (segmentation ran and was mapped onto the reference frames).
    source_datasets
        The reference series as read with ``dcmread``, any order (headers suffice).
    tracking_uids
        Region (WT, TC, ET) -> tracking UID, to share with the SR; new ones when not given.

    Raises
    ------
    ValueError
        When no tumour was detected (the masks of a tumour-free study are no tumour), there are
        no masks or they do not match the source frames.
    """
    if not tumour_found(analysis.findings):
        raise ValueError("the detector found no tumour: there is no tumour to segment")
    if analysis.masks is None:
        raise ValueError("the analysis has no masks: segmentation did not run")
    model = analysis.findings.models.get("segmentation")
    if model is None:
        raise ValueError("the findings name no segmentation model")
    sources, pixels = _aligned(analysis.masks, source_datasets)
    tracking = tracking_uids or {region.key: str(new_uid(settings)) for region in SEGMENTS}
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(model.name, model.version, tracking),
        series_instance_uid=new_uid(settings),
        series_number=series_number,
        sop_instance_uid=new_uid(settings),
        instance_number=1,
        manufacturer=settings.manufacturer,
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number=device_uid(settings),
        omit_empty_frames=False,
        content_label=CONTENT_LABEL,
        content_description="Brain tumour regions (BraTS convention)",
        series_description=SERIES_DESCRIPTION,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
    )
    stamp_equipment(seg, settings)
    return seg
