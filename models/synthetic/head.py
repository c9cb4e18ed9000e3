"""A whole head around the MNI152 brain: face, orbits, sinuses, skull base, tongue and neck.

Real head studies are not skull-stripped brains in a thin shell: their fields of view hold the
globes and retro-orbital fat, the nasal cavity and sinuses (air), the maxilla and mandible, the
tongue, the neck muscles and fat, the cervical spine, and thick subcutaneous fat that is bright
on T1. Networks that never saw these call them tumour. :func:`full_head` builds them, with sizes
and positions drawn per seed, on a grid that extends the template's from the vertex down to the
neck; :data:`TISSUES` lists every class, each a fraction map so that edges are partial volumes.

Positions are in MNI (RAS) millimetres, found relative to the brain's own surface (the globes
sit below the frontal lobes whatever the head's size) so that no structure overlaps the skull.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from models.synthetic.anatomy import (
    INNER_TABLE_MM,
    MARROW_MM,
    OUTER_TABLE_MM,
    SUBARACHNOID_MM,
    Anatomy,
    mni_anatomy,
)

# Every tissue a full head is made of; the brain's own (wm, gm, csf) come from the template.
TISSUES = (
    "wm", "gm", "csf", "rim", "bone", "marrow", "skin", "fat", "muscle", "globe", "lens",
    "mucosa", "tongue", "cord", "air",
)  # fmt: skip
# The extended grid, RAS mm: the template's box plus the face in front and the neck below.
_EXTEND_ANTERIOR_MM = 30.0
_EXTEND_INFERIOR_MM = 100.0


@dataclass(frozen=True, eq=False)
class Head:
    """Tissue fractions of a whole head on ``anatomy``'s (extended) grid."""

    anatomy: Anatomy  # the brain, embedded in the extended grid
    fractions: dict[str, np.ndarray]  # TISSUES -> float32 in [0, 1], summing to <= 1
    intracranial: np.ndarray  # bool: inside the skull's inner table and the pituitary fossa

    @property
    def outside_head(self) -> np.ndarray:
        total: np.ndarray = sum(self.fractions.values())  # type: ignore[assignment]
        return total < 0.5


@functools.cache
def extended_anatomy(voxel_mm: float = 2.0) -> Anatomy:
    """The template anatomy padded anteriorly and inferiorly (zeros: no brain there)."""
    base = mni_anatomy(voxel_mm)
    step = base.voxel_mm
    pad_y = round(_EXTEND_ANTERIOR_MM / step)
    pad_z = round(_EXTEND_INFERIOR_MM / step)
    widths = ((0, 0), (0, pad_y), (pad_z, 0))

    def pad(array: np.ndarray) -> np.ndarray:
        return np.pad(array, widths)

    affine = base.affine.copy()
    affine[:3, 3] -= affine[:3, 2] * pad_z  # z index 0 moves down by pad_z voxels
    brain = pad(base.brain)
    outside = ndimage.distance_transform_edt(~brain, sampling=step).astype(np.float32)
    return Anatomy(affine, pad(base.gm), pad(base.wm), pad(base.csf), brain, outside)


def _ellipsoid(world: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised radius: < 1 inside."""
    return np.linalg.norm((world - centre) / radii, axis=-1)


def _soft(inside: np.ndarray, voxel_mm: float) -> np.ndarray:
    """A boolean region with partial-volume edges."""
    return np.clip(ndimage.gaussian_filter(inside.astype(np.float32), 0.6 / voxel_mm * 2), 0, 1)


def _tube(
    world: np.ndarray, axis_at: np.ndarray, radius: np.ndarray, z_low: float, z_high: float
) -> np.ndarray:
    """Inside an elliptic cylinder along z; ``axis_at`` (x, y) and ``radius`` (x, y)."""
    xy = (world[..., :2] - axis_at) / radius
    return (np.sum(xy**2, axis=-1) < 1) & (world[..., 2] >= z_low) & (world[..., 2] <= z_high)


def _place_below_brain(
    anatomy: Anatomy, start: np.ndarray, direction: np.ndarray, clearance_mm: float
) -> np.ndarray:
    """Move ``start`` along ``direction`` until it lies ``clearance_mm`` outside the brain."""
    inverse = np.linalg.inv(anatomy.affine)
    point = start.astype(np.float64)
    step = direction / np.linalg.norm(direction)
    for _ in range(200):
        index = np.round(inverse[:3, :3] @ point + inverse[:3, 3]).astype(int)
        index = np.clip(index, 0, np.array(anatomy.shape) - 1)
        if anatomy.outside_mm[tuple(index)] >= clearance_mm:
            return point
        point = point + step
    return point


def full_head(anatomy: Anatomy, rng: np.random.Generator) -> Head:
    """A whole head around ``anatomy`` (an :func:`extended_anatomy`), its shape drawn from ``rng``.

    Layers outside the brain follow the distance from its surface (CSF rim, skull tables with
    marrow between, scalp of skin, fat and muscle); the face and neck are ellipsoids and tubes
    joined smoothly to the cranium, with the structures inside them carved in order of depth.
    """
    world = anatomy.world()
    vox = anatomy.voxel_mm
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    d = anatomy.outside_mm
    u = rng.uniform

    # The outer surface: cranium, face and neck, blended into one smooth surface.
    scalp_mm = u(9, 16)
    face_centre = np.array([0.0, u(30, 42), u(-62, -50)])
    face_radii = np.array([u(58, 70), u(58, 70), u(50, 62)])
    neck_axis = np.array([0.0, u(-22, -10)])
    neck_radii = np.array([u(48, 62), u(48, 60)])
    chin_z = face_centre[2] - face_radii[2] * u(0.75, 0.9)
    cranium_field = d / scalp_mm  # < 1 inside the cranium's outer surface
    face_field = _ellipsoid(world, face_centre, face_radii)
    neck_field = np.sqrt(np.sum(((world[..., :2] - neck_axis) / neck_radii) ** 2, axis=-1))
    neck_field = np.where(z < chin_z + 25, neck_field, 1 + (z - chin_z - 25) / 40 + neck_field)
    outer = np.minimum(np.minimum(cranium_field, face_field), neck_field)
    outer = ndimage.gaussian_filter(outer, 3.0 / vox)
    # The nose: a wedge in front of the face.
    nose_tip = np.array([0.0, face_centre[1] + face_radii[1] * u(0.92, 1.05), face_centre[2] + 8])
    nose = (
        _ellipsoid(world, nose_tip - np.array([0, 12, -8]), np.array([u(11, 15), 18.0, u(22, 28)]))
        < 1
    )
    head = (outer < 1) | nose
    depth = ndimage.distance_transform_edt(head, sampling=vox).astype(np.float32)  # from skin

    labels = np.zeros(anatomy.shape, np.uint8)  # index into TISSUES, 0 = none yet
    t = {name: i + 1 for i, name in enumerate(TISSUES)}

    def paint(region: np.ndarray, tissue: str) -> None:
        labels[region] = t[tissue]

    # Soft tissue: muscle in depth, fat under the skin, skin outermost.
    fat_mm = u(3, 9)
    paint(head, "muscle")
    paint(head & (depth < fat_mm + 1.5), "fat")
    paint(head & (depth < 1.5), "skin")
    # Skull base and face bones: the maxilla and the hard palate, the mandible.
    palate_z = face_centre[2] - u(8, 14)
    maxilla = (
        (np.abs(x) < 30) & (y > face_centre[1] - 25) & (y < face_centre[1] + 40)
        & (np.abs(z - palate_z) < 3) & head & (depth > 6)
    )  # fmt: skip
    paint(maxilla, "bone")
    jaw_y = face_centre[1] + 30 - (x / 48) ** 2 * 55
    mandible = (
        (np.abs(y - jaw_y) < 5) & (np.abs(x) < 52) & (z > chin_z - 2) & (z < palate_z - 12)
        & head & (depth > 1.5)
    )  # fmt: skip
    paint(mandible, "marrow")
    paint(mandible & (np.abs(y - jaw_y) > 3), "bone")
    # Tongue and the oral cavity above it.
    tongue = _ellipsoid(world, np.array([0, face_centre[1] + 5, palate_z - 16]),
                        np.array([u(20, 26), u(26, 34), u(11, 15)])) < 1  # fmt: skip
    paint(tongue & head & (depth > 4), "tongue")
    oral = (np.abs(z - (palate_z - 4)) < u(0.5, 2.5)) & (np.abs(x) < 20) & tongue
    paint(oral, "air")
    # Nasal cavity with a septum, maxillary sinuses, mucosa lining them.
    nasal = _ellipsoid(world, np.array([0, face_centre[1] + 22, palate_z + 20]),
                       np.array([u(11, 15), u(24, 32), u(18, 24)])) < 1  # fmt: skip
    sinus_radii = np.array([u(11, 15), u(14, 19), u(12, 16)])
    sinuses = nasal.copy()
    for side in (-1, 1):
        centre = np.array([side * u(26, 32), face_centre[1] + 10, palate_z + 18])
        sinuses |= _ellipsoid(world, centre, sinus_radii) < 1
    # The sphenoid sinus under the sella, and a frontal sinus in the frontal bone.
    sphenoid = _place_below_brain(anatomy, np.array([0, 18.0, -40]), np.array([0, 0.3, -1]), 4)
    sinuses |= (
        _ellipsoid(world, sphenoid + np.array([0, 0, -8]), np.array([u(9, 13), 10, u(7, 10)])) < 1
    )
    frontal = _ellipsoid(world, np.array([0, 70.0, u(0, 12)]), np.array([u(12, 20), 12, 9])) < 1
    sinuses |= frontal & (d > SUBARACHNOID_MM + 1) & (d < OUTER_TABLE_MM)
    sinuses &= d > SUBARACHNOID_MM + 1
    lining = sinuses & ~ndimage.binary_erosion(sinuses, iterations=1)
    paint(sinuses & head, "air")
    paint(lining & head & (rng.random() < 0.7), "mucosa")
    septum = nasal & (np.abs(x) < 1.2)
    paint(septum, "mucosa")
    # Pharynx and trachea: an air tube in front of the spine.
    airway = _tube(world, np.array([0.0, neck_axis[1] + 24]), np.array([u(6, 10), u(5, 8)]),
                   -400, palate_z - 4)  # fmt: skip
    paint(airway & head & (depth > 6), "air")
    # Cervical spine: vertebral bodies (marrow within cortical bone), the canal with CSF and cord.
    spine_axis = np.array([0.0, neck_axis[1] - 2])
    body = _tube(world, spine_axis + np.array([0, 8]), np.array([11.0, 9.0]), -400, -70)
    canal = _tube(world, spine_axis - np.array([0, 10]), np.array([8.0, 7.0]), -400, -40)
    cord = _tube(world, spine_axis - np.array([0, 10]), np.array([4.5, 4.0]), -400, -40)
    paint(body & head, "bone")
    paint(ndimage.binary_erosion(body, iterations=max(1, round(2 / vox))) & head, "marrow")
    paint(canal & head & ~anatomy.brain, "csf")
    paint(cord & head & ~anatomy.brain, "cord")
    # Globes, lenses and the fat and muscle cone behind each.
    for side in (-1, 1):
        radius = u(11, 13)
        start = np.array([side * u(29, 35), u(42, 52), u(-28, -22)])
        centre = _place_below_brain(anatomy, start, np.array([0, 0.6, -0.8]), radius + 8)
        behind = centre + np.array([-side * 12, -32, 4.0])
        axis = behind - centre
        rel = world - centre
        along = (rel @ axis) / float(axis @ axis)
        radial = np.linalg.norm(rel - along[..., None] * axis, axis=-1)
        cone = (along > 0) & (along < 1) & (radial < (radius + 4) * (1 - 0.75 * along))
        paint(cone & (d > INNER_TABLE_MM + 2) & head, "fat")
        paint(cone & (radial < 2.0) & (d > INNER_TABLE_MM + 2) & head, "muscle")  # optic nerve
        globe = _ellipsoid(world, centre, np.full(3, radius)) < 1
        paint(globe & head, "globe")
        lens = (
            _ellipsoid(world, centre + np.array([0, radius - 2.5, 0]), np.array([4.5, 2.0, 4.5]))
            < 1
        )
        paint(lens & head, "lens")

    # The cranium last: brain, CSF rim, the skull's tables and marrow win over everything else.
    cranial = d < OUTER_TABLE_MM
    paint(cranial & (d >= MARROW_MM), "bone")
    paint(cranial & (d >= INNER_TABLE_MM) & (d < MARROW_MM), "marrow")
    paint(cranial & (d >= SUBARACHNOID_MM) & (d < INNER_TABLE_MM), "bone")
    paint(cranial & (d > 0) & (d < SUBARACHNOID_MM), "rim")
    # The pituitary gland in its fossa (it enhances as mucosa does); the suprasellar cistern
    # above it is CSF: a normal gland stays within the sella, an adenoma grows out of it.
    fossa = anatomy.pituitary_fossa() & ~anatomy.brain
    deep = fossa & (d >= SUBARACHNOID_MM)
    gland = deep & anatomy.pituitary_gland()
    paint(deep & ~gland, "csf")
    paint(gland, "mucosa")
    paint(fossa & (d > 0) & (d < SUBARACHNOID_MM), "rim")
    spinal = (cord | canal) & (z < -40)  # the cord passes through the foramen magnum
    paint(spinal & (d > 0) & ~cord, "csf")
    paint(spinal & cord & (d > 0), "cord")

    fractions: dict[str, np.ndarray] = {}
    inside_brain = anatomy.brain
    for name in TISSUES:
        if name in ("wm", "gm"):
            fractions[name] = (getattr(anatomy, name) * inside_brain).astype(np.float32)
        elif name == "csf":
            fractions[name] = np.maximum(anatomy.csf, _soft(labels == t["csf"], vox))
        else:
            fractions[name] = _soft(labels == t[name], vox) * ~inside_brain
    total = sum(fractions.values())
    scale = np.where(total > 1, 1 / np.maximum(total, 1e-6), 1).astype(np.float32)
    fractions = {k: (v * scale).astype(np.float32) for k, v in fractions.items()}
    return Head(anatomy, fractions, anatomy.intracranial())
