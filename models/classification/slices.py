"""Axial slices of canonical-grid examples for the 2D models, and their labels."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy import ndimage

from models.classification.networks import INPUT_SHAPE
from models.preprocessing import brain_normalise
from models.training.data import CLASSES, class_index

# Channel order of the canonical grid (models.synthetic.MODALITIES) and how often each is shown.
CONTRAST_WEIGHTS = np.array([0.15, 0.35, 0.15, 0.35])  # t1, t1ce, t2, flair
TUMOUR_SLICE_MIN_VOXELS = 15  # 60 mm2 at 2 mm: a slice clearly showing tumour
BRAIN_SLICE_MIN_VOXELS = 600


def to_input(plane: np.ndarray) -> np.ndarray:
    """A (j, i) plane of the canonical grid centred in the network's input square."""
    height, width = INPUT_SHAPE[:2]
    out = np.zeros((height, width), np.float32)
    j, i = plane.shape
    top, left = (height - j) // 2, (width - i) // 2
    out[top : top + j, left : left + i] = plane
    return out


def augment(plane: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plane as another head and scanner might give it: rotated up to 15 degrees, scaled by
    0.85-1.15 about its centre, its intensities through a random gamma (0.7-1.4) and gain."""
    angle = float(rng.uniform(-15, 15))
    zoom = float(rng.uniform(0.85, 1.15))
    theta = np.deg2rad(angle)
    matrix = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) / zoom
    centre = (np.array(plane.shape) - 1) / 2
    moved = ndimage.affine_transform(
        plane, matrix, offset=centre - matrix @ centre, order=1, mode="constant"
    )
    peak = float(moved.max())
    if peak > 0:
        moved = peak * (np.clip(moved, 0, None) / peak) ** float(rng.uniform(0.7, 1.4))
    return (moved * float(rng.uniform(0.85, 1.15))).astype(np.float32)


def example_slices(
    path: Path,
    rng: np.random.Generator,
    per_example: int = 24,
    whole_planes: float = 0.0,
    augmented: bool = False,
) -> Iterable[tuple[np.ndarray, int, int]]:
    """(input, tumour present 0/1, class index) for sampled axial slices of one example.

    A share ``whole_planes`` of the slices is shown whole (head, skull and scalp, normalised
    over the head) rather than brain only: the classifier also serves ``/api/classify``, whose
    pictures come without a brain mask. ``augmented``: each plane through :func:`augment`.
    """
    with np.load(path) as data:
        image, label, brain = data["image"], data["label"], data["brain"]
        inside = data.get("intracranial", brain)
        tumour_type = str(data["tumour_type"])
    tumour_area = (label > 0).sum(axis=(1, 2))
    brain_area = brain.sum(axis=(1, 2))
    positive = np.flatnonzero(tumour_area >= TUMOUR_SLICE_MIN_VOXELS)
    negative = np.flatnonzero((tumour_area == 0) & (brain_area >= BRAIN_SLICE_MIN_VOXELS))
    chosen = list(rng.permutation(positive)[: per_example // 2])
    chosen += list(rng.permutation(negative)[: per_example - len(chosen)])
    klass = class_index(tumour_type)
    # The networks see only the intracranial part (models.preprocessing.brain_normalise) of a
    # mask that is extracted, not known: grown or shrunk by up to two voxels (4 mm) at random,
    # so that a rim of skull, marrow or fat at the mask's edge is no tumour to them.
    masks = [inside, ndimage.binary_dilation(inside), ndimage.binary_erosion(inside),
             ndimage.binary_dilation(inside, iterations=2)]  # fmt: skip
    normalised: dict[tuple[int, int], np.ndarray] = {}
    for k in chosen:
        channel = int(rng.choice(4, p=CONTRAST_WEIGHTS))
        variant = int(rng.integers(len(masks)))
        if (channel, variant) not in normalised:
            normalised[channel, variant] = brain_normalise(
                image[channel].astype(np.float32), masks[variant]
            )
        if rng.random() < whole_planes:
            plane = image[channel, k].astype(np.float32)
        else:
            plane = normalised[channel, variant][k]
        if rng.random() < 0.5:
            plane = plane[:, ::-1]
        if augmented:
            plane = augment(plane, rng)
        present = int(tumour_area[k] > 0)
        yield to_input(plane), present, klass if present else CLASSES.index("notumor")
