"""Head anatomy on the MNI152 grid: brain tissue maps from the template, and the layers around
the brain (CSF rim, skull with marrow, scalp) that a skull-stripped template lacks."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

# ICBM152 2009a (symmetric), as shipped inside nilearn: T1 template and tissue probability maps.
_TEMPLATES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Distances outside the brain surface (mm) of the synthesised layers: each is where a layer
# ends (CSF rim and dura, inner table, diploe, outer table, scalp); the intracranial space ends
# where the inner table begins, at SUBARACHNOID_MM.
SUBARACHNOID_MM = 2.0
INNER_TABLE_MM = 3.5
MARROW_MM = 5.5
OUTER_TABLE_MM = 7.0
SCALP_MM = 12.0
# Sella turcica in MNI (RAS) millimetres, below the hypothalamus and optic chiasm.
SELLA_RAS = np.array([0.0, 2.0, -32.0])
# The pituitary fossa and the suprasellar cistern above it, RAS mm: centre offsets from the sella
# and radii (transverse, antero-posterior, cranio-caudal). Both are intracranial: a pituitary
# lesion lies in them, below the template's brain and between the skull base's bones.
_FOSSA = (
    (np.zeros(3), np.array([7.0, 6.0, 5.0])),
    (np.array([0, 0, 7.0]), np.array([7.0, 6.0, 7.0])),
)
_BRAIN_THRESHOLD = 0.05  # of the template's maximum
_UINT8_MAX = 255.0


def _template_dir() -> Path:
    import nilearn  # only for the location of its data files

    return Path(nilearn.__file__).parent / "datasets" / "data"


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Tissue fractions on a RAS world grid; each array is float32 in [0, 1]."""

    affine: np.ndarray  # voxel index -> RAS mm
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # bool: inside the brain (GM, WM or ventricles)
    outside_mm: np.ndarray  # distance from the brain surface, 0 inside

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = self.gm.shape
        return x, y, z

    @property
    def voxel_mm(self) -> float:
        return float(abs(self.affine[0, 0]))

    def world(self) -> np.ndarray:
        """RAS coordinates of every voxel, shaped (x, y, z, 3)."""
        grid = np.stack(np.meshgrid(*(np.arange(n) for n in self.shape), indexing="ij"), -1)
        return (grid @ self.affine[:3, :3].T + self.affine[:3, 3]).astype(np.float32)

    def pituitary_fossa(self) -> np.ndarray:
        """bool: the sella's fossa and the cistern above it (:data:`SELLA_RAS`).

        Inside the skull but outside the template's brain and its few millimetres of CSF rim:
        an intracranial mask drawn only from the distance to the brain would cut a pituitary
        lesion off (measured: 77-100 % of each generated pituitary tumour before this).
        """
        return self._sellar(_FOSSA)

    def pituitary_gland(self) -> np.ndarray:
        """bool: the fossa proper, below the diaphragma sellae, which a normal gland fills.

        The cistern above it holds CSF, the optic chiasm and the stalk, not gland: a normal gland
        does not reach above the sella, a macroadenoma does (its suprasellar extension).
        """
        return self._sellar(_FOSSA[:1])

    def _sellar(self, parts: tuple[tuple[np.ndarray, np.ndarray], ...]) -> np.ndarray:
        world = self.world()
        region = np.zeros(self.shape, bool)
        for offset, radii in parts:
            region |= np.sum(((world - (SELLA_RAS + offset)) / radii) ** 2, axis=-1) < 1
        return region

    def intracranial(self) -> np.ndarray:
        """bool: inside the skull's inner table (brain, CSF rim and dura), and the fossa.

        A voxel counts when at least half of it lies inside: :meth:`layer` ramps each edge over
        a voxel, so the half-way point of the rim's outer edge is at :data:`SUBARACHNOID_MM`.
        """
        return (self.outside_mm <= SUBARACHNOID_MM) | self.pituitary_fossa()

    def layer(self, low_mm: float, high_mm: float) -> np.ndarray:
        """Fraction of each voxel lying between two distances outside the brain (smooth edges)."""
        d = self.outside_mm
        ramp = max(self.voxel_mm / 2, 0.5)
        rise = np.clip((d - low_mm) / ramp + 0.5, 0, 1)
        fall = np.clip((high_mm - d) / ramp + 0.5, 0, 1)
        return (rise * fall).astype(np.float32)


@functools.cache
def mni_anatomy(voxel_mm: float = 1.0) -> Anatomy:
    """The template anatomy at ``voxel_mm`` (1 mm native; coarser grids are block-averaged)."""
    import nibabel as nib

    if voxel_mm < 1 or voxel_mm != int(voxel_mm):
        raise ValueError(f"voxel_mm must be a whole number of millimetres >= 1, got {voxel_mm}")
    step = int(voxel_mm)
    images: dict[str, nib.Nifti1Image] = {
        k: nib.load(_template_dir() / name)  # type: ignore[misc]
        for k, name in _TEMPLATES.items()
    }
    affine = images["t1"].affine.copy()
    arrays = {k: np.asarray(img.dataobj, dtype=np.float32) for k, img in images.items()}
    if step > 1:
        arrays = {k: _block_mean(a, step) for k, a in arrays.items()}
        affine[:3, :3] *= step
        affine[:3, 3] += (step - 1) / 2  # centre of the first block
    # The files hold 8-bit values: intensities and probabilities scaled to 0-255.
    t1, gm, wm = (np.clip(arrays[k] / _UINT8_MAX, 0, 1) for k in ("t1", "gm", "wm"))
    # The template is skull-stripped: its non-zero voxels are the intracranial space.
    brain = ndimage.binary_fill_holes(t1 > _BRAIN_THRESHOLD)
    csf = np.where(brain, np.clip(1 - gm - wm, 0, 1), 0).astype(np.float32)
    outside = ndimage.distance_transform_edt(~brain, sampling=step).astype(np.float32)
    return Anatomy(affine, gm, wm, csf, brain, outside)


def _block_mean(array: np.ndarray, step: int) -> np.ndarray:
    shape = [s // step for s in array.shape]
    trimmed = array[: shape[0] * step, : shape[1] * step, : shape[2] * step]
    return trimmed.reshape(shape[0], step, shape[1], step, shape[2], step).mean(axis=(1, 3, 5))
