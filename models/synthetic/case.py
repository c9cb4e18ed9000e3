"""A synthetic case: four contrasts and BraTS labels on a RAS world grid.

Intensities are relative (white matter ~1 on T1); :mod:`models.synthetic.acquisition` applies a
scanner's scaling, bias field and noise. Tumours follow their type:

- glioma: intra-axial in white matter, irregular, a necrotic core inside an enhancing rim, with
  oedema spreading along white matter; a quarter are low-grade-like (non-enhancing core, little
  or no enhancement);
- meningioma: extra-axial, on the brain's surface (convexity, falx or skull base), round,
  homogeneously enhancing, sometimes with oedema in the brain it presses on;
- pituitary: a sellar lesion below the hypothalamus, enhancing, from a microadenoma to a
  macroadenoma rising out of the sella;
- none: no tumour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from models.synthetic.anatomy import (
    INNER_TABLE_MM,
    MARROW_MM,
    OUTER_TABLE_MM,
    SCALP_MM,
    SELLA_RAS,
    SUBARACHNOID_MM,
    Anatomy,
    mni_anatomy,
)
from models.synthetic.head import TISSUES, extended_anatomy
from models.synthetic.head import full_head as make_full_head

TUMOUR_TYPES = ("glioma", "meningioma", "pituitary", "none")
MODALITIES = ("t1", "t1ce", "t2", "flair")
LABEL_NECROTIC, LABEL_EDEMA, LABEL_ENHANCING = 1, 2, 4

# Relative signal of each tissue on each contrast.
TISSUE_SIGNAL = {
    #             t1    t1ce   t2    flair
    "wm": (0.95, 0.95, 0.40, 0.50),
    "gm": (0.62, 0.63, 0.62, 0.68),
    "csf": (0.18, 0.18, 1.00, 0.06),
    "rim": (0.18, 0.30, 1.00, 0.08),  # subarachnoid CSF and dura; dura enhances a little
    "bone": (0.04, 0.04, 0.04, 0.04),
    "marrow": (0.85, 0.88, 0.55, 0.50),
    "scalp": (0.75, 0.80, 0.55, 0.50),
    # The rest of a whole head (models.synthetic.head): fat is bright on T1 and on fast spin
    # echo T2, vitreous is fluid, mucosa enhances, air gives no signal.
    "skin": (0.55, 0.62, 0.45, 0.45),
    "fat": (1.05, 1.05, 0.85, 0.75),
    "muscle": (0.42, 0.50, 0.30, 0.35),
    "globe": (0.15, 0.15, 1.00, 0.05),
    "lens": (0.70, 0.70, 0.20, 0.30),
    "mucosa": (0.40, 0.85, 0.85, 0.65),
    "tongue": (0.55, 0.62, 0.42, 0.45),
    "cord": (0.80, 0.80, 0.45, 0.55),
    "air": (0.0, 0.0, 0.0, 0.0),
}
_TUMOUR_SIGNAL = {
    "glioma": {
        LABEL_NECROTIC: (0.25, 0.25, 0.95, 0.35),
        LABEL_ENHANCING: (0.50, 1.30, 0.70, 0.80),
        LABEL_EDEMA: (0.55, 0.56, 0.85, 1.00),
    },
    "glioma_low_grade": {
        LABEL_NECROTIC: (0.45, 0.46, 0.90, 0.90),  # non-enhancing tumour core
        LABEL_ENHANCING: (0.50, 1.15, 0.70, 0.80),
        LABEL_EDEMA: (0.58, 0.59, 0.80, 0.95),
    },
    "meningioma": {
        LABEL_NECROTIC: (0.30, 0.35, 0.50, 0.40),  # calcified / cystic part
        LABEL_ENHANCING: (0.58, 1.25, 0.66, 0.72),
        LABEL_EDEMA: (0.55, 0.56, 0.85, 1.00),
    },
    "pituitary": {
        LABEL_NECROTIC: (0.30, 0.32, 0.95, 0.40),  # cystic part
        LABEL_ENHANCING: (0.60, 1.15, 0.70, 0.75),
        LABEL_EDEMA: (0.55, 0.56, 0.85, 1.00),
    },
}


@dataclass(frozen=True, eq=False)
class SyntheticCase:
    case_id: str
    tumour_type: str
    seed: int
    affine: np.ndarray  # voxel index (x, y, z) -> RAS mm
    images: dict[str, np.ndarray]  # MODALITIES -> float32 (x, y, z)
    label: np.ndarray  # uint8, BraTS labels
    brain_mask: np.ndarray  # bool: the brain (grey and white matter, ventricles)
    intracranial: np.ndarray  # bool: inside the skull's inner table and the pituitary fossa
    full_head: bool = False  # face, orbits, sinuses and neck around the skull

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def region_volumes_ml(label: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """Whole tumour (1, 2, 4), tumour core (1, 4) and enhancing tumour (4) volumes in mL."""
    return {
        "WT": float(np.isin(label, (LABEL_NECROTIC, LABEL_EDEMA, LABEL_ENHANCING)).sum())
        * voxel_ml,
        "TC": float(np.isin(label, (LABEL_NECROTIC, LABEL_ENHANCING)).sum()) * voxel_ml,
        "ET": float((label == LABEL_ENHANCING).sum()) * voxel_ml,
    }


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth random field in [-1, 1]."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(np.abs(field).max()), 1e-6)


def _shape_field(
    world: np.ndarray,
    centre: np.ndarray,
    radii: np.ndarray,
    irregularity: float,
    rng: np.random.Generator,
    voxel_mm: float,
) -> np.ndarray:
    """< 1 inside a perturbed ellipsoid, growing outwards (1 on its surface)."""
    distance = np.linalg.norm((world - centre) / radii, axis=-1)
    if irregularity:
        noise = _smooth_noise(rng, distance.shape, sigma=6.0 / voxel_mm)
        distance = distance * (1 + irregularity * noise)
    return distance


def _glioma(
    anatomy: Anatomy, world: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    radius = rng.uniform(9, 24)
    inside_mm = ndimage.distance_transform_edt(anatomy.brain, sampling=anatomy.voxel_mm)
    candidates = np.argwhere((anatomy.wm > 0.7) & (inside_mm > radius * 0.6 + 8))
    centre = world[tuple(candidates[rng.integers(len(candidates))])]
    radii = radius * rng.uniform(0.8, 1.2, 3)
    field = _shape_field(world, centre, radii, 0.25, rng, anatomy.voxel_mm)
    low_grade = rng.random() < 0.25
    label = np.zeros(anatomy.shape, np.uint8)
    spread = rng.uniform(1.5, 2.3)
    edema = (field < spread) & anatomy.brain & ((anatomy.wm > 0.3) | (field < 1.15))
    label[edema] = LABEL_EDEMA
    core = field < 1
    if low_grade:
        label[core] = LABEL_NECROTIC  # non-enhancing core
        if rng.random() < 0.6:  # a small enhancing nodule
            offset = centre + radii * rng.uniform(-0.4, 0.4, 3)
            nodule = np.linalg.norm(world - offset, axis=-1) < radius * rng.uniform(0.2, 0.35)
            label[nodule & core] = LABEL_ENHANCING
        return label, "glioma_low_grade"
    label[core] = LABEL_ENHANCING
    label[field < rng.uniform(0.45, 0.7)] = LABEL_NECROTIC
    return label, "glioma"


def _surface_point(anatomy: Anatomy, world: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A point on the brain's outer surface: convexity, falx or skull base."""
    surface = anatomy.brain & ~ndimage.binary_erosion(anatomy.brain)
    points = world[surface]
    centroid = world[anatomy.brain].mean(axis=0)
    site = rng.choice(["convexity", "falx", "base"], p=[0.6, 0.25, 0.15])
    if site == "falx":  # medial surface near the midline, upper half
        keep = (np.abs(points[:, 0]) < 6) & (points[:, 2] > centroid[2])
    elif site == "base":
        keep = (points[:, 2] < centroid[2] - 15) & (np.abs(points[:, 0]) > 15)
    else:
        keep = points[:, 2] > centroid[2] - 5
    pool = points[keep] if keep.any() else points
    return pool[rng.integers(len(pool))]


def _meningioma(anatomy: Anatomy, world: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    radius = rng.uniform(7, 22)
    surface = _surface_point(anatomy, world, rng)
    centroid = world[anatomy.brain].mean(axis=0)
    outward = (surface - centroid) / np.linalg.norm(surface - centroid)
    # Dural-based: centred just inside the inner table, so most of it lies against the brain.
    centre = surface + outward * (SUBARACHNOID_MM + 1 - 0.55 * radius)
    field = _shape_field(
        world, centre, radius * rng.uniform(0.85, 1.15, 3), 0.08, rng, anatomy.voxel_mm
    )
    tumour = (field < 1) & (anatomy.outside_mm <= SUBARACHNOID_MM)  # it ends at the inner table
    label = np.zeros(anatomy.shape, np.uint8)
    if rng.random() < 0.4:
        edema = (field < rng.uniform(1.3, 1.7)) & anatomy.brain & ~tumour
        label[edema] = LABEL_EDEMA
    label[tumour] = LABEL_ENHANCING
    if rng.random() < 0.3:
        label[tumour & (field < 0.3)] = LABEL_NECROTIC
    return label


def _pituitary(anatomy: Anatomy, world: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pituitary adenoma, from a microadenoma in the sella (0.4 mL) to a macroadenoma of up to
    2.6 x 2.2 x 3.6 cm (10 mL) that rises out of it into the suprasellar cistern, its floor in
    the fossa (median 2 mL: before stop 18 the largest was 3 mL, and an independent phantom's
    macroadenomas of 3-8 mL were all called meningioma or glioma)."""
    scale = float(np.exp(rng.uniform(0.0, np.log(2.0))))  # log-uniform, 1-2
    radii = np.array([rng.uniform(4, 6.5), rng.uniform(4, 5.5), rng.uniform(5, 9)]) * scale
    floor = rng.uniform(3, 6)  # mm below the sella's centre
    centre = SELLA_RAS + np.array([*rng.uniform(-1.5, 1.5, 2), radii[2] - floor])  # grows up
    field = _shape_field(world, centre, radii, 0.05, rng, anatomy.voxel_mm)
    label = np.zeros(anatomy.shape, np.uint8)
    label[field < 1] = LABEL_ENHANCING
    if rng.random() < 0.3:
        label[field < 0.4] = LABEL_NECROTIC
    return label


def _tissue_fractions(anatomy: Anatomy) -> dict[str, np.ndarray]:
    return {
        "wm": anatomy.wm * anatomy.brain,
        "gm": anatomy.gm * anatomy.brain,
        "csf": anatomy.csf,
        "rim": anatomy.layer(0.0, SUBARACHNOID_MM) * ~anatomy.brain,
        "bone": anatomy.layer(SUBARACHNOID_MM, INNER_TABLE_MM)
        + anatomy.layer(MARROW_MM, OUTER_TABLE_MM),
        "marrow": anatomy.layer(INNER_TABLE_MM, MARROW_MM),
        "scalp": anatomy.layer(OUTER_TABLE_MM, SCALP_MM),
    }


def _contrast_jitter(rng: np.random.Generator, tissues: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-tissue, per-contrast signal factors, in the manner of SynthSeg's random contrasts.

    Tissues outside the brain vary widely (fat suppression or not, coil, sequence); the brain's
    own tissues a little, so that a tumour's contrast against them stays what its type makes it.
    """
    brain = {"wm", "gm", "csf"}
    return {
        tissue: rng.lognormal(0.0, 0.06 if tissue in brain else 0.3, len(MODALITIES))
        for tissue in tissues
    }


def _render(
    anatomy: Anatomy,
    label: np.ndarray,
    signal: Mapping[int, tuple[float, ...]],
    rng: np.random.Generator,
    fractions: Mapping[str, np.ndarray] | None = None,
    jitter: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    fractions = fractions if fractions is not None else _tissue_fractions(anatomy)
    tumour = {
        value: ndimage.gaussian_filter((label == value).astype(np.float32), 0.6)
        for value in (LABEL_NECROTIC, LABEL_EDEMA, LABEL_ENHANCING)
    }
    tumour_total = np.clip(sum(tumour.values()), 0, 1)
    texture = 1 + 0.04 * _smooth_noise(rng, anatomy.shape, sigma=1.5)
    images = {}
    for index, modality in enumerate(MODALITIES):
        image = np.zeros(anatomy.shape, np.float32)
        for tissue, fraction in fractions.items():
            factor = jitter[tissue][index] if jitter is not None else 1.0
            image += fraction * TISSUE_SIGNAL[tissue][index] * factor
        image *= 1 - tumour_total
        for value, fraction in tumour.items():
            image += fraction * signal[value][index]
        images[modality] = ndimage.gaussian_filter(image * texture, 0.5)
    return images


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z (degrees), applied as R = Rx @ Ry @ Rz."""
    cx, cy, cz = np.cos(np.radians(angles_deg))
    sx, sy, sz = np.sin(np.radians(angles_deg))
    return (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )


def _deform(
    case_arrays: dict[str, np.ndarray],
    affine: np.ndarray,
    rng: np.random.Generator,
    centre_voxel: np.ndarray,
    strong: bool = False,
) -> dict[str, np.ndarray]:
    """One random similarity-like transform (rotation, scaling, shift) for the whole head.

    ``strong``: heads far beyond one subject: +-12 degrees, 0.82-1.08 per axis (the template is
    a large brain), and a smooth elastic displacement of up to a few millimetres on top.
    """
    rotation = rotation_matrix(rng.uniform(-12, 12, 3) if strong else rng.uniform(-6, 6, 3))
    matrix = rotation * (rng.uniform(0.82, 1.08, 3) if strong else rng.uniform(0.93, 1.07, 3))
    shift_vox = rng.uniform(-4, 4, 3) / abs(affine[0, 0])
    offset = centre_voxel - matrix @ centre_voxel + shift_vox
    shape = next(iter(case_arrays.values())).shape
    if strong:
        grid = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
        voxel_mm = abs(affine[0, 0])
        coarse = rng.normal(0, rng.uniform(1, 4) / voxel_mm, (3, 5, 5, 5))
        coords = [
            sum(matrix[a, b] * grid[b] for b in range(3))
            + offset[a]
            + ndimage.zoom(coarse[a], np.array(shape) / 5, order=1)
            for a in range(3)
        ]
    warped = {}
    for name, array in case_arrays.items():
        order = 0 if array.dtype in (np.uint8, np.bool_) else 1
        if strong:
            warped[name] = ndimage.map_coordinates(array, coords, order=order)
        else:
            warped[name] = ndimage.affine_transform(array, matrix, offset, order=order)
    return warped


def generate_case(
    seed: int, tumour_type: str | None = None, *, voxel_mm: float = 2.0, full_head: bool = False
) -> SyntheticCase:
    """A deterministic synthetic case for ``seed``.

    Parameters
    ----------
    seed
        Everything random about the case derives from it.
    tumour_type
        One of :data:`TUMOUR_TYPES`; by default chosen from the seed, balanced over the four.
    voxel_mm
        Grid resolution: 1 (native template, for evaluation) or coarser for fast training sets.
    full_head
        A whole head (:mod:`models.synthetic.head`: face, orbits, sinuses, neck) on a grid that
        extends down to the neck, random contrasts for the tissues outside the brain, and
        head shapes deformed elastically; otherwise the brain in a thin skull and scalp.
    """
    rng = np.random.default_rng(seed)
    tumour_type = tumour_type or TUMOUR_TYPES[seed % len(TUMOUR_TYPES)]
    if tumour_type not in TUMOUR_TYPES:
        raise ValueError(f"tumour_type must be one of {TUMOUR_TYPES}, got {tumour_type!r}")
    anatomy = extended_anatomy(voxel_mm) if full_head else mni_anatomy(voxel_mm)
    world = anatomy.world()
    appearance = tumour_type
    if tumour_type == "glioma":
        label, appearance = _glioma(anatomy, world, rng)
    elif tumour_type == "meningioma":
        label = _meningioma(anatomy, world, rng)
    elif tumour_type == "pituitary":
        label = _pituitary(anatomy, world, rng)
    else:
        label = np.zeros(anatomy.shape, np.uint8)
    signal = _TUMOUR_SIGNAL.get(appearance, _TUMOUR_SIGNAL["glioma"])
    if full_head:
        # Its own generator: the tumour draws above stay those of the thin-skull case.
        head_rng = np.random.default_rng(seed + 7_000_001)
        head = make_full_head(anatomy, head_rng)
        jitter = _contrast_jitter(head_rng, TISSUES)
        images = _render(anatomy, label, signal, rng, head.fractions, jitter)
        intracranial = head.intracranial
    else:
        images = _render(anatomy, label, signal, rng)
        intracranial = anatomy.intracranial()
    intracranial = intracranial | (label > 0)  # every tumour here is intracranial
    centre = np.argwhere(anatomy.brain).mean(axis=0)
    warped = _deform(
        {**images, "label": label, "brain": anatomy.brain, "intracranial": intracranial},
        anatomy.affine,
        rng,
        centre,
        strong=full_head,
    )
    return SyntheticCase(
        case_id=f"NG-SYN-{seed:06d}",
        tumour_type=tumour_type,
        seed=seed,
        affine=anatomy.affine,
        images={m: warped[m].astype(np.float32) for m in MODALITIES},
        label=warped["label"].astype(np.uint8),
        brain_mask=warped["brain"].astype(bool),
        intracranial=warped["intracranial"].astype(bool),
        full_head=full_head,
    )
