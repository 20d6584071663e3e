"""Shape measurements of a lesion mask: geometry for research, not a diagnosis.

The outline is the 0.5 iso-contour of the mask smoothed with a Gaussian of one pixel, found by marching squares
with linear interpolation. Counting pixel edges would make a disc's perimeter 8r instead of 2πr, and the unsmoothed
staircase still overestimates it by about 5 %; the smoothed contour is within about 1 % for discs, ellipses and
rectangles of a few dozen pixels and more. Regions thinner than about two pixels have no contour and add area only.
"""

from __future__ import annotations

import math

import numpy as np

DISCLAIMER = "Geometric measurements of the segmented region, for research; they are not a diagnosis."
SMOOTHING_SIGMA_PX = 1.0


def _cropped(mask: np.ndarray) -> np.ndarray:
    """The lesion's bounding box with a background margin wide enough for the smoothing (photos are much larger).

    Every measurement here is unchanged by the shift.
    """
    mask = np.asarray(mask).astype(bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return np.zeros((1, 1), dtype=bool)
    return np.pad(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], int(math.ceil(3 * SMOOTHING_SIGMA_PX)) + 1)


def _crossings(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Marching-squares crossing points of the cells the contour passes: (cells, 4, 2) as (row, column), and which
    of the four edges (top, right, bottom, left) it crosses. ``mask`` must have a background margin (:func:`_cropped`).
    """
    from scipy import ndimage

    field = ndimage.gaussian_filter(mask.astype(np.float32), SMOOTHING_SIGMA_PX, mode="constant", truncate=3.0)
    inside = field > 0.5
    edges = (  # (start corner, end corner) offsets of each cell edge
        ((0, 0), (0, 1)),
        ((0, 1), (1, 1)),
        ((1, 0), (1, 1)),
        ((0, 0), (1, 0)),
    )
    height, width = field.shape[0] - 1, field.shape[1] - 1

    def corner(values, offset):
        return values[offset[0] : offset[0] + height, offset[1] : offset[1] + width]

    crosses = [corner(inside, a) != corner(inside, b) for a, b in edges]
    cell_rows, cell_cols = np.nonzero(crosses[0] | crosses[1] | crosses[2] | crosses[3])
    points = np.empty((len(cell_rows), 4, 2))
    for index, (a, b) in enumerate(edges):
        start = field[cell_rows + a[0], cell_cols + a[1]].astype(np.float64)
        end = field[cell_rows + b[0], cell_cols + b[1]].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.nan_to_num((0.5 - start) / (end - start))
        points[:, index, 0] = cell_rows + a[0] + t * (b[0] - a[0])
        points[:, index, 1] = cell_cols + a[1] + t * (b[1] - a[1])
    return points, np.stack([edge[cell_rows, cell_cols] for edge in crosses], axis=-1)


def _contour_length(points: np.ndarray, exists: np.ndarray) -> float:
    count = exists.sum(axis=-1)
    pairs = points[count == 2][exists[count == 2]].reshape(-1, 2, 2)
    length = float(np.linalg.norm(pairs[:, 0] - pairs[:, 1], axis=-1).sum())
    saddles = points[count == 4]  # two segments; of the two possible pairings, the shorter

    def pair_length(a, b, c, d):
        return np.linalg.norm(saddles[:, a] - saddles[:, b], axis=-1) + np.linalg.norm(
            saddles[:, c] - saddles[:, d], axis=-1
        )

    return length + float(np.minimum(pair_length(0, 3, 1, 2), pair_length(0, 1, 2, 3)).sum())


def perimeter_pixels(mask: np.ndarray) -> float:
    """Length, in pixels, of the smoothed 0.5 contour around every lesion region (holes included)."""
    return _contour_length(*_crossings(_cropped(mask)))


def _diameter(points: np.ndarray) -> float:
    hull = _convex_hull(points)
    if len(hull) < 2:
        return 0.0
    diff = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; returns the hull's vertices (fewer points for the diameter search)."""
    pts = sorted(set(map(tuple, points)))
    if len(pts) < 3:
        return np.array(pts, dtype=np.float64).reshape(-1, 2)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def chain(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return np.array(chain(pts) + chain(reversed(pts)), dtype=np.float64)


def longest_diameter_pixels(mask: np.ndarray) -> float:
    """Largest distance between two points of the contour (the maximum Feret diameter), in pixels."""
    points, exists = _crossings(_cropped(mask))
    return _diameter(points[exists])


def principal_axes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (row, column) and the unit principal axes (major first) of the lesion pixels, from image moments."""
    weights = np.asarray(mask, dtype=np.float64)
    area = weights.sum()
    rows, cols = np.arange(weights.shape[0], dtype=np.float64), np.arange(weights.shape[1], dtype=np.float64)
    row_sums, col_sums = weights.sum(axis=1), weights.sum(axis=0)
    centroid = np.array([row_sums @ rows, col_sums @ cols]) / area
    dr, dc = rows - centroid[0], cols - centroid[1]
    covariance = np.array([[row_sums @ dr**2, dr @ weights @ dc], [0.0, col_sums @ dc**2]]) / area
    covariance[1, 0] = covariance[0, 1]
    _, vectors = np.linalg.eigh(covariance)
    return centroid, vectors[:, ::-1].T


def asymmetry(mask: np.ndarray) -> tuple[float, float]:
    """Share of the lesion's area not covered by its mirror image about the major and about the minor axis.

    The mirror image is the mask reflected about the axis through the centroid (nearest-pixel sampling); 0 means
    mirror-symmetric, 1 means no overlap at all.
    """
    from scipy import ndimage

    mask = _cropped(mask)
    area = int(mask.sum())
    if area == 0:
        return 0.0, 0.0
    centroid, axes = principal_axes(mask)
    result = []
    for axis in axes:
        reflection = 2.0 * np.outer(axis, axis) - np.eye(2)  # its own inverse, so it maps output to input too
        mirrored = ndimage.affine_transform(
            mask.astype(np.uint8), reflection, offset=centroid - reflection @ centroid, order=0, mode="constant"
        )
        result.append(1.0 - float(np.count_nonzero(mirrored.astype(bool) & mask)) / area)
    return result[0], result[1]


def measure(mask: np.ndarray, pixel_size_mm: float | None = None) -> dict[str, float | None]:
    """All measurements of a (rows, columns) mask; lengths in pixels, and in mm when ``pixel_size_mm`` is given.

    Keys: ``area_px``, ``area_mm2``, ``perimeter_px``, ``perimeter_mm``, ``longest_diameter_px``,
    ``longest_diameter_mm``, ``equivalent_diameter_px`` (of the disc with the same area), ``equivalent_diameter_mm``,
    ``compactness`` (4π·area/perimeter², 1 for a disc), ``asymmetry_major_axis``, ``asymmetry_minor_axis``
    (see :func:`asymmetry`). The mm values are ``None`` without a pixel size.
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
    if pixel_size_mm is not None and not pixel_size_mm > 0:
        raise ValueError(f"pixel size {pixel_size_mm} mm must be positive")
    area = float(mask.sum())
    points, exists = _crossings(_cropped(mask))
    perimeter = _contour_length(points, exists)
    lengths = {
        "perimeter": perimeter,
        "longest_diameter": _diameter(points[exists]),
        "equivalent_diameter": 2.0 * math.sqrt(area / math.pi),
    }
    result: dict[str, float | None] = {"area_px": area}
    result["area_mm2"] = area * pixel_size_mm**2 if pixel_size_mm else None
    for name, value in lengths.items():
        result[f"{name}_px"] = value
        result[f"{name}_mm"] = value * pixel_size_mm if pixel_size_mm else None
    result["compactness"] = 4.0 * math.pi * area / perimeter**2 if perimeter > 0 else 0.0
    result["asymmetry_major_axis"], result["asymmetry_minor_axis"] = asymmetry(mask)
    return result
