"""The findings as a TID 1500 Measurement Report (Comprehensive 3D SR) a PACS can index.

One measurement group for the detection (neoplasm present or absent, with the detector's
probability; what decided it, the 3D segmentation's whole tumour inside the brain or the
detector, goes with the algorithm's identification as parameters) and,
when the brain was extracted, one for the intracranial volume. When the detector found a tumour,
also one for the tumour class (with the probability of each class and the planes it was decided
on) and, when segmentation ran, one per region (WT, TC, ET) with its volume, pointing at the
segment of the SEG that outlines it through the segment's tracking UID and a Referenced Segment
item (TID 1411), and with the same tracking UID a planar ROI group (TID 1410) on the key image:
the region's outline there as a closed SCOORD POLYLINE, and its area. Every other measurement
(TID 1501 groups) is inferred from (TID 320) the key image, a closed POLYLINE on its bounds:
OHIF 3.13 shows only measurements with image coordinates and fails on a report that has others.
The key image is the reference frame with the largest whole-tumour area, else the series' middle
image. With a follow-up comparison (``Findings.prior``), one more group per region: its volume
now and at the prior study, the change in mL and in percent (DCM 125314 "Fractional Change"),
in a Time Point Context (TID 1502) naming both study dates with the days since the prior.
A tumour-free study's report says "Neoplasm: Absent" and holds no tumour class or volumes: the
detection finding's decision says (:func:`~inference_worker.results.common.tumour_found`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from inference_worker.analysis import Analysis, RegionMasks
from inference_worker.results.common import (
    MODEL_NAME,
    device_uid,
    new_uid,
    stamp_equipment,
    tumour_found,
)
from inference_worker.results.contour import outline_polygon
from inference_worker.results.pdf import largest_tumour_frame, readable_date
from inference_worker.results.seg import (
    ARTIFICIAL_INTELLIGENCE,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    NEOPLASM,
    SEGMENTS,
)
from neurogate.settings import ResultSettings
from schemas.findings import Findings, ModelVersion

SERIES_DESCRIPTION = "NeuroGate tumour report"
PROCEDURE_MR_BRAIN = codes.LN.BrainMRI  # LN 24590-2
DEVICE = codes.cid270.Device  # DCM 121007, observer type
PRESENT = codes.SCT.Present  # SCT 52101004, CID 240
ABSENT = codes.SCT.Absent  # SCT 272519000, CID 240
PROBABILITY = codes.DCM.Probability  # DCM 122157
NO_UNITS = codes.UCUM.NoUnits  # UCUM "1": probabilities are fractions in [0, 1]
VOLUME = codes.SCT.Volume  # SCT 118565006
MILLILITRE = Code("ml", "UCUM", "milliliter")
SUM_OF_VOXELS = codes.DCM.SumOfSegmentedVoxelMethodForVolume  # DCM 126030
INTRACRANIAL_STRUCTURE = codes.SCT.IntracranialStructure  # SCT 128319008, CID 7140
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure  # SCT 91723000
# The classifier's labels as NCI Thesaurus concepts (PS3.16 designator "NCIt"; the SEG's
# "Enhancing Lesion" is NCIt too). "No tumour" is the absence concept the detection uses.
NCIT = "NCIt"
GLIOMA = Code("C3059", NCIT, "Glioma")
MENINGIOMA = Code("C3230", NCIT, "Meningioma")
PITUITARY_GLAND_ADENOMA = Code("C3329", NCIT, "Pituitary Gland Adenoma")
TUMOUR_CLASSES = {
    "glioma": GLIOMA,
    "meningioma": MENINGIOMA,
    "pituitary": PITUITARY_GLAND_ADENOMA,
    "notumor": ABSENT,
}
# A site model's own labels, with no mapping here, are coded in the node's private ("99"
# prefixed) scheme, declared in the SR's header when used.
CLASS_SCHEME = "99NEUROGATE"
_CODE_VALUE_MAX = 16  # SH
# Follow-up comparison (Findings.prior): the prior's volume and the change have no standard
# concept of their own, so they are coded in the node's scheme; the percentage is standard.
PRIOR_VOLUME = Code("PRIORVOL", CLASS_SCHEME, "Volume at prior study")
VOLUME_CHANGE = Code("VOLCHANGE", CLASS_SCHEME, "Volume change since prior study")
FRACTIONAL_CHANGE = codes.DCM.FractionalChange  # DCM 125314
PERCENT = codes.UCUM.Percent
DAY = Code("d", "UCUM", "day")
AREA = codes.SCT.Area  # SCT 42798000
SQUARE_MILLIMETRE = Code("mm2", "UCUM", "square millimeter")
POLYLINE = hd.sr.GraphicTypeValues.POLYLINE  # SCOORD has no POLYGON: a closed POLYLINE
BASELINE = codes.cid6146.Baseline  # the prior study is the comparison's baseline


def class_code(label: str) -> Code:
    """The coded concept of a classifier label (a site model's own labels coded as they are)."""
    return TUMOUR_CLASSES.get(label, Code(label[:_CODE_VALUE_MAX], CLASS_SCHEME, label))


def _algorithm(
    model: ModelVersion | None, parameters: Sequence[str] = ()
) -> hd.sr.AlgorithmIdentification | None:
    if model is None:
        return None
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        family=ARTIFICIAL_INTELLIGENCE,
        parameters=[f"sha256={model.sha256}", *parameters],
    )


def _listed(probabilities: dict[str, float] | None) -> str:
    return ",".join(f"{k}:{v:.3f}" for k, v in sorted((probabilities or {}).items()))


def _tracking(identifier: str, settings: ResultSettings) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=new_uid(settings), identifier=identifier)


Where = Sequence[hd.sr.CoordinatesForMeasurement]  # TID 320: what a measurement is inferred from


def _probability(value: float, where: Where, name: Code = PROBABILITY) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=name, value=round(float(value), 4), unit=NO_UNITS, referenced_coordinates=where
    )


def _decision(findings: Findings) -> list[str]:
    """What decided present or absent, as algorithm parameters of the detection group."""
    detection = findings.detection
    if detection is None or detection.decided_by != "segmentation":
        return ["decided_by=detector"]
    segmentation = findings.models.get("segmentation")
    by = f"{segmentation.name} {segmentation.version}" if segmentation else "segmentation"
    return [
        f"decided_by=segmentation ({by})",
        f"largest_lesion_ml={detection.largest_lesion_ml}",
        f"min_lesion_ml={detection.min_lesion_ml}",
    ]


def _finding_groups(
    analysis: Analysis, settings: ResultSettings, where: Where
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Detection and classification: what was found, how likely, by which model."""
    findings, groups = analysis.findings, []
    if findings.detection is not None:
        detection = findings.detection
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking("Tumour detection", settings),
                finding_type=NEOPLASM,
                algorithm_id=_algorithm(findings.models.get("detection"), _decision(findings)),
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(NEOPLASM, PRESENT if detection.tumour else ABSENT)
                ],
                measurements=[_probability(detection.probability, where)],
            )
        )
    if tumour_found(findings) and findings.classification is not None:
        classification = findings.classification
        label = classification.label
        # The planes (canonical 2 mm grid, k inferior to superior) the class was decided on
        # go with the classifier's identification, as parameters of this run.
        planes = [
            f"planes_from={classification.planes_from}",
            f"planes={','.join(str(k) for k in classification.planes)}",
        ]
        # The class combined with the location model: that model, and each expert's own p(type).
        location = findings.models.get("location")
        if location is not None and classification.location_probabilities:
            planes += [
                f"location_model={location.name} {location.version} sha256={location.sha256}",
                f"classifier_probabilities={_listed(classification.classifier_probabilities)}",
                f"location_probabilities={_listed(classification.location_probabilities)}",
            ]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking("Tumour class", settings),
                # The class is the group's Finding (TID 1501 row 3), which readers such as
                # highdicom take as the finding type; a second "Finding" item would be ambiguous.
                finding_type=class_code(label),
                algorithm_id=_algorithm(
                    findings.models.get("classification"),
                    planes if classification.planes else (),
                ),
                measurements=[
                    _probability(classification.probabilities.get(label, 0.0), where),
                    *(
                        _probability(p, where, class_code(name))
                        for name, p in sorted(classification.probabilities.items())
                    ),
                ],
            )
        )
    if findings.brain is not None:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking("Intracranial volume", settings),
                finding_type=INTRACRANIAL_STRUCTURE,
                finding_category=ANATOMICAL_STRUCTURE,
                algorithm_id=_algorithm(findings.models.get("brain_extraction")),
                measurements=[
                    hd.sr.Measurement(
                        name=VOLUME,
                        value=round(float(findings.brain.volume_ml), 1),
                        unit=MILLILITRE,
                        referenced_coordinates=where,
                    )
                ],
            )
        )
    return groups


def _volume(millilitres: float, where: Where = ()) -> hd.sr.Measurement:
    """A region's volume as TID 1500 measures it: summed voxels, in mL."""
    return hd.sr.Measurement(
        name=VOLUME,
        value=round(float(millilitres), 2),
        unit=MILLILITRE,
        method=SUM_OF_VOXELS,
        referenced_coordinates=where or None,
    )


def _region_groups(
    analysis: Analysis, seg: Dataset, where: Where
) -> list[
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
]:
    """One group per region with its volume, referencing its segment in ``seg``.

    A region that no reference frame shows (none found, 0 mL, or a few voxels of the analysis
    grid lost when the masks were resampled onto the frames: its segment is empty) gets a TID
    1501 group instead, tracked as its segment, its volume inferred from ``where`` as the
    findings' measurements are (TID 1411 allows no image coordinates, and a viewer needs some).
    """
    segmentation = analysis.findings.segmentation
    if segmentation is None or not tumour_found(analysis.findings):
        return []
    algorithm = _algorithm(analysis.findings.models.get("segmentation"))
    source_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    tracking_uids = {int(item.SegmentNumber): str(item.TrackingUID) for item in seg.SegmentSequence}
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for region in SEGMENTS:
        if region.key not in segmentation.volumes_ml:
            continue
        tracking = hd.sr.TrackingIdentifier(
            uid=tracking_uids[region.number], identifier=region.label
        )
        volume = segmentation.volumes_ml[region.key]
        if not _outlined(analysis.masks, region.key):
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=tracking,
                    finding_type=region.property_type,
                    finding_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                    algorithm_id=algorithm,
                    measurements=[_volume(volume, where)],
                )
            )
            continue
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=str(seg.SOPClassUID),
                    sop_instance_uid=str(seg.SOPInstanceUID),
                    segment_number=region.number,
                    source_series=hd.sr.SourceSeriesForSegmentation(source_series),
                ),
                finding_type=region.property_type,
                finding_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                algorithm_id=algorithm,
                measurements=[_volume(volume)],
            )
        )
    return groups


def _outlined(masks: RegionMasks | None, region: str) -> bool:
    """Whether a region gets a planar group: some reference frame shows it."""
    return masks is not None and bool(masks.masks[region].any())


def _planar_groups(
    analysis: Analysis, source_datasets: Sequence[Dataset], seg: Dataset
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """Per region, its outline and area on the key image (TID 1410), tracked as its segment.

    A region absent from the key image (a small enhancing part) is outlined on the frame where
    its own area is largest.
    """
    masks, segmentation = analysis.masks, analysis.findings.segmentation
    if masks is None or segmentation is None or not tumour_found(analysis.findings):
        return []
    key = largest_tumour_frame(masks)
    algorithm = _algorithm(analysis.findings.models.get("segmentation"))
    tracking_uids = {int(item.SegmentNumber): str(item.TrackingUID) for item in seg.SegmentSequence}
    groups = []
    for region in SEGMENTS:
        mask = masks.masks[region.key]
        areas = mask.reshape(len(mask), -1).sum(axis=1)
        if region.key not in segmentation.volumes_ml or not _outlined(masks, region.key):
            continue
        index = key if key is not None and areas[key] else int(np.argmax(areas))
        source, frame = _frame_source(masks, index, source_datasets)
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking_uids[region.number], identifier=region.label
                ),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=POLYLINE,
                    graphic_data=outline_polygon(mask[index]),
                    source_image=_source_image(source, frame),
                ),
                finding_type=region.property_type,
                finding_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=AREA,
                        value=round(float(areas[index]) * _pixel_area_mm2(source, frame), 1),
                        unit=SQUARE_MILLIMETRE,
                    )
                ],
            )
        )
    return groups


def _frame_source(
    masks: RegionMasks, index: int, source_datasets: Sequence[Dataset]
) -> tuple[Dataset, int | None]:
    ref = masks.frames[index]
    source = next(ds for ds in source_datasets if ds.SOPInstanceUID == ref.sop_instance_uid)
    return source, ref.frame_number


def _key_image(
    analysis: Analysis, source_datasets: Sequence[Dataset]
) -> tuple[Dataset, int | None]:
    """The frame with the largest whole-tumour area, else the series' middle image or frame."""
    masks = analysis.masks
    index = largest_tumour_frame(masks) if masks is not None else None
    if masks is not None and index is not None and tumour_found(analysis.findings):
        return _frame_source(masks, index, source_datasets)
    ordered = sorted(source_datasets, key=lambda ds: int(ds.get("InstanceNumber", 0) or 0))
    middle = ordered[len(ordered) // 2]
    frames = int(middle.get("NumberOfFrames", 1) or 1)
    return middle, (frames + 1) // 2 if frames > 1 else None


def _source_image(source: Dataset, frame: int | None) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion.from_source_image(
        source, referenced_frame_numbers=[frame] if frame is not None else None
    )


def _whole_image(source: Dataset, frame: int | None) -> hd.sr.CoordinatesForMeasurement:
    """The bounds of a source image, as the region a whole-series measurement is inferred from."""
    rows, cols = float(source.Rows), float(source.Columns)
    corners = np.array([[0.0, 0.0], [cols, 0.0], [cols, rows], [0.0, rows], [0.0, 0.0]])
    return hd.sr.CoordinatesForMeasurement(POLYLINE, corners, _source_image(source, frame))


def _pixel_area_mm2(source: Dataset, frame: int | None) -> float:
    """Row spacing times column spacing of a frame, in mm² (multi-frame: its functional groups)."""
    spacing = source.get("PixelSpacing")
    if spacing is None:
        for groups in (
            source.get("PerFrameFunctionalGroupsSequence", [])[(frame or 1) - 1 :][:1],
            source.get("SharedFunctionalGroupsSequence", []),
        ):
            for group in groups:
                if "PixelMeasuresSequence" in group:
                    spacing = group.PixelMeasuresSequence[0].PixelSpacing
                    break
            if spacing is not None:
                break
    if spacing is None:
        raise ValueError(f"{source.SOPInstanceUID} has no Pixel Spacing")
    return float(spacing[0]) * float(spacing[1])


def _unsegmented_volumes(
    analysis: Analysis, settings: ResultSettings, where: Where
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Volumes without a SEG to point at (masks could not be mapped onto DICOM frames)."""
    segmentation = analysis.findings.segmentation
    if segmentation is None or not tumour_found(analysis.findings):
        return []
    algorithm = _algorithm(analysis.findings.models.get("segmentation"))
    return [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(region.label, settings),
            finding_type=region.property_type,
            finding_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            algorithm_id=algorithm,
            measurements=[_volume(segmentation.volumes_ml[region.key], where)],
        )
        for region in SEGMENTS
        if region.key in segmentation.volumes_ml
    ]


def _follow_up_groups(
    analysis: Analysis, settings: ResultSettings, where: Where
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One group per region compared with the most recent prior study (Findings.prior)."""
    prior = analysis.findings.prior
    if prior is None:
        return []
    current, before = (readable_date(d) for d in (prior.current_study_date, prior.prior_study_date))
    offset = None
    days = _days_between(prior.prior_study_date, prior.current_study_date)
    if days is not None:
        offset = hd.sr.LongitudinalTemporalOffsetFromEvent(
            value=days, unit=DAY, event_type=BASELINE
        )
    time_point = hd.sr.TimePointContext(
        time_point=f"{current} vs prior {before}"[:64], temporal_offset_from_event=offset
    )
    algorithm = _algorithm(analysis.findings.models.get("segmentation"))
    groups = []
    for region in SEGMENTS:
        change = prior.regions.get(region.key)
        if change is None:
            continue
        measurements = [
            _volume(change.current_ml, where),
            hd.sr.Measurement(
                name=PRIOR_VOLUME,
                value=round(change.previous_ml, 2),
                unit=MILLILITRE,
                referenced_coordinates=where,
            ),
            hd.sr.Measurement(
                name=VOLUME_CHANGE,
                value=round(change.change_ml, 2),
                unit=MILLILITRE,
                referenced_coordinates=where,
            ),
        ]
        if change.change_percent is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=FRACTIONAL_CHANGE,
                    value=round(change.change_percent, 2),
                    unit=PERCENT,
                    referenced_coordinates=where,
                )
            )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(f"{region.label} follow-up", settings),
                time_point_context=time_point,
                finding_type=region.property_type,
                finding_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                algorithm_id=algorithm,
                measurements=measurements,
            )
        )
    return groups


def _days_between(first: str | None, second: str | None) -> int | None:
    try:
        a, b = (dt.datetime.strptime(d or "", "%Y%m%d").date() for d in (first, second))
    except ValueError:
        return None
    return (b - a).days


def _private_schemes(
    analysis: Analysis, settings: ResultSettings
) -> list[CodingSchemeIdentificationItem] | None:
    """The node's own coding scheme, declared when the report uses it (a site model's label,
    a follow-up comparison)."""
    classification = analysis.findings.classification
    labels = (
        {classification.label, *classification.probabilities}
        if tumour_found(analysis.findings) and classification is not None
        else set()
    )
    follow_up = bool(analysis.findings.prior and analysis.findings.prior.regions)
    if not follow_up and all(
        class_code(label).scheme_designator != CLASS_SCHEME for label in labels
    ):
        return None
    return [
        CodingSchemeIdentificationItem(
            designator=CLASS_SCHEME,
            name="NeuroGate concepts",
            responsible_organization=settings.manufacturer,
        )
    ]


def build_sr(
    analysis: Analysis,
    source_datasets: Sequence[Dataset],
    seg: Dataset | None,
    settings: ResultSettings,
    series_number: int,
) -> hd.sr.Comprehensive3DSR:
    """The findings as a TID 1500 Measurement Report, observed by this node as a device.

    Parameters
    ----------
    source_datasets
        A series of the study (the reference series when there is a SEG): the report copies its
        patient and study modules and lists it as evidence.
    seg
        The SEG of the same analysis, or None when there is none; then the report carries
        detection and classification (and tumour volumes, if any, without segment references).

    Raises
    ------
    ValueError
        When there are no source datasets or nothing to report.
    """
    if not source_datasets:
        raise ValueError("no source datasets to take the patient and study from")
    observer = hd.sr.ObserverContext(
        observer_type=DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(settings),
            name=settings.station_name,
            manufacturer_name=settings.manufacturer,
            model_name=MODEL_NAME,
        ),
    )
    where = [_whole_image(*_key_image(analysis, source_datasets))]
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = [*_finding_groups(analysis, settings, where)]
    if seg is not None:
        groups.extend(_region_groups(analysis, seg, where))
        groups.extend(_planar_groups(analysis, source_datasets, seg))
    else:
        groups.extend(_unsegmented_volumes(analysis, settings, where))
    groups.extend(_follow_up_groups(analysis, settings, where))
    if not groups:
        raise ValueError("the findings hold nothing to report")
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_MR_BRAIN,
        imaging_measurements=groups,
    )
    evidence = [*source_datasets, *([seg] if seg is not None else [])]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=new_uid(settings),
        series_number=series_number,
        sop_instance_uid=new_uid(settings),
        instance_number=1,
        manufacturer=settings.manufacturer,
        is_complete=True,
        is_final=False,  # research software: a preliminary, unverified report
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        coding_schemes=_private_schemes(analysis, settings),
    )
    stamp_equipment(sr, settings)
    return sr
