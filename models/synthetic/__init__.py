"""Synthetic BraTS-like brain MR studies built on the MNI152 template.

There is no public brain-tumour data on the machines this project runs on, so it makes its own:
anatomy from the ICBM152 2009a template and tissue maps shipped inside nilearn, a synthesised
skull and scalp around it, four contrasts (T1, T1CE, T2, FLAIR) derived from tissue classes, and
tumours whose appearance and location follow their type, with per-voxel ground truth in the BraTS
convention (1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour).

:func:`generate_case` makes a case on a world grid; :mod:`models.synthetic.acquisition` samples
it the way a scanner would (slice thickness, obliquity, bias field, noise) and
:mod:`models.synthetic.dicom` writes the result as DICOM MR series.
"""

from models.synthetic.case import (
    LABEL_EDEMA,
    LABEL_ENHANCING,
    LABEL_NECROTIC,
    MODALITIES,
    TUMOUR_TYPES,
    SyntheticCase,
    generate_case,
    region_volumes_ml,
)

__all__ = [
    "LABEL_EDEMA",
    "LABEL_ENHANCING",
    "LABEL_NECROTIC",
    "MODALITIES",
    "TUMOUR_TYPES",
    "SyntheticCase",
    "generate_case",
    "region_volumes_ml",
]
