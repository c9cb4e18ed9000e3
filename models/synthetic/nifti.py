"""Synthetic cases written in the BraTS NIfTI layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.synthetic.case import MODALITIES, SyntheticCase


def write_nifti(case: SyntheticCase, folder: Path) -> dict[str, Path]:
    """``<case_id>_{t1,t1ce,t2,flair,seg}.nii.gz`` in ``folder/<case_id>/``, RAS affine."""
    import nibabel as nib

    out = folder / case.case_id
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for modality in MODALITIES:
        path = out / f"{case.case_id}_{modality}.nii.gz"
        nib.save(nib.Nifti1Image(case.images[modality].astype(np.float32), case.affine), path)
        paths[modality] = path
    seg = out / f"{case.case_id}_seg.nii.gz"
    nib.save(nib.Nifti1Image(case.label.astype(np.uint8), case.affine), seg)
    paths["seg"] = seg
    return paths
