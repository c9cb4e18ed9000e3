"""The model-side contract for images: the canonical grid and intensity normalisation.

Every network sees a study the same way, whatever the scanner did: each available series is
resampled (in patient space) onto one canonical grid, 2 mm isotropic and aligned with the
patient's axes, centred on the head; intensities are divided by a robust maximum of the head.
Training (on synthetic acquisitions) and inference (on received DICOM) use these functions, so
the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from models.imaging import Volume, resample_to

GRID_MM = 2.0
GRID_SHAPE = (96, 120, 96)  # (k: inferior->superior, j: anterior->posterior, i: right->left)
_FOREGROUND_FRACTION = 0.1
_ROBUST_PERCENTILE = 99.0
_CLIP = 2.0


def head_centre(volume: Volume) -> np.ndarray:
    """LPS mm of the centroid of the bright part of ``volume`` (the head, and any neck in view)."""
    array = volume.array
    foreground = array > _FOREGROUND_FRACTION * np.percentile(array, _ROBUST_PERCENTILE)
    k, j, i = np.argwhere(foreground).mean(axis=0)
    return (volume.affine @ [i, j, k, 1])[:3]


def canonical_grid(reference: Volume) -> Volume:
    """An empty 2 mm grid in patient axes (LPS), centred on ``reference``'s head.

    Only right for a head without face and neck in view; received studies are centred on their
    intracranial mask instead (:func:`canonical_grid_at`).
    """
    return canonical_grid_at(head_centre(reference))


def canonical_grid_at(centre: np.ndarray) -> Volume:
    """An empty 2 mm grid in patient axes (LPS) centred on ``centre`` (LPS mm)."""
    return grid_at(centre, GRID_SHAPE, GRID_MM)


def grid_at(centre: np.ndarray, shape: tuple[int, int, int], mm: float) -> Volume:
    """An empty isotropic grid of ``shape`` (k, j, i), patient axes (LPS), centred on ``centre``."""
    spacing = np.full(3, mm)
    half = (np.array(shape[::-1]) - 1) / 2 * spacing
    return Volume(
        array=np.zeros(shape, np.float32),
        origin=np.asarray(centre, float)[:3] - half,
        spacing=spacing,
        direction=np.eye(3),
    )


def normalise(array: np.ndarray) -> np.ndarray:
    """Scale so that the head's robust maximum is 1; clip outliers."""
    values = array[array > 0]
    if values.size == 0:
        return np.zeros_like(array, dtype=np.float32)
    top = float(np.percentile(values, _ROBUST_PERCENTILE)) or 1.0
    return np.clip(array / top, 0, _CLIP).astype(np.float32)


def brain_normalise(array: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Only the intracranial part of ``array``, scaled so that its robust maximum is 1.

    What the 2D networks see (as BraTS-style models see skull-stripped images): whatever lies
    outside the skull (orbital and neck fat, a field of view that reaches the shoulders)
    changes neither the picture nor its scale.
    """
    values = array[inside & (array > 0)]
    top = float(np.percentile(values, _ROBUST_PERCENTILE)) if values.size else 1.0
    return np.where(inside, np.clip(array / (top or 1.0), 0, _CLIP), 0).astype(np.float32)


def on_grid(volume: Volume, grid: Volume) -> np.ndarray:
    """``volume`` resampled onto ``grid`` and normalised."""
    return normalise(resample_to(volume.with_array(volume.array.astype(np.float32)), grid).array)
