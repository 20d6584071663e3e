"""Arrays between 3D Slicer and the bundle: the photo in, the probability map and mask out, clicks and regions.

Slicer loads a PNG/JPEG through ITK into a volume whose voxel array (``slicer.util.arrayFromVolume``) is
(1, rows, columns, channels) for colour and (1, rows, columns) for grey, row 0 being the top row of the file. The
bundle's array API takes (rows, columns, 3) uint8 RGB with row 0 at the top, so the photo only loses its slice axis
and never gets transposed or flipped. Pixel positions here are (row, column).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np


class ImageLayoutError(ValueError):
    """An array that is not a 2D photograph (one slice, 1, 3 or 4 channels)."""


def photo_from_volume_array(array: np.ndarray) -> np.ndarray:
    """Turn Slicer's voxel array of a photo into the bundle's (rows, columns, 3) uint8 RGB input.

    Accepts (1, R, C, 3|4) and (1, R, C) as Slicer gives them, and (R, C, 3|4) or (R, C) as ITK or Pillow do.
    Alpha is dropped (Slicer shows the colour channels only), grey is repeated to three channels, 16-bit values
    are scaled to 8 bits by their bit depth, floats in [0, 1] are scaled to 255.
    """
    array = np.asarray(array)
    if array.ndim in (3, 4) and array.shape[0] == 1 and (array.ndim == 4 or array.shape[-1] not in (3, 4)):
        array = array[0]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) < 1:
        raise ImageLayoutError(f"expected a 2D photo with 1, 3 or 4 channels, got an array of shape {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    values = array.astype(np.float64)
    if np.issubdtype(array.dtype, np.floating) and values.max(initial=0.0) <= 1.0:
        values = values * 255.0
    elif np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize > 1:
        values = values * (255.0 / np.iinfo(array.dtype).max)  # as the bundle reads 16-bit files: by bit depth
    return np.ascontiguousarray(np.clip(np.round(values), 0, 255).astype(np.uint8))


def mask_to_volume_array(mask: np.ndarray) -> np.ndarray:
    """A (rows, columns) mask as the (1, rows, columns) uint8 array Slicer's segment update functions take."""
    return np.ascontiguousarray(np.asarray(mask, dtype=np.uint8)[None])


def threshold_probability(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Lesion where the probability exceeds ``threshold``; 0.5 reproduces the bundle's argmax over two classes."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is outside [0, 1]")
    return (np.asarray(probability) > threshold).astype(np.uint8)


def apply_clicks(
    mask: np.ndarray, foreground: Iterable[Sequence[float]] = (), background: Iterable[Sequence[float]] = ()
) -> tuple[np.ndarray, list[str]]:
    """Keep the lesion regions under foreground points and remove those under background points.

    Regions are 8-connected. With any foreground point on a region, only regions under foreground points stay;
    a region under a background point is removed unless a foreground point is on it too. Points are (row, column);
    points off the photo or on background pixels change nothing. Returns the new mask and one note per point that
    had no effect, for the user.
    """
    from scipy import ndimage

    mask = np.asarray(mask).astype(bool)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    notes: list[str] = []

    def regions(points, kind):
        found = set()
        for point in points:
            row, col = (int(round(float(v))) for v in point[:2])
            if not (0 <= row < mask.shape[0] and 0 <= col < mask.shape[1]):
                notes.append(f"{kind} point ({row}, {col}) is outside the photo")
            elif labels[row, col] == 0:
                notes.append(f"{kind} point ({row}, {col}) is not on the lesion mask")
            else:
                found.add(int(labels[row, col]))
        return found

    keep = regions(foreground, "foreground")
    remove = regions(background, "background") - keep
    if keep:
        result = np.isin(labels, sorted(keep))
    else:
        result = mask & ~np.isin(labels, sorted(remove))
    return result.astype(np.uint8), notes


def pixels_from_ras(points_ras: Iterable[Sequence[float]], ras_to_ijk: np.ndarray) -> list[tuple[float, float]]:
    """Map RAS positions (markup control points) to (row, column) with the volume's 4x4 RAS-to-IJK matrix."""
    matrix = np.asarray(ras_to_ijk, dtype=np.float64).reshape(4, 4)
    pixels = []
    for point in points_ras:
        i, j, _k, _ = matrix @ np.array([*map(float, point[:3]), 1.0])
        pixels.append((float(j), float(i)))
    return pixels


@dataclass(frozen=True)
class PixelBox:
    """Rows ``row0:row1`` and columns ``col0:col1`` of a photo (ends exclusive)."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row0, self.row1), slice(self.col0, self.col1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.row1 - self.row0, self.col1 - self.col0


def box_from_ras_bounds(bounds: Sequence[float], ras_to_ijk: np.ndarray, shape: Sequence[int]) -> PixelBox:
    """The pixels inside an ROI given by its RAS bounds (xmin, xmax, ymin, ymax, zmin, zmax), clipped to the photo."""
    x0, x1, y0, y1, z0, z1 = map(float, bounds)
    corners = [(x, y, z) for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)]
    pixels = np.array(pixels_from_ras(corners, ras_to_ijk))
    # A pixel belongs to the box when its centre lies inside the ROI.
    row0, col0 = np.ceil(pixels.min(axis=0) - 1e-6).astype(int)
    row1, col1 = np.floor(pixels.max(axis=0) + 1e-6).astype(int) + 1
    row0, row1 = max(row0, 0), min(row1, int(shape[0]))
    col0, col1 = max(col0, 0), min(col1, int(shape[1]))
    if row1 <= row0 or col1 <= col0:
        raise ValueError("the region does not overlap the photo")
    return PixelBox(int(row0), int(row1), int(col0), int(col1))


def grow_box(box: PixelBox, fraction: float, shape: Sequence[int]) -> PixelBox:
    """``box`` enlarged by ``fraction`` of its size on every side, clipped to the photo."""
    pad_r, pad_c = (int(round(n * fraction)) for n in box.shape)
    return PixelBox(
        max(box.row0 - pad_r, 0),
        min(box.row1 + pad_r, int(shape[0])),
        max(box.col0 - pad_c, 0),
        min(box.col1 + pad_c, int(shape[1])),
    )


def refine_in_region(
    photo: np.ndarray,
    probability: np.ndarray,
    box: PixelBox,
    segment: Callable[[np.ndarray], np.ndarray],
    context: float = 0.1,
) -> np.ndarray:
    """Segment the photo again inside ``box`` and paste that probability map back into ``probability``.

    ``segment`` maps a (rows, columns, 3) photo to its (rows, columns) lesion probability; the bundle resizes
    whatever it gets to the network's input size, so a small crop is seen at full network resolution (small lesions
    in large photos). The crop reaches ``context`` of the box's size beyond it on each side, so the network sees the
    lesion's surroundings; only the box itself is replaced. Returns a new map.
    """
    photo = np.asarray(photo)
    if photo.shape[:2] != np.shape(probability):
        raise ImageLayoutError(f"photo {photo.shape[:2]} and probability map {np.shape(probability)} differ in size")
    crop = grow_box(box, context, photo.shape)
    crop_probability = np.asarray(segment(np.ascontiguousarray(photo[crop.slices])))
    if crop_probability.shape != crop.shape:
        raise ImageLayoutError(f"the crop's probability map is {crop_probability.shape}, expected {crop.shape}")
    inner = (slice(box.row0 - crop.row0, box.row1 - crop.row0), slice(box.col0 - crop.col0, box.col1 - crop.col0))
    refined = np.array(probability, dtype=np.float32, copy=True)
    refined[box.slices] = crop_probability[inner]
    return refined
