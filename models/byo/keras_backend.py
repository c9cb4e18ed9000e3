"""Keras models: forward passes, and Grad-CAM at a layer that may sit inside a nested model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def _conv_types() -> tuple[type, ...]:
    import keras

    return (
        keras.layers.Conv2D,
        keras.layers.SeparableConv2D,
        keras.layers.DepthwiseConv2D,
        keras.layers.Conv2DTranspose,
    )


def walk(model: Any) -> Iterator[Any]:
    """Every layer, those of nested models (a ``keras.applications`` base) in their place."""
    for layer in model.layers:
        inner = getattr(layer, "layers", None)
        if inner:
            yield from walk(layer)
        else:
            yield layer


def last_conv(model: Any) -> Any | None:
    convs = [layer for layer in walk(model) if isinstance(layer, _conv_types())]
    return convs[-1] if convs else None


class KerasBackend:
    def __init__(self, model: Any, layer: str | None) -> None:
        self.model = model
        found = last_conv(model) if layer is None else self._named(layer)
        self._target = found
        self.layer = None if found is None else str(found.name)
        self._wanted = layer

    def _named(self, name: str) -> Any | None:
        for layer in walk(self.model):
            if layer.name == name:
                return layer
        return None

    def forward(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        return np.asarray(self.model.predict(batch, verbose=0, batch_size=batch_size))

    def features_and_weights(
        self, batch: np.ndarray, class_index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        if self._target is None:
            last = last_conv(self.model)
            raise LookupError(
                f"no layer {self._wanted!r} in the model; its last convolutional layer is "
                f"{None if last is None else last.name!r}"
                if self._wanted
                else "the model has no convolutional layer"
            )
        target, captured = self._target, {}
        original = target.call
        x = tf.convert_to_tensor(batch)
        with tf.GradientTape() as tape:

            def watched(*args: Any, **kwargs: Any) -> Any:
                out = original(*args, **kwargs)
                tape.watch(out)
                captured["features"] = out
                return out

            target.call = watched
            try:
                predictions = self.model(x, training=False)
            finally:
                del target.call
            score = tf.reshape(predictions, (x.shape[0], -1))[:, class_index]
        features = captured.get("features")
        if features is None:
            raise LookupError(f"layer {self.layer!r} did not run in the forward pass")
        grads = tape.gradient(score, features)
        if grads is None:
            raise LookupError(f"the class score does not depend on layer {self.layer!r}")
        if len(features.shape) != 4:
            raise LookupError(f"layer {self.layer!r} does not output feature maps")
        maps = features[0].numpy()
        return maps, grads[0].numpy().mean(axis=(0, 1))
