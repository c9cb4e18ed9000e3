"""DICOM series to 3D volumes (:class:`models.imaging.Volume`) and masks back onto the frames.

Each slice of a loaded volume remembers the instance (and frame, for multi-frame objects) it
came from, so a mask on the series' grid maps back to its source frames exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from models.imaging import FrameRef, Volume
from neurogate.budget import DEFAULT_BUDGET, DecodeBudget

# Elements larger than this are read only when used: the pixels, once the budget allows them.
_DEFER_SIZE = "256 KB"

# Slices whose normal positions differ from a regular grid by more than this are refused.
_SPACING_TOLERANCE = 0.05  # relative
_ORIENTATION_TOLERANCE = 1e-3


class GeometryError(ValueError):
    """The series does not form one regular 3D stack (mixed orientations, gaps, duplicates)."""


class UnreadableSeries(ValueError):
    """An instance of the series cannot be parsed, lacks its image attributes, or its pixel
    data cannot be decoded (truncated, corrupt, or a transfer syntax with no decoder)."""


# What pydicom raises for an instance it cannot parse or decode (the errors of data, caught
# around the calls that read one instance only, so that a bug elsewhere is not taken for one).
_UNREADABLE = (
    InvalidDicomError,
    EOFError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    AttributeError,
    KeyError,
    IndexError,
)


@dataclass(frozen=True)
class _Slice:
    position: np.ndarray
    row: np.ndarray  # direction of increasing column index (i)
    column: np.ndarray  # direction of increasing row index (j)
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    pixels: np.ndarray
    ref: FrameRef


def _rescaled(pixels: np.ndarray, item: Dataset) -> np.ndarray:
    slope = float(item.get("RescaleSlope", 1) or 1)
    intercept = float(item.get("RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * slope + intercept


def _single_frame(ds: Dataset) -> list[_Slice]:
    iop = np.asarray(ds.ImageOrientationPatient, float)
    return [
        _Slice(
            position=np.asarray(ds.ImagePositionPatient, float),
            row=iop[:3],
            column=iop[3:],
            pixel_spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
            pixels=_rescaled(ds.pixel_array, ds),
            ref=FrameRef(str(ds.SOPInstanceUID), str(ds.SOPClassUID)),
        )
    ]


def _functional(ds: Dataset, index: int, sequence: str) -> Dataset:
    """A functional group item for frame ``index``: per-frame if present, else shared."""
    per_frame = ds.PerFrameFunctionalGroupsSequence[index]
    if sequence in per_frame:
        return per_frame[sequence][0]
    return ds.SharedFunctionalGroupsSequence[0][sequence][0]


def _multi_frame(ds: Dataset) -> list[_Slice]:
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    slices = []
    for index in range(int(ds.NumberOfFrames)):
        iop = np.asarray(
            _functional(ds, index, "PlaneOrientationSequence").ImageOrientationPatient, float
        )
        measures = _functional(ds, index, "PixelMeasuresSequence")
        try:
            transform: Dataset = _functional(ds, index, "PixelValueTransformationSequence")
        except (KeyError, AttributeError):
            transform = Dataset()
        slices.append(
            _Slice(
                position=np.asarray(
                    _functional(ds, index, "PlanePositionSequence").ImagePositionPatient, float
                ),
                row=iop[:3],
                column=iop[3:],
                pixel_spacing=(float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1])),
                pixels=_rescaled(pixels[index], transform),
                ref=FrameRef(str(ds.SOPInstanceUID), str(ds.SOPClassUID), index + 1),
            )
        )
    return slices


def _slices_of(ds: Dataset) -> list[_Slice]:
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _multi_frame(ds)
    return _single_frame(ds)


def load_series(paths: Sequence[Path], budget: DecodeBudget = DEFAULT_BUDGET) -> Volume:
    """Build one volume from the instances of a series (single-frame or multi-frame).

    The headers are read first and the series' declared pixels checked against ``budget``;
    only then are pixels read and decoded. :func:`read_series` also returns the datasets.

    Raises
    ------
    GeometryError
        When the frames do not form one regular stack: differing orientation, pixel spacing or
        size, two frames at one position, or uneven slice gaps.
    DecodeBudgetExceeded
        When decoding the series would take more memory than ``budget`` allows.
    UnreadableSeries
        When an instance cannot be parsed or its pixels decoded.
    """
    return read_series(paths, budget)[0]


def read_series(
    paths: Sequence[Path], budget: DecodeBudget = DEFAULT_BUDGET
) -> tuple[Volume, list[Dataset]]:
    """:func:`load_series`, and the datasets as read (pixel data included), in ``paths`` order:
    what the result objects of a reference series derive from, without reading it again."""
    datasets = [_read(path) for path in paths]
    series = str(datasets[0].get("SeriesInstanceUID", "?")) if datasets else "?"
    budget.check_dicom(datasets, f"series {series}")
    slices = [s for path, ds in zip(paths, datasets, strict=True) for s in _decoded(path, ds)]
    if not slices:
        raise GeometryError("no frames")
    first = slices[0]
    for s in slices[1:]:
        if not (
            np.allclose(s.row, first.row, atol=_ORIENTATION_TOLERANCE)
            and np.allclose(s.column, first.column, atol=_ORIENTATION_TOLERANCE)
        ):
            raise GeometryError("frames have different orientations (a localiser or mixed stack)")
        if s.pixels.shape != first.pixels.shape or not np.allclose(
            s.pixel_spacing, first.pixel_spacing
        ):
            raise GeometryError("frames differ in size or pixel spacing")
    normal = np.cross(first.row, first.column)
    slices.sort(key=lambda s: float(np.dot(s.position, normal)))
    distances = np.array([np.dot(s.position, normal) for s in slices])
    if len(slices) > 1:
        steps = np.diff(distances)
        if np.any(steps < 1e-3):
            raise GeometryError("two frames share a position (multiple echoes or repeats?)")
        spacing_k = float(np.median(steps))
        if np.any(np.abs(steps - spacing_k) > _SPACING_TOLERANCE * spacing_k):
            raise GeometryError(f"uneven slice gaps: {sorted(set(np.round(steps, 2)))} mm")
        # The stacking axis may be sheared (gantry tilt); take it from the positions themselves.
        k_axis = slices[-1].position - slices[0].position
        k_axis /= np.linalg.norm(k_axis)
    else:
        spacing_k, k_axis = 1.0, normal
    volume = Volume(
        array=np.stack([s.pixels for s in slices]),
        origin=slices[0].position,
        spacing=np.array([first.pixel_spacing[1], first.pixel_spacing[0], spacing_k]),
        direction=np.column_stack([first.row, first.column, k_axis]),
        frames=tuple(s.ref for s in slices),
    )
    return volume, datasets


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path, defer_size=_DEFER_SIZE)
    except _UNREADABLE as exc:
        raise UnreadableSeries(f"{path.name}: not a readable DICOM instance ({exc})") from exc


def _decoded(path: Path, ds: Dataset) -> list[_Slice]:
    try:
        return _slices_of(ds)
    except _UNREADABLE as exc:
        raise UnreadableSeries(
            f"{path.name}: pixel data or image attributes unreadable ({exc!r})"
        ) from exc


def frame_masks(mask: Volume) -> list[tuple[FrameRef, np.ndarray]]:
    """A mask on a series' own grid as (source frame, 2D mask) pairs, in source order."""
    if not mask.frames:
        raise ValueError("the mask's grid does not come from a DICOM series")
    return [(ref, mask.array[k]) for k, ref in enumerate(mask.frames)]
