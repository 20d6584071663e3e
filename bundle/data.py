"""Datalists: building, reading and validating the JSON lists of image/mask pairs that the bundle trains on.

A datalist is a JSON object that maps split names to lists of items, as in the MONAI model zoo::

    {"training": [{"image": "images/x.jpg", "label": "masks/x.png"}, ...], "validation": [...], "test": [...]}

Paths are stored relative to the data root, and :func:`load_datalist` returns them absolute. Items may also carry
``image_orig``/``label_orig``, the original-resolution files behind a resized cache (see ``scripts/prepare_data.py``).
A CSV file with a header row naming the columns ``image`` and ``label`` (and optionally ``split``) is read as a
datalist too; its other columns are kept on the items (e.g. a patient id to group by).

Splits are made by ranking each item by the SHA-256 of ``"<seed>:<file name>"``: the assignment depends only on the
seed and the file names, not on the folder the data sits in, the listing order, the platform or the Python version.
A grouped split (``group_by``: a folder level or a column) ranks whole groups instead, so that one patient's photos
never land on both sides.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from numbers import Integral
from pathlib import Path
from typing import Any

from bundle.errors import ConfigError, DataError
from bundle.files import write_text_atomically
from bundle.images import LABELMAP_EXTENSIONS

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "MASK_SUFFIXES",
    "IGNORED_IMAGE_SUFFIXES",
    "PATH_KEYS",
    "SPLIT_KEYS",
    "DEFAULT_SPLIT_FRACTIONS",
    "DATALIST_NAME",
    "file_stem",
    "folder_pairs",
    "groups_apart",
    "has_extension",
    "item_groups",
    "load_datalist",
    "list_images",
    "inference_inputs",
    "pair_images_masks",
    "datalist_from_folders",
    "write_datalist",
    "split_counts",
    "split_items",
    "kfold",
    "original_files",
    "describe_training_data",
    "output_names",
    "with_output_names",
    "data_loader",
    "loader_workers",
    "worker_init",
]

logger = logging.getLogger(__name__)

# The embedded synthetic sample: its folder in a bundle, and how scripts/make_sample_data.py names its photographs.
SAMPLE_DATA_FOLDER = "sample_data"
_SYNTHETIC_NAME = re.compile(r"synthetic_\d+")

# Pillow's plugins that identify a file but cannot decode it by themselves: stubs for scientific formats, MPEG
# (header only), EPS (needs Ghostscript), WMF/EMF (Windows only).
_UNDECODABLE_FORMATS = ("BUFR", "GRIB", "HDF5", "MPEG", "EPS", "WMF")


def _photo_extensions() -> tuple[str, ...]:
    from PIL import Image

    Image.init()
    formats = set(Image.OPEN) - set(_UNDECODABLE_FORMATS)
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in formats))


# Every extension of a format Pillow decodes by itself (.jpg, .png, .tif, .bmp, .webp, .gif, .jp2, .avif, ...;
# which ones depends on the installed Pillow). A file's content, not its extension, decides how it is read.
IMAGE_EXTENSIONS = _photo_extensions()
# Pillow's mask formats and the labelmaps 3D Slicer saves (bundle.images.read_mask_values reads them all).
MASK_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", *LABELMAP_EXTENSIONS)
# A mask belongs to an image when its stem is the image's stem plus one of these (compared case-insensitively):
# "" for images/ + masks/ with equal names, "_segmentation" for ISIC 2016-2018, "_lesion" for PH2.
MASK_SUFFIXES = ("", "_segmentation", "_mask", "_lesion")
# Where photos and masks share a folder (ISIC's one-folder naming, per-patient folders) the suffix must be there.
SAME_FOLDER_MASK_SUFFIXES = MASK_SUFFIXES[1:]
# ISIC 2017's image folders also hold "<id>_superpixels.png" files, which are not photographs.
IGNORED_IMAGE_SUFFIXES = ("_superpixels",)
PATH_KEYS = ("image", "label", "image_orig", "label_orig")
SPLIT_KEYS = ("training", "validation", "test")
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
DATALIST_NAME = "datalist.json"
_DOUBLE_EXTENSIONS = (".nii.gz",)
_MAX_LISTED_MISSING = 5
_MAX_LISTED_SKIPPED = 20
_CSV_FORMAT = (
    'a CSV datalist is a header row naming the columns "image" and "label" (the mask; optional for inference) and '
    'optionally "split" (training, validation or test), then one row per photo, paths relative to the data folder'
)
_JSON_FORMAT = (
    'a datalist is JSON, {"training": [{"image": "images/x.jpg", "label": "masks/x.png"}, ...], "validation": '
    '[...], "test": [...]}, or a .csv file'
)
_PREPARE_HINT = (
    "For the official ISIC 2016-2018 or PH2 archives, python -m scripts.prepare_data <archives or folders> --out DIR "
    "writes a datalist with the paper's splits."
)


def file_stem(path: str | os.PathLike) -> str:
    """Return the file name without its extension, treating ``.nii.gz`` as one extension."""
    name = Path(path).name
    for extension in _DOUBLE_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return Path(name).stem


def has_extension(path: str | os.PathLike, extensions: Sequence[str]) -> bool:
    """Whether the file name ends with one of ``extensions`` (case-insensitive, dots included)."""
    name = Path(path).name.lower()
    return any(name.endswith(extension) for extension in extensions)


def _is_image_file(path: Path) -> bool:
    ignored = any(file_stem(path).lower().endswith(suffix) for suffix in IGNORED_IMAGE_SUFFIXES)
    return path.is_file() and has_extension(path, IMAGE_EXTENSIONS) and not ignored


def _files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and has_extension(p, extensions))


def _resolve(path: str, base: Path) -> str:
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))


def load_datalist(
    dataset_dir: str | os.PathLike | None = "",
    datalist: str | os.PathLike | None = None,
    key: str = "training",
    group_by: str | int = "",
) -> list[dict[str, Any]]:
    """
    Read one split of a datalist and return its items with absolute paths, after checking that every file exists.

    Args:
        dataset_dir: the data root that relative paths in the datalist start from. When empty, they start from the
            folder holding the datalist file.
        datalist: the datalist, a JSON file or a CSV file (header row ``image,label[,split]``; without a ``split``
            column the rows are split 80/10/10). When None or empty, ``dataset_dir/datalist.json`` is used if it
            exists; otherwise the folder's photos are paired with their masks (:func:`folder_pairs`) and split
            80/10/10. A relative path that does not exist from the working directory is looked up under
            ``dataset_dir``.
        key: the split to return, e.g. ``"training"``, ``"validation"`` or ``"test"``.
        group_by: for the splits made here (folders, a CSV without ``split``): keep the groups of
            :func:`item_groups` on one side.

    Returns:
        The split's items as dicts; the values under :data:`PATH_KEYS` are absolute paths. A plain string entry
        becomes ``{"image": path}``.

    Raises:
        DataError: when the datalist is missing or neither valid JSON nor a CSV datalist, ``key`` is not in it, an
            entry is malformed, or files named by the entries do not exist (the message lists the first few).
    """
    root = Path(dataset_dir).expanduser() if dataset_dir else None
    if not datalist:
        if root is None:
            raise DataError("load_datalist needs a dataset_dir or a datalist file, got neither.")
        if not (root / DATALIST_NAME).is_file():
            splits = datalist_from_folders(root, group_by=group_by)
            if key not in splits:
                raise DataError(f"no split {key!r} in the folders of {root}; it has {sorted(splits)}.")
            return splits[key]
        datalist = root / DATALIST_NAME
    datalist_path = Path(datalist).expanduser()
    if not datalist_path.is_file() and root is not None and not datalist_path.is_absolute():
        datalist_path = root / datalist_path
    if not datalist_path.is_file():
        raise DataError(f"datalist file {datalist_path} does not exist.")
    base = root.resolve() if root is not None else datalist_path.resolve().parent
    if _is_csv(datalist_path):
        rows, given = _csv_rows(datalist_path)
        content = _csv_splits(rows, given, base, group_by)
    else:
        content = _json_content(datalist_path)
    if key not in content:
        raise DataError(f"datalist file {datalist_path} has no key {key!r}; its keys are {sorted(content)}.")
    items = [_absolute_item(entry, base, datalist_path, key) for entry in content[key]]
    _check_files_exist(items, f"datalist file {datalist_path}, split {key!r}")
    return items


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _json_content(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"datalist file {path} is not valid JSON ({error}): {_JSON_FORMAT} ({_CSV_FORMAT}).") from None
    if not isinstance(content, dict):
        kind = type(content).__name__
        raise DataError(f"datalist file {path} holds a {kind}, not an object of splits: {_JSON_FORMAT}.")
    return content


def _csv_rows(path: Path) -> tuple[list[dict[str, str]], bool]:
    """The rows of a CSV datalist (empty cells dropped) and whether it has a ``split`` column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            columns = [str(c).strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            rows = [{k: v.strip() for k, v in row.items() if k and isinstance(v, str) and v.strip()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"datalist file {path} cannot be read as CSV ({error}): {_CSV_FORMAT}.") from None
    if "image" not in columns:
        raise DataError(f'datalist file {path} has no column "image" (its header is {columns[:8]}): {_CSV_FORMAT}.')
    for number, row in enumerate(rows, start=2):
        if "image" not in row:
            raise DataError(f"datalist file {path}, line {number}: no image path.")
        if "split" in columns and row.get("split") not in SPLIT_KEYS:
            raise DataError(
                f"datalist file {path}, line {number}: split {row.get('split', '')!r} is not one of "
                f"{', '.join(SPLIT_KEYS)}."
            )
    return rows, "split" in columns


def _csv_splits(rows: list[dict[str, str]], given: bool, base: Path, group_by: str | int) -> dict[str, list]:
    if given:
        return {key: [{k: v for k, v in row.items() if k != "split"} for row in rows if row["split"] == key]
                for key in SPLIT_KEYS}  # fmt: skip
    absolute = [_absolute_item(row, base, base, "training") for row in rows]
    return split_items(absolute, DEFAULT_SPLIT_FRACTIONS, 0, groups=item_groups(absolute, group_by, base))


def _absolute_item(entry: Any, base: Path, source: Path, key: str) -> dict[str, Any]:
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        raise DataError(f'datalist file {source}, split {key!r}: entry {entry!r} has no "image" path.')
    return {k: _resolve(v, base) if k in PATH_KEYS and isinstance(v, str) else v for k, v in entry.items()}


def _check_files_exist(items: Sequence[Mapping[str, Any]], source: str) -> None:
    paths = [item[k] for item in items for k in PATH_KEYS if isinstance(item.get(k), str)]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        listed = ", ".join(missing[:_MAX_LISTED_MISSING])
        more = f" and {len(missing) - _MAX_LISTED_MISSING} more" if len(missing) > _MAX_LISTED_MISSING else ""
        raise DataError(f"{source}: {len(missing)} listed file(s) do not exist: {listed}{more}.")


def list_images(path: str | os.PathLike, key: str = "test") -> list[dict[str, str]]:
    """
    List the images to run inference on.

    Args:
        path: one of
            - a folder: its image files (by extension, not recursive, sorted by name), less the masks lying beside
              their photos (``<photo>_segmentation``, ``_mask``, ``_lesion``); when it holds none but has an
              ``images`` subfolder, that subfolder's images;
            - an image file;
            - a datalist file (JSON or CSV): the images of split ``key``. Where an item has ``image_orig`` (a resized
              cache), the original is listed, so that predictions come out at the original resolution.
        key: the split to read from a datalist file.

    Returns:
        ``[{"image": absolute_path}, ...]``.

    Raises:
        DataError: when ``path`` does not exist, is a file of another type, or a folder without images.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        folder = path
        images = _photos_in(path)
        if not images and (path / "images").is_dir():
            folder = path / "images"
            images = _photos_in(folder)
        if not images:
            subfolders = sorted(p.name for p in path.iterdir() if p.is_dir() and _photos_in(p))
            hint = (
                f"; its subfolders {', '.join(subfolders[:5])}{' ...' if len(subfolders) > 5 else ''} do: give one "
                "of them, or list the photos in a datalist (--datalist list.csv with an image column)"
                if subfolders
                else ""
            )
            raise DataError(
                f"folder {path} holds no images (any format Pillow reads, e.g. .jpg, .png, .tif, .webp), nor does "
                f"{path / 'images'}{hint}."
            )
        _log_skipped(folder, images)
        # absolute, but links not followed: outputs are named after the files as the folder lists them
        return [{"image": os.path.abspath(p)} for p in images]
    if path.is_file() and path.suffix.lower() in (".json", ".csv"):
        return inference_inputs("", path, key)
    if path.is_file() and has_extension(path, IMAGE_EXTENSIONS):
        return [{"image": os.path.abspath(path)}]
    if path.is_file():
        raise DataError(f"{path} is neither an image (a format Pillow reads) nor a datalist (.json or .csv).")
    raise DataError(f"{path} does not exist.")


def _photos_in(folder: Path) -> list[Path]:
    """The photographs of ``folder`` (not recursive, sorted): its image files less the masks of other photos there
    (``<photo stem>_segmentation``, ``_mask`` or ``_lesion``, as ISIC's one-folder naming has them)."""
    images = [p for p in sorted(folder.iterdir()) if _is_image_file(p)]
    candidates = [p for p in images if has_extension(p, MASK_EXTENSIONS)]
    masks = set(_mask_of(images, candidates, SAME_FOLDER_MASK_SUFFIXES).values())
    return [p for p in images if p not in masks]


def _log_skipped(folder: Path, images: Sequence[Path]) -> None:
    """Count and name the files of ``folder`` that are not listed as photographs (hidden files aside)."""
    listed = set(images)
    skipped = [p.name for p in sorted(folder.iterdir()) if p.is_file() and p not in listed and p.name[0] != "."]
    if skipped:
        shown = ", ".join(skipped[:_MAX_LISTED_SKIPPED])
        more = f" and {len(skipped) - _MAX_LISTED_SKIPPED} more" if len(skipped) > _MAX_LISTED_SKIPPED else ""
        logger.warning(
            "Skipped %d file(s) in %s that are not photographs (by their extension or name): %s%s",
            len(skipped),
            folder,
            shown,
            more,
        )


def inference_inputs(
    dataset_dir: str | os.PathLike | None, datalist: str | os.PathLike | None = "", key: str = "test"
) -> list[dict[str, str]]:
    """
    The images inference segments: split ``key`` of ``datalist`` when one is given (every row of a CSV datalist
    without a ``split`` column), else :func:`list_images` of ``dataset_dir``.

    A datalist is read by :func:`load_datalist` with the same path rule as training and evaluation (relative
    entries start from ``dataset_dir``, or from the datalist's folder when ``dataset_dir`` is empty). Where an item
    has ``image_orig`` (a resized cache), the original is listed, so predictions come out at the original size.

    Raises:
        DataError: as :func:`load_datalist` and :func:`list_images`.
    """
    if not datalist:
        return list_images(dataset_dir or ".")
    path = Path(datalist).expanduser()
    rows, given = _csv_rows(path) if _is_csv(path) and path.is_file() else ([], True)
    if not given:  # a CSV without a split column: every row
        base = Path(dataset_dir).expanduser().resolve() if dataset_dir else path.resolve().parent
        items = [_absolute_item(row, base, path, key) for row in rows]
        _check_files_exist(items, f"datalist file {path}")
    else:
        items = load_datalist(dataset_dir, datalist, key)
    return [{"image": item.get("image_orig", item["image"])} for item in items]


def _mask_of(images: Sequence[Path], masks: Sequence[Path], suffixes: Sequence[str]) -> dict[Path, Path]:
    """Image → its mask: the mask whose stem is the image's plus the first of ``suffixes`` that has one."""
    masks_by_stem: dict[str, Path] = {}
    for mask in masks:
        masks_by_stem.setdefault(file_stem(mask).lower(), mask)
    mask_of: dict[Path, Path] = {}
    for image in images:
        for suffix in suffixes:
            mask = masks_by_stem.get((file_stem(image) + suffix).lower())
            if mask is not None and mask != image:
                mask_of[image] = mask
                break
    return mask_of


def pair_images_masks(
    images_dir: str | os.PathLike, masks_dir: str | os.PathLike, mask_suffixes: Sequence[str] = MASK_SUFFIXES
) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """
    Pair the images of one folder with the masks of another (or the same) folder by file name.

    The mask of image ``<stem>.<ext>`` is the file whose stem is ``<stem><suffix>`` for the first of
    ``mask_suffixes`` that has one, compared case-insensitively (ISIC 2016 writes ``_Segmentation``, later years
    ``_segmentation``). Files with :data:`IGNORED_IMAGE_SUFFIXES` are skipped. When both folders are the same, a file
    taken as another image's mask is not listed as an image.

    Args:
        images_dir: folder of images (:data:`IMAGE_EXTENSIONS`), not searched recursively.
        masks_dir: folder of masks (:data:`MASK_EXTENSIONS`), not searched recursively.
        mask_suffixes: stem suffixes tried in order.

    Returns:
        ``(pairs, unpaired_images, unpaired_masks)``: pairs as ``{"image": path, "label": path}`` sorted by image
        name, then the absolute paths of the images without a mask and of the masks without an image.

    Raises:
        DataError: when a folder does not exist.
    """
    images_dir, masks_dir = Path(images_dir).resolve(), Path(masks_dir).resolve()
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"folder {folder} does not exist.")
    images = [p for p in _files(images_dir, IMAGE_EXTENSIONS) if _is_image_file(p)]
    masks = _files(masks_dir, MASK_EXTENSIONS)
    mask_of = _mask_of(images, masks, mask_suffixes)
    used_masks = set(mask_of.values())
    # Where images and masks share a folder, a mask also looks like an image: it is not one.
    pairs = [{"image": str(i), "label": str(m)} for i, m in mask_of.items() if i not in used_masks]
    unpaired_images = [str(i) for i in images if i not in mask_of and i not in used_masks]
    image_files = set(images)
    unpaired_masks = [str(m) for m in masks if m not in used_masks and m not in image_files]
    return pairs, unpaired_images, unpaired_masks


def folder_pairs(root: str | os.PathLike) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """
    Pair the photographs under ``root`` with their masks, in the layouts people keep them in:

    - ``images/`` + ``masks/`` with the same file names (the mask's stem may add ``_segmentation``, ``_mask`` or
      ``_lesion``), their subfolders mirrored (``images/p1/x.jpg`` with ``masks/p1/x.png``);
    - a photo beside its mask named ``<photo stem>_segmentation``, ``_mask`` or ``_lesion`` (ISIC's one-folder
      naming), in ``root`` or any subfolder (one folder per patient), or a subfolder with its own
      ``images/`` + ``masks/``.

    Hidden folders are skipped.

    Returns:
        ``(pairs, unpaired_images, unpaired_masks)`` as :func:`pair_images_masks`, pairs sorted by image path; the
        photos of a folder that holds no mask at all are not listed as unpaired (it may hold other photos).
    """
    pairs, unpaired_images, unpaired_masks = [], [], []
    for folder, subfolders, _ in os.walk(Path(root).expanduser()):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        here = Path(folder)
        if (here / "images").is_dir() and (here / "masks").is_dir():
            subfolders.remove("images")
            subfolders.remove("masks")
            for images_dir, nested, _ in os.walk(here / "images"):
                nested[:] = sorted(d for d in nested if not d.startswith("."))
                masks_dir = here / "masks" / os.path.relpath(images_dir, here / "images")
                if masks_dir.is_dir():
                    found = pair_images_masks(images_dir, masks_dir)
                    pairs += found[0]
                    unpaired_images += found[1]
                    unpaired_masks += found[2]
            continue
        found = pair_images_masks(here, here, SAME_FOLDER_MASK_SUFFIXES)
        pairs += found[0]
        if found[0]:
            unpaired_images += found[1]
        unpaired_masks += found[2]
    return sorted(pairs, key=lambda pair: pair["image"]), unpaired_images, unpaired_masks


def datalist_from_folders(
    dataset_dir: str | os.PathLike, seed: int = 0, group_by: str | int = ""
) -> dict[str, list[dict[str, str]]]:
    """
    Build splits from the photo/mask pairs of a folder (:func:`folder_pairs`) when no datalist file exists.

    Pairs are split by :data:`DEFAULT_SPLIT_FRACTIONS` (80/10/10) with :func:`split_items`, by group when
    ``group_by`` is given (:func:`item_groups`); unpaired files are logged as warnings and left out.

    Raises:
        DataError: when the folder is missing or holds no pair (the message says which layouts work).
    """
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist.")
    pairs, unpaired_images, unpaired_masks = folder_pairs(root)
    for path in unpaired_images:
        logger.warning("image without a mask, left out: %s", path)
    for path in unpaired_masks:
        logger.warning("mask without an image, left out: %s", path)
    if not pairs:
        raise DataError(
            f"{root} holds no photo/mask pairs: no {DATALIST_NAME}, no images/ + masks/ folders with the same file "
            "names, and no photo with its mask beside it (<photo>_segmentation.png, _mask or _lesion, as ISIC names "
            "them) in it or its subfolders. Arrange the files so, or give --datalist (JSON, or CSV with image,label "
            f"columns). {_PREPARE_HINT}"
        )
    return split_items(pairs, DEFAULT_SPLIT_FRACTIONS, seed, groups=item_groups(pairs, group_by, root))


def item_groups(items: Sequence[Mapping[str, Any]], group_by: str | int, root: str | os.PathLike) -> list[str] | None:
    """
    The group of each item for a grouped split (:func:`split_items`), or None when ``group_by`` is empty.

    Args:
        items: dicts with an absolute ``"image"`` path.
        group_by: a folder level ``N`` (1, 2, ...): the first ``N`` folders of the photo's path below ``root``
            (below ``root/images`` when the photo lies there), e.g. 1 for ``root/<patient>/x.jpg`` or
            ``root/images/<patient>/x.jpg``; or the name of a column of a CSV datalist (a key of the items), e.g.
            ``patient_id``.
        root: the data root.

    Raises:
        ConfigError: a folder level below 1.
        DataError: a photo that lies in no folder at that level, or an item without the column.
    """
    name = str(group_by).strip()
    if not name:
        return None
    if name.lstrip("-").isdigit():
        level = int(name)
        if level < 1:
            raise ConfigError(f"group_by: folder levels count from 1 (the first folder below the data root): {level}")
        return [_folder_group(item["image"], level, Path(root)) for item in items]
    missing = [item["image"] for item in items if name not in item]
    if missing:
        raise DataError(
            f"group_by {name!r}: {len(missing)} entry(ies) have no {name!r} value, e.g. {missing[0]}; give a column of "
            "the CSV datalist (or a key of the JSON entries), or a folder level such as 1."
        )
    return [str(item[name]) for item in items]


def groups_apart(
    splits: Mapping[str, Sequence[Mapping[str, Any]]], group_by: str | int, root: str | os.PathLike
) -> None:
    """Refuse splits that share a group (:func:`item_groups`): one patient's photos on two sides of a split.

    Nothing is checked when ``group_by`` is empty.

    Raises:
        ConfigError, DataError: as :func:`item_groups`, or naming a group found in two splits and a photo of each.
    """
    if not str(group_by).strip():
        return
    seen: dict[str, tuple[str, str]] = {}
    for key, items in splits.items():
        for item, group in zip(items, item_groups(items, group_by, root) or [], strict=True):
            other = seen.setdefault(group, (key, item["image"]))
            if other[0] != key:
                raise DataError(
                    f"group_by {group_by!r}: group {group!r} lies in both the {other[0]} and the {key} split "
                    f"({other[1]}, {item['image']}), so its photos would be scored on what they were trained on; "
                    "move the group's entries into one split, or leave the splits to the bundle."
                )


def _folder_group(image: str, level: int, root: Path) -> str:
    base = root.resolve()
    folder = Path(image).resolve().parent
    if folder.is_relative_to(base / "images"):
        base = base / "images"
    parts = folder.relative_to(base).parts if folder.is_relative_to(base) else folder.parts[1:]
    if len(parts) < level:
        raise DataError(
            f"group_by {level}: {image} lies in no folder {level} level(s) below {base}; put each patient's photos in "
            "a folder of their own, or group by a column of a CSV datalist."
        )
    return "/".join(parts[:level])


def write_datalist(
    path: str | os.PathLike, splits: Mapping[str, Sequence[Mapping[str, Any]]], root: str | os.PathLike
) -> Path:
    """
    Write ``splits`` as a datalist JSON file whose paths are relative to ``root`` (with ``/`` separators).

    The file is written to a temporary file in the same folder and moved into place, so a reader never sees half a
    datalist. Only values under :data:`PATH_KEYS` are rewritten; other fields are kept.

    Returns:
        The path written.
    """
    path, root = Path(path), Path(root).resolve()

    def relative(item: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: Path(os.path.relpath(Path(v).resolve(), root)).as_posix() if k in PATH_KEYS and isinstance(v, str) else v
            for k, v in item.items()
        }

    content = {name: [relative(item) for item in items] for name, items in splits.items()}
    return write_text_atomically(path, json.dumps(content, indent=2) + "\n")


def split_counts(n: int, sizes: Sequence[float]) -> list[int]:
    """
    Turn split sizes into item counts that add up to ``n``.

    Args:
        n: the number of items.
        sizes: counts (ints adding up to ``n``, used as they are) or proportions (any non-negative numbers, e.g.
            fractions, or the counts of a differently sized dataset). Proportions :math:`s_i` give
            :math:`\\lfloor n s_i / \\sum s \\rfloor` each, and the items left over go one each to the largest
            remainders (ties to the earlier split): the largest-remainder method.

    Raises:
        ValueError: when ``sizes`` is empty, has a negative value, or adds up to zero.
    """
    if not sizes or any(s < 0 for s in sizes) or sum(sizes) <= 0:
        raise ValueError(f"split sizes must be non-negative and add up to more than 0, got {list(sizes)}.")
    if all(isinstance(s, Integral) for s in sizes) and sum(sizes) == n:
        return list(sizes)
    # Exact rational arithmetic, so that ties (e.g. 8 x 140/200 and 8 x 40/200) do not depend on rounding noise.
    total = sum(Fraction(s) for s in sizes)
    exact = [n * Fraction(s) / total for s in sizes]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _item_name(item: Any) -> str:
    return Path(item["image"] if isinstance(item, Mapping) else str(item)).name


def _blocks_by_hash(items: Sequence[Any], counts: Sequence[int], seed: int) -> list[int]:
    """Block index of each item: items ranked by SHA-256 of ``"<seed>:<file name>"`` are cut into ``counts``."""

    def rank(i: int) -> tuple[str, str]:
        item = items[i]
        digest = hashlib.sha256(f"{seed}:{_item_name(item)}".encode()).hexdigest()
        return digest, str(item["image"] if isinstance(item, Mapping) else item)  # full path breaks name ties

    block_of = [0] * len(items)
    order = sorted(range(len(items)), key=rank)
    start = 0
    for block, count in enumerate(counts):
        for index in order[start : start + count]:
            block_of[index] = block
        start += count
    return block_of


def split_items(
    items: Sequence[Any],
    sizes: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = 0,
    keys: Sequence[str] = SPLIT_KEYS,
    groups: Sequence[str] | None = None,
) -> dict[str, list[Any]]:
    """
    Split ``items`` deterministically into named parts.

    Items are ranked by the SHA-256 of ``"<seed>:<image file name>"``; the first ``counts[0]`` ranks go to
    ``keys[0]``, the next ``counts[1]`` to ``keys[1]``, and so on, with ``counts = split_counts(len(items), sizes)``.
    Each part keeps the items in their input order.

    Args:
        items: dicts with an ``"image"`` path, or paths.
        sizes: exact counts (ints adding up to ``len(items)``) or fractions adding up to 1.
        seed: changes the ranking; the same seed and file names give the same split anywhere.
        keys: the names of the parts, one per size.
        groups: one group name per item (e.g. :func:`item_groups`): whole groups are ranked by the SHA-256 of
            ``"<seed>:<group>"`` and each goes to the part furthest below its share (relative to its count; ties
            to the earlier part), so no group straddles two parts and the counts are met as nearly as the group
            sizes allow. Every part with a share gets a group while groups are left.

    Raises:
        ValueError: when ``sizes`` and ``keys`` differ in length, integer counts do not add up to ``len(items)``,
            or fractions do not add up to 1.
    """
    if len(sizes) != len(keys):
        raise ValueError(f"got {len(sizes)} split sizes {list(sizes)} for {len(keys)} split names {list(keys)}.")
    if all(isinstance(s, Integral) for s in sizes):
        if sum(sizes) != len(items):
            raise ValueError(f"split counts {list(sizes)} add up to {sum(sizes)}, not to the {len(items)} items.")
    elif not math.isclose(sum(sizes), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions {list(sizes)} add up to {sum(sizes)}, not to 1.")
    counts = split_counts(len(items), sizes)
    part_of = _blocks_by_hash(items, counts, seed) if groups is None else _groups_by_hash(groups, counts, seed)
    return {key: [item for item, p in zip(items, part_of, strict=True) if p == part] for part, key in enumerate(keys)}


def _groups_by_hash(groups: Sequence[str], counts: Sequence[int], seed: int) -> list[int]:
    """Part index of each item: whole groups, ranked by SHA-256 of ``"<seed>:<group>"``, to the neediest part."""
    sizes: dict[str, int] = {}
    for group in groups:
        sizes[group] = sizes.get(group, 0) + 1
    assigned = [0] * len(counts)
    part_of_group = {}
    for group in sorted(sizes, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest()):
        need = [(c - a) / c if c else -math.inf for c, a in zip(counts, assigned, strict=True)]
        part = max(range(len(counts)), key=lambda k: (need[k], -k))
        part_of_group[group] = part
        assigned[part] += sizes[group]
    return [part_of_group[group] for group in groups]


def kfold(items: Sequence[Any], k: int = 5, seed: int = 0) -> list[tuple[list[Any], list[Any]]]:
    """
    Partition ``items`` into ``k`` folds for cross-validation.

    Items are ranked as in :func:`split_items` and cut into ``k`` consecutive blocks whose sizes differ by at most
    one; fold ``i`` validates on block ``i`` and trains on the rest. Every item is validated on exactly once.

    Returns:
        ``[(training, validation), ...]``, one pair per fold, each list in input order.

    Raises:
        ValueError: when ``k < 2`` or there are fewer items than folds.
    """
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2, got {k}.")
    if len(items) < k:
        raise ValueError(f"cannot make {k} folds from {len(items)} items.")
    fold_of = _blocks_by_hash(items, split_counts(len(items), [1.0] * k), seed)
    labelled = list(zip(items, fold_of, strict=True))
    return [([i for i, f in labelled if f != fold], [i for i, f in labelled if f == fold]) for fold in range(k)]


def loader_workers(limit: int = 4) -> int:
    """DataLoader worker processes for this machine: one per CPU this process may use, less one for the main
    process (it runs the network), at most ``limit``; 0 on a single CPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(limit, cpus - 1))


def worker_init(worker_id: int) -> None:
    """DataLoader worker start-up: MONAI's per-worker seeding, and one intra-op thread per worker.

    Worker processes inherit the parent's thread pool size; on a CPU machine their transforms then compete with
    the training process's own threads (measured: one epoch 10 s with ``num_workers=0``, 107 s with 2 workers).
    """
    import torch
    from monai.data.utils import worker_init_fn

    torch.set_num_threads(1)
    worker_init_fn(worker_id)


def data_loader(
    dataset: Sequence[Any],
    batch_size: int = 1,
    shuffle: bool = False,
    num_workers: int = 0,
    drop_last: bool = False,
    **kwargs: Any,
):
    """MONAI's ``DataLoader`` with this bundle's worker policy: workers started by :func:`worker_init` and kept
    from one epoch to the next; ``drop_last`` only when ``dataset`` holds more than one batch, so that a data set
    smaller than a batch still trains. ``kwargs`` (a ``sampler``...) are passed on.
    """
    from monai.data import DataLoader

    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=bool(drop_last) and len(dataset) > batch_size,
        persistent_workers=num_workers > 0,
        worker_init_fn=worker_init,
        **kwargs,
    )


def original_files(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The items with ``image``/``label`` pointing at the original-resolution files behind a resized cache.

    ``prepare_data.py --cache_size`` lists the cached copy under ``image``/``label`` and the original under
    ``image_orig``/``label_orig``; evaluation at the original resolution wants the latter. Items without a cache are
    returned unchanged (as copies).
    """
    result = []
    for item in items:
        item = dict(item)
        for key in ("image", "label"):
            original = item.pop(f"{key}_orig", None)
            if original:
                item[key] = original
        result.append(item)
    return result


def describe_training_data(
    training: Sequence[Mapping[str, Any]],
    validation: Sequence[Mapping[str, Any]] = (),
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    bundle_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """What a checkpoint records about the data it was trained on (``bundle.checkpoint.NetworkCheckpoint``).

    Described from the items themselves, since a caller may replace the configured data (MONAI Label sets
    ``train#dataset#data`` to its datastore's labels while ``dataset_dir`` still names the sample).

    Returns:
        ``dataset``: the folder holding all training photographs; ``datalist``: the datalist file when one was
        given and the items came from it; ``training_pairs`` / ``validation_pairs``: the counts;
        ``synthetic_sample``: every training photograph is one of the embedded synthetic sample's (in
        ``<bundle_root>/sample_data`` or named as its generator names them), i.e. the model has never seen a real
        photograph.
    """
    images = [Path(str(item["image"])) for item in training if isinstance(item, Mapping) and "image" in item]
    folders = {str(path.resolve().parent) for path in images}
    dataset = os.path.commonpath(sorted(folders)) if folders else str(dataset_dir or "")
    sample = Path(bundle_root or ".").resolve() / SAMPLE_DATA_FOLDER
    synthetic = bool(images) and all(
        path.resolve().is_relative_to(sample) or _SYNTHETIC_NAME.fullmatch(path.stem) for path in images
    )
    from_datalist = (
        bool(datalist)
        and bool(images)
        and all(path.resolve().is_relative_to(Path(datalist).resolve().parent) for path in images)
    )
    return {
        "dataset": dataset,
        "datalist": str(datalist) if from_datalist else "",
        "training_pairs": len(training),
        "validation_pairs": len(validation),
        "synthetic_sample": synthetic,
    }


OUTPUT_NAME_KEY = "output_name"


def output_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Names for the files written about each input (``<name>_mask.png``, ``<name>_overlay.png``), one per path.

    A name is the input's path relative to the deepest folder holding all the inputs, without the extension and
    with ``/`` separators: a folder of photos gives plain stems (``IMG_0001``), a datalist listing ``p1/IMG_0001.jpg``
    and ``p2/IMG_0001.jpg`` gives ``p1/IMG_0001`` and ``p2/IMG_0001``, so that outputs keep the relative folder and
    never overwrite each other. Different files whose names still coincide, ignoring case (``x.jpg`` beside
    ``x.png``, or inputs on different drives), keep their extension (``x_jpg``) and then a number (``x_jpg_2``).
    The same file listed twice gets the same name.
    """
    absolute = [os.path.abspath(os.fspath(path)) for path in paths]
    try:
        common = os.path.commonpath([os.path.dirname(path) for path in absolute]) if absolute else ""
    except ValueError:  # inputs on different drives have no common folder
        common = ""
    names = []
    for path in absolute:
        folder = os.path.relpath(os.path.dirname(path), common) if common else "."
        names.append(Path(folder, file_stem(path)).as_posix().removeprefix("./"))
    files_of: dict[str, set[str]] = {}
    for name, path in zip(names, absolute, strict=True):
        files_of.setdefault(name.casefold(), set()).add(path)
    taken: set[str] = set()
    unique: dict[str, str] = {}
    for name, path in zip(names, absolute, strict=True):
        if path in unique:
            continue
        if len(files_of[name.casefold()]) > 1:
            extension = Path(path).name[len(file_stem(path)) :].lstrip(".").replace(".", "_")
            name = f"{name}_{extension}" if extension else name
        candidate, number = name, 1
        while candidate.casefold() in taken:
            number += 1
            candidate = f"{name}_{number}"
        taken.add(candidate.casefold())
        unique[path] = candidate
    return [unique[path] for path in absolute]


def with_output_names(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``items`` with :func:`output_names` of their ``"image"`` paths under ``"output_name"`` (items that
    already have one keep it; items whose image is not a path get none)."""
    copies = [dict(item) for item in items]
    named = [item for item in copies if isinstance(item.get("image"), (str, os.PathLike))]
    for item, name in zip(named, output_names([item["image"] for item in named]), strict=True):
        item.setdefault(OUTPUT_NAME_KEY, name)
    return copies
