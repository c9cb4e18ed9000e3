"""Small 2D CNNs for axial slices of the canonical grid; Grad-CAM reads ``last_conv``."""

from __future__ import annotations

from typing import Any

INPUT_SHAPE = (128, 128, 1)
LAST_CONV = "last_conv"


def slice_cnn(outputs: int, activation: str, name: str) -> Any:
    """A strided stem, four conv stages (24-32-64-128 filters), global pooling, a dense head."""
    import keras
    from keras import layers

    inputs = keras.Input(INPUT_SHAPE, name="slice")
    # A strided stem: 2 mm planes carry little detail at full resolution, and CPUs are slow.
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
    for index, filters in enumerate((24, 32, 64, 128)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        last = index == 3
        x = layers.Conv2D(filters, 3, padding="same", name=LAST_CONV if last else None)(x)
        x = layers.ReLU()(x)
        if not last:
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs_ = layers.Dense(outputs, activation=activation, name="probabilities")(x)
    return keras.Model(inputs, outputs_, name=name)
