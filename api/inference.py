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

    def _loaded_model(self) -> Any:
        if self._model is None:
            from models.registry import load

            manifest = self.manifest()
            try:
                self._model = load(manifest)
            except (OSError, ValueError) as exc:
                raise ClassifierUnavailable(f"classification model: {exc}") from exc
        return self._model

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A picture as the plane the model sees: normalised, and for a canonical-grid model
        scaled to fit the grid's plane (aspect kept); other models resize in ``model_input``."""
        from scipy import ndimage

        from models.preprocessing import normalise

        plane = normalise(np.clip(image - float(np.min(image)), 0, None))
        if self.manifest().on_canonical_grid:
            height, width = self.manifest().input_shape[:2]
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
            probs = np.asarray(model.predict(batch, verbose=0), dtype=np.float64)
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
