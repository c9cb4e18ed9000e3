"""How a scanner would have acquired a synthetic case: grids, slice profiles, bias and noise.

Real scanners do not send skull-stripped, 1 mm, axis-aligned, noise-free volumes. A
:class:`SeriesProtocol` describes one series (orientation and obliquity, in-plane resolution,
slice thickness, 2D or 3D), and :func:`acquire` samples the case onto that grid in DICOM patient
coordinates (LPS), averaging across the slice thickness, then applies a smooth multiplicative
bias field, Rician noise and the series' own intensity scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from models.synthetic.case import MODALITIES, SyntheticCase

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# Row direction (i), column direction (j) and slice normal (k) in LPS, as columns; the usual
# ImageOrientationPatient of each plane: axial [1,0,0,0,1,0], sagittal [0,1,0,0,0,-1],
# coronal [1,0,0,0,0,-1].
_ORIENTATIONS = {
    "axial": np.column_stack([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]),
    "sagittal": np.column_stack([[0, 1.0, 0], [0, 0, -1.0], [-1.0, 0, 0]]),
    "coronal": np.column_stack([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]),
}
FIELD_OF_VIEW_MM = 240.0
_COVERAGE_MM = {"axial": 170.0, "sagittal": 170.0, "coronal": 190.0}
_MAX_VALUE = 4095  # 12-bit stored values


@dataclass(frozen=True)
class SeriesProtocol:
    modality: str  # one of MODALITIES
    orientation: str = "axial"
    tilt_deg: float = 0.0  # obliquity about the slice's row axis
    in_plane_mm: float = 1.0
    slice_mm: float = 5.0
    three_d: bool = False
    noise: float = 0.03  # Rician sigma relative to white matter on T1
    bias: float = 0.2  # peak-to-peak log amplitude of the bias field
    scale: float = 2000.0  # stored value of signal 1.0
    # Field of view: slices cover ``coverage_mm`` (default: the plane's usual brain coverage),
    # centred ``shift_mm`` along the slice normal from the brain's centre (negative: towards
    # the feet on an axial series, taking in face and neck); rows and columns ``fov_mm``.
    coverage_mm: float | None = None
    shift_mm: float = 0.0
    fov_mm: float = FIELD_OF_VIEW_MM

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.orientation not in _ORIENTATIONS:
            raise ValueError(f"orientation must be one of {sorted(_ORIENTATIONS)}")
        if self.in_plane_mm <= 0 or self.slice_mm <= 0:
            raise ValueError("in_plane_mm and slice_mm must be positive")


@dataclass(frozen=True, eq=False)
class AcquiredSeries:
    protocol: SeriesProtocol
    pixels: np.ndarray  # uint16 (slices, rows, columns)
    origin: np.ndarray  # LPS mm of voxel (0, 0, 0)
    spacing: np.ndarray  # (column, row, slice) mm
    direction: np.ndarray  # LPS unit vectors of i, j, k as columns

    @property
    def affine_lps(self) -> np.ndarray:
        affine = np.eye(4)
        affine[:3, :3] = self.direction * self.spacing
        affine[:3, 3] = self.origin
        return affine


def _tilt(direction: np.ndarray, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    about_row = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    return direction @ about_row


def series_grid(
    case: SyntheticCase, protocol: SeriesProtocol
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(origin, spacing, direction, shape) of the series' grid, centred on the head, in LPS."""
    direction = _tilt(_ORIENTATIONS[protocol.orientation], protocol.tilt_deg)
    centre_ras = (case.affine @ [*(np.argwhere(case.brain_mask).mean(axis=0)), 1])[:3]
    centre = RAS_TO_LPS @ centre_ras + protocol.shift_mm * direction[:, 2]
    n_in_plane = round(protocol.fov_mm / protocol.in_plane_mm)
    coverage = protocol.coverage_mm or _COVERAGE_MM[protocol.orientation]
    n_slices = max(1, round(coverage / protocol.slice_mm))
    spacing = np.array([protocol.in_plane_mm, protocol.in_plane_mm, protocol.slice_mm])
    half = (np.array([n_in_plane, n_in_plane, n_slices]) - 1) / 2 * spacing
    origin = centre - direction @ half
    return origin, spacing, direction, (n_slices, n_in_plane, n_in_plane)


def sample(
    case_array: np.ndarray, case_affine: np.ndarray, points_lps: np.ndarray, order: int
) -> np.ndarray:
    """Values of a case array (RAS grid) at LPS points (..., 3)."""
    ras = points_lps @ RAS_TO_LPS.T
    inverse = np.linalg.inv(case_affine)
    index = ras @ inverse[:3, :3].T + inverse[:3, 3]
    coords = np.moveaxis(index, -1, 0)
    return ndimage.map_coordinates(case_array, coords, order=order, mode="constant", cval=0.0)


def grid_points(
    origin: np.ndarray,
    spacing: np.ndarray,
    direction: np.ndarray,
    shape: tuple[int, int, int],
    slice_offset_mm: float = 0.0,
) -> np.ndarray:
    """LPS centres of a grid's voxels, (k, j, i, 3), optionally shifted along the slice axis."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1) * spacing
    return ijk @ direction.T + origin + slice_offset_mm * direction[:, 2]


def _bias_field(
    points: np.ndarray, centre: np.ndarray, strength: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth multiplicative field: exp of a random quadratic over the head."""
    rel = (points - centre) / 100.0
    linear = rng.uniform(-1, 1, 3)
    quadratic = rng.uniform(-1, 1, 3)
    log_field = rel @ linear + (rel**2) @ quadratic
    span = float(np.ptp(log_field)) or 1.0
    return np.exp(strength * (log_field - log_field.mean()) / span).astype(np.float32)


def acquire(
    case: SyntheticCase, protocol: SeriesProtocol, rng: np.random.Generator
) -> AcquiredSeries:
    """Sample ``case`` as ``protocol`` would acquire it."""
    origin, spacing, direction, shape = series_grid(case, protocol)
    image = case.images[protocol.modality]
    # The slice profile: average sub-slices across the thickness (2D); 3D is sampled directly.
    offsets = [0.0] if protocol.three_d else list(np.linspace(-0.4, 0.4, 3) * protocol.slice_mm)
    signal = np.zeros(shape, np.float32)
    for offset in offsets:
        points = grid_points(origin, spacing, direction, shape, offset)
        signal += sample(image, case.affine, points, order=1)
    signal /= len(offsets)
    centre = origin + direction @ ((np.array(shape[::-1]) - 1) / 2 * spacing)
    signal *= _bias_field(
        grid_points(origin, spacing, direction, shape), centre, protocol.bias, rng
    )
    sigma = protocol.noise
    noisy = np.sqrt((signal + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    pixels = np.clip(np.round(noisy * protocol.scale), 0, _MAX_VALUE).astype(np.uint16)
    return AcquiredSeries(protocol, pixels, origin, spacing, direction)


def label_on_grid(
    case: SyntheticCase, affine_lps: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """The ground-truth labels resampled (nearest neighbour) onto any series' grid."""
    direction_scaled = affine_lps[:3, :3]
    spacing = np.linalg.norm(direction_scaled, axis=0)
    points = grid_points(affine_lps[:3, 3], spacing, direction_scaled / spacing, shape)
    return sample(case.label, case.affine, points, order=0).astype(np.uint8)
