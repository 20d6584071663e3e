"""The one photo reader and the one mask rule, without torch: training, evaluation, inference (through
``bundle.transforms``), ``scripts/prepare_data.py`` and the Slicer worker all read photographs and binarise masks here,
so EXIF orientation and mask thresholds never disagree between them.

Arrays here are in numpy's order, (H, W[, C]), row 0 at the top; ``bundle.transforms`` turns them into MONAI's (W, H).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bundle.errors import BadInputError

__all__ = [
    "EXIF_ORIENTATION",
    "displayed_size",
    "lesion_binary",
    "photo_from_array",
    "read_mask",
    "read_photo",
    "to_display_rgb",
]

EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_GREY_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_display_rgb(img: Image.Image) -> Image.Image:
    """Return the 8-bit RGB image a viewer shows for ``img``.

    EXIF orientation is applied; transparency is composited over white; 16- and 32-bit grey levels are scaled
    to 8 bits by their bit depth (not clipped); CMYK, palette, grey and other modes are converted to RGB.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in _GREY_HIGH_DEPTH_MODES:
        values = np.asarray(img, dtype=np.float64)
        full_scale = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if img.mode == "F" and values.max(initial=0) <= 1.0:
            full_scale = 1.0
        grey = np.clip(np.round(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of ``img`` as a viewer shows it, i.e. after its EXIF orientation."""
    width, height = img.size
    if img.getexif().get(EXIF_ORIENTATION, 1) in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def read_photo(path: str | os.PathLike, reduce_to: tuple[int, int] | None = None) -> Image.Image:
    """Open, fully decode and convert one photograph with :func:`to_display_rgb`.

    Args:
        path: the photograph.
        reduce_to: (width, height) as displayed that the caller will resize to: a JPEG is then decoded at the
            smallest power-of-two reduction still at least that large (every byte is still read, so a truncated
            file still fails). Other formats ignore it.

    Raises:
        BadInputError: naming the file, when it is missing, empty, not an image, truncated or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "no such file")
    if path.stat().st_size == 0:
        raise BadInputError(path, "empty file")
    try:
        with Image.open(path) as opened:
            if reduce_to is not None:
                width, height = reduce_to
                swapped = opened.getexif().get(EXIF_ORIENTATION, 1) in _TRANSPOSING_ORIENTATIONS
                opened.draft(opened.mode, (height, width) if swapped else (width, height))
            opened.load()
            return to_display_rgb(opened)
    except UnidentifiedImageError:
        raise BadInputError(path, "not an image file that Pillow can identify") from None
    except Image.DecompressionBombError as err:
        raise BadInputError(path, f"image too large ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadInputError(path, f"cannot decode image ({err})") from None


def photo_from_array(array: np.ndarray, name: str = "array") -> Image.Image:
    """An (H, W, 3) RGB, (H, W) grey or (H, W, 4) RGBA uint8 array as the RGB photo :func:`read_photo` would give.

    Raises:
        BadInputError: for another shape or dtype (``name`` stands for the file in the message).
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise BadInputError(name, f"photo array must be uint8, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or 0 in array.shape:
        raise BadInputError(name, f"photo array must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    return to_display_rgb(Image.fromarray(np.ascontiguousarray(array)))


def lesion_binary(mask: np.ndarray) -> np.ndarray:
    """The mask rule: True where a pixel exceeds half the mask's maximum.

    ``mask`` is a loaded mask with its channels (if any) last: trailing singleton axes are dropped (3D Slicer's
    (W, H, 1) labelmaps) and colour masks are reduced by their channel maximum, so 0/255, 0/1, noisy JPEG and
    red-on-black masks all work; an all-zero mask stays empty. The spatial axes keep their order.

    Raises:
        ValueError: when what is left is not 2D.
    """
    values = np.asarray(mask)
    while values.ndim > 2 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim == 3 and values.shape[-1] in (3, 4):
        values = values[..., :3].max(axis=-1)
    if values.ndim != 2:
        raise ValueError(f"mask of shape {np.shape(mask)} is not 2D")
    peak = float(values.max()) if values.size else 0.0
    return values > peak / 2 if peak > 0 else np.zeros(values.shape, bool)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A PNG/BMP/JPEG/TIFF/GIF mask file as (H, W) bool by :func:`lesion_binary`, its values as stored (no EXIF).

    This is what MONAI's ``LoadImaged`` + ``bundle.transforms.LesionMaskd`` give in training, transposed.

    Raises:
        BadInputError: naming the file, when it cannot be read or is not 2D.
    """
    try:
        with Image.open(path) as opened:
            values = np.asarray(opened)
        return lesion_binary(values)
    except UnidentifiedImageError:
        raise BadInputError(path, "not an image file that Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadInputError(path, f"cannot read mask ({err})") from None
