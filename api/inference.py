"""The slice classifier behind ``/api/classify`` and ``/predict``, loaded on first use.

TensorFlow is imported when the model is first needed, never when ``api`` is imported: the
API starts in a second and serves everything else without it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.registry import ModelManifest, Task

# The plane a canonical-grid model was trained on: (j, i) of the 2 mm grid.
_CANONICAL_PLANE = (120, 96)


class ClassifierUnavailable(Exception):
    """The model cannot be loaded (missing or altered weights, unreadable manifest)."""


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probabilities: dict[str, float]

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]


class Classifier:
    """Loads the configured classification model once and serialises its use.

    Parameters
    ----------
    manifest_path
        ``Settings.models.classification``; ``None``: the shipped model.
    """

    def __init__(self, manifest_path: Path | None) -> None:
        self._manifest_path = manifest_path
        self._lock = threading.Lock()
        self._manifest: ModelManifest | None = None
        self._model: Any = None
        self._failure: str | None = None

    def manifest(self) -> ModelManifest:
        """The model's manifest (labels, input shape, version); no weights are read."""
        from models.registry import manifest_for

        if self._manifest is None:
            try:
                self._manifest = manifest_for(Task.CLASSIFICATION, self._manifest_path)
            except (OSError, ValueError) as exc:
                raise ClassifierUnavailable(f"classification manifest: {exc}") from exc
        return self._manifest

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def state(self) -> dict[str, object]:
        """For ``/api/health``: ``ready`` (loaded and checked), ``failed`` (why) or
        ``not_loaded`` (loaded on first use)."""
        if self._model is not None:
            return {
                "state": "ready",
                "check_seconds": self._model.check_seconds,
                "gradcam_layer": self._model.layer,
            }
        if self._failure is not None:
            return {"state": "failed", "why": self._failure}
        return {"state": "not_loaded"}

    def load(self) -> None:
        """Load and check the model now (the API service does at start), not on first use.

        Raises
        ------
        ClassifierUnavailable
            Why, naming the manifest field to fix.
        """
        with self._lock:
            self._loaded_model()

    def _loaded_model(self) -> Any:
        if self._model is None:
            from models.registry import load

            try:
                manifest = self.manifest()
                self._model = load(manifest)
            except (OSError, ValueError) as exc:
                self._failure = str(exc)
                raise ClassifierUnavailable(f"classification model: {exc}") from exc
            self._failure = None
        return self._model

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A picture as the plane the model sees.

        A model of picture conventions (``raw``, ``tf``, ...) gets the 8-bit picture as decoded
        (``uint8``; a 16-bit DICOM windowed to 8 bits), resized and scaled in ``model_input``;
        the grid models get it normalised, and for a canonical-grid model scaled to fit the
        grid's plane (aspect kept)."""
        from scipy import ndimage

        from models.preprocessing import normalise

        if self.manifest().takes_pictures:
            return _eight_bit(image)
        plane = normalise(np.clip(image - float(np.min(image)), 0, None))
        if self.manifest().on_canonical_grid:
            height, width = self.manifest().size
            target = (min(_CANONICAL_PLANE[0], height), min(_CANONICAL_PLANE[1], width))
            scale = min(target[0] / plane.shape[0], target[1] / plane.shape[1])
            shape = (max(1, round(plane.shape[0] * scale)), max(1, round(plane.shape[1] * scale)))
            plane = ndimage.zoom(
                plane, (shape[0] / plane.shape[0], shape[1] / plane.shape[1]), order=1
            )
            plane = plane[: target[0], : target[1]]
        return plane.astype(np.float32)

    def predict(self, planes: list[np.ndarray]) -> list[Prediction]:
        """Classify prepared planes in one batch."""
        from models.predict import model_input

        manifest = self.manifest()
        batch = np.concatenate([model_input(plane[None], manifest) for plane in planes])
        with self._lock:
            model = self._loaded_model()
            try:
                probs = np.asarray(model.predict(batch, verbose=0), dtype=np.float64)
            except ValueError as exc:  # outputs declared probabilities that are not
                raise ClassifierUnavailable(f"classification model: {exc}") from exc
        probs = probs.reshape(len(planes), -1)
        results = []
        for row in probs:
            index = int(np.argmax(row))
            results.append(
                Prediction(
                    index=index,
                    label=manifest.labels[index],
                    probabilities={
                        label: float(p) for label, p in zip(manifest.labels, row, strict=True)
                    },
                )
            )
        return results

    def explain(self, plane: np.ndarray, class_index: int) -> np.ndarray:
        """Grad-CAM of ``class_index`` on a prepared plane, in [0, 1], aligned with it."""
        from models.predict import grad_cam

        with self._lock:
            return grad_cam(self._loaded_model(), self.manifest(), plane, class_index)


def _eight_bit(image: np.ndarray) -> np.ndarray:
    """A decoded picture as 8-bit grey: as it is when its values are 8-bit grey levels (a PNG
    or JPEG), else windowed between robust percentiles (:func:`models.overlay.to_grey`)."""
    from models.overlay import to_grey

    finite = np.isfinite(image).all()
    if finite and float(image.min()) >= 0 and float(image.max()) <= 255:
        return np.round(image).astype(np.uint8)
    return to_grey(image)
