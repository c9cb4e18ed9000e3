"""One interface over a 2D model in Keras, PyTorch or ONNX: probabilities and Grad-CAM.

:class:`SliceModel` keeps Keras' ``predict(batch, verbose=0, batch_size=32)`` so the pipeline
calls every model alike. Raw outputs become probabilities as the manifest's ``output`` says;
outputs declared as probabilities (``output = "none"``) are checked to be so, every time.
Grad-CAM weighs the target layer's feature maps by the mean gradient of the class score (the
raw output: the logit where the model emits logits); the layer is the manifest's
``gradcam_layer``, else the last convolutional layer, nested base models included:

- Keras: the layer's ``call`` is watched on a gradient tape for one forward pass.
- PyTorch modules: a forward hook on the layer.
- ONNX (and TorchScript, which takes no hooks: exported to ONNX in memory for Grad-CAM only):
  the graph after the layer is cut out, and the gradient of the score with respect to each
  feature map is taken by central differences on it (exact for the usual pooling and dense
  head, whose score is linear in the feature maps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from models.registry import Activation, Framework, Layout, ManifestError, ModelManifest

# Outputs declared as probabilities must lie in [0, 1] (and rows of a softmax sum to 1).
_PROBABILITY_TOLERANCE = 1e-3


class Backend(Protocol):
    layer: str | None  # the Grad-CAM layer, once found

    def forward(self, batch: np.ndarray, batch_size: int) -> np.ndarray: ...

    def features_and_weights(
        self, batch: np.ndarray, class_index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Feature maps (h, w, c) of one input and each map's Grad-CAM weight (c,)."""
        ...


@dataclass
class SliceModel:
    """A loaded 2D model with its manifest; :func:`models.byo.check.startup_check` fills
    ``check_seconds``."""

    manifest: ModelManifest
    backend: Backend
    check_seconds: float | None = field(default=None)

    @classmethod
    def open(cls, manifest: ModelManifest) -> SliceModel:
        if manifest.framework is Framework.KERAS:
            import keras

            from models.byo.keras_backend import KerasBackend

            model = keras.saving.load_model(manifest.file, compile=False)
            return cls(manifest, KerasBackend(model, manifest.gradcam_layer))
        if manifest.framework is Framework.ONNX:
            from models.byo.onnx_backend import OnnxBackend

            return cls(manifest, OnnxBackend.from_file(manifest.file, manifest.gradcam_layer))
        from models.byo.torch_backend import torch_backend
        from models.registry import load_torch

        return cls(manifest, torch_backend(load_torch(manifest), manifest))

    @property
    def layer(self) -> str | None:
        return self.backend.layer

    def raw(self, batch: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """The model's outputs as they are, (n, outputs)."""
        out = np.asarray(self.backend.forward(batch, batch_size), np.float64)
        return out.reshape(len(batch), -1)

    def predict(self, batch: np.ndarray, verbose: int = 0, batch_size: int = 32) -> np.ndarray:
        """Probabilities (n, labels), as the manifest's ``output`` declares them."""
        del verbose  # Keras' signature
        return probabilities(self.raw(batch, batch_size), self.manifest)

    def explain(self, batch: np.ndarray, class_index: int) -> np.ndarray:
        """Grad-CAM of ``class_index`` for one input, on the feature maps' grid (h, w), >= 0."""
        features, weights = self.backend.features_and_weights(batch[:1], class_index)
        return np.maximum((features * weights[None, None, :]).sum(axis=-1), 0).astype(np.float32)


def probabilities(raw: np.ndarray, manifest: ModelManifest) -> np.ndarray:
    """``raw`` outputs turned into probabilities by the declared ``output`` activation.

    Raises
    ------
    ManifestError
        ``output = "none"`` while the outputs are not probabilities (logits).
    """
    if manifest.output is Activation.SOFTMAX:
        shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
        return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    if manifest.output is Activation.SIGMOID:
        return (1.0 / (1.0 + np.exp(-raw))).astype(np.float32)
    why = not_probabilities(raw, exclusive=len(manifest.labels) > 1)
    if why:
        raise ManifestError(
            manifest.source or manifest.name,
            "output",
            f"'none' declares probabilities, but {why}: the model emits logits; declare "
            "output = 'softmax' (one class per picture) or 'sigmoid' (a score per label)",
        )
    return raw.astype(np.float32)


def not_probabilities(raw: np.ndarray, exclusive: bool) -> str | None:
    """Why ``raw`` cannot be probabilities (out of [0, 1], rows not summing to 1); None: can."""
    if raw.size == 0:
        return None
    low, high = float(raw.min()), float(raw.max())
    if not np.isfinite(raw).all():
        return "they are not finite"
    if low < -_PROBABILITY_TOLERANCE or high > 1 + _PROBABILITY_TOLERANCE:
        return f"they range from {low:.3g} to {high:.3g}"
    if exclusive:
        sums = raw.sum(axis=1)
        if np.abs(sums - 1).max() > _PROBABILITY_TOLERANCE:
            return f"their rows sum to {float(sums.min()):.3g}..{float(sums.max()):.3g}, not 1"
    return None


def channels_last(features: np.ndarray, layout: Layout) -> np.ndarray:
    """(c, h, w) or (h, w, c) feature maps as (h, w, c)."""
    return features.transpose(1, 2, 0) if layout is Layout.CHANNELS_FIRST else features


def layer_error(manifest: ModelManifest, why: str) -> ManifestError:
    return ManifestError(manifest.source or manifest.name, "gradcam_layer", why)
