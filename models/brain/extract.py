"""The intracranial mask of a study, from a small 3D network on a coarse whole-head grid.

Brain-tumour pipelines extract the brain first (BraTS preprocessing, HD-BET, SynthStrip): a
detector or a segmenter that never saw a face or a neck calls retro-orbital and neck fat
tumour. The network here sees any single MR contrast resampled onto a 4 mm grid that spans
320 mm from the neck to above the vertex, 256 mm front to back and side to side, centred on
the head; it was trained only on synthetic full heads with randomised contrasts, shapes and
fields of view (:mod:`models.brain.train`, as SynthStrip is trained). Every available series
votes (mean probability); the mask is the largest connected component, holes filled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from models.imaging import Volume, resample_to
from models.preprocessing import grid_at, head_centre, on_grid

GRID_MM = 4.0
GRID_SHAPE = (80, 64, 64)  # (k: inferior->superior, j: anterior->posterior, i: right->left)
_THRESHOLD = 0.5


@dataclass(frozen=True, eq=False)
class BrainMask:
    """The intracranial probability on the coarse grid, and what follows from it."""

    probability: Volume  # float32 in [0, 1] on the 4 mm grid
    mask: Volume  # the same grid, 1 inside (largest component, filled)

    @property
    def volume_ml(self) -> float:
        return float(self.mask.array.sum()) * self.mask.voxel_volume_ml

    @property
    def centre(self) -> np.ndarray:
        """LPS mm of the mask's centroid (the head's centre when the mask is empty)."""
        points = np.argwhere(self.mask.array > 0)
        if not len(points):
            k, j, i = (np.array(self.mask.shape) - 1) / 2
        else:
            k, j, i = points.mean(axis=0)
        return (self.mask.affine @ [i, j, k, 1])[:3]

    def on(self, grid: Volume) -> np.ndarray:
        """The mask on another grid (bool), from the interpolated probability."""
        inside = self.probability.with_array(
            np.where(self.mask.array > 0, self.probability.array, 0).astype(np.float32)
        )
        return resample_to(inside, grid).array > _THRESHOLD


def brain_grid(centre: np.ndarray) -> Volume:
    """The network's grid in patient axes (LPS), centred on ``centre``."""
    return grid_at(centre, GRID_SHAPE, GRID_MM)


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def extract(net: Any, volumes: Sequence[Volume]) -> BrainMask:
    """The intracranial mask from every series of a study (the first one sets the grid)."""
    import torch

    if not volumes:
        raise ValueError("brain extraction needs at least one series")
    grid = brain_grid(head_centre(volumes[0]))
    batch = np.stack([on_grid(v, grid) for v in volumes])[:, None]
    with torch.no_grad():
        probability = torch.sigmoid(net(torch.from_numpy(batch))).mean(dim=0)[0].numpy()
    mask = largest_component(probability > _THRESHOLD)
    return BrainMask(
        grid.with_array(probability.astype(np.float32)),
        grid.with_array(mask.astype(np.float32)),
    )
