"""Full-head evaluation phantoms: a procedural head (vertex to neck) unlike the training data.

The training cases of :mod:`models.synthetic` are the MNI152 brain inside a thin synthetic skull.
These evaluation heads share nothing with them but the output type: the anatomy is built here
from implicit shapes (superellipsoids, tubes, cones, distance shells) on a RAS world grid, warped
per seed (about +-10 % per axis and a smooth nonlinear displacement), with

- brain: cerebral hemispheres split by the interhemispheric fissure, a folded cortical ribbon
  (sulci are the zero sheets of band-limited noise), white matter, deep grey nuclei, lateral,
  third and fourth ventricles, a Sylvian fissure, cerebellum with folia, brainstem continuing
  into the spinal cord, subarachnoid CSF, dura, falx and tentorium;
- skull: inner and outer tables with diploic marrow, scalp with subcutaneous fat, temporalis;
- face and neck: orbits (globe, sclera, lens, optic nerve, extraocular muscles, retro-orbital
  fat), nose, nasal cavity with septum and turbinates, ethmoid, frontal, maxillary and sphenoid
  sinuses, maxilla, teeth, mandible, tongue and oral cavity, pharynx and trachea, parotid and
  thyroid glands, carotids and jugulars, cervical vertebrae with discs around the cord, neck
  muscles with fat planes, subcutaneous fat and skin;
- tumours with BraTS labels (1 necrotic / non-enhancing core, 2 oedema, 4 enhancing).

:func:`make_head` returns a :class:`models.synthetic.case.SyntheticCase` (``brain_mask`` is the
intracranial cavity: everything inside the skull's inner table). :func:`write_head_study`
acquires it with full-head fields of view (vertex to neck) and writes a DICOM study.

    python bench/heads.py --out /tmp/heads --seed 3 --type glioma
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before bench/ itself, whose models.py would shadow the package

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import MRImageStorage, generate_uid  # noqa: E402

from models.synthetic.acquisition import (  # noqa: E402
    RAS_TO_LPS,
    AcquiredSeries,
    SeriesProtocol,
    grid_points,
    label_on_grid,
    sample,
)
from models.synthetic.case import (  # noqa: E402
    LABEL_EDEMA,
    LABEL_ENHANCING,
    LABEL_NECROTIC,
    MODALITIES,
    TUMOUR_TYPES,
    SyntheticCase,
    region_volumes_ml,
)
from models.synthetic.dicom import (  # noqa: E402
    VENDORS,
    SyntheticStudy,
    WrittenSeries,
    write_series,
)

Array = np.ndarray
Box = tuple[slice, slice, slice]
Coords = tuple[Array, Array, Array]

# Tissue classes and their relative signal (T1 MPRAGE-like, T1 post-gadolinium, T2 FSE, FLAIR).
TISSUES: dict[str, tuple[float, float, float, float]] = {
    "air": (0.0, 0.0, 0.0, 0.0),
    "skin": (0.62, 0.70, 0.52, 0.50),
    "fat": (1.22, 1.20, 0.88, 0.66),
    "muscle": (0.50, 0.56, 0.36, 0.40),
    "bone": (0.03, 0.03, 0.03, 0.03),
    "marrow": (1.05, 1.07, 0.72, 0.56),
    "tooth": (0.01, 0.01, 0.01, 0.01),
    "disc": (0.42, 0.45, 0.82, 0.55),
    "dura": (0.40, 0.85, 0.32, 0.40),
    "csf": (0.22, 0.22, 1.00, 0.05),
    "gm": (0.68, 0.69, 0.66, 0.69),
    "wm": (1.00, 1.00, 0.42, 0.55),
    "deep_gm": (0.80, 0.81, 0.54, 0.68),
    "brainstem": (0.90, 0.90, 0.50, 0.62),
    "vitreous": (0.12, 0.12, 1.02, 0.06),
    "sclera": (0.30, 0.36, 0.16, 0.20),
    "lens": (0.72, 0.72, 0.28, 0.32),
    "optic_nerve": (0.86, 0.86, 0.48, 0.60),
    "eye_muscle": (0.52, 0.88, 0.42, 0.46),
    "mucosa": (0.48, 0.92, 0.95, 0.78),
    "tongue": (0.64, 0.68, 0.50, 0.50),
    "gland": (0.92, 0.98, 0.70, 0.56),
    "thyroid": (0.66, 1.02, 0.56, 0.55),
    "pituitary": (0.72, 1.18, 0.62, 0.66),
    "artery": (0.04, 0.06, 0.04, 0.04),
    "vein": (0.08, 0.85, 0.06, 0.10),
}
TISSUE_NAMES = tuple(TISSUES)
T = {name: i for i, name in enumerate(TISSUE_NAMES)}
_SIGNAL = np.array([TISSUES[n] for n in TISSUE_NAMES], np.float32)  # (tissue, contrast)
_TEXTURE = np.array(
    [
        {"fat": 0.06, "muscle": 0.08, "marrow": 0.12, "mucosa": 0.08, "gland": 0.10}.get(
            n, 0.0 if n in ("air", "bone", "tooth") else 0.035
        )
        for n in TISSUE_NAMES
    ],
    np.float32,
)

_TUMOUR_SIGNAL = {
    "glioma": {
        LABEL_NECROTIC: (0.30, 0.32, 1.05, 0.50),
        LABEL_ENHANCING: (0.62, 1.45, 0.80, 0.95),
        LABEL_EDEMA: (0.66, 0.67, 0.90, 1.10),
    },
    "glioma_low_grade": {
        LABEL_NECROTIC: (0.55, 0.57, 0.95, 1.05),
        LABEL_ENHANCING: (0.60, 1.20, 0.80, 0.95),
        LABEL_EDEMA: (0.70, 0.71, 0.84, 1.02),
    },
    "meningioma": {
        LABEL_NECROTIC: (0.22, 0.26, 0.18, 0.22),  # calcified
        LABEL_ENHANCING: (0.66, 1.38, 0.70, 0.78),
        LABEL_EDEMA: (0.66, 0.67, 0.90, 1.10),
    },
    "pituitary": {
        LABEL_NECROTIC: (0.32, 0.34, 1.00, 0.45),  # cystic
        LABEL_ENHANCING: (0.62, 1.12, 0.68, 0.72),
        LABEL_EDEMA: (0.66, 0.67, 0.90, 1.10),
    },
}
VOLUME_RANGES_ML = {"glioma": (10.0, 80.0), "meningioma": (5.0, 40.0), "pituitary": (1.0, 8.0)}

# Template (unwarped) extent of the grid, RAS mm.
_GRID_LO = np.array([-100.0, -130.0, -172.0])
_GRID_HI = np.array([100.0, 122.0, 108.0])
_BIG = 1e3


# --------------------------------------------------------------------------------------------
# Implicit shapes. Every function takes coordinates (x, y, z) and returns an approximate signed
# distance in mm (negative inside).


def _ellipsoid(p: Coords, c: Sequence[float], r: Sequence[float], power: float = 2.0) -> Array:
    q = sum(np.abs((p[i] - c[i]) / r[i]) ** power for i in range(3))
    return (q ** (1.0 / power) - 1.0) * float(min(r))


def _chain(p: Coords, points: Sequence[Sequence[float]], radii: Sequence[float]) -> Array:
    """A tube along a polyline whose radius varies linearly between its points."""
    out = np.full(p[0].shape, _BIG, np.float32)
    pts = np.asarray(points, np.float32)
    for a, b, ra, rb in zip(pts[:-1], pts[1:], radii[:-1], radii[1:], strict=True):
        ab = b - a
        length2 = max(float(ab @ ab), 1e-6)
        rel = [p[i] - a[i] for i in range(3)]
        t = np.clip(sum(rel[i] * ab[i] for i in range(3)) / length2, 0.0, 1.0)
        dist = np.sqrt(sum((rel[i] - t * ab[i]) ** 2 for i in range(3)))
        np.minimum(out, dist - (ra + t * (rb - ra)), out=out)
    return out


def _oriented(p: Coords, c: Sequence[float], axis: Array, along: float, across: float) -> Array:
    """An ellipsoid of revolution about ``axis``."""
    rel = [p[i] - c[i] for i in range(3)]
    t = sum(rel[i] * axis[i] for i in range(3))
    perp = np.sqrt(np.maximum(sum(r * r for r in rel) - t * t, 0.0))
    return (np.sqrt((t / along) ** 2 + (perp / across) ** 2) - 1.0) * min(along, across)


def _cone(p: Coords, apex: Array, axis: Array, length: float, radius: float) -> Array:
    rel = [p[i] - apex[i] for i in range(3)]
    t = sum(rel[i] * axis[i] for i in range(3))
    perp = np.sqrt(np.maximum(sum(r * r for r in rel) - t * t, 0.0))
    slope = radius / length
    side = (perp - (1.5 + slope * t)) / np.sqrt(1 + slope**2)
    return np.maximum(side, np.maximum(-t, t - length))


def _smin(a: Array, b: Array, k: float) -> Array:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _sigmoid(x: Array | float) -> Array:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float32)))


class _Noise:
    """Band-limited noise: a sum of plane waves of one wavelength, unit variance."""

    def __init__(self, rng: np.random.Generator, wavelength: float, terms: int = 24):
        directions = rng.standard_normal((terms, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lengths = wavelength * rng.uniform(0.8, 1.25, terms)
        self.k = (directions * (2 * np.pi / lengths)[:, None]).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, terms).astype(np.float32)
        self.gradient = float(2 * np.pi / wavelength)  # rms |grad|, to turn |F| into mm

    def __call__(self, p: Coords) -> Array:
        out = np.zeros(p[0].shape, np.float32)
        for k, phase in zip(self.k, self.phase, strict=True):
            out += np.cos(k[0] * p[0] + k[1] * p[1] + k[2] * p[2] + phase)
        return out * np.float32(np.sqrt(2.0 / len(self.phase)))


# --------------------------------------------------------------------------------------------
# The head.


@dataclass(frozen=True, eq=False)
class HeadPhantom:
    case: SyntheticCase
    tissue: Array  # uint8 (x, y, z), index into TISSUE_NAMES (the class painted last)
    head_mask: Array  # bool, inside the skin
    sella_ras: Array  # (3,) world position of the pituitary fossa


class _Builder:
    def __init__(self, seed: int, voxel_mm: float):
        self.rng = np.random.default_rng([seed, 0x4EAD5])
        rng = self.rng
        self.vox = float(voxel_mm)
        self.scale = rng.uniform(0.9, 1.1, 3).astype(np.float32)
        # Warp: template = (world + D(world)) / scale, D a few long-wavelength waves per axis.
        self.waves = []
        for _axis in range(3):
            terms = []
            for _ in range(3):
                d = rng.standard_normal(3)
                d /= np.linalg.norm(d)
                k = d * 2 * np.pi / rng.uniform(100, 220)
                terms.append((k, rng.uniform(1.0, 2.5), rng.uniform(0, 2 * np.pi)))
            self.waves.append(terms)
        self.dmax = max(sum(t[1] for t in terms) for terms in self.waves)
        lo = np.floor((_GRID_LO * self.scale - self.dmax) / self.vox) * self.vox
        hi = np.ceil((_GRID_HI * self.scale + self.dmax) / self.vox) * self.vox
        lo[2] = np.floor(-170 / self.vox) * self.vox  # the field of view ends in the neck
        self.origin = lo
        self.shape = tuple(int(n) for n in np.round((hi - lo) / self.vox) + 1)
        self.affine = np.eye(4)
        self.affine[:3, :3] *= self.vox
        self.affine[:3, 3] = lo
        axes = [(lo[i] + self.vox * np.arange(self.shape[i])).astype(np.float32) for i in range(3)]
        world = np.meshgrid(*axes, indexing="ij")
        self.u: list[Array] = []
        for i in range(3):
            disp = np.zeros(self.shape, np.float32)
            for k, amp, phase in self.waves[i]:
                disp += amp * np.cos(k[0] * world[0] + k[1] * world[1] + k[2] * world[2] + phase)
            self.u.append((world[i] + disp) / self.scale[i])
        del world
        self.tissue = np.zeros(self.shape, np.uint8)
        self.images = np.zeros((4, *self.shape), np.float32)

    # -- geometry helpers -----------------------------------------------------------------

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> Box:
        """Voxels whose template coordinates may fall in [lo, hi] (template mm)."""
        margin = self.dmax + 2 * self.vox
        lo_w = np.asarray(lo) * self.scale - margin
        hi_w = np.asarray(hi) * self.scale + margin
        i0 = np.clip(np.floor((lo_w - self.origin) / self.vox), 0, self.shape).astype(int)
        i1 = np.clip(np.ceil((hi_w - self.origin) / self.vox) + 1, 0, self.shape).astype(int)
        return (slice(i0[0], i1[0]), slice(i0[1], i1[1]), slice(i0[2], i1[2]))

    def around(self, centre: Sequence[float], radius: Sequence[float] | float) -> Box:
        c, r = np.asarray(centre, float), np.broadcast_to(np.asarray(radius, float), (3,))
        return self.box(c - r, c + r)

    def chain_box(self, points: Sequence[Sequence[float]], radii: Sequence[float]) -> Box:
        pts = np.asarray(points, float)
        r = max(radii)
        return self.box(pts.min(axis=0) - r, pts.max(axis=0) + r)

    def p(self, b: Box) -> Coords:
        return self.u[0][b], self.u[1][b], self.u[2][b]

    def paint(self, b: Box, sd: Array, tissue: str, where: Array | None = None) -> None:
        """Composite ``tissue`` over what is there, with partial volume from the distance."""
        alpha = np.clip(0.5 - sd / self.vox, 0.0, 1.0).astype(np.float32)
        if where is not None:
            alpha *= where
        index = T[tissue]
        self.tissue[b][alpha >= 0.5] = index
        for c in range(4):
            view = self.images[c][b]
            view += alpha * (_SIGNAL[index, c] - view)

    def signed(self, mask: Array) -> Array:
        inside = ndimage.distance_transform_edt(mask, sampling=self.vox)
        outside = ndimage.distance_transform_edt(~mask, sampling=self.vox)
        half = self.vox / 2
        return np.where(mask, half - inside, outside - half).astype(np.float32)

    # -- anatomy ------------------------------------------------------------------------------

    def build(self) -> None:
        rng = self.rng
        self.n_shape = _Noise(rng, 45.0, 12)
        self.n_fine = _Noise(rng, 16.0, 16)
        self._cavity()
        self._head()
        self._soft_tissue()
        self._skull()
        self._face_bones()
        self._orbits()
        self._sinuses_and_airway()
        self._neck()
        self._intracranial()

    def _cavity(self) -> None:
        """The intracranial cavity (inside the inner table), as a signed distance."""
        full = (slice(None),) * 3
        p = self.p(full)
        x, y, z = p
        vault = _ellipsoid(p, (0, -17, 17), (70, 90, 63), 2.3)
        ridge = _sigmoid((y - 12) / 4)
        floor = (
            -23
            - 7 * np.exp(-((x / 14) ** 2) - ((y + 6) / 13) ** 2)
            + 6 * np.exp(-(((np.abs(x) - 30) / 12) ** 2)) * ridge
        )
        vault = np.maximum(vault, floor - z)
        temporal = np.minimum(
            _ellipsoid(p, (42, -8, -20), (25, 31, 22)), _ellipsoid(p, (-42, -8, -20), (25, 31, 22))
        )
        posterior = _ellipsoid(p, (0, -58, -34), (52, 38, 26))
        sella = _ellipsoid(p, (0, -3, -33), (8, 6.5, 6.5))
        stem = np.maximum(self._stem_sd(p) - 3.5, -61 - z)
        cavity = _smin(_smin(vault, temporal, 6), posterior, 8)
        cavity = np.minimum(np.minimum(cavity, _smin(sella, vault, 3)), stem)
        self.cavity = cavity < 0
        self.sdc = self.signed(self.cavity)
        self.posterior_q = posterior / 26.0 + 1.0  # ~ ellipsoid radius ratio

    @staticmethod
    def _stem_points() -> tuple[list[list[float]], list[float]]:
        points: list[list[float]] = [
            [0.0, -22, -4],
            [0.0, -25, -14],
            [0.0, -27, -28],
            [0.0, -35, -46],
            [0.0, -41, -60],
        ]
        radii = [10.0, 11.5, 13.0, 9.0, 6.5]
        for zz in np.arange(-70.0, -190.0, -10.0):
            points.append([0.0, float(_cord_y(zz)), float(zz)])
            radii.append(5.0)
        return points, radii

    def _stem_sd(self, p: Coords) -> Array:
        points, radii = self._stem_points()
        return _chain(p, points, radii)

    def _head(self) -> None:
        """Skin surface: cranium shell, face, nose, ears and neck."""
        full = (slice(None),) * 3
        p = self.p(full)
        x, y, z = p
        self.skull_t = (
            6.5
            + 1.2 * self.n_shape(p)
            + 5.5 * _sigmoid((-z - 24) / 5)
            + 9 * np.exp(-((x / 18) ** 2) - ((z - 6) / 13) ** 2) * _sigmoid((y - 50) / 5)
        ).astype(np.float32)
        temporal = np.exp(-(((np.abs(x) - 60) / 14) ** 2) - ((y + 2) / 30) ** 2 - (z / 28) ** 2)
        self.temporal = (9.0 * temporal).astype(np.float32)
        self.scalp_t = (5.5 + 0.8 * self.n_fine(p) + self.temporal).astype(np.float32)
        cranium = self.sdc - (self.skull_t + self.scalp_t)
        width = 68 * (1 - 0.36 * np.clip((-88 - z) / 40, 0, 1))
        face = (
            (np.abs(x / width) ** 2.4 + np.abs((y - 20) / 62) ** 2.4 + np.abs((z + 74) / 54) ** 2.4)
            ** (1 / 2.4)
            - 1
        ) * 50
        neck = np.maximum((np.sqrt((x / 54) ** 2 + ((y + 22) / 58) ** 2) - 1) * 54, z + 40)
        # Nose: a triangular prism from the nasion to the tip, narrowing upwards.
        ramp = np.clip((-26 - z) / 36, 0, 1)
        tip = 86 + 26 * ramp - 30 * np.clip((-62 - z) / 12, 0, 1)
        half_width = 7 + 11 * ramp
        nose_x = np.abs(x) - half_width * np.clip((tip - y) / 20, 0, 1)
        nose = np.maximum(np.maximum(nose_x, y - tip), np.maximum(-76 - z, z + 30))
        nose = np.maximum(nose, 60 - y)
        ears = np.minimum(
            _ellipsoid(p, (78, -16, -28), (7, 14, 27)), _ellipsoid(p, (-78, -16, -28), (7, 14, 27))
        )
        head = _smin(cranium, face, 14)
        head = _smin(head, neck, 16)
        head = _smin(head, nose, 3)
        head = _smin(head, ears, 4)
        self.head = head < 0
        self.sdh = self.signed(self.head)

    def _soft_tissue(self) -> None:
        full = (slice(None),) * 3
        p = self.p(full)
        x, y, z = p
        self.paint(full, self.sdh, "skin")
        skin = 1.8
        self.paint(full, self.sdh + skin, "fat")
        fat_t = (
            3.8
            + 1.2 * self.n_fine(p)
            + 6 * _sigmoid((-z - 75) / 8) * (1 + _sigmoid((-y - 40) / 10))
            + 7
            * np.exp(-(((np.abs(x) - 42) / 12) ** 2) - ((y - 45) / 16) ** 2 - ((z + 68) / 14) ** 2)
        )
        fat_t = np.maximum(fat_t, 2.0)
        self.paint(full, self.sdh + skin + fat_t, "muscle")
        # Fat planes between the neck muscles.
        b = self.box((-60, -90, -175), (60, 45, -62))
        q = self.p(b)
        planes = np.abs(self.n_fine(q)) / self.n_fine.gradient - 0.8
        deep = (self.sdh[b] < -(skin + 6)).astype(np.float32)
        self.paint(b, planes, "fat", deep * _sigmoid((-q[2] - 80) / 5))

    def _skull(self) -> None:
        full = (slice(None),) * 3
        t = self.skull_t
        outer = np.maximum(self.sdc - t, -self.sdc)
        self.paint(full, outer, "bone")
        inner_table, outer_table = 1.6, 1.8
        diploe = np.maximum(self.sdc - (t - outer_table), inner_table - self.sdc)
        self.paint(full, diploe, "marrow")
        # Temporalis between the skull and the scalp fat.
        shell = np.maximum(self.sdc - t - self.temporal, t - self.sdc)
        self.paint(full, shell, "muscle", (self.temporal > 1.5).astype(np.float32))

    def _outside_cavity(self, b: Box, margin: float) -> Array:
        return (self.sdc[b] > margin).astype(np.float32)

    def _face_bones(self) -> None:
        # Maxilla with the hard palate; teeth; mandible.
        b = self.around((0, 52, -70), (44, 34, 18))
        p = self.p(b)
        maxilla = _ellipsoid(p, (0, 50, -70), (42, 30, 15), 2.5)
        keep = self._outside_cavity(b, 1) * (self.sdh[b] < -3)
        self.paint(b, maxilla, "bone", keep)
        self.paint(b, maxilla + 2.0, "marrow", keep)
        for zz, depth in ((-83.0, 72.0), (-90.0, 70.0)):
            xs = np.linspace(-36, 36, 13)
            pts = [[float(xx), float(depth - 34 * (xx / 36) ** 2), zz] for xx in xs]
            cb = self.chain_box(pts, [5] * len(pts))
            self.paint(cb, _chain(self.p(cb), pts, [3.6] * len(pts)), "tooth")
        xs = np.linspace(-46, 46, 17)
        arch = [[float(xx), float(76 - 44 * (xx / 46) ** 2), 0.0] for xx in xs]
        b = self.box((-56, 20, -130), (56, 82, -92))
        p = self.p(b)
        flat = (p[0], p[1], np.zeros_like(p[2]))
        body = np.maximum(_chain(flat, arch, [5.5] * len(arch)), np.abs(p[2] + 110) - 13)
        keep = (self.sdh[b] < -2.5).astype(np.float32)
        self.paint(b, body, "bone", keep)
        self.paint(b, body + 2.0, "marrow", keep)
        for sgn in (-1, 1):
            pts = [[sgn * 46.0, 32, -112], [sgn * 49.0, 8, -80], [sgn * 50.0, -4, -56]]
            cb = self.chain_box(pts, [7, 7, 7])
            ramus = _chain(self.p(cb), pts, [6.0, 5.0, 5.5])
            self.paint(cb, ramus, "bone")
            self.paint(cb, ramus + 2.0, "marrow")

    def _orbits(self) -> None:
        for sgn in (-1, 1):
            apex = np.array([sgn * 13.0, 20.0, -38.0])
            rim = np.array([sgn * 35.0, 73.0, -36.0])
            axis = (rim - apex) / np.linalg.norm(rim - apex)
            length = float(np.linalg.norm(rim - apex))
            b = self.around((apex + rim) / 2, (32, 36, 24))
            p = self.p(b)
            keep = self._outside_cavity(b, 1.0)
            self.paint(b, _cone(p, apex, axis, length, 18.0), "fat", keep)
            globe = apex + axis * (length - 11.5)
            # Four recti from the apex to the globe's equator; the optic nerve behind the globe.
            up = np.array([0.0, 0.0, 1.0])
            side = np.cross(axis, up)
            side /= np.linalg.norm(side)
            up = np.cross(side, axis)
            for e in (up, -up, side, -side):
                pts = [apex + e * 3, apex + axis * length * 0.55 + e * 9.5, globe + e * 10.5]
                self.paint(b, _chain(p, pts, [1.5, 2.6, 1.8]), "eye_muscle", keep)
            nerve = [globe - axis * 11, apex, [sgn * 6.0, 8.0, -27.0], [0.0, 6.0, -25.0]]
            self.paint(b, _chain(p, nerve, [2.3, 2.0, 2.0, 2.0]), "optic_nerve", keep)
            ball = np.sqrt(sum((p[i] - globe[i]) ** 2 for i in range(3))) - 12.0
            self.paint(b, ball, "sclera")
            self.paint(b, ball + 1.0, "vitreous")
            self.paint(b, _oriented(p, globe + axis * 8.6, axis, 2.0, 4.6), "lens")

    def _sinuses_and_airway(self) -> None:
        def cavity(b: Box, sd: Array, margin: float, mucosa: float = 1.6) -> None:
            keep = self._outside_cavity(b, margin) * (self.sdh[b] < -3)
            self.paint(b, sd - mucosa, "mucosa", keep)
            self.paint(b, sd, "air", keep)

        # Ethmoid cells between the orbits: air with thin bony septa.
        for sgn in (-1, 1):
            b = self.around((sgn * 9, 44, -38), (7, 22, 11))
            p = self.p(b)
            cells = _ellipsoid(p, (sgn * 9, 44, -38), (5, 20, 9))
            septa = np.abs(_Noise(self.rng, 9.0, 8)(p)) / (2 * np.pi / 9.0) - 0.6
            cavity(b, np.maximum(cells, -septa), 1.2, 0.8)
        b = self.around((0, 80, 7), (18, 8, 14))
        cavity(b, _ellipsoid(self.p(b), (0, 80, 7), (15, 4.5, 10)), 1.5, 1.0)
        b = self.around((0, 11, -46), (14, 11, 10))
        cavity(b, _ellipsoid(self.p(b), (0, 11, -46), (12, 9, 7.5)), 1.5, 1.2)
        for sgn in (-1, 1):
            b = self.around((sgn * 27, 52, -66), (16, 18, 14))
            cavity(b, _ellipsoid(self.p(b), (sgn * 27, 52, -66), (13, 16, 11)), 1.0, 2.0)
        # Nasal cavity with septum and turbinates, opening through the nostrils and choanae.
        b = self.box((-20, 10, -80), (20, 112, -22))
        p = self.p(b)
        x, y, z = p
        widen = 5 + 11 * np.clip((-30 - z) / 40, 0, 1)
        nasal = (
            np.abs(x / widen) ** 3 + np.abs((y - 52) / 36) ** 3 + np.abs((z + 51) / 23) ** 3
        ) ** (1 / 3) * 12 - 12
        nostrils = np.minimum(
            _chain(p, [[7, 104, -70], [9, 86, -66], [10, 70, -62]], [3.5, 4.0, 4.0]),
            _chain(p, [[-7, 104, -70], [-9, 86, -66], [-10, 70, -62]], [3.5, 4.0, 4.0]),
        )
        cavity(b, np.minimum(nasal, nostrils), 1.2, 1.5)
        for sgn in (-1, 1):
            for zz, rx in ((-64.0, 4.5), (-51.0, 3.5)):
                turbinate = _ellipsoid(p, (sgn * 11, 52, zz), (rx, 26, 4))
                self.paint(b, turbinate, "mucosa", (nasal < 0).astype(np.float32))
        septum = np.maximum(np.abs(x), np.maximum(nasal, 29 - y))
        self.paint(b, septum - 1.6, "mucosa")
        self.paint(b, septum - 0.5, "bone")
        # Oral cavity above the tongue; the tongue; pharynx down to the trachea.
        b = self.around((0, 42, -92), (26, 34, 16))
        p = self.p(b)
        self.paint(b, _ellipsoid(p, (0, 42, -92), (24, 30, 11)), "tongue")
        self.paint(b, _ellipsoid(p, (0, 46, -79.5), (20, 25, 1.6)), "air")
        airway = [
            [0, 16, -56],
            [0, 8, -72],
            [0, 3, -96],
            [0, 5, -118],
            [0, 14, -140],
            [0, 18, -190],
        ]
        radii = [7.0, 7.5, 6.5, 6.0, 5.5, 7.5]
        b = self.chain_box(airway, [r + 3 for r in radii])
        tube = _chain(self.p(b), airway, radii)
        self.paint(b, tube - 1.8, "mucosa")
        self.paint(b, tube, "air")

    def _neck(self) -> None:
        # Vessels, glands.
        for sgn in (-1, 1):
            carotid = [
                [sgn * 17, 12, -190],
                [sgn * 19, 7, -110],
                [sgn * 21, 3, -72],
                [sgn * 17, 4, -46],
            ]
            jugular = [[sgn * 24, 0, -190], [sgn * 28, -6, -110], [sgn * 33, -20, -62]]
            b = self.chain_box(carotid, [5] * 4)
            self.paint(b, _chain(self.p(b), carotid, [3.2] * 4), "artery")
            b = self.chain_box(jugular, [7] * 3)
            self.paint(b, _chain(self.p(b), jugular, [5.0, 5.5, 4.5]), "vein")
            b = self.around((sgn * 47, -8, -78), (12, 18, 22))
            keep = (self.sdh[b] < -3).astype(np.float32)
            self.paint(b, _ellipsoid(self.p(b), (sgn * 47, -8, -78), (9, 15, 20)), "gland", keep)
            b = self.around((sgn * 15, 9, -74), (7, 10, 14))
            self.paint(b, _ellipsoid(self.p(b), (sgn * 15, 9, -74), (4, 7, 12)), "fat")
            b = self.around((sgn * 14, 20, -166), (10, 10, 16))
            self.paint(b, _ellipsoid(self.p(b), (sgn * 14, 20, -166), (7, 6, 13)), "thyroid")
        # Cervical vertebrae around the canal; discs between the bodies.
        levels = [(-98.0, -72.0)] + [(-102.0 - 17 * i - 13, -102.0 - 17 * i) for i in range(5)]
        for n, (z0, z1) in enumerate(levels):
            zc = (z0 + z1) / 2
            yc = float(_cord_y(zc))
            b = self.box((-36, yc - 48, z0 - 10), (36, yc + 34, z1 + 10))
            p = self.p(b)
            x, y, z = p
            slab = np.abs(z - zc) - (z1 - z0) / 2
            body = np.maximum(
                (np.sqrt((x / 12.5) ** 2 + ((y - yc - 21) / 8.5) ** 2) - 1) * 8.5, slab
            )
            if n == 0:  # the dens of C2 rising into the atlas
                dens = _chain(p, [[0, yc + 17, z1], [0, yc + 16, -62]], [5.5, 4.0])
                body = np.minimum(body, dens)
            ring = np.sqrt(x**2 + ((y - yc) * 1.1) ** 2)
            arch = np.maximum(np.maximum(ring - 14.5, 9.5 - ring), np.abs(z - zc) - 5)
            arch = np.maximum(arch, y - yc - 14)
            spine = np.maximum(
                np.maximum(np.abs(x) - 3.0, np.abs(z - zc + 3) - 4.5),
                np.maximum(y - yc + 12, yc - 34 - (6 if n in (0, 5) else 0) - y),
            )
            transverse = np.maximum(
                np.maximum(np.abs(x) - 27, 11 - np.abs(x)),
                np.maximum(np.abs(y - yc - 9) - 4.5, np.abs(z - zc) - 4),
            )
            bone = np.minimum(np.minimum(body, arch), np.minimum(spine, transverse))
            self.paint(b, bone, "bone")
            self.paint(b, bone + 1.6, "marrow")
            if n < len(levels) - 1:
                zd = (z0 + levels[n + 1][1]) / 2
                disc = np.maximum(
                    (np.sqrt((x / 12) ** 2 + ((y - yc - 21) / 8) ** 2) - 1) * 8,
                    np.abs(z - zd) - 1.8,
                )
                self.paint(b, disc, "disc")
        atlas_y = float(_cord_y(-68))
        b = self.box((-30, atlas_y - 30, -76), (30, atlas_y + 30, -60))
        p = self.p(b)
        ring = np.sqrt(p[0] ** 2 + ((p[1] - atlas_y - 3) * 1.2) ** 2)
        atlas = np.maximum(np.maximum(ring - 24, 12 - ring), np.abs(p[2] + 68) - 4.5)
        self.paint(b, atlas, "bone")
        self.paint(b, atlas + 1.6, "marrow")
        # Spinal canal (CSF inside dura) and cord, below the foramen magnum.
        points, _ = self._stem_points()
        canal = [q for q in points if q[2] <= -50]
        b = self.chain_box(canal, [11] * len(canal))
        p = self.p(b)
        sd = _chain(p, canal, [9.5] * len(canal))
        below = (p[2] < -58).astype(np.float32)
        self.paint(b, sd, "dura", below)
        self.paint(b, sd + 1.0, "csf", below)
        self.paint(b, _chain(p, canal, [5.5, *([5.0] * (len(canal) - 1))]), "brainstem", below)

    def _intracranial(self) -> None:
        rng = self.rng
        full = (slice(None),) * 3
        sdc = self.sdc
        self.paint(full, sdc, "dura")
        self.paint(full, sdc + 1.0, "csf")
        p = self.p(full)
        x, y, z = p
        rim = np.clip(2.6 + 1.0 * self.n_fine(p), 1.2, 4.5)
        bridge = ((y + 8) / 40) ** 2 + ((z - 2) / 25) ** 2 < 1
        q = self.posterior_q
        fissure = (np.abs(x) < 1.1 + 0.25 * self.n_fine(p)) & ~bridge & ~((q < 1) & (y < -34))
        tentorium = (np.abs(q - 1) * 26 < 1.6) & (z > -36) & (y < -36)
        stem = self._stem_sd(p)
        # The Sylvian fissure between the frontal and temporal lobes.
        zs = -16 + (20 - y) * 0.32
        sylvian = (np.abs(z - zs) < 1.3) & (np.abs(x) > 36) & (np.abs(y + 7) < 30)
        brain = ((sdc < -rim) & ~fissure & ~tentorium & ~sylvian) | (stem < 0) & (z > -60)
        brain &= self.cavity
        self.brain = brain
        self.sdb = self.signed(brain)
        cerebellum = brain & (q < 1) & ((y < -34) | (z < -30)) & (stem > 0)
        cerebrum = brain & ~cerebellum & (stem > 0)
        self.cerebrum = cerebrum
        self.paint(full, self.sdb, "gm", brain.astype(np.float32) + (self.sdb > 0))
        depth = -self.sdb
        gm_t = 2.8 + 0.3 * self.n_fine(p)
        # Cerebral folding: sulci are sheets where band-limited noise crosses zero.
        b = self.box((-75, -112, -50), (75, 78, 84))
        pb = self.p(b)
        fold = _Noise(rng, 24.0, 32)
        s = np.abs(fold(pb)) / fold.gradient
        dep = depth[b]
        sulcal_depth = np.clip(12 + 4 * self.n_shape(pb), 7, 18)
        near = dep < sulcal_depth + gm_t[b]
        wm_sd = np.maximum(gm_t[b] - dep, np.where(near, gm_t[b] + 0.7 - s, -_BIG))
        self.paint(b, wm_sd, "wm", cerebrum[b].astype(np.float32))
        self.paint(
            b, np.maximum(s - 0.7, dep - sulcal_depth), "csf", cerebrum[b].astype(np.float32)
        )
        # Cerebellum: folia as concentric sheets, a white-matter core.
        b = self.box((-55, -98, -62), (55, -20, -6))
        pb = self.p(b)
        radial = np.sqrt(pb[0] ** 2 * 0.5 + (pb[1] + 52) ** 2 + (pb[2] + 26) ** 2)
        folia = np.sin(2 * np.pi * radial / 7.0 + 1.5 * self.n_fine(pb))
        s = np.abs(folia) / (2 * np.pi / 7.0)
        dep = depth[b]
        core = _ellipsoid(pb, (0, -50, -32), (22, 12, 8))
        branches = np.maximum((0.8 - np.abs(folia)) * 2.0, 2.5 - dep)
        cb = cerebellum[b].astype(np.float32)
        self.paint(b, np.minimum(np.maximum(core, 3 - dep), branches), "wm", cb)
        self.paint(b, np.maximum(s - 0.5, dep - 7), "csf", cb)
        # Brainstem and fourth ventricle.
        self.paint(full, np.maximum(stem, self.sdb), "brainstem", (stem < 2).astype(np.float32))
        b = self.around((0, -44, -30), (8, 7, 9))
        self.paint(b, _ellipsoid(self.p(b), (0, -44, -30), (6, 3.5, 7)), "csf")
        # Deep grey nuclei, then the ventricles.
        inside = cerebrum.astype(np.float32)
        size = rng.uniform(1.0, 1.6)
        for sgn in (-1, 1):
            for c, r in (
                ((sgn * 11, -18, 6), (8, 14, 8)),
                ((sgn * 13, 14, 10), (5, 9, 8)),
                ((sgn * 24, 2, 1), (6, 14, 9)),
            ):
                bb = self.around(c, r)
                self.paint(bb, _ellipsoid(self.p(bb), c, r), "deep_gm", inside[bb])
            body = [
                [sgn * 7, 28, 10],
                [sgn * 9, 18, 14],
                [sgn * 10, 0, 18],
                [sgn * 12, -22, 20],
                [sgn * 20, -40, 14],
                [sgn * 24, -58, 8],
                [sgn * 25, -68, 6],
            ]
            body_r = [3.0 * size, 4.5 * size, 4.5 * size, 4.0 * size, 5.5 * size, 3.0, 1.5]
            horn = [
                [sgn * 20, -40, 14],
                [sgn * 29, -32, -2],
                [sgn * 31, -18, -14],
                [sgn * 31, -6, -20],
            ]
            horn_r = [4.5 * size, 3.0, 2.5, 1.5]
            for pts, rr in ((body, body_r), (horn, horn_r)):
                bb = self.chain_box(pts, rr)
                self.paint(bb, _chain(self.p(bb), pts, rr), "csf", inside[bb])
        bb = self.around((0, -8, 2), (3, 18, 10))
        pb = self.p(bb)
        third = np.maximum(np.abs(pb[0]) - 1.6, _ellipsoid(pb, (0, -8, 2), (3, 16, 8)))
        self.paint(bb, third, "csf")
        # Falx and tentorium: dura sheets in the CSF between the hemispheres and over the
        # cerebellum.
        falx = np.maximum(np.abs(x) - 0.45, -sdc - 40)
        self.paint(full, falx, "dura", (fissure & self.cavity).astype(np.float32))
        self.paint(
            full, np.abs(q - 1) * 26 - 0.5, "dura", (tentorium & self.cavity).astype(np.float32)
        )
        # Sella: the pituitary gland and its stalk; the optic chiasm above.
        bb = self.around((0, -3, -28), (10, 10, 12))
        pb = self.p(bb)
        self.paint(bb, _ellipsoid(pb, (0, -3, -34), (6.5, 5, 4.5)), "pituitary")
        self.paint(bb, _chain(pb, [[0, -3, -31], [0, -7, -19]], [1.6, 1.4]), "pituitary")
        self.paint(bb, _ellipsoid(pb, (0, 4, -24), (9, 4, 2.2)), "optic_nerve")
        self.sella = self.world_of(bb, _ellipsoid(pb, (0, -3, -34), (6.5, 5, 4.5)) < 0)

    def world_of(self, b: Box, mask: Array) -> Array:
        index = np.argwhere(mask).mean(axis=0) + [s.start for s in b]
        return (self.affine @ [*index, 1.0])[:3]


def _cord_y(z: float | Array) -> Array:
    """Anterior-posterior position of the cord: the cervical lordosis."""
    return -41 + 5 * np.sin(np.pi * np.clip((-60 - np.asarray(z)) / 110, 0, 1))


# --------------------------------------------------------------------------------------------
# Tumours, placed in world space on the built anatomy.


def _world_coords(builder: _Builder, b: Box) -> Coords:
    axes = [
        (builder.origin[i] + builder.vox * np.arange(builder.shape[i])[b[i]]).astype(np.float32)
        for i in range(3)
    ]
    grid = np.meshgrid(*axes, indexing="ij")
    return grid[0], grid[1], grid[2]


def _box_around(index: Array, reach_mm: float, vox: float) -> Box:
    lo = [max(int(index[i] - reach_mm / vox), 0) for i in range(3)]
    hi = [int(index[i] + reach_mm / vox) + 1 for i in range(3)]
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _fit_volume(
    make: Callable[[float], dict[int, Array]], target_ml: float, voxel_ml: float
) -> dict[int, Array]:
    """Bisect the size factor so that the whole tumour's volume meets ``target_ml``."""
    lo, hi = 0.2, 3.0
    best = make(1.0)
    for _ in range(12):
        mid = (lo + hi) / 2
        best = make(mid)
        volume = sum(float((a >= 0.5).sum()) for a in best.values()) * voxel_ml
        if abs(volume - target_ml) < 0.03 * target_ml:
            break
        lo, hi = (mid, hi) if volume < target_ml else (lo, mid)
    return best


def _add_tumour(builder: _Builder, tumour_type: str, label: Array) -> str:
    """Paint a tumour; returns the signal family used."""
    rng = builder.rng
    vox_ml = builder.vox**3 / 1000
    target = float(rng.uniform(*VOLUME_RANGES_ML[tumour_type]))
    tissue = builder.tissue
    if tumour_type == "glioma":
        family = "glioma_low_grade" if rng.random() < 0.25 else "glioma"
        depth = -builder.sdb
        candidates = np.argwhere(builder.cerebrum & (tissue == T["wm"]) & (depth > 14))
        centre_i = candidates[rng.integers(len(candidates))]
        radius0 = (3 * target * 1000 / (4 * np.pi)) ** (1 / 3) * 0.8
        reach = radius0 * 3.2
        centre = builder.origin + builder.vox * centre_i
        b = _box_around(centre_i, reach, builder.vox)
        w = _world_coords(builder, b)
        n_core, n_edema = _Noise(rng, radius0 * 1.2, 16), _Noise(rng, radius0 * 0.9, 16)
        dist = np.sqrt(sum((w[i] - centre[i]) ** 2 for i in range(3)))
        core_noise, edema_noise = n_core(w), n_edema(w)
        parenchyma = builder.brain[b] & np.isin(tissue[b], [T["wm"], T["deep_gm"], T["gm"]])
        white = np.isin(tissue[b], [T["wm"], T["deep_gm"]]) & builder.brain[b]
        inner = rng.uniform(0.5, 0.75)
        low_grade_patch = float(rng.random() < 0.5)

        def make(f: float) -> dict[int, Array]:
            r = radius0 * f
            rho = dist / (r * (1 + 0.22 * core_noise))
            rho_e = dist / (r * 1.7 * (1 + 0.3 * edema_noise))
            core = np.clip(0.5 - (rho - 1) * r / builder.vox, 0, 1) * parenchyma
            edema = np.clip(0.5 - (rho_e - 1) * r / builder.vox, 0, 1) * white
            edema = np.maximum(edema - core, 0)
            if family == "glioma_low_grade":  # non-enhancing core, perhaps a faint patch
                patch = np.clip(0.5 - (rho - 0.35) * r / builder.vox, 0, 1) * parenchyma
                patch *= low_grade_patch
                return {LABEL_EDEMA: edema, LABEL_NECROTIC: core - patch, LABEL_ENHANCING: patch}
            necro = np.clip(0.5 - (rho - inner) * r / builder.vox, 0, 1) * parenchyma
            return {LABEL_EDEMA: edema, LABEL_ENHANCING: core - necro, LABEL_NECROTIC: necro}

        parts = _fit_volume(make, target, vox_ml)
    elif tumour_type == "meningioma":
        family = "meningioma"
        x = builder.origin[0] + builder.vox * np.arange(builder.shape[0])
        z = builder.origin[2] + builder.vox * np.arange(builder.shape[2])
        site = rng.choice(["convexity", "convexity", "convexity", "falx", "base"])
        dura = (builder.sdc >= -max(1.6, builder.vox)) & (builder.sdc < 0)
        if site == "convexity":
            where = dura & (np.abs(x)[:, None, None] > 25) & (z[None, None, :] > 5)
        elif site == "base":
            where = dura & (z[None, None, :] < -10) & (z[None, None, :] > -35)
            where &= builder.tissue == T["dura"]
            where &= np.abs(x)[:, None, None] > 15
        else:
            where = (
                builder.cavity & ~builder.brain & (np.abs(x)[:, None, None] < max(2, builder.vox))
            )
            where &= (builder.sdc < -8) & (z[None, None, :] > 15)
        if not where.any():
            site = "convexity"
            where = dura & (np.abs(x)[:, None, None] > 25) & (z[None, None, :] > 5)
        candidates = np.argwhere(where)
        point_i = candidates[rng.integers(len(candidates))]
        point = builder.origin + builder.vox * point_i
        if site == "falx":
            inward = np.array([rng.choice([-1.0, 1.0]), 0.0, 0.0])
        else:
            g = [np.gradient(builder.sdc, axis=i)[tuple(point_i)] for i in range(3)]
            inward = -np.asarray(g) / max(float(np.linalg.norm(g)), 1e-6)
        radius0 = (3 * target * 1000 / (2 * np.pi)) ** (1 / 3)
        reach = radius0 * 3.5
        b = _box_around(point_i, reach, builder.vox)
        w = _world_coords(builder, b)
        noise = _Noise(rng, radius0 * 1.5, 12)(w)
        inside = builder.cavity[b] & (builder.sdc[b] < -0.3)
        white = builder.brain[b] & np.isin(tissue[b], [T["wm"], T["deep_gm"]])
        has_edema, calcified = rng.random() < 0.4, rng.random() < 0.2

        def make(f: float) -> dict[int, Array]:
            r = radius0 * f
            centre = point + inward * 0.3 * r
            dist = np.sqrt(sum((w[i] - centre[i]) ** 2 for i in range(3)))
            rho = dist / (r * (1 + 0.08 * noise))
            tumour = np.clip(0.5 - (rho - 1) * r / builder.vox, 0, 1) * inside
            core = np.zeros_like(tumour)
            if calcified:
                core = np.clip(0.5 - (rho - 0.3) * r / builder.vox, 0, 1) * inside
            edema = np.zeros_like(tumour)
            if has_edema:
                rho_e = dist / (r * 1.35 * (1 + 0.3 * noise))
                edema = np.clip(0.5 - (rho_e - 1) * r / builder.vox, 0, 1) * white
                edema = np.maximum(edema - tumour, 0)
            return {LABEL_EDEMA: edema, LABEL_ENHANCING: tumour - core, LABEL_NECROTIC: core}

        parts = _fit_volume(make, target, vox_ml)
    else:
        family = "pituitary"
        sella = builder.sella
        centre_i = np.round((sella - builder.origin) / builder.vox).astype(int)
        radius0 = (3 * target * 1000 / (4 * np.pi * 1.06)) ** (1 / 3)
        reach = radius0 * 3.5
        b = _box_around(centre_i, reach, builder.vox)
        w = _world_coords(builder, b)
        noise = _Noise(rng, max(radius0, 4.0), 12)(w)
        inside = builder.cavity[b].astype(np.float32)
        cystic = rng.random() < 0.3

        def make(f: float) -> dict[int, Array]:
            r = radius0 * f
            centre = sella + np.array([0, 0, 0.45 * r])
            rel = [(w[i] - centre[i]) / (r * k) for i, k in enumerate((1.0, 0.85, 1.25))]
            rho = np.sqrt(sum(q * q for q in rel)) / (1 + 0.08 * noise)
            tumour = np.clip(0.5 - (rho - 1) * r / builder.vox, 0, 1) * inside
            core = np.zeros_like(tumour)
            if cystic:
                core = np.clip(0.5 - (rho - 0.45) * r / builder.vox, 0, 1) * inside
            return {LABEL_ENHANCING: tumour - core, LABEL_NECROTIC: core}

        parts = _fit_volume(make, target, vox_ml)
    signal = _TUMOUR_SIGNAL[family]
    lab = label[b]
    for value in (LABEL_EDEMA, LABEL_ENHANCING, LABEL_NECROTIC):
        if value not in parts:
            continue
        alpha = np.clip(parts[value], 0, 1).astype(np.float32)
        lab[alpha >= 0.5] = value
        for c in range(4):
            view = builder.images[c][b]
            view += alpha * (signal[value][c] - view)
    return family


# --------------------------------------------------------------------------------------------
# Public API.


def make_phantom(seed: int, tumour_type: str = "none", voxel_mm: float = 2.0) -> HeadPhantom:
    """A full head (vertex to neck) on a RAS grid of ``voxel_mm`` voxels, with its tissue map."""
    if tumour_type not in TUMOUR_TYPES:
        raise ValueError(f"tumour_type must be one of {TUMOUR_TYPES}, got {tumour_type!r}")
    builder = _Builder(seed, voxel_mm)
    builder.build()
    label = np.zeros(builder.shape, np.uint8)
    if tumour_type != "none":
        _add_tumour(builder, tumour_type, label)
    # Texture (shared across contrasts, as tissue microstructure is) and partial volume.
    tex_rng = np.random.default_rng([seed, 0x7E7])
    sigma = max(1.2 / builder.vox, 0.6)
    texture = ndimage.gaussian_filter(
        tex_rng.standard_normal(builder.shape).astype(np.float32), sigma
    )
    texture /= max(float(texture.std()), 1e-6)
    amplitude = _TEXTURE[builder.tissue] + 0.05 * (label > 0)
    images = {}
    for c, modality in enumerate(MODALITIES):
        image = builder.images[c] * (1 + amplitude * texture)
        image = ndimage.gaussian_filter(image, 0.45)
        images[modality] = np.clip(image, 0, None).astype(np.float32)
    case = SyntheticCase(
        case_id=f"head{seed:06d}_{tumour_type}",
        tumour_type=tumour_type,
        seed=seed,
        affine=builder.affine.copy(),
        images=images,
        label=label,
        brain_mask=builder.cavity.copy(),
        intracranial=builder.cavity.copy(),
        full_head=True,
    )
    return HeadPhantom(case, builder.tissue, builder.head, np.asarray(builder.sella))


def make_head(seed: int, tumour_type: str = "none", voxel_mm: float = 2.0) -> SyntheticCase:
    """The full-head evaluation case for ``seed`` (see :func:`make_phantom`)."""
    return make_phantom(seed, tumour_type, voxel_mm).case


def ground_truth_on_grid(
    case: SyntheticCase, affine_lps: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """BraTS labels and the intracranial mask on any (k, j, i) LPS grid, e.g. the canonical one."""
    label = label_on_grid(case, affine_lps, shape)
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    points = grid_points(affine_lps[:3, 3], spacing, affine_lps[:3, :3] / spacing, shape)
    mask = sample(case.brain_mask.astype(np.uint8), case.affine, points, order=0) > 0
    return label, mask


# --------------------------------------------------------------------------------------------
# Full-head acquisition: the grid covers the whole head (vertex to neck), not just the brain.

_PLANES = {  # LPS unit vectors of rows (i), columns (j) and the slice normal (k)
    "axial": np.column_stack([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]),
    "sagittal": np.column_stack([[0, 1.0, 0], [0, 0, -1.0], [-1.0, 0, 0]]),
    "coronal": np.column_stack([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]),
}


@dataclass(frozen=True)
class HeadSeries:
    """One series of a full-head study: the scanner protocol and its field of view."""

    protocol: SeriesProtocol
    fov_mm: float = 256.0  # in-plane
    coverage_mm: float = 240.0  # along the slice normal


def head_grid(
    case: SyntheticCase, series: HeadSeries
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(origin, spacing, direction, shape) in LPS, centred on the head, its top at the vertex."""
    protocol = series.protocol
    a = np.radians(protocol.tilt_deg)
    about_row = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    direction = _PLANES[protocol.orientation] @ about_row
    head = np.argwhere(case.images["t1"] > 0.05)
    lo = case.affine[:3, :3] @ head.min(axis=0) + case.affine[:3, 3]
    hi = case.affine[:3, :3] @ head.max(axis=0) + case.affine[:3, 3]
    extent_is = series.coverage_mm if protocol.orientation == "axial" else series.fov_mm
    centre_ras = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[2] + 8 - extent_is / 2])
    centre = RAS_TO_LPS @ centre_ras
    n_in_plane = round(series.fov_mm / protocol.in_plane_mm)
    n_slices = round(series.coverage_mm / protocol.slice_mm)
    spacing = np.array([protocol.in_plane_mm, protocol.in_plane_mm, protocol.slice_mm])
    half = (np.array([n_in_plane, n_in_plane, n_slices]) - 1) / 2 * spacing
    return centre - direction @ half, spacing, direction, (n_slices, n_in_plane, n_in_plane)


def acquire_head(
    case: SyntheticCase, series: HeadSeries, rng: np.random.Generator
) -> AcquiredSeries:
    """Sample the case on the series' grid: slice profile, receive-coil shading, Rician noise."""
    protocol = series.protocol
    origin, spacing, direction, shape = head_grid(case, series)
    image = case.images[protocol.modality]
    offsets = [0.0] if protocol.three_d else list(np.linspace(-0.4, 0.4, 5) * protocol.slice_mm)
    signal = np.zeros(shape, np.float32)
    for offset in offsets:
        signal += sample(
            image, case.affine, grid_points(origin, spacing, direction, shape, offset), 1
        )
    signal /= len(offsets)
    # Receive-coil shading: brighter near the coil elements (top and back of the head).
    points = grid_points(origin, spacing, direction, shape)
    centre = points.reshape(-1, 3).mean(axis=0)
    rel = (points - centre) / 120.0
    weights = rng.uniform(-1, 1, 3)
    shading = np.exp(protocol.bias * np.tanh(rel @ weights + 0.5 * (rel**2).sum(-1)))
    signal *= shading.astype(np.float32)
    sigma = protocol.noise
    noisy = np.hypot(signal + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    pixels = np.clip(np.round(noisy * protocol.scale), 0, 4095).astype(np.uint16)
    return AcquiredSeries(protocol, pixels, origin, spacing, direction)


def head_protocols(rng: np.random.Generator, vendor: str = "siemens") -> dict[str, HeadSeries]:
    """A clinical full-head tumour protocol: 3D 1 mm T1 pre and post, 2D 3-5 mm T2 and FLAIR.

    Half the studies have their 2D axial series tilted by 12 degrees (along the AC-PC line).
    """
    noise = float(rng.uniform(0.015, 0.045))
    tilt = 12.0 if rng.random() < 0.5 else 0.0
    coverage = float(rng.uniform(220, 260))

    def proto(modality: str, orientation: str, three_d: bool, slice_mm: float) -> SeriesProtocol:
        return SeriesProtocol(
            modality,
            orientation=orientation,
            tilt_deg=tilt if (not three_d and orientation == "axial") else 0.0,
            in_plane_mm=1.0 if three_d else float(rng.choice([0.9, 1.0])),
            slice_mm=slice_mm,
            three_d=three_d,
            noise=noise,
            bias=float(rng.uniform(0.1, 0.35)),
            scale=float(rng.uniform(1200, 2600)),
        )

    t1_plane = "sagittal" if vendor in ("siemens", "ge") else "axial"
    return {
        "t1": HeadSeries(
            proto("t1", t1_plane, True, 1.0), 256.0, 200.0 if t1_plane == "sagittal" else coverage
        ),
        "t1ce": HeadSeries(proto("t1ce", "axial", True, 1.0), 256.0, coverage),
        "t2": HeadSeries(
            proto("t2", "axial", False, float(rng.choice([3.0, 4.0, 5.0]))), 240.0, coverage
        ),
        "flair": HeadSeries(
            proto(
                "flair",
                str(rng.choice(["axial", "axial", "coronal"])),
                False,
                float(rng.choice([3.0, 4.0, 5.0])),
            ),
            240.0,
            coverage,
        ),
    }


# ScanningSequence, SequenceVariant, ScanOptions, TR, TE, TI (ms), flip angle (deg)
_SEQUENCES = {
    "t1": (["GR", "IR"], ["SP", "MP"], "IR", 2000.0, 2.5, 1000.0, 9.0),
    "t1ce": (["GR", "IR"], ["SP", "MP"], "IR", 2000.0, 2.5, 1000.0, 9.0),
    "t2": (["SE"], ["SK"], "", 4500.0, 100.0, None, 160.0),
    "flair": (["SE", "IR"], ["SK", "MP"], "IR", 9500.0, 90.0, 2500.0, 150.0),
}
_NUMBERS = {"t1": 2, "t2": 3, "flair": 4, "t1ce": 9}


def write_head_study(
    case: SyntheticCase,
    folder: Path,
    *,
    seed: int,
    series: dict[str, HeadSeries] | None = None,
    vendor: str | None = None,
) -> SyntheticStudy:
    """Acquire ``case`` with full-head fields of view and write it as a DICOM MR study."""
    rng = np.random.default_rng([seed, 0xD1C0])
    vendor = vendor or str(rng.choice(sorted(VENDORS)))
    info = VENDORS[vendor]
    names = info["names"]
    assert isinstance(names, dict)
    series = series or head_protocols(rng, vendor)
    study_uid, frame_uid = generate_uid(), generate_uid()
    when = dt.datetime(2026, 3, 1, 7, 30) + dt.timedelta(minutes=int(rng.integers(0, 400_000)))
    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 100"
    base.SOPClassUID = MRImageStorage
    base.PatientName = f"Phantom^{case.case_id}"
    base.PatientID = case.case_id
    base.PatientBirthDate = "19700101"
    base.PatientSex = "O"
    base.StudyInstanceUID = study_uid
    base.StudyDate = base.SeriesDate = base.ContentDate = when.strftime("%Y%m%d")
    base.StudyTime = base.SeriesTime = base.ContentTime = when.strftime("%H%M%S")
    base.AccessionNumber = f"PH{case.seed:08d}"[:16]
    base.ReferringPhysicianName = ""
    base.StudyID = "1"
    base.StudyDescription = "MR HEAD W/WO CONTRAST"
    base.Modality = "MR"
    base.Manufacturer = info["manufacturer"]
    base.ManufacturerModelName = info["model"]
    base.InstitutionName = "NeuroGate evaluation phantoms"
    base.MagneticFieldStrength = float(rng.choice([1.5, 3.0]))
    base.FrameOfReferenceUID = frame_uid
    base.PositionReferenceIndicator = ""
    base.PatientPosition = "HFS"
    base.BodyPartExamined = "HEAD"
    written = {}
    for modality, head_series in series.items():
        acquired = acquire_head(case, head_series, rng)
        description = _named_for_plane(str(names[modality]), head_series.protocol.orientation)
        written[modality] = _write(base, acquired, folder, _NUMBERS[modality], description)
    return SyntheticStudy(study_uid, frame_uid, written)


_PLANE_WORDS = {"axial": ("tra", "Ax"), "sagittal": ("sag", "Sag"), "coronal": ("cor", "Cor")}


def _named_for_plane(name: str, orientation: str) -> str:
    """The vendor's series name with its plane word (tra/sag/cor, Ax/Sag/Cor) made true."""
    lower, upper = _PLANE_WORDS[orientation]
    words = re.split(r"([_ ])", name)
    for i, word in enumerate(words):
        if word in ("tra", "sag", "cor"):
            words[i] = lower
        elif word in ("Ax", "Sag", "Cor"):
            words[i] = upper
    return "".join(words)


def _write(
    base: Dataset, acquired: AcquiredSeries, folder: Path, number: int, description: str
) -> WrittenSeries:
    """The phantom's own sequence parameters, written by the generator's series writer."""
    return write_series(
        base,
        acquired,
        folder,
        number=number,
        description=description,
        image_type=["ORIGINAL", "PRIMARY", "M", "ND"],
        sequence_parameters=_SEQUENCES[acquired.protocol.modality],
        contrast_agent="Gadoterate",
    )


# --------------------------------------------------------------------------------------------
# Pictures for a human check.


def save_pngs(phantom: HeadPhantom, folder: Path, prefix: str = "") -> list[Path]:
    """Mid-sagittal, axial (orbits, ventricles) and coronal planes of every contrast, as PNGs."""
    from PIL import Image

    case = phantom.case
    folder.mkdir(parents=True, exist_ok=True)
    inverse = np.linalg.inv(case.affine)

    def index(ras: Sequence[float] | np.ndarray) -> np.ndarray:
        return np.round(inverse[:3, :3] @ np.asarray(ras, float) + inverse[:3, 3]).astype(int)

    sella = phantom.sella_ras
    orbit_z = sella[2] - 2
    ventricle_z = sella[2] + 50
    planes = {
        "sag": lambda a: a[index(sella)[0], :, :],
        "ax_orbits": lambda a: a[:, :, index([0, 0, orbit_z])[2]],
        "ax_ventricles": lambda a: a[:, :, index([0, 0, ventricle_z])[2]],
        "cor": lambda a: a[:, index([0, sella[1] + 10, 0])[1], :],
    }
    paths = []
    for plane, cut in planes.items():
        tiles = []
        for modality in MODALITIES:
            image = cut(case.images[modality])
            top = float(np.percentile(image[image > 0.02], 99.5)) if (image > 0.02).any() else 1.0
            tile = np.clip(image / top * 255, 0, 255).astype(np.uint8)
            tiles.append(np.rot90(tile))  # superior / anterior up, as radiologists look
        label = np.rot90(cut(case.label)).astype(np.uint8)
        colour = np.zeros((*label.shape, 3), np.uint8)
        colour[label == LABEL_EDEMA] = (60, 160, 60)
        colour[label == LABEL_NECROTIC] = (200, 60, 60)
        colour[label == LABEL_ENHANCING] = (240, 220, 60)
        grey = [np.stack([t] * 3, -1) for t in tiles]
        overlay = grey[1].copy()
        overlay[label > 0] = colour[label > 0]
        rgb = np.concatenate(
            [np.concatenate(grey[:2], 1), np.concatenate([grey[2], grey[3]], 1)], 0
        )
        rgb = np.concatenate([rgb, np.concatenate([overlay, np.zeros_like(overlay)], 0)], 1)
        img = Image.fromarray(rgb)
        zoom = max(1, round(15 * case.voxel_ml ** (1 / 3)))
        img = img.resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST)
        path = folder / f"{prefix}{plane}.png"
        img.save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--type", choices=TUMOUR_TYPES, default="none")
    parser.add_argument("--voxel-mm", type=float, default=2.0)
    parser.add_argument("--png", type=Path, help="also write check PNGs to this folder")
    args = parser.parse_args()
    started = time.perf_counter()
    phantom = make_phantom(args.seed, args.type, args.voxel_mm)
    built = time.perf_counter() - started
    case = phantom.case
    study = write_head_study(case, args.out / case.case_id, seed=args.seed)
    volumes = region_volumes_ml(case.label, case.voxel_ml)
    print(
        f"{case.case_id} {case.tumour_type:<10} WT {volumes['WT']:6.1f} TC {volumes['TC']:6.1f} "
        f"ET {volumes['ET']:6.1f} mL  built {built:.1f}s  study {study.study_instance_uid}"
    )
    if args.png:
        for path in save_pngs(phantom, args.png, f"{case.case_id}_"):
            print(path)


if __name__ == "__main__":
    main()
