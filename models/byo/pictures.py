"""A picture as a picture-trained model's input: what its authors did before ``model.predict``.

The node's own planes (the canonical grid) become 8-bit pictures first, windowed as for display
(:func:`models.overlay.to_grey`): the JPEG or PNG a model from the public data sets was trained
on. A picture that is already 8-bit (``uint8``: an uploaded PNG or JPEG) is used as it is. Then,
in this order: resize to the input size with the manifest's PIL filter (as
``keras.utils.load_img(target_size=...)`` and torchvision's ``Resize`` on PIL images do), grey
repeated into RGB when the model takes three channels, the named scaling, the model's layout.
"""

from __future__ import annotations

import numpy as np

from models.overlay import to_grey
from models.registry import Layout, ModelManifest, Preprocessing, Resize

# keras.applications.imagenet_utils, mode "caffe" (BGR order) and mode "torch" (RGB order).
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)
TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)


def as_picture(plane: np.ndarray) -> np.ndarray:
    """``plane`` as 8-bit grey: a ``uint8`` plane as it is, anything else windowed."""
    if plane.dtype == np.uint8:
        return plane
    return to_grey(plane)


def resized(picture: np.ndarray, size: tuple[int, int], method: Resize) -> np.ndarray:
    """An 8-bit picture resized to ``size`` (height, width) with PIL's ``method`` filter."""
    from PIL import Image

    height, width = size
    if picture.shape == (height, width):
        return picture
    image = Image.fromarray(np.ascontiguousarray(picture), mode="L")
    filters = {
        Resize.NEAREST: Image.Resampling.NEAREST,
        Resize.BILINEAR: Image.Resampling.BILINEAR,
        Resize.BICUBIC: Image.Resampling.BICUBIC,
        Resize.LANCZOS: Image.Resampling.LANCZOS,
        Resize.BOX: Image.Resampling.BOX,
    }
    return np.asarray(image.resize((width, height), filters[method]))


def scaled(x: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """(n, H, W, C) float32 values 0..255 scaled by the named convention."""
    if preprocessing is Preprocessing.RAW:
        return x
    if preprocessing is Preprocessing.UNIT:
        return x / np.float32(255.0)
    if preprocessing is Preprocessing.TF:
        return x / np.float32(127.5) - np.float32(1.0)
    if preprocessing is Preprocessing.CAFFE:
        return x[..., ::-1] - CAFFE_BGR_MEAN
    if preprocessing is Preprocessing.TORCH:
        return (x / np.float32(255.0) - TORCH_MEAN) / TORCH_STD
    raise ValueError(f"preprocessing {preprocessing.value!r} is not a picture convention")


def picture_batch(planes: np.ndarray | list[np.ndarray], manifest: ModelManifest) -> np.ndarray:
    """Planes (any size; ``uint8`` pictures or canonical-grid planes) → the model's batch."""
    pictures = [resized(as_picture(np.asarray(p)), manifest.size, manifest.resize) for p in planes]
    height, width = manifest.size
    if not pictures:
        return np.zeros((0, *manifest.input_shape), np.float32)
    x = np.stack(pictures).astype(np.float32).reshape(len(pictures), height, width, 1)
    x = np.repeat(x, manifest.channel_count, axis=-1)
    x = np.ascontiguousarray(scaled(x, manifest.preprocessing), dtype=np.float32)
    if manifest.layout is Layout.CHANNELS_FIRST:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x
