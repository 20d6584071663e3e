"""Transforms MONAI lacks for dermoscopy photographs, each an array transform with a thin dictionary wrapper:

- :class:`LoadPhoto` / :class:`LoadPhotod`: a photo file or an in-memory array, read as displayed (``bundle.images``);
- :class:`LoadMask` / :class:`LoadMaskd`: a mask file (PNG, BMP, JPEG, Slicer labelmap) read by
  ``bundle.images.read_mask_values`` → binary (1, W, H);
- :class:`LesionMask` / :class:`LesionMaskd`: a mask loaded by another reader (MONAI's ``LoadImage``) → the same;
- :class:`ResizeToSource` / :class:`ResizeToSourced`: predictions back to the photograph's own size;
- :class:`LesionLabel` / :class:`LesionLabeld`: 2-channel probabilities → 0/1 label and lesion probability;
- :class:`LesionCleanup` / :class:`LesionCleanupd`: the largest lesion region only, holes filled;
- :class:`SaveMask` / :class:`SaveMaskd`: masks written atomically in the formats people and 3D Slicer open;
- :class:`RandGreyscaled`: a training augmentation that shows the network a colour photo as a greyscale one;
- :func:`chosen_augmentations`: the training augmentations a comma-separated option names.

Index order: like MONAI's PIL and ITK readers, arrays here are (W, H) — the first spatial axis runs along the
image width — whereas ``numpy.asarray(PIL.Image)`` is (H, W). Everything that leaves this module for a person
(PNG files) is transposed back. Option strings are checked when a transform is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from PIL import Image

from bundle.config import choice, flag
from bundle.data import OUTPUT_NAME_KEY, file_stem
from bundle.errors import BadInputError, ConfigError
from bundle.files import atomic_write
from bundle.images import lesion_binary, photo_from_array, read_mask_values, read_photo_sized, reduce_photo

__all__ = [
    "INTERPOLATION_MODES",
    "MASK_OUTPUT_EXTENSIONS",
    "LesionCleanup",
    "LesionCleanupd",
    "LesionLabel",
    "LesionLabeld",
    "LesionMask",
    "LesionMaskd",
    "LoadMask",
    "LoadMaskd",
    "LoadPhoto",
    "LoadPhotod",
    "ResizeToSource",
    "ResizeToSourced",
    "SaveMask",
    "RandGreyscaled",
    "SaveMaskd",
    "chosen_augmentations",
    "write_mask",
]

INTERPOLATION_MODES = ("nearest", "nearest-exact", "bilinear")
RESIZE_BAND_VALUES = 1 << 22  # 16 MB of float32 per band of a resized prediction
DECODE_MARGIN = 4  # photos are decoded down to no less than this many times the working size
MASK_OUTPUT_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".nii.gz", ".nii", ".nrrd")


# ITU-R BT.601 luma, as Pillow converts RGB to "L"
LUMA = (0.299, 0.587, 0.114)


class RandGreyscaled(RandomizableTransform, MapTransform):
    """With probability ``prob``, replace the colour of a normalised photo by its grey level, as a greyscale photo
    (R = G = B, which ``LoadPhoto`` reads so) would come out of the same normalisation.

    The first three channels are un-normalised with ``pixel_mean`` / ``pixel_std``, mixed to luma (BT.601), and
    normalised again per channel; further channels (click guidance) are left alone. Greyscale dermoscopy photos and
    faded or colour-cast ones are what it prepares the network for: without it, models trained on colour photos
    can return an empty mask for the greyscale version of a photo they segment well in colour.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        pixel_mean: Any = (0.485, 0.456, 0.406),
        pixel_std: Any = (0.229, 0.224, 0.225),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.mean = torch.as_tensor(pixel_mean, dtype=torch.float32).reshape(3, 1, 1)
        self.std = torch.as_tensor(pixel_std, dtype=torch.float32).reshape(3, 1, 1)
        self.luma = torch.as_tensor(LUMA, dtype=torch.float32).reshape(3, 1, 1)

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            colour = image[:3] * self.std.to(image.dtype) + self.mean.to(image.dtype)
            grey = (colour * self.luma.to(image.dtype)).sum(0, keepdim=True)
            image = image.clone()
            image[:3] = (grey - self.mean.to(image.dtype)) / self.std.to(image.dtype)
            d[key] = image
        return d


def chosen_augmentations(table: dict[str, list[Any]], names: str | list[str]) -> list[Any]:
    """The transforms of the groups ``names`` (comma-separated, e.g. ``"flips,rotate"``) of ``table``, in table order.

    ``"none"`` or an empty value chooses none. Table order, not the order typed, keeps a run reproducible whatever
    order the groups were named in.

    Raises:
        ConfigError: a name that is not a group of ``table`` (naming the closest), or a group named twice.
    """
    words = [w.strip() for w in (names.split(",") if isinstance(names, str) else names) if str(w).strip()]
    if words == ["none"]:
        words = []
    for word in words:
        choice(word, table, "augment")
    if len(set(words)) != len(words):
        raise ConfigError(f"augment: {names!r} names a group twice")
    return [transform for group, transforms in table.items() if group in words for transform in transforms]


class LoadPhoto(Transform):
    """A photograph as a channel-first (3, W, H) MetaTensor in [0, 255], read as displayed.

    ``source`` is a file path (read by ``bundle.images.read_photo_sized``: the content decides the format whatever
    the extension says; EXIF orientation, alpha over white, 16-bit grey scaled) or an (H, W, 3) RGB, (H, W) grey or
    (H, W, 4) RGBA uint8 array in numpy order (row 0 at the top), converted the same way. The meta data record
    ``filename_or_obj`` (the path, or ``name`` for an array) and the displayed ``spatial_shape`` (W, H) of the whole
    photograph, which :class:`ResizeToSource` resizes predictions back to.

    With ``working_size`` (the network's input size), a photograph is decoded and box-averaged by whole factors only
    down to :data:`DECODE_MARGIN` times that size (JPEG: while decoding), so a 12000×9000 photo never exists as a
    full-size float array. The resize to the working size that follows then sees 0.3–0.4 grey levels (of 255)
    difference on average from resizing the full photo (measured on ISIC_0012288, 4288×2848, and a 12000×9000
    enlargement of it).

    Raises:
        bundle.errors.BadInputError: naming the file (or array) that cannot be read as a photograph.
    """

    def __init__(self, dtype: Any = np.float32, working_size: int | None = None) -> None:
        self.dtype = dtype
        margin = DECODE_MARGIN * int(working_size) if working_size else None
        self.decode_size = (margin, margin) if margin else None

    def __call__(self, source: str | os.PathLike | np.ndarray, name: str = "array") -> MetaTensor:
        if isinstance(source, (str, os.PathLike)):
            if not str(source):
                raise BadInputError(
                    "(empty path)",
                    "no photograph to read; MONAI Label sends an empty path when the image id of an inference "
                    "request is not in its datastore",
                )
            photo, size = read_photo_sized(source, reduce_to=self.decode_size)
            name = str(source)
        else:
            photo = photo_from_array(source, name)
            size = photo.size
        if self.decode_size:
            photo = reduce_photo(photo, self.decode_size)
        channels_first = np.asarray(photo, dtype=self.dtype).transpose(2, 1, 0)
        meta = {"filename_or_obj": name, "spatial_shape": np.asarray(size), "original_channel_dim": -1}
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(channels_first)), meta=meta)


class LoadPhotod(MapTransform):
    """Dictionary wrapper of :class:`LoadPhoto`; an array value is named after its key."""

    def __init__(
        self,
        keys: KeysCollection,
        dtype: Any = np.float32,
        working_size: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadPhoto(dtype, working_size)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], name=key)
        return d


class LesionMask(Transform):
    """A loaded mask (no channel axis, as ``LoadImage`` gives it) → binary (1, W, H) float label.

    The rule is ``bundle.images.lesion_binary``: trailing singleton axes squeezed (Slicer's (W, H, 1) labelmaps),
    colour masks reduced by their channel maximum, lesion above half the mask's maximum (0/255, 0/1, noisy JPEG
    and red-on-black masks alike); an all-zero mask stays empty. The result carries a 2D identity affine so it can
    be resized beside the photograph.
    """

    def __call__(self, mask: Any) -> MetaTensor:
        meta = dict(mask.meta) if isinstance(mask, MetaTensor) else {}
        source = meta.get("filename_or_obj", "mask")
        try:
            binary = lesion_binary(np.asarray(mask))
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        return _binary_label(binary, source)


def _binary_label(binary: np.ndarray, source: str) -> MetaTensor:
    """A (W, H) bool mask as the (1, W, H) float label, with a 2D identity affine, that training resizes."""
    kept = {"filename_or_obj": source, "spatial_shape": np.asarray(binary.shape)}
    label = torch.from_numpy(binary.astype(np.float32))[None]
    return MetaTensor(label, affine=torch.eye(3, dtype=torch.float64), meta=kept)


class LesionMaskd(MapTransform):
    """Dictionary wrapper of :class:`LesionMask`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.binarise = LesionMask()

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.binarise(d[key])
        return d


class LoadMask(Transform):
    """A mask file → binary (1, W, H) float label: ``bundle.images.read_mask_values``, then the mask rule
    (``bundle.images.lesion_binary``), as :class:`LesionMask` gives it for the same file loaded by MONAI's
    ``LoadImage``.

    Raises:
        bundle.errors.BadInputError: naming the file that cannot be read as a 2D mask.
    """

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        values = read_mask_values(path)
        try:
            binary = lesion_binary(values.swapaxes(0, 1))  # numpy's (H, W[, C]) → MONAI's (W, H[, C])
        except ValueError as err:
            raise BadInputError(path, str(err)) from None
        return _binary_label(binary, str(path))


class LoadMaskd(MapTransform):
    """Dictionary wrapper of :class:`LoadMask`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMask()

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


def _source_positions(
    mode: str, in_size: int, out_size: int, start: int, stop: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(first index, second index, weight of the second) of outputs ``start:stop`` along one axis, at the positions
    ``torch.nn.functional.interpolate`` samples (``align_corners=False``); the weight is None for nearest modes."""
    out = torch.arange(start, stop, dtype=torch.float32)
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    if mode == "bilinear":
        source = (scale * (out + 0.5) - 0.5).clamp_(min=0)
        first = source.floor().long().clamp_(max=in_size - 1)
        return first, first + (first < in_size - 1), (source - first).clamp_(0, 1)
    source = (out + 0.5) * scale if mode == "nearest-exact" else out * scale
    first = source.floor().long().clamp_(max=in_size - 1)
    return first, first, None


class ResizeToSource(Transform):
    """Resize a channel-first (C, w, h) prediction to ``spatial_size`` (W, H), band by band.

    Probabilities are interpolated (``bilinear`` by default) so that masks of large photographs have smooth
    edges; MONAI's ``Invertd`` would reuse the forward ``area`` mode, which makes blocky edges when enlarging.
    With ``channel``, only that channel is resized and the result is (W, H): the lesion probability of a
    12000×9000 photo is 432 MB, where both class maps at once were 864 MB, plus a copy.

    The result is built in bands of :data:`RESIZE_BAND_VALUES` values into one tensor, from the input already
    resized along its second axis, so no full-size intermediate exists. It samples where ``interpolate`` does
    (``align_corners=False``) and agrees with it to within 1e-5.
    """

    def __init__(self, mode: str = "bilinear", channel: int | None = None) -> None:
        self.mode = choice(mode, INTERPOLATION_MODES, "mode")
        self.channel = channel

    def __call__(self, img: Any, spatial_size: Any) -> torch.Tensor:
        width, height = (int(v) for v in np.asarray(spatial_size).ravel())
        value = torch.as_tensor(img).float()
        if self.channel is not None:
            value = value[self.channel : self.channel + 1]
        channels, in_width, in_height = value.shape
        if (in_width, in_height) == (width, height):
            resized = value.clone()
        else:
            align = False if self.mode == "bilinear" else None
            rows = torch.nn.functional.interpolate(
                value[None], (in_width, height), mode=self.mode, align_corners=align
            )[0]
            resized = torch.empty(channels, width, height)
            band = max(1, RESIZE_BAND_VALUES // (channels * height))
            for start in range(0, width, band):
                stop = min(width, start + band)
                first, second, weight = _source_positions(self.mode, in_width, width, start, stop)
                lower = rows.index_select(1, first)
                resized[:, start:stop] = (
                    lower if weight is None else torch.lerp(lower, rows.index_select(1, second), weight[None, :, None])
                )
        return resized[0] if self.channel is not None else resized


class ResizeToSourced(MapTransform):
    """Dictionary wrapper of :class:`ResizeToSource`: the size is the ``spatial_shape`` that :class:`LoadPhoto`
    recorded in ``data[source_key].meta`` (the photograph as displayed, EXIF rotation applied).
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "image",
        mode: str = "bilinear",
        channel: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.resize = ResizeToSource(mode, channel)

    def __call__(self, data):
        d = dict(data)
        source = d[self.source_key]
        size = source.meta.get("spatial_shape") if isinstance(source, MetaTensor) else None
        if size is None:
            raise ValueError(f"'{self.source_key}' carries no 'spatial_shape' metadata to resize back to")
        meta = {"filename_or_obj": source.meta.get("filename_or_obj"), "spatial_shape": np.asarray(size)}
        for key in self.key_iterator(d):
            d[key] = MetaTensor(self.resize(d[key], size), meta=meta)
        return d


class LesionLabel(Transform):
    """Lesion probability → ((W, H) uint8 label, 1 = lesion, (W, H) float32 lesion probability).

    Takes the (W, H) lesion probability, or (2, W, H) class probabilities whose channel 1 is the lesion. The label
    is lesion where the probability exceeds 0.5, which for two softmax channels is their argmax. Both come
    without a channel axis: MONAI Label's 2D overlay and the mask writers want none.
    """

    def __call__(self, probabilities: Any) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.as_tensor(probabilities)
        if probs.ndim == 3 and probs.shape[0] == 2:
            probs = probs[1].clone()  # not a view that keeps both channels alive
        if probs.ndim != 2:
            raise ValueError(f"expected (W, H) or (2, W, H) probabilities, got shape {tuple(probs.shape)}")
        prob = probs.float()
        return torch.gt(prob, 0.5).view(torch.uint8), prob  # a bool tensor viewed as 0/1 bytes, not copied


class LesionLabeld(MapTransform):
    """Dictionary wrapper of :class:`LesionLabel`: the label replaces ``keys``, the probability goes to ``prob_key``."""

    def __init__(self, keys: KeysCollection, prob_key: str = "prob", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.prob_key = prob_key
        self.split = LesionLabel()

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            meta = dict(d[key].meta) if isinstance(d[key], MetaTensor) else {}
            label, prob = self.split(d[key])
            d[key], d[self.prob_key] = MetaTensor(label, meta=meta), MetaTensor(prob, meta=dict(meta))
        return d


class LesionCleanup(Transform):
    """The usual clean-up of a lesion mask (ISIC challenge entries): keep the largest lesion region, fill holes.

    A dermoscopy photograph shows one lesion, centred; the network's small extra regions are mostly hair, ink marks
    or vignetting, and holes are regression areas inside the lesion that belong to it. Regions holding a positive
    click are kept too (the user said they are lesion).

    It works on the (2, w, h) class probabilities at the working size, before they are resized to the photograph
    (so a 12000×9000 photo costs no full-size label map): removed regions become certain background, filled holes
    certain lesion, and the mask and probability of the photograph's size then agree with the clean-up.

    Args:
        largest: keep only the largest region (8-connected) and those under positive clicks.
        fill_holes: fill background enclosed by lesion.
    """

    def __init__(self, largest: bool = True, fill_holes: bool = True) -> None:
        self.largest, self.fill_holes = bool(largest), bool(fill_holes)

    def __call__(self, probabilities: Any, positive_clicks: Any = ()) -> torch.Tensor:
        from scipy import ndimage

        probs = torch.as_tensor(probabilities)
        if probs.ndim != 3 or probs.shape[0] != 2:
            raise ValueError(f"expected (2, W, H) class probabilities, got shape {tuple(probs.shape)}")
        label = np.asarray(probs[1].detach().cpu().float()) > 0.5
        cleaned = label
        if self.largest and label.any():
            regions, count = ndimage.label(label, structure=np.ones((3, 3), dtype=bool))
            if count > 1:
                sizes = np.bincount(regions.ravel())
                sizes[0] = 0
                keep = {int(np.argmax(sizes))}
                for x, y in positive_clicks:
                    xi, yi = int(round(float(x))), int(round(float(y)))
                    if 0 <= xi < label.shape[0] and 0 <= yi < label.shape[1] and regions[xi, yi]:
                        keep.add(int(regions[xi, yi]))
                cleaned = np.isin(regions, sorted(keep))
        if self.fill_holes and cleaned.any():
            cleaned = ndimage.binary_fill_holes(cleaned)
        changed = torch.from_numpy(cleaned != label)
        if not changed.any():
            return probs
        lesion = torch.from_numpy(cleaned).to(probs.dtype)
        result = probs.clone()
        result[1] = torch.where(changed, lesion, probs[1])
        result[0] = torch.where(changed, 1 - lesion, probs[0])
        return result


class LesionCleanupd(MapTransform):
    """Dictionary wrapper of :class:`LesionCleanup` on the (2, w, h) class probabilities ``keys``; positive clicks
    are read from ``data[clicks_key]`` in the photo's pixels (as :class:`~bundle.interactive.AddGuidanced` takes
    them) and mapped to the working size with ``data[source_key]``'s ``spatial_shape``. With both steps off it
    changes nothing. Both take yes/no words as typed on the command line."""

    def __init__(
        self,
        keys: KeysCollection = "pred",
        largest: bool = True,
        fill_holes: bool = True,
        source_key: str = "image",
        clicks_key: str = "clicks",
    ) -> None:
        super().__init__(keys)
        self.cleanup = LesionCleanup(flag(largest, "cleanup"), flag(fill_holes, "cleanup"))
        self.source_key, self.clicks_key = source_key, clicks_key

    def __call__(self, data):
        if not (self.cleanup.largest or self.cleanup.fill_holes):
            return data
        from bundle.interactive import working_clicks

        d = dict(data)
        clicks = (d.get(self.clicks_key) or {}).get("positive", ())
        source = d.get(self.source_key)
        for key in self.key_iterator(d):
            value = d[key]
            if clicks and isinstance(source, MetaTensor) and "spatial_shape" in source.meta:
                clicks = working_clicks(clicks, source.meta["spatial_shape"], value.shape[-2:])
            cleaned = self.cleanup(value, clicks)
            d[key] = MetaTensor(cleaned, meta=value.meta) if isinstance(value, MetaTensor) else cleaned
        return d


def _eight_bit_rows(array_wh: np.ndarray, probability: bool, png_scale: int) -> np.ndarray:
    """The (H, W) uint8 picture of a (W, H) label (0/``png_scale``) or probability map (0–255), made a band of
    rows at a time, so a large photo's mask costs one 8-bit copy and no full-size temporaries."""
    rows = np.empty(array_wh.shape[::-1], np.uint8)
    step = max(1, RESIZE_BAND_VALUES // max(1, array_wh.shape[0]))
    for start in range(0, rows.shape[0], step):
        band = array_wh[:, start : start + step].T
        rows[start : start + step] = np.clip(np.rint(band * 255.0) if probability else band * png_scale, 0, 255)
    return rows


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
        image = Image.fromarray(_eight_bit_rows(array_wh, probability, png_scale), mode="L")
        fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
        atomic_write(path, lambda tmp: image.save(tmp, format=fmt))
    return path


class SaveMask(Transform):
    """Write a (W, H) label (and optionally its lesion probability) under ``output_dir``, atomically.

    The files are ``<stem><suffix><output_ext>`` and ``<stem>_prob<output_ext>``; ``output_ext`` is one of
    :data:`MASK_OUTPUT_EXTENSIONS`. ``stem`` may hold folders (``p1/IMG_0001``), created as needed, but not lead
    out of ``output_dir``. Returns the paths written.
    """

    def __init__(self, output_dir: str | os.PathLike, output_ext: str = ".png", suffix: str = "_mask") -> None:
        self.output_dir = Path(output_dir)
        ext = str(output_ext).lower()
        self.output_ext = choice(ext if ext.startswith(".") else f".{ext}", MASK_OUTPUT_EXTENSIONS, "output_ext")
        self.suffix = suffix

    def __call__(self, label: Any, stem: str, prob: Any = None) -> tuple[Path, Path | None]:
        if Path(stem).is_absolute() or ".." in Path(stem).parts:
            raise ConfigError(f"output name {stem!r} would write outside {self.output_dir}")
        label_wh = np.asarray(torch.as_tensor(label).detach().cpu(), dtype=np.uint8)
        label_path = write_mask(label_wh, self.output_dir / f"{stem}{self.suffix}{self.output_ext}")
        if prob is None:
            return label_path, None
        prob_wh = np.asarray(torch.as_tensor(prob).detach().cpu().float())
        return label_path, write_mask(prob_wh, self.output_dir / f"{stem}_prob{self.output_ext}", probability=True)


class SaveMaskd(MapTransform):
    """Dictionary wrapper of :class:`SaveMask`, named by the item's ``name_key`` (``"output_name"``: the photo's
    path relative to the other inputs', which may hold folders, see ``bundle.data.output_names``), else after the
    photo in the label's ``filename_or_obj``.

    With ``probability_key`` (and ``save_probability``, a yes/no option) the lesion probability under that key is
    written too. The written paths are stored in ``data["<key>_path"]`` (and ``data["<probability_key>_path"]``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        output_ext: str = ".png",
        suffix: str = "_mask",
        probability_key: str | None = None,
        allow_missing_keys: bool = False,
        name_key: str = OUTPUT_NAME_KEY,
        save_probability: object = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.save = SaveMask(output_dir, output_ext, suffix)
        self.probability_key = probability_key if flag(save_probability, "save_probabilities") else None
        self.name_key = name_key

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            source = d[key].meta.get("filename_or_obj") if isinstance(d[key], MetaTensor) else None
            prob = d.get(self.probability_key) if self.probability_key else None
            name = d.get(self.name_key) or (file_stem(str(source)) if source else "prediction")
            label_path, prob_path = self.save(d[key], str(name), prob)
            d[f"{key}_path"] = str(label_path)
            if prob_path is not None:
                d[f"{self.probability_key}_path"] = str(prob_path)
        return d
