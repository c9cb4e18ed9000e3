"""Where the tumour lies, as a radiologist reads it: the location model.

A pituitary adenoma is a sellar mass at the floor of the intracranial space on the midline; a
meningioma is extra-axial, against the inner table, convexity, falx or skull base; a glioma lies
in the white matter, deep to the cortex, with oedema around it. The 2D classifier sees one axial
plane's intensities and, on a head unlike its training data, can mistake a sellar mass for a
glioma (the phantom heads of ``bench/heads.py``: 4 of 9 wrong). The location model reads the
3D segmentation instead: a few measurements of the lesion (:data:`FEATURES`) in the frame of the
intracranial mask, so that they mean the same in any head, fed to a multinomial logistic
regression trained on the synthetic heads (``python -m models.classification.train_location``).

The study's class combines both as independent experts (:func:`combine`): the product of the
classifier's and the location model's probabilities, renormalised. Both are in the findings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).parent
WEIGHTS = HERE / "location.json"
NAME = "neurogate-location-model"
TUMOUR_LABELS = ("glioma", "meningioma", "pituitary")
FEATURES = (
    "log WT mL",  # size
    "log TC mL",
    "oedema share",  # (WT - TC) / WT: gliomas have much, adenomas none
    "enhancing share of TC",
    "TC within 4 mm of the boundary",  # extra-axial or sellar masses touch it
    "TC depth, median mm",  # intra-axial masses lie deep
    "TC |left-right| from the centre",  # midline (adenoma, falx) or lateral
    "TC anterior-posterior",  # below: in units of the mask's spread on that axis
    "TC inferior-superior",
    "TC below the mask's 10th height percentile",  # the sella is at the floor
)
_SURFACE_MM = 4.0


@dataclass(frozen=True)
class LocationModel:
    """A multinomial logistic regression over standardised :data:`FEATURES`."""

    version: str
    labels: tuple[str, ...]
    mean: np.ndarray  # (features,)
    scale: np.ndarray
    coefficients: np.ndarray  # (labels, features)
    intercept: np.ndarray  # (labels,)
    # The classifier's exponent in the product of experts (:func:`combine`), chosen with the fit.
    classifier_weight: float = 1.0
    sha256: str = ""  # of the file it was read from

    def __post_init__(self) -> None:
        n = len(FEATURES)
        if self.mean.shape != (n,) or self.scale.shape != (n,):
            raise ValueError(f"mean and scale must have {n} features")
        if self.coefficients.shape != (len(self.labels), n):
            raise ValueError(f"coefficients must be ({len(self.labels)}, {n})")
        if self.intercept.shape != (len(self.labels),):
            raise ValueError("intercept must have one value per label")
        if not 0 < self.classifier_weight <= 1:
            raise ValueError("classifier_weight must be in (0, 1]")

    def probabilities(self, x: np.ndarray) -> dict[str, float]:
        z = self.coefficients @ ((x - self.mean) / self.scale) + self.intercept
        p = np.exp(z - z.max())
        p /= p.sum()
        return {label: float(v) for label, v in zip(self.labels, p, strict=True)}

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "labels": list(self.labels),
                "features": list(FEATURES),
                "mean": self.mean.tolist(),
                "scale": self.scale.tolist(),
                "coefficients": self.coefficients.tolist(),
                "intercept": self.intercept.tolist(),
                "classifier_weight": self.classifier_weight,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> LocationModel:
        data = json.loads(text)
        if tuple(data.get("features", ())) != FEATURES:
            raise ValueError("the location model was trained on other features")
        return cls(
            version=str(data["version"]),
            labels=tuple(data["labels"]),
            mean=np.asarray(data["mean"], float),
            scale=np.asarray(data["scale"], float),
            coefficients=np.asarray(data["coefficients"], float),
            intercept=np.asarray(data["intercept"], float),
            classifier_weight=float(data.get("classifier_weight", 1.0)),
        )

    @property
    def version_info(self) -> dict[str, str]:
        """What a result records about it, as for the networks (``ModelManifest.version_info``)."""
        return {"name": NAME, "version": self.version, "sha256": self.sha256}


def load(path: Path = WEIGHTS) -> LocationModel:
    """The location model in ``path``; ``ValueError`` naming the file when it cannot be used."""
    try:
        data = path.read_bytes()
        model = LocationModel.from_json(data.decode())
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"location model {path}: {exc}") from None
    return replace(model, sha256=hashlib.sha256(data).hexdigest())


def features(masks: dict[str, np.ndarray], inside: np.ndarray, voxel_mm: float) -> np.ndarray:
    """:data:`FEATURES` of the lesion in ``masks`` (WT, TC, ET on the canonical grid, (k, j, i)
    in patient axes: k superior, j posterior, i left) in the frame of ``inside``.

    The lesion is the largest connected region of whole tumour (the one that made the study
    "tumour", :func:`models.predict.decide`) and the core and enhancing parts inside it.
    Raises ``ValueError`` when there is no whole tumour or no intracranial mask.
    """
    regions, count = ndimage.label(np.asarray(masks["WT"], bool))
    if not count or not inside.any():
        raise ValueError("features need a whole-tumour mask and an intracranial mask")
    wt = regions == 1 + int(np.argmax(np.bincount(regions.ravel())[1:]))
    tc = np.asarray(masks["TC"], bool) & wt
    core = tc if tc.any() else wt  # a non-enhancing lesion without core: its whole extent
    et = np.asarray(masks["ET"], bool) & core
    voxel_ml = voxel_mm**3 / 1000
    depth = ndimage.distance_transform_edt(inside, sampling=voxel_mm)[core]
    points = np.argwhere(inside).astype(float)
    centre, spread = points.mean(axis=0), points.std(axis=0) + 1e-6
    lesion = np.argwhere(core).astype(float)
    k, j, i = (lesion.mean(axis=0) - centre) / spread
    floor = np.percentile(points[:, 0], 10)
    return np.array(
        [
            np.log(wt.sum() * voxel_ml),
            np.log(core.sum() * voxel_ml),
            1.0 - core.sum() / wt.sum(),
            et.sum() / core.sum(),
            float(np.mean(depth <= _SURFACE_MM)),
            float(np.median(depth)),
            abs(i),
            -j,  # anterior positive
            k,
            float(np.mean(lesion[:, 0] < floor)),
        ]
    )


def combine(
    classifier: dict[str, float], location: dict[str, float], weight: float = 1.0
) -> dict[str, float]:
    """p(type) from the two experts: ``classifier ** weight * location`` over the tumour types
    both know, renormalised (a weighted product of experts; ``weight`` 1 is the plain product,
    the classifier's and the location model's errors taken as independent). Labels only the
    classifier has keep probability 0."""
    shared = [label for label in classifier if label in location]
    joint = {label: classifier[label] ** weight * location[label] for label in shared}
    total = sum(joint.values())
    if total <= 0:
        return dict(classifier)
    return {label: joint.get(label, 0.0) / total for label in classifier}
