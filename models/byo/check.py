"""The start-up check of a 2D model: can it do what its task needs, before any request?

One batch of two dummy planes (mid-grey, and seeded noise) goes through the manifest's input
path and the model; the outputs must be one per label and, as declared, probabilities or
logits; a classifier must then explain the first with Grad-CAM. A failure raises
:class:`~models.registry.ManifestError` naming the field to fix.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from models.byo.slice_model import SliceModel, layer_error, not_probabilities
from models.registry import Activation, ManifestError, ModelManifest, Task

log = logging.getLogger(__name__)
_DUMMY_SIDE = 96


def dummy_planes() -> np.ndarray:
    """Two 8-bit pictures: mid-grey, and noise from a fixed seed."""
    noise = np.random.default_rng(0).integers(0, 256, (_DUMMY_SIDE, _DUMMY_SIDE))
    grey = np.full((_DUMMY_SIDE, _DUMMY_SIDE), 128)
    return np.stack([grey, noise]).astype(np.uint8)


def _error(manifest: ModelManifest, name: str, why: str) -> ManifestError:
    return ManifestError(manifest.source or manifest.name, name, why)


def startup_check(model: SliceModel) -> float:
    """Run the check; return (and record in ``model.check_seconds``) how long it took.

    Raises
    ------
    ManifestError
        ``input_shape``/``layout``/``channels`` when the model refuses the input, ``labels``
        when the outputs are not one per label, ``output`` when the activation is wrong,
        ``gradcam_layer`` when Grad-CAM cannot run.
    """
    from models.predict import model_input

    manifest = model.manifest
    started = time.perf_counter()
    planes = dummy_planes()
    if not manifest.takes_pictures:  # the grid conventions take planes of the 2 mm grid
        planes = (planes / 255.0).astype(np.float32)
    batch = model_input(planes, manifest)
    try:
        raw = model.raw(batch)
    except Exception as exc:  # any framework's shape error: name the fields
        raise _error(
            manifest,
            "input_shape",
            f"the model refused a batch of shape {list(batch.shape)} "
            f"(layout {manifest.layout.value}, channels {manifest.channels.value}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
        ) from exc
    if raw.shape[1] != len(manifest.labels):
        raise _error(
            manifest,
            "labels",
            f"{len(manifest.labels)} labels for {raw.shape[1]} outputs: name each, in order",
        )
    looks_like_probabilities = not_probabilities(raw, exclusive=raw.shape[1] > 1) is None
    if manifest.output is Activation.SOFTMAX and raw.shape[1] > 1 and looks_like_probabilities:
        raise _error(
            manifest,
            "output",
            "'softmax', but the outputs already are probabilities (rows in [0, 1] summing to "
            "1): the model ends in softmax itself; declare output = 'none'",
        )
    model.predict(batch)  # output = "none": refuses logits, naming the field
    if manifest.task is Task.CLASSIFICATION:
        try:
            cam = model.explain(batch[:1], int(np.argmax(raw[0])))
        except LookupError as exc:
            raise layer_error(manifest, str(exc)) from exc
        if cam.ndim != 2 or not np.isfinite(cam).all():
            raise layer_error(manifest, f"Grad-CAM gave a map of shape {cam.shape}, not finite 2D")
    model.check_seconds = round(time.perf_counter() - started, 3)
    log.info(
        "model checked",
        extra={
            "model": manifest.name,
            "version": manifest.version,
            "gradcam_layer": model.layer,
            "check_seconds": model.check_seconds,
        },
    )
    return model.check_seconds
