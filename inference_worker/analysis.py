"""What one run of the pipeline produces: findings plus the images the result objects need.

:class:`~schemas.findings.Findings` is the JSON contract shared with the API; :class:`Analysis`
adds what stays inside the worker: the masks on the reference series' own frames (for the DICOM
SEG) and the Grad-CAM plane (for the secondary capture and the PDF report).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from models.imaging import FrameRef, Volume
from schemas.findings import Findings

REGIONS = ("WT", "TC", "ET")


@dataclass(frozen=True, eq=False)
class RegionMasks:
    """Whole tumour, tumour core and enhancing tumour on the reference series' frames.

    ``masks[region][n]`` is the mask of source frame ``frames[n]``, pixel-aligned with it (same
    rows and columns): a SEG built from it overlays its source exactly.
    """

    reference_role: str
    reference_files: tuple[Path, ...]  # the reference series as stored, any order
    frames: tuple[FrameRef, ...]  # in the order of the masks' first axis
    masks: dict[str, np.ndarray]  # region -> (frames, rows, columns) bool

    def __post_init__(self) -> None:
        if set(self.masks) != set(REGIONS):
            raise ValueError(f"masks must hold exactly {REGIONS}")
        for region, mask in self.masks.items():
            if mask.ndim != 3 or mask.shape[0] != len(self.frames) or mask.dtype != np.bool_:
                raise ValueError(f"{region} mask must be bool (frames, rows, columns)")


@dataclass(frozen=True, eq=False)
class GradCam:
    """The classifier's explanation on the axial plane it analysed (canonical 2 mm grid).

    ``plane`` is the normalised image (0 upwards, about 1 at the head's bright end) in radiological
    display orientation: rows run anterior to posterior, columns patient right to left.
    """

    plane: np.ndarray  # (rows, columns) float32
    heatmap: np.ndarray  # (rows, columns) float32 in [0, 1]
    pixel_spacing_mm: float
    label: str
    probability: float
    series_role: str
    plane_index: int  # k on the canonical grid (inferior to superior)


@dataclass(frozen=True, eq=False)
class Analysis:
    findings: Findings
    masks: RegionMasks | None = None  # None when segmentation could not run
    grad_cam: GradCam | None = None  # None when no tumour was found
    # The stored files of the reference series (the result objects copy its patient and study
    # modules); empty for an upload that came without DICOM.
    source_files: tuple[Path, ...] = ()
    # What the networks saw: the canonical grid, the intracranial mask and the tumour regions
    # on it (for benchmarks and audits; the result objects use ``masks``).
    grid: Volume | None = None
    intracranial: np.ndarray | None = None  # bool (k, j, i) on ``grid``
    grid_masks: dict[str, np.ndarray] | None = None  # REGIONS -> bool (k, j, i) on ``grid``
    # ``source_files`` as the pipeline read them (pixels included), so that the result objects
    # need not read the series again; empty when the analysis holds only the paths.
    source_datasets: tuple[Dataset, ...] = ()
