"""Training examples: synthetic cases acquired like scanners do, on the canonical grid.

Each example goes through the same preprocessing as a received study (resampling of each
series onto :func:`models.preprocessing.canonical_grid`, normalisation), so the networks learn
what they will see: thick oblique slices, bias fields, noise, skull and scalp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.imaging import Volume
from models.preprocessing import canonical_grid, canonical_grid_at, on_grid
from models.synthetic.acquisition import (
    RAS_TO_LPS,
    AcquiredSeries,
    SeriesProtocol,
    acquire,
    label_on_grid,
)
from models.synthetic.case import MODALITIES, TUMOUR_TYPES, SyntheticCase, generate_case

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")  # the Kaggle data set's folder names


def class_index(tumour_type: str) -> int:
    return CLASSES.index("notumor" if tumour_type == "none" else tumour_type)


def random_protocol(
    modality: str, rng: np.random.Generator, full_head: bool = False
) -> SeriesProtocol:
    """A training acquisition: any plane, obliquity, 1.5-6 mm slices, bias and noise.

    ``full_head``: fields of view that take in the whole brain and reach anywhere from the
    skull base to the neck: axial slabs end 78-100 mm above the brain's centre and cover
    150-280 mm; 200-260 mm in plane (a sagittal or coronal plane then reaches the neck);
    1-6 mm slices.
    """
    three_d = rng.random() < 0.35
    if full_head:
        orientation = str(rng.choice(["axial", "axial", "sagittal", "coronal"]))
        coverage, shift = float(rng.uniform(160, 200)), 0.0
        if orientation == "axial":
            coverage = float(rng.uniform(150, 280))
            shift = float(rng.uniform(78, 100)) - coverage / 2
        return SeriesProtocol(
            modality,
            orientation=orientation,
            tilt_deg=float(rng.uniform(-20, 20)) if rng.random() < 0.5 else 0.0,
            in_plane_mm=float(rng.uniform(1.0, 2.4)),
            slice_mm=float(rng.uniform(1.0, 2.5)) if three_d else float(rng.uniform(3, 6)),
            three_d=three_d,
            noise=float(rng.uniform(0.01, 0.06)),
            bias=float(rng.uniform(0.05, 0.6)),
            scale=float(rng.uniform(800, 3000)),
            coverage_mm=coverage,
            shift_mm=shift,
            fov_mm=float(rng.uniform(200, 260)),
        )
    return SeriesProtocol(
        modality,
        orientation=str(rng.choice(["axial", "axial", "sagittal", "coronal"])),
        tilt_deg=float(rng.uniform(-20, 20)) if rng.random() < 0.5 else 0.0,
        in_plane_mm=float(rng.uniform(1.6, 2.4)),
        slice_mm=float(rng.uniform(1.5, 2.5)) if three_d else float(rng.uniform(3, 6)),
        three_d=three_d,
        noise=float(rng.uniform(0.01, 0.06)),
        bias=float(rng.uniform(0.05, 0.5)),
        scale=float(rng.uniform(800, 3000)),
    )


def as_volume(series: AcquiredSeries) -> Volume:
    return Volume(series.pixels.astype(np.float32), series.origin, series.spacing, series.direction)


@dataclass(frozen=True, eq=False)
class Example:
    image: np.ndarray  # float16 (4, k, j, i): T1, T1CE, T2, FLAIR on the canonical grid
    label: np.ndarray  # uint8 (k, j, i), BraTS labels
    brain: np.ndarray  # bool (k, j, i)
    tumour_type: str
    intracranial: np.ndarray  # bool (k, j, i)


def make_example(seed: int, tumour_type: str | None = None, *, full_head: bool = False) -> Example:
    """One example on the canonical grid.

    Thin-skull heads are centred as they always were (on the head's bright voxels); whole heads
    on their intracranial space, as the pipeline centres a study on its extracted brain (with a
    few millimetres of error, as an extracted mask has).
    """
    rng = np.random.default_rng(seed + 1_000_003)
    case = generate_case(
        seed, tumour_type or TUMOUR_TYPES[seed % 4], voxel_mm=2.0, full_head=full_head
    )
    volumes = {
        m: as_volume(acquire(case, random_protocol(m, rng, full_head), rng)) for m in MODALITIES
    }
    if full_head:
        centre_ras = case.affine @ [*np.argwhere(case.intracranial).mean(axis=0), 1]
        grid = canonical_grid_at(RAS_TO_LPS @ centre_ras[:3] + rng.normal(0, 2, 3))
    else:
        grid = canonical_grid(volumes["t1ce"])
    image = np.stack([on_grid(volumes[m], grid) for m in MODALITIES]).astype(np.float16)
    label = label_on_grid(case, grid.affine, grid.shape)
    brain = _on_grid_nearest(case, case.brain_mask.astype(np.uint8), grid)
    intracranial = _on_grid_nearest(case, case.intracranial.astype(np.uint8), grid)
    return Example(image, label, brain, case.tumour_type, intracranial)


def _on_grid_nearest(case: SyntheticCase, array: np.ndarray, grid: Volume) -> np.ndarray:
    from models.synthetic.acquisition import grid_points, sample

    points = grid_points(grid.origin, grid.spacing, grid.direction, grid.shape)
    return sample(array, case.affine, points, order=0).astype(bool)
