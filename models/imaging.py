"""Volumes in DICOM patient space, shared by the models and the worker.

A :class:`Volume` holds voxels as ``array[k, j, i]`` (slice, row, column) and the DICOM patient
coordinate system (LPS, millimetres) mapping: ``origin`` is the centre of voxel (0, 0, 0),
``direction`` has the unit vectors of the i, j and k axes as its columns, ``spacing`` is
(column spacing, row spacing, slice spacing). This is ITK's convention, so volumes convert to
SimpleITK images without reorientation, and resampling one series onto another's grid is an
identity transform in patient space (series of one study share a frame of reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class FrameRef:
    """Where one slice of a volume came from."""

    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None = None  # 1-based, for multi-frame instances


@dataclass(frozen=True, eq=False)
class Volume:
    array: np.ndarray  # (slices, rows, columns)
    origin: np.ndarray  # (3,) LPS mm, centre of voxel (0, 0, 0)
    spacing: np.ndarray  # (3,) mm: i (columns), j (rows), k (slices)
    direction: np.ndarray  # (3, 3), columns are the i, j, k unit vectors in LPS
    frames: tuple[FrameRef, ...] = ()

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"array must be 3D, got shape {self.array.shape}")
        if self.frames and len(self.frames) != self.array.shape[0]:
            raise ValueError("frames must name one source frame per slice")

    @property
    def shape(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape
        return k, j, i

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix from (i, j, k, 1) voxel indices to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction * self.spacing
        affine[:3, 3] = self.origin
        return affine

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def with_array(self, array: np.ndarray) -> Volume:
        """The same grid holding other voxels (a mask, a probability map)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} != grid shape {self.array.shape}")
        return Volume(array, self.origin, self.spacing, self.direction, self.frames)

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing(tuple(float(v) for v in self.spacing))
        image.SetDirection(tuple(float(v) for v in self.direction.flatten()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, frames: tuple[FrameRef, ...] = ()) -> Volume:
        return cls(
            array=sitk.GetArrayFromImage(image),
            origin=np.asarray(image.GetOrigin()),
            spacing=np.asarray(image.GetSpacing()),
            direction=np.asarray(image.GetDirection()).reshape(3, 3),
            frames=frames,
        )


def resample_to(volume: Volume, reference: Volume, *, labels: bool = False) -> Volume:
    """``volume`` on ``reference``'s grid: linear for images, nearest neighbour for labels.

    Both are in patient coordinates, so no registration is involved: series of one study share
    a frame of reference. Voxels outside ``volume``'s extent are 0.
    """
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    resampled = sitk.Resample(
        volume.to_sitk(), reference.to_sitk(), sitk.Transform(), interpolator, 0.0
    )
    return reference.with_array(sitk.GetArrayFromImage(resampled).astype(volume.array.dtype))
