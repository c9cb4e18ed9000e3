"""The outline of a binary mask as a closed polygon on pixel edges, for SR image regions.

A TID 1410 planar ROI needs a region a viewer can draw (a closed SCOORD POLYLINE, its first
vertex repeated last): here the outer boundary of the mask's largest 4-connected part, holes
filled, traced along pixel edges so that it encloses exactly the part's pixels. Vertices are
(column, row) in the image's pixel coordinates, origin the top left corner of the top left
pixel (DICOM's SCOORD convention).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Directions along pixel edges as (d column, d row), counter-clockwise in the image (row down).
_RIGHT, _DOWN, _LEFT, _UP = (1, 0), (0, 1), (-1, 0), (0, -1)
_TURNS = {_RIGHT: (_DOWN, _RIGHT, _UP), _DOWN: (_LEFT, _DOWN, _RIGHT)}
_TURNS |= {_LEFT: (_UP, _LEFT, _DOWN), _UP: (_RIGHT, _UP, _LEFT)}  # right, straight, left


def largest_part(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected part of a 2-D mask, its holes filled."""
    labels, count = ndimage.label(mask)
    if count == 0:
        raise ValueError("the mask is empty: nothing to outline")
    sizes = np.bincount(labels.ravel())[1:]
    return np.asarray(ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes))))


def outline_polygon(mask: np.ndarray) -> np.ndarray:
    """The closed outline (first vertex repeated last) of :func:`largest_part`, (n, 2) float."""
    part = np.pad(largest_part(mask), 1)
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(start: tuple[int, int], direction: tuple[int, int]) -> None:
        edges.setdefault(start, []).append(direction)

    # Each edge between a part pixel and a background pixel, the part on its right (the image's
    # row axis points down, so this runs clockwise on screen). Corners in padded coordinates.
    rows, cols = np.nonzero(part)
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        if not part[r - 1, c]:
            add((c, r), _RIGHT)
        if not part[r, c + 1]:
            add((c + 1, r), _DOWN)
        if not part[r + 1, c]:
            add((c + 1, r + 1), _LEFT)
        if not part[r, c - 1]:
            add((c, r + 1), _UP)
    start = min(edges, key=lambda v: (v[1], v[0]))  # the top left corner: on the outer boundary
    vertex, direction, corners = start, edges[start][0], [start]
    while True:
        edges[vertex].remove(direction)
        vertex = (vertex[0] + direction[0], vertex[1] + direction[1])
        if vertex == start:
            break
        # At a corner shared with a diagonal neighbour, turn right: the part's pixels stay apart.
        turned = next(d for d in _TURNS[direction] if d in edges.get(vertex, ()))
        if turned != direction:
            corners.append(vertex)
        direction = turned
    corners.append(start)
    return np.array(corners, dtype=float) - 1.0  # undo the padding
