"""Transforms MONAI lacks for dermoscopy photographs: reading photos as they are displayed, turning any
mask file (PNG, BMP, JPEG, or a 3D Slicer labelmap of shape (W, H, 1)) into a binary (1, W, H) label, and
writing masks atomically in the formats Slicer and people use.

Index order: like MONAI's PIL and ITK readers, arrays here are (W, H) — the first spatial axis runs along the
image width — whereas ``numpy.asarray(PIL.Image)`` is (H, W). Everything that leaves this module for a person
(PNG files) is transposed back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, PILReader
from monai.transforms import LoadImage, MapTransform
from PIL import Image, ImageOps, UnidentifiedImageError

from bundle.data import IMAGE_EXTENSIONS, file_stem, has_extension
from bundle.files import atomic_write

logger = logging.getLogger(__name__)



class UnreadableImageError(ValueError):
    """A file that cannot be read as a photograph; the message names the file and the reason."""


def to_display_rgb(img: Image.Image) -> Image.Image:
    """Return the 8-bit RGB image a viewer shows for ``img``.

    EXIF orientation is applied; transparency is composited over white; 16- and 32-bit grey levels are scaled
    to 8 bits by their bit depth (not clipped); CMYK, palette, grey and other modes are converted to RGB.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        full_scale = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if img.mode == "F" and values.max(initial=0) <= 1.0:
            full_scale = 1.0
        grey = np.clip(np.round(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


class PhotoReader(PILReader):
    """MONAI image reader for photographs (``bundle.data.IMAGE_EXTENSIONS``), converted by :func:`to_display_rgb`.

    Unlike ``PILReader`` it decodes the whole file inside ``read`` so that truncated or corrupt files fail
    here, with an :class:`UnreadableImageError` naming the file, instead of later inside a transform chain.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(converter=to_display_rgb, **kwargs)

    def verify_suffix(self, filename) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(has_extension(n, IMAGE_EXTENSIONS) for n in names)

    def read(self, data, **kwargs):
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        images = []
        for name in names:
            images.append(read_photo(name))
        return images if len(images) > 1 else images[0]


def read_photo(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode and convert one photograph; raise :class:`UnreadableImageError` with one clear line."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UnreadableImageError(f"{path}: empty file")
    try:
        with Image.open(path) as opened:
            opened.load()
            return to_display_rgb(opened)
    except UnidentifiedImageError:
        raise UnreadableImageError(f"{path}: not an image file that Pillow can identify") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"{path}: cannot decode image ({err})") from None
    except Image.DecompressionBombError as err:
        raise UnreadableImageError(f"{path}: image too large ({err})") from None


class LoadPhotod(MapTransform):
    """Load photographs with :class:`PhotoReader` into channel-first (3, W, H) MetaTensors.

    No fallback to other readers: a file that is not a readable photograph raises :class:`UnreadableImageError`.
    """

    def __init__(self, keys: KeysCollection, dtype=np.float32, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage(image_only=True, ensure_channel_first=True, dtype=dtype)
        self.reader = PhotoReader()

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], reader=self.reader)
        return d


class LesionMaskd(MapTransform):
    """Turn a loaded mask into a binary (1, W, H) float label: lesion 1, background 0.

    Accepts what people have: (W, H) grey masks holding 0/255 or 0/1 (PNG, BMP, or JPEG with compression
    noise), (W, H, 3|4) colour masks, palette masks, and 3D Slicer labelmaps of shape (W, H, 1) from
    ``.nii.gz`` / ``.nrrd``. A pixel is lesion when it exceeds half the mask's maximum (so 0/255, 0/1 and noisy
    JPEG masks all work); an all-zero mask stays empty. The result carries a 2D identity affine so it can be
    resized and inverted beside the photograph.
    """

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = lesion_mask(d[key])
        return d


def lesion_mask(mask) -> MetaTensor:
    """See :class:`LesionMaskd`; ``mask`` as loaded by ``LoadImage`` (no channel axis)."""
    meta = dict(mask.meta) if isinstance(mask, MetaTensor) else {}
    array = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].amax(dim=-1)
    if array.ndim != 2:
        raise ValueError(f"{meta.get('filename_or_obj', 'mask')}: mask of shape {tuple(mask.shape)} is not 2D")
    peak = float(array.max()) if array.numel() else 0.0
    binary = (array > peak / 2).float() if peak > 0 else torch.zeros_like(array)
    kept = {k: v for k, v in meta.items() if k in ("filename_or_obj", "spatial_shape")}
    kept["spatial_shape"] = np.asarray(binary.shape)
    return MetaTensor(binary[None], affine=torch.eye(3, dtype=torch.float64), meta=kept)


class ResizeToSourced(MapTransform):
    """Resize channel-first predictions back to the spatial size of the photograph they came from.

    The target size is the ``spatial_shape`` that the loader recorded in ``data[source_key].meta`` (the size as
    displayed, EXIF rotation applied). Probabilities are interpolated (``bilinear`` by default) so that masks of
    large photographs have smooth edges; MONAI's ``Invertd`` would reuse the forward ``area`` mode, which makes
    blocky edges when enlarging.
    """

    def __init__(
        self, keys: KeysCollection, source_key: str = "image", mode: str = "bilinear", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.mode = mode

    def __call__(self, data):
        d = dict(data)
        source = d[self.source_key]
        size = source.meta.get("spatial_shape") if isinstance(source, MetaTensor) else None
        if size is None:
            raise ValueError(f"'{self.source_key}' carries no 'spatial_shape' metadata to resize back to")
        size = [int(v) for v in np.asarray(size).ravel()]
        for key in self.key_iterator(d):
            value = torch.as_tensor(d[key]).float()
            if list(value.shape[1:]) != size:
                align = None if self.mode in ("nearest", "area") else False
                value = torch.nn.functional.interpolate(value[None], size=size, mode=self.mode, align_corners=align)[0]
            d[key] = MetaTensor(value, meta={"filename_or_obj": source.meta.get("filename_or_obj"), "spatial_shape": size})
        return d


def write_mask(array_wh: np.ndarray, path: str | os.PathLike, probability: bool = False, png_scale: int = 255) -> Path:
    """Write a (W, H) mask or probability map atomically; the format follows the suffix.

    ``.png``/``.bmp``/``.tif``: (H, W) 8-bit image; a label holds 0/``png_scale``, a probability map is scaled
    to 0–255. ``.nii.gz``/``.nii``/``.nrrd``: (W, H, 1) volume in the geometry 3D Slicer gives a 2D photo
    (spacing 1, origin 0, LPS axes), so it overlays the photo; a label holds 0/1, a probability map float32.
    """
    path = Path(path)
    array_wh = np.asarray(array_wh)
    name = path.name.lower()
    if name.endswith((".nii.gz", ".nii")):
        import nibabel as nib

        volume = (array_wh.astype(np.float32) if probability else array_wh.astype(np.uint8))[..., None]
        # NIfTI is RAS; Slicer shows a 2D photo with LPS identity axes, i.e. RAS diag(-1, -1, 1).
        image = nib.Nifti1Image(volume, affine=np.diag([-1.0, -1.0, 1.0, 1.0]))
        atomic_write(path, lambda tmp: nib.save(image, tmp))
    elif name.endswith(".nrrd"):
        import nrrd

        volume = (array_wh.astype(np.float32) if probability else array_wh.astype(np.uint8))[..., None]
        header = {
            "space": "left-posterior-superior",
            "space directions": np.eye(3),
            "space origin": np.zeros(3),
            "kinds": ["domain", "domain", "domain"],
            "encoding": "gzip",
        }
        atomic_write(path, lambda tmp: nrrd.write(tmp, volume, header, index_order="F"))
    else:
        scaled = np.round(array_wh * 255.0) if probability else array_wh * png_scale
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8).T, mode="L")
        fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
        atomic_write(path, lambda tmp: image.save(tmp, format=fmt))
    return path


class SaveMaskd(MapTransform):
    """Write the 2D prediction under ``output_dir`` as ``<stem><suffix><output_ext>``, atomically.

    ``keys`` holds the (W, H) label; with ``probability_key`` the (2, W, H) or (W, H) lesion probability
    is written too, as ``<stem>_prob<output_ext>``. The written paths are stored in ``data["<key>_path"]``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        output_ext: str = ".png",
        suffix: str = "_mask",
        probability_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_ext = output_ext if output_ext.startswith(".") else f".{output_ext}"
        self.suffix = suffix
        self.probability_key = probability_key

    @staticmethod
    def _stem(value) -> str:
        source = value.meta.get("filename_or_obj") if isinstance(value, MetaTensor) else None
        return file_stem(str(source)) if source else "prediction"

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            stem = self._stem(d[key])
            label = np.asarray(torch.as_tensor(d[key]).detach().cpu()).astype(np.uint8)
            d[f"{key}_path"] = str(write_mask(label, self.output_dir / f"{stem}{self.suffix}{self.output_ext}"))
            if self.probability_key and self.probability_key in d:
                prob = np.asarray(torch.as_tensor(d[self.probability_key]).detach().cpu().float())
                prob = prob[-1] if prob.ndim == 3 else prob
                d[f"{self.probability_key}_path"] = str(
                    write_mask(prob, self.output_dir / f"{stem}_prob{self.output_ext}", probability=True)
                )
        return d
