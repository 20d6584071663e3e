"""The one photo reader and the one mask rule, without torch: training, evaluation, inference (through
``bundle.transforms``), ``scripts/prepare_data.py`` and the Slicer worker all read photographs and binarise masks here,
so EXIF orientation and mask thresholds never disagree between them.

Arrays here are in numpy's order, (H, W[, C]), row 0 at the top; ``bundle.transforms`` turns them into MONAI's (W, H).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bundle.errors import BadInputError

__all__ = [
    "EXIF_ORIENTATION",
    "displayed_size",
    "lesion_binary",
    "photo_from_array",
    "LABELMAP_EXTENSIONS",
    "read_mask",
    "read_mask_values",
    "read_photo",
    "read_photo_sized",
    "reduce_photo",
    "to_display_rgb",
]

EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_GREY_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Label files 3D Slicer writes (read by nibabel, pynrrd, ITK); any other mask is read by Pillow.
LABELMAP_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _nonempty_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or a BadInputError naming it when it is not a file or is empty."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "no such file")
    if path.stat().st_size == 0:
        raise BadInputError(path, "empty file")
    return path


def _silence_libtiff() -> None:
    """Stop libtiff writing its errors to stderr from C (Linux; elsewhere nothing changes).

    Those writes land in the middle of the one-line reports of other threads and processes; Pillow raises the
    same errors as exceptions, which are reported once per file.
    """
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            path = next((line.split()[-1] for line in maps if "/libtiff" in line), None)
        if path:
            import ctypes

            library = ctypes.CDLL(path)
            library.TIFFSetErrorHandler(None)
            library.TIFFSetWarningHandler(None)
    except (OSError, AttributeError):
        pass


_silence_libtiff()


def to_display_rgb(img: Image.Image) -> Image.Image:
    """Return the 8-bit RGB image a viewer shows for ``img``.

    EXIF orientation is applied; transparency is composited over white; 16- and 32-bit grey levels are scaled
    to 8 bits by their bit depth (not clipped); CMYK, palette, grey and other modes are converted to RGB.
    """
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)  # without an orientation it would return a full copy
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


def read_photo_sized(
    path: str | os.PathLike, reduce_to: tuple[int, int] | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Open, fully decode and convert one photograph with :func:`to_display_rgb`; also give its full size.

    Args:
        path: the photograph; its content decides how it is read, whatever its extension says.
        reduce_to: (width, height) as displayed that the caller will resize to: a JPEG is then decoded at the
            smallest power-of-two reduction still at least that large (every byte is still read, so a truncated
            file still fails). Other formats ignore it (see :func:`reduce_photo`).

    Returns:
        The RGB photo as displayed, and its (width, height) as displayed before any reduction.

    Raises:
        BadInputError: naming the file, when it is missing, empty, not an image, truncated, or declares more
            pixels than Pillow's decompression-bomb limit (about 179 megapixels), which is refused from the file's
            header before any memory is spent.
    """
    path = _nonempty_file(path)
    try:
        with warnings.catch_warnings():
            # between Pillow's warning (89 MP) and error (179 MP) limits: read, at the size reduce_to asks for
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            size = displayed_size(opened)
            if reduce_to is not None:
                width, height = reduce_to
                swapped = opened.getexif().get(EXIF_ORIENTATION, 1) in _TRANSPOSING_ORIENTATIONS
                opened.draft(opened.mode, (height, width) if swapped else (width, height))
            opened.load()
            return to_display_rgb(opened), size
    except UnidentifiedImageError:
        raise BadInputError(path, "not an image file that Pillow can identify") from None
    except Image.DecompressionBombError as err:
        declared = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(declared.group(1)) / 1e6:,.0f} megapixels" if declared else "too many pixels"
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise BadInputError(
            path,
            f"declares {pixels}, more than the {limit:.0f} a photograph may have: refused unread (a "
            "decompression bomb, or not a photograph)",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadInputError(path, f"cannot decode image ({err})") from None


def read_photo(path: str | os.PathLike, reduce_to: tuple[int, int] | None = None) -> Image.Image:
    """The photo of :func:`read_photo_sized`, without its size."""
    return read_photo_sized(path, reduce_to)[0]


def reduce_photo(photo: Image.Image, at_least: tuple[int, int]) -> Image.Image:
    """``photo`` box-averaged by whole factors per axis, as far as it stays at least ``at_least`` (width, height).

    Decoding a 12000×9000 photograph for a 256-pixel network needs 324 MB as RGB and 1.3 GB as float32; reduced
    first, the float copy is a few megabytes.
    """
    factors = (max(1, photo.width // max(1, at_least[0])), max(1, photo.height // max(1, at_least[1])))
    return photo.reduce(factors) if factors != (1, 1) else photo


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


def _labelmap_values(path: str) -> np.ndarray:
    """A labelmap's voxels in its file's index order, (x, y[, z]) — the order MONAI's readers give them in."""
    name = path.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel

        return np.asanyarray(nibabel.load(path).dataobj)
    if name.endswith(".nrrd"):
        import nrrd

        return nrrd.read(path, index_order="F")[0]
    import itk

    return itk.array_from_image(itk.imread(path)).T  # ITK's arrays are (z, y, x); a copy, not a view


def read_mask_values(path: str | os.PathLike) -> np.ndarray:
    """The one mask reader: a mask file's values as stored, (H, W) or (H, W, C) in numpy's order (no EXIF).

    PNG, BMP, JPEG, TIFF, GIF and any other format Pillow reads, and 3D Slicer's labelmaps
    (:data:`LABELMAP_EXTENSIONS`, whose (W, H, 1) voxels become (H, W)). Training
    (``bundle.transforms.LoadMaskd``), the pair checks (``bundle.checks``), ``scripts/prepare_data.py`` and
    :func:`read_mask` all read masks here.

    Raises:
        BadInputError: naming the file, when it is missing, empty, cannot be read, or is a volume of more than one
            slice.
    """
    path = _nonempty_file(path)
    try:
        if path.name.lower().endswith(LABELMAP_EXTENSIONS):
            values = _labelmap_values(str(path))
        else:
            with Image.open(path) as opened:
                return np.asarray(opened)
    except UnidentifiedImageError:
        raise BadInputError(path, "not an image file that Pillow can identify") from None
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, EOFError, zlib, ITK and nrrd errors
        raise BadInputError(path, f"cannot read mask ({' '.join(str(err).split())})") from None
    while values.ndim > 2 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2:
        raise BadInputError(path, f"is a volume of shape {values.shape}, not one 2D mask")
    return values.T


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as (H, W) bool: :func:`read_mask_values` binarised by :func:`lesion_binary`.

    Raises:
        BadInputError: as :func:`read_mask_values`, or when the mask is not 2D.
    """
    values = read_mask_values(path)
    try:
        return lesion_binary(values)
    except ValueError as err:
        raise BadInputError(path, str(err)) from None
