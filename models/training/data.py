"""Training examples: synthetic cases acquired like scanners do, on the canonical grid.

Each example goes through the same preprocessing as a received study (resampling of each
series onto :func:`models.preprocessing.canonical_grid`, normalisation), so the networks learn
what they will see: thick oblique slices, bias fields, noise, skull and scalp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.imaging import Volume
from models.preprocessing import canonical_grid, on_grid
from models.synthetic.acquisition import AcquiredSeries, SeriesProtocol, acquire, label_on_grid
from models.synthetic.case import MODALITIES, TUMOUR_TYPES, SyntheticCase, generate_case

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")  # the Kaggle data set's folder names


def class_index(tumour_type: str) -> int:
    return CLASSES.index("notumor" if tumour_type == "none" else tumour_type)


def random_protocol(modality: str, rng: np.random.Generator) -> SeriesProtocol:
    """A training acquisition: any plane, obliquity, 1.5-6 mm slices, bias and noise."""
    three_d = rng.random() < 0.35
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


def make_example(seed: int, tumour_type: str | None = None) -> Example:
    rng = np.random.default_rng(seed + 1_000_003)
    case = generate_case(seed, tumour_type or TUMOUR_TYPES[seed % 4], voxel_mm=2.0)
    volumes = {m: as_volume(acquire(case, random_protocol(m, rng), rng)) for m in MODALITIES}
    grid = canonical_grid(volumes["t1ce"])
    image = np.stack([on_grid(volumes[m], grid) for m in MODALITIES]).astype(np.float16)
    label = label_on_grid(case, grid.affine, grid.shape)
    brain_case = case.brain_mask.astype(np.uint8)
    brain = _on_grid_nearest(case, brain_case, grid)
    return Example(image, label, brain, case.tumour_type)


def _on_grid_nearest(case: SyntheticCase, array: np.ndarray, grid: Volume) -> np.ndarray:
    from models.synthetic.acquisition import grid_points, sample

    points = grid_points(grid.origin, grid.spacing, grid.direction, grid.shape)
    return sample(array, case.affine, points, order=0).astype(bool)
