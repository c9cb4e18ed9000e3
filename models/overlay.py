"""Colour maps and overlays for explanations and masks, in plain numpy.

The DICOM secondary capture, the PDF report and the API's PNG endpoint all show the same
pictures: a Grad-CAM heatmap blended over the plane it explains, and region outlines over a
source frame. Keeping them here (no matplotlib, no DICOM) lets every service draw them alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Grey levels the plane's intensities are stretched over: below and above these percentiles
# of the plane saturate, so a few bright vessels do not darken the whole picture.
_LOW_PERCENTILE, _HIGH_PERCENTILE = 1.0, 99.5
_UINT8_MAX = 255


def to_grey(plane: np.ndarray) -> np.ndarray:
    """``plane`` as 8-bit grey levels, contrast-stretched between robust percentiles."""
    plane = np.asarray(plane, dtype=np.float32)
    if plane.ndim != 2:
        raise ValueError(f"plane must be 2D, got shape {plane.shape}")
    finite = plane[np.isfinite(plane)]
    if finite.size == 0:
        return np.zeros(plane.shape, np.uint8)
    low, high = np.percentile(finite, [_LOW_PERCENTILE, _HIGH_PERCENTILE])
    scaled = (np.nan_to_num(plane, nan=low) - low) / max(float(high - low), 1e-6)
    return np.round(np.clip(scaled, 0.0, 1.0) * _UINT8_MAX).astype(np.uint8)


def heatmap_rgb(heatmap: np.ndarray) -> np.ndarray:
    """A jet-like colour map of ``heatmap`` (values in [0, 1]): blue (cold) to red (hot).

    Returns
    -------
    numpy.ndarray
        uint8 array of shape (rows, columns, 3).
    """
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2D, got shape {heat.shape}")
    # Piecewise-linear jet: each channel is a tent centred at 1/4 (blue), 2/4 (green), 3/4 (red).
    channels = [np.clip(1.5 - np.abs(4.0 * heat - centre), 0.0, 1.0) for centre in (3.0, 2.0, 1.0)]
    return np.round(np.stack(channels, axis=-1) * _UINT8_MAX).astype(np.uint8)


def blend(plane: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The heatmap's colours over the grey plane, as strongly as the heat is high.

    Each pixel mixes in the colour map with weight ``alpha * heat``: where the classifier did
    not look the anatomy stays untouched, where it looked most the colour covers ``alpha``.

    Parameters
    ----------
    plane
        The image the heatmap explains, any intensity scale.
    heatmap
        Same shape as ``plane``, values in [0, 1].
    alpha
        Weight of the colour at the hottest pixels, in [0, 1].

    Returns
    -------
    numpy.ndarray
        uint8 array of shape (rows, columns, 3).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if np.shape(plane) != np.shape(heatmap):
        raise ValueError(f"plane {np.shape(plane)} and heatmap {np.shape(heatmap)} differ")
    grey = to_grey(plane).astype(np.float32)[..., None]
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    weight = alpha * heat[..., None]
    mixed = (1.0 - weight) * grey + weight * heatmap_rgb(heat).astype(np.float32)
    return np.round(np.clip(mixed, 0, _UINT8_MAX)).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a 2D mask: in the mask with a 4-neighbour outside it."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~interior


def draw_outlines(
    plane: np.ndarray, regions: Sequence[tuple[np.ndarray, tuple[int, int, int]]]
) -> np.ndarray:
    """The grey plane with each region's outline drawn in its RGB colour, later ones on top.

    Returns
    -------
    numpy.ndarray
        uint8 array of shape (rows, columns, 3).
    """
    picture = np.repeat(to_grey(plane)[..., None], 3, axis=-1)
    for mask, colour in regions:
        if np.shape(mask) != np.shape(plane):
            raise ValueError(f"mask {np.shape(mask)} and plane {np.shape(plane)} differ")
        picture[outline(mask)] = colour
    return picture
