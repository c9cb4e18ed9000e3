"""Study-level inference with the shipped (or configured) models.

Every finding is limited to the intracranial space (``inside``, from :mod:`models.brain`): the
2D models see only axial planes of the canonical grid that hold brain, with everything outside
the skull set to zero, so that orbits, face and neck can neither be called tumour nor explain a
class. A study is "tumour" when the 3D segmentation marks one connected region of whole tumour
of at least :data:`MIN_LESION_ML` inside the brain (:func:`decide`); only when it cannot run (a
contrast missing) does the detector decide, confident on consecutive planes. The class is the
classifier's mean over the planes where the tumour is (the segmentation's largest
whole-tumour areas, else the detector's surest planes); Grad-CAM explains the plane the class is
surest on. The 3D network segments brain, whole tumour, tumour core and enhancing tumour,
nested as BraTS regions are, and its masks end at the intracranial boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from models.classification.location import combine
from models.preprocessing import brain_normalise
from models.registry import ModelManifest, Preprocessing

# On the mean of _RUN neighbouring planes; set on the validation seeds (50000..), where tumour-free
# heads peak at 0.72 and the smallest pituitary lesion at 0.996.
DETECTION_THRESHOLD = 0.9
_RUN = 3  # planes averaged: a detection must hold on neighbouring planes
_TOP_PLANES = 5
# The largest connected region of whole tumour (mL inside the intracranial mask, face-connected
# voxels) that makes a study "tumour". Chosen on dev seeds no benchmark uses (bench/models.py
# --dev: whole heads 600000-600015, thin-skull heads 610000-610007, phantom heads 620000-620007):
# at 0.5 mL, 24/24 tumours (the smallest a 0.73 mL region of a pituitary lesion) and 5 of 8
# normal heads right, where the FLAIR detector found 21/24 and 4 of 8. The total volume instead
# of the largest region did the same but for a phantom normal head's scattered 2.4 mL.
MIN_LESION_ML = 0.5
NO_TUMOUR_LABEL = "notumor"  # the Kaggle data set's folder name
_BRAIN_PLANE_FRACTION = 0.05  # planes with less head than this are skipped
_BRAIN_AREA_OF_LARGEST = 0.4  # brain planes: at least this share of the largest one's area


@dataclass(frozen=True)
class Detection:
    tumour: bool
    probability: float  # study level
    plane_probabilities: np.ndarray  # per axial plane of the canonical grid
    planes: np.ndarray  # which k each probability belongs to


@dataclass(frozen=True)
class Classification:
    label: str
    index: int
    probabilities: dict[str, float]  # the study's: the classifier's, times the prior if given
    plane: int  # the k of the plane Grad-CAM explains
    classifier_probabilities: dict[str, float]  # the classifier's own mean over the planes


def head_planes(volume: np.ndarray) -> np.ndarray:
    """Axial planes (k) of the canonical grid that contain enough head to judge."""
    area = (volume > 0.1).sum(axis=(1, 2))
    return np.flatnonzero(area >= _BRAIN_PLANE_FRACTION * volume.shape[1] * volume.shape[2])


def brain_planes(inside: np.ndarray) -> np.ndarray:
    """Axial planes (k) whose intracranial area is enough to judge.

    At least :data:`_BRAIN_AREA_OF_LARGEST` of the study's largest intracranial plane: the
    slivers of temporal pole and cerebellum between the skull base's bones (the lowest few
    planes), which no training plane looked like once masked, are left out. Measured on 17
    whole heads: with them, one of five normal heads scored 0.99; without, the highest 0.65.
    """
    area = inside.sum(axis=(1, 2))
    floor = max(
        _BRAIN_PLANE_FRACTION * inside.shape[1] * inside.shape[2],
        _BRAIN_AREA_OF_LARGEST * float(area.max(initial=0)),
    )
    return np.flatnonzero((area >= floor) & (area > 0))


def brain_only(
    image: np.ndarray, inside: np.ndarray, preprocessing: Preprocessing = Preprocessing.BRAIN
) -> np.ndarray:
    """``image`` (a volume on the canonical grid) with everything outside the intracranial mask
    set to zero; a model whose manifest says ``brain`` also gets it scaled by the intracranial
    part's own robust maximum (what it was trained on), others keep the head's scale."""
    if preprocessing is Preprocessing.BRAIN:
        return brain_normalise(image, inside)
    return np.where(inside, image, 0).astype(np.float32)


def model_input(planes: np.ndarray, manifest: ModelManifest) -> np.ndarray:
    """(n, j, i) planes → the batch the manifest's model expects.

    Grid conventions: canonical planes centred in the input, (n, H, W, C). Picture conventions
    (``raw``, ``unit``, ``tf``, ``caffe``, ``torch``): :func:`models.byo.pictures.picture_batch`.
    """
    if manifest.takes_pictures:
        from models.byo.pictures import picture_batch

        return picture_batch(planes, manifest)
    height, width = manifest.size
    channels = manifest.channel_count
    n, j, i = planes.shape
    if manifest.on_canonical_grid:
        out = np.zeros((n, height, width), np.float32)
        top, left = (height - j) // 2, (width - i) // 2
        out[:, top : top + j, left : left + i] = planes
    else:  # percentile: resize the plane, then scale it by its own robust maximum
        out = ndimage.zoom(planes, (1, height / j, width / i), order=1).astype(np.float32)
        out = np.clip(out / 1.5, 0, 1)
        if manifest.preprocessing is Preprocessing.PERCENTILE_255:
            out = out * 255.0
    return np.repeat(out[..., None], channels, axis=-1)


def detect(
    model: Any, manifest: ModelManifest, volume: np.ndarray, inside: np.ndarray | None = None
) -> Detection:
    """Tumour or not, from one contrast on the canonical grid ``(k, j, i)``.

    With ``inside`` (the intracranial mask), only planes that hold brain are judged, and only
    their intracranial part.
    """
    if inside is None:
        planes = head_planes(volume)
        inputs = volume[planes]
    else:
        planes = brain_planes(inside)
        inputs = brain_only(volume, inside, manifest.preprocessing)[planes]
    probs = model.predict(model_input(inputs, manifest), verbose=0, batch_size=32)
    probs = np.asarray(probs, np.float32).reshape(len(planes), -1)[:, -1]
    smoothed = ndimage.uniform_filter1d(probs, _RUN, mode="nearest") if len(probs) else probs
    study = float(smoothed.max()) if len(smoothed) else 0.0
    return Detection(study >= DETECTION_THRESHOLD, study, probs, planes)


@dataclass(frozen=True)
class Decision:
    """Whether the study holds a tumour, and what said so."""

    tumour: bool
    decided_by: str  # "segmentation" or "detector"
    # The largest connected region of whole tumour inside the brain; None without segmentation.
    largest_lesion_ml: float | None


def decide(detection: Detection, masks: dict[str, np.ndarray] | None, voxel_ml: float) -> Decision:
    """Tumour or not: the segmentation's largest connected region of whole tumour inside the
    brain when there are masks (at least :data:`MIN_LESION_ML`), else the detector's call.

    The 3D network sees all four contrasts and the whole volume; the 2D detector sees one
    contrast a plane at a time and, on heads unlike its training data, is confident on normal
    planes. A tumour is one connected lesion; a network's false positives on an unfamiliar head
    are scattered voxels (see :data:`MIN_LESION_ML` for what was measured).
    """
    if masks is None:
        return Decision(detection.tumour, "detector", None)
    regions, count = ndimage.label(masks["WT"])
    largest = int(np.bincount(regions.ravel())[1:].max()) if count else 0
    millilitres = largest * voxel_ml
    return Decision(millilitres >= MIN_LESION_ML, "segmentation", millilitres)


def classification_planes(
    detection: Detection, masks: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, str]:
    """Where the class is decided: the planes with the largest whole-tumour area when the
    segmentation found tumour ("segmentation"), else the detector's surest planes ("detection")."""
    if masks is not None and masks["WT"].any():
        area = masks["WT"].sum(axis=(1, 2))
        order = np.argsort(area, kind="stable")[::-1][:_TOP_PLANES]
        return np.sort(order[area[order] > 0]), "segmentation"
    order = np.argsort(detection.plane_probabilities, kind="stable")[::-1][:_TOP_PLANES]
    return np.sort(detection.planes[order]), "detection"


def classify(
    model: Any,
    manifest: ModelManifest,
    volume: np.ndarray,
    detection: Detection,
    planes: np.ndarray | None = None,
    inside: np.ndarray | None = None,
    prior: dict[str, float] | None = None,
    classifier_weight: float = 1.0,
) -> Classification:
    """The tumour class: mean probabilities over ``planes`` (default: the detector's surest).

    ``detection.tumour`` says whether there is a tumour (the pipeline sets it from
    :func:`decide`). Once one is found, the classifier's "no tumour" output is set aside and the
    probabilities are renormalised over the tumour types: p(type | tumour). (A site model
    without a "no tumour" label is used as it is.) With ``inside``, the classifier sees only the
    intracranial part of each plane. With ``prior`` (the location model's p(type), from
    :mod:`models.classification.location`), the class is that of the two experts' product
    (:func:`~models.classification.location.combine`, the classifier's share
    ``classifier_weight``); Grad-CAM's plane is the one where the
    classifier is surest of that class.
    """
    chosen = classification_planes(detection)[0] if planes is None else np.asarray(planes)
    if inside is None:
        inputs = volume[chosen]
    else:
        inputs = brain_only(volume, inside, manifest.preprocessing)[chosen]
    probs = np.asarray(model.predict(model_input(inputs, manifest), verbose=0))
    mean = probs.mean(axis=0)
    if detection.tumour and NO_TUMOUR_LABEL in manifest.labels:
        mean[manifest.labels.index(NO_TUMOUR_LABEL)] = 0.0
        mean = mean / max(float(mean.sum()), 1e-12)
    own = {label: float(p) for label, p in zip(manifest.labels, mean, strict=True)}
    study = own if prior is None else combine(own, prior, classifier_weight)
    index = manifest.labels.index(max(study, key=study.__getitem__))
    return Classification(
        label=manifest.labels[index],
        index=index,
        probabilities=study,
        plane=int(chosen[int(np.argmax(probs[:, index]))]),
        classifier_probabilities=own,
    )


def grad_cam(
    model: Any,
    manifest: ModelManifest,
    plane: np.ndarray,
    class_index: int,
) -> np.ndarray:
    """Grad-CAM heatmap in [0, 1], aligned with ``plane`` (j, i) of the canonical grid.

    ``model`` is a loaded 2D model (:class:`models.byo.slice_model.SliceModel`); its target
    layer is the manifest's ``gradcam_layer``, else its last convolutional layer.
    """
    cam = model.explain(model_input(plane[None], manifest), class_index)
    height, width = manifest.size
    cam = ndimage.zoom(cam, (height / cam.shape[0], width / cam.shape[1]), order=1)
    j, i = plane.shape
    if manifest.on_canonical_grid:
        top, left = (height - j) // 2, (width - i) // 2
        cam = cam[top : top + j, left : left + i]
    else:
        cam = ndimage.zoom(cam, (j / height, i / width), order=1)
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).astype(np.float32)


def segment(
    net: Any,
    image: np.ndarray,
    window: tuple[int, int, int] | None = None,
    inside: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Masks on the canonical grid from the four contrasts ``(4, k, j, i)``, regions nested.

    With ``window`` (the crop size the network was trained on), the grid is covered by windows
    overlapping by half and their probabilities averaged: a network with instance normalisation
    must see crops like those it learnt from. With ``inside`` (the intracranial mask), tumour
    regions end at its boundary.
    """
    import torch

    image = np.ascontiguousarray(image, np.float32)
    shape = image.shape[1:]
    size = tuple(shape) if window is None else window
    probabilities = np.zeros((4, *shape), np.float32)
    counts = np.zeros(shape, np.float32)
    with torch.no_grad():
        for start in _window_starts(shape, size):
            sl = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
            logits = net(torch.from_numpy(np.ascontiguousarray(image[(slice(None), *sl)]))[None])
            probabilities[(slice(None), *sl)] += torch.sigmoid(logits)[0].numpy()
            counts[sl] += 1
    masks = probabilities / counts > 0.5
    brain, wt, tc, et = masks
    if inside is not None:
        wt = wt & inside
    tc = tc & wt
    et = et & tc
    return {"brain": brain | wt, "WT": wt, "TC": tc, "ET": et}


def _window_starts(shape: tuple[int, ...], size: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Corners of windows of ``size`` covering ``shape``, overlapping by about half."""
    axes = []
    for n, w in zip(shape, size, strict=True):
        if w >= n:
            axes.append([0])
            continue
        count = int(np.ceil((n - w) / (w / 2))) + 1
        axes.append(sorted({round(v) for v in np.linspace(0, n - w, count)}))
    return [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]
