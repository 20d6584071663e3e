"""Prepare a skin-lesion dataset for the bundle: pair images with masks, check them, split them, write a datalist.

Reads the official archives (zip) or their extracted folders of

- ISIC 2016 Part 1: ``ISBI2016_ISIC_Part1_{Training,Test}_Data/ISIC_<id>.jpg`` with
  ``ISBI2016_ISIC_Part1_{Training,Test}_GroundTruth/ISIC_<id>_Segmentation.png``;
- ISIC 2017 Part 1: ``ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_<id>.jpg`` (``*_superpixels.png`` ignored)
  with ``ISIC-2017_{Training,Validation,Test_v2}_Part1_GroundTruth/ISIC_<id>_segmentation.png``;
- ISIC 2018 Task 1: ``ISIC2018_Task1-2_Training_Input/ISIC_<id>.jpg`` with
  ``ISIC2018_Task1_Training_GroundTruth/ISIC_<id>_segmentation.png``;
- PH2: ``PH2Dataset/PH2 Dataset images/IMD<n>/IMD<n>_Dermoscopic_Image/IMD<n>.bmp`` with
  ``IMD<n>_lesion/IMD<n>_lesion.bmp`` (the ``.rar`` must be extracted first);
- ISIC 2017 at 256×256 (``isic2017_256``, e.g. ``shared/data/isic2017_256``): ``training/`` and ``validation/``
  folders, each holding ``images/ISIC_<id>.jpg`` and ``masks/ISIC_<id>_segmentation.png``;
- any ``images/`` + ``masks/`` pair of folders (mask stem = image stem, optionally + ``_segmentation``, ``_mask`` or
  ``_lesion``),

and writes ``<out>/datalist.json`` with paths relative to ``<out>``, split as in the paper's Table 2. Examples::

    python -m scripts.prepare_data ISIC2018_Task1-2_Training_Input.zip ISIC2018_Task1_Training_GroundTruth.zip \\
        --out data/isic2018 --cache_size 512
    python -m scripts.prepare_data ~/PH2Dataset --out data/ph2 --folds 5
    python -m scripts.prepare_data --download isic2017 --out data/isic2017
    python -m scripts.prepare_data ../shared/data/isic2017_256 --out data/isic2017_256

Problems with single files (unpaired, unreadable, mask size differs from the image) are printed one per line and
the files left out; problems that stop the run (missing folder, unknown layout, no pairs, failed download) are
printed as one ``error:`` line each, with exit status 1.

This file finds the layout, pairs, checks, splits and caches; the downloads and archives are
``scripts/downloads.py``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fire
import numpy as np
from PIL import Image
from tqdm import tqdm

from bundle.checks import check_pair
from bundle.data import (
    DATALIST_NAME,
    DEFAULT_SPLIT_FRACTIONS,
    MASK_SUFFIXES,
    SPLIT_KEYS,
    file_stem,
    has_extension,
    kfold,
    pair_images_masks,
    split_counts,
    split_items,
    write_datalist,
)
from bundle.files import atomic_write, threaded_map
from bundle.images import LABELMAP_EXTENSIONS, displayed_size, read_mask, read_photo
from scripts.downloads import DownloadError, download_dataset, extract_zip, load_checksums

__all__ = [
    "ISIC_FOLDERS",
    "LAYOUTS",
    "DownloadError",
    "cache_pair",
    "collect_pairs",
    "detect_layout",
    "main",
    "make_splits",
    "prepare_data",
]

LAYOUTS = ("isic2016", "isic2017", "isic2017_256", "isic2018", "ph2", "generic")
ISIC_SUFFIXES = ("_segmentation",)  # matched case-insensitively: 2016 writes "_Segmentation"
# split -> (images folder, masks folder) of the official archives.
ISIC_FOLDERS: dict[str, dict[str, tuple[str, str]]] = {
    "isic2016": {
        "training": ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
        "test": ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
    },
    "isic2017": {
        "training": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
        "validation": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
        "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
    },
    "isic2018": {
        "training": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    },
}
PH2_FOLDER = "PH2 Dataset images"
# The paper's Table 2, (training, validation, test). Its ISIC 2017 row states 2000 images in all but splits 2150.
PAPER_SPLITS = {"isic2018": (1815, 259, 520), "isic2017": (1400, 150, 600), "ph2": (140, 20, 40)}
# ISIC 2016 is not in the paper: its official test set stays the test set, and 10% of its training set validates.
ISIC2016_VALIDATION_FRACTION = 0.1
# ISIC 2017 at 256x256: the official validation split is the test set; this seeded share of the official training
# split chooses checkpoints (2000 -> 1840 / 160).
PRESPLIT_VALIDATION_FRACTION = 0.08
PRESPLIT_FOLDERS = ("training", "validation")
FOLD_VALIDATION_SIZES = (0.875, 0.125)  # training / validation share of the folds that are not held out
SEARCH_DEPTH = 3  # how deep under each source the dataset's folders are looked for
CACHE_JPEG_QUALITY = 95
CHECK_DECODE_SIZE = 256  # photos are checked decoded down to no less than this (every byte is still read)
_WRITTEN_HERE = re.compile(r"cache\d+|downloads")  # this script's own folders under --out are not searched


@dataclass
class Collected:
    """Pairs found for one layout: ``groups`` maps an official split name (or ``"all"``) to its pairs."""

    layout: str
    groups: dict[str, list[dict[str, str]]]
    problems: list[str] = field(default_factory=list)


def _say(line: str) -> None:
    print(line, flush=True)


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- finding the layout


def _folder_index(roots: Sequence[Path], depth: int = SEARCH_DEPTH) -> dict[str, list[Path]]:
    """Folder name -> folders of that name under ``roots`` (the roots included), shallowest first."""
    index: dict[str, list[Path]] = {}
    level = [root.resolve() for root in roots]
    for current_depth in range(depth + 1):
        next_level = []
        for folder in level:
            index.setdefault(folder.name, []).append(folder)
            if current_depth == depth:
                continue
            try:
                with os.scandir(folder) as entries:
                    children = [Path(e.path) for e in entries if e.is_dir() and not _WRITTEN_HERE.fullmatch(e.name)]
            except OSError:
                continue
            next_level += sorted(children)
        level = next_level
    return index


def _generic_roots(index: Mapping[str, list[Path]]) -> list[Path]:
    return [p.parent for p in index.get("images", []) if (p.parent / "masks").is_dir()]


def _presplit_roots(index: Mapping[str, list[Path]]) -> list[Path]:
    """Folders holding ``training/`` and ``validation/``, each with ``images/`` + ``masks/`` (ISIC 2017 at 256)."""
    return [
        folder.parent
        for folder in index.get(PRESPLIT_FOLDERS[0], [])
        if all((folder.parent / split / sub).is_dir() for split in PRESPLIT_FOLDERS for sub in ("images", "masks"))
    ]


def detect_layout(index: Mapping[str, list[Path]]) -> str:
    """
    The layout whose folders ``index`` holds; a dataset-specific layout wins over a stray ``images/`` + ``masks/``.

    Raises:
        ValueError: when no layout or several dataset-specific layouts are found.
    """
    found = [name for name, splits in ISIC_FOLDERS.items() if any(f in index for pair in splits.values() for f in pair)]
    if PH2_FOLDER in index:
        found.append("ph2")
    if _presplit_roots(index):
        found.append("isic2017_256")
    if len(found) > 1:
        raise ValueError(f"found the folders of several datasets ({', '.join(found)}); pass --layout to pick one.")
    if found:
        return found[0]
    if _generic_roots(index):
        return "generic"
    expected = [pair[0] for splits in ISIC_FOLDERS.values() for pair in splits.values()] + [PH2_FOLDER]
    raise ValueError(
        f"found no known dataset layout: none of {', '.join(expected)}, nor images/ + masks/ folders "
        f"(searched {SEARCH_DEPTH} levels deep)."
    )


def _pairs_between(images_dir: Path, masks_dir: Path, suffixes: Sequence[str], problems: list[str]) -> list[dict]:
    pairs, unpaired_images, unpaired_masks = pair_images_masks(images_dir, masks_dir, suffixes)
    problems += [f"unpaired image (no mask in {masks_dir}): {p}" for p in unpaired_images]
    problems += [f"unpaired mask (no image in {images_dir}): {p}" for p in unpaired_masks]
    return pairs


def _collect_isic(layout: str, index: Mapping[str, list[Path]]) -> Collected:
    folders = [name for pair in ISIC_FOLDERS[layout].values() for name in pair]
    if not any(name in index for name in folders):
        raise ValueError(f"found none of the {layout} folders ({', '.join(folders)}) under the sources.")
    collected = Collected(layout, {})
    for split, (images_name, masks_name) in ISIC_FOLDERS[layout].items():
        images_dirs, masks_dirs = index.get(images_name), index.get(masks_name)
        if images_dirs and masks_dirs:
            collected.groups[split] = _pairs_between(images_dirs[0], masks_dirs[0], ISIC_SUFFIXES, collected.problems)
        elif images_dirs or masks_dirs:
            have, lack = (images_name, masks_name) if images_dirs else (masks_name, images_name)
            collected.problems.append(f"found {have} but not {lack}: its {split} split is left out")
    return collected


def _collect_ph2(index: Mapping[str, list[Path]]) -> Collected:
    collected = Collected("ph2", {"all": []})
    for case in sorted(p for p in index[PH2_FOLDER][0].iterdir() if p.is_dir()):
        images_dir, masks_dir = case / f"{case.name}_Dermoscopic_Image", case / f"{case.name}_lesion"
        if not images_dir.is_dir() or not masks_dir.is_dir():
            missing = images_dir if not images_dir.is_dir() else masks_dir
            collected.problems.append(f"case {case.name} has no folder {missing.name}: left out ({case})")
            continue
        collected.groups["all"] += _pairs_between(images_dir, masks_dir, ("_lesion",), collected.problems)
    return collected


def collect_pairs(layout: str, index: Mapping[str, list[Path]]) -> Collected:
    """Pair images with masks in the folders of ``layout``, noting unpaired files as problems."""
    if layout in ISIC_FOLDERS:
        return _collect_isic(layout, index)
    if layout == "isic2017_256":
        roots = _presplit_roots(index)
        if not roots:
            raise ValueError("found no folder holding training/ and validation/, each with images/ + masks/.")
        collected = Collected(layout, {})
        for split, folder in (("training", "training"), ("test", "validation")):
            images_dir, masks_dir = roots[0] / folder / "images", roots[0] / folder / "masks"
            collected.groups[split] = _pairs_between(images_dir, masks_dir, ISIC_SUFFIXES, collected.problems)
        return collected
    if layout == "ph2":
        if PH2_FOLDER not in index:
            raise ValueError(f"found no {PH2_FOLDER!r} folder (from PH2Dataset.rar) under the sources.")
        return _collect_ph2(index)
    roots = _generic_roots(index)
    if not roots:
        raise ValueError("found no folder holding both images/ and masks/ under the sources.")
    collected = Collected("generic", {})
    collected.groups["all"] = _pairs_between(roots[0] / "images", roots[0] / "masks", MASK_SUFFIXES, collected.problems)
    return collected


# ------------------------------------------------------------------------------------------------ checking files


def _parallel(function: Callable[[Any], Any], items: Sequence[Any], desc: str) -> list[Any]:
    """``function`` of each item in threads (``bundle.files.threaded_map``), with a progress bar for long runs on a
    terminal."""
    quiet = len(items) < 50 or None
    return list(tqdm(threaded_map(function, items), total=len(items), desc=desc, unit="pair", disable=quiet))


# ----------------------------------------------------------------------------------------------------- splitting


def _scaled(counts: Sequence[int], n: int, what: str) -> list[int]:
    scaled = split_counts(n, counts)
    if n != sum(counts):
        _say(
            f"{what} splits {sum(counts)} cases as {'/'.join(map(str, counts))}; found {n} pairs, "
            f"so the proportions are scaled to {'/'.join(map(str, scaled))}."
        )
    return scaled


def make_splits(collected: Collected, seed: int) -> dict[str, list[dict[str, str]]]:
    """
    Training/validation/test splits for ``collected``:

    - ISIC 2018 and PH2: the paper's Table 2 counts (scaled, and said so, for another number of pairs);
    - ISIC 2017: the official split when all three official parts are present, else Table 2's 1400/150/600 scaled;
    - ISIC 2016: the official test set; 10% of the official training set validates;
    - ISIC 2017 at 256×256: the official validation split is the test set; a seeded 8% of the official training
      split validates (chooses checkpoints);
    - generic: 80/10/10.
    """
    groups, layout = collected.groups, collected.layout
    if layout == "isic2017_256":
        if not groups.get("training") or not groups.get("test"):
            raise ValueError("ISIC 2017 at 256x256 needs pairs in both training/ and validation/.")
        fractions = (1 - PRESPLIT_VALIDATION_FRACTION, PRESPLIT_VALIDATION_FRACTION)
        splits = split_items(groups["training"], fractions, seed, keys=SPLIT_KEYS[:2])
        _say("ISIC 2017 at 256x256: test = the official validation split; validation = a seeded 8% of training.")
        return {**splits, "test": groups["test"]}
    if layout == "isic2017" and all(groups.get(key) for key in SPLIT_KEYS):
        _say("ISIC 2017: using the official training/validation/test split.")
        return {key: groups[key] for key in SPLIT_KEYS}
    if layout == "isic2016" and groups.get("training") and groups.get("test"):
        fractions = (1 - ISIC2016_VALIDATION_FRACTION, ISIC2016_VALIDATION_FRACTION)
        splits = split_items(groups["training"], fractions, seed, keys=SPLIT_KEYS[:2])
        return {**splits, "test": groups["test"]}
    pool = sorted((pair for pairs in groups.values() for pair in pairs), key=lambda p: p["image"])
    if layout in PAPER_SPLITS:
        sizes: Sequence[float] = _scaled(PAPER_SPLITS[layout], len(pool), f"The paper's Table 2 ({layout})")
    else:
        sizes = DEFAULT_SPLIT_FRACTIONS
    return split_items(pool, sizes, seed)


# -------------------------------------------------------------------------------------------------------- cache


def _resized_size(size: tuple[int, int], longer_side: int) -> tuple[int, int]:
    scale = longer_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _is_fresh(target: Path, source: Path) -> bool:
    return target.is_file() and target.stat().st_mtime_ns >= source.stat().st_mtime_ns


def _save_atomically(image: Image.Image, target: Path, **params: Any) -> None:
    atomic_write(target, lambda tmp: image.save(tmp, format="JPEG" if target.suffix == ".jpg" else "PNG", **params))


def cache_pair(pair: Mapping[str, str], cache_dir: Path, longer_side: int) -> dict[str, str]:
    """
    A copy of ``pair`` resized so that its longer side is ``longer_side``, written once under ``cache_dir``.

    Both files are read the way training and inference read them (``bundle.images``): the photograph as displayed
    (EXIF orientation applied, converted to RGB), resampled with Lanczos and stored as JPEG (quality 95, no chroma
    subsampling); the mask binarised by the bundle's one rule (above half its maximum, colour masks by their channel
    maximum) and resized with nearest neighbour to a 0/255 PNG. Pairs already no larger, and NIfTI/NRRD masks, are
    not copied: their item points at the originals.

    Returns:
        ``{"image", "label", "image_orig", "label_orig"}``.
    """
    image_path, label_path = Path(pair["image"]), Path(pair["label"])
    originals = {"image_orig": str(image_path), "label_orig": str(label_path)}
    item = {"image": str(image_path), "label": str(label_path), **originals}
    if has_extension(label_path, LABELMAP_EXTENSIONS):
        return item
    cached_image = cache_dir / "images" / f"{file_stem(image_path)}.jpg"
    cached_label = cache_dir / "masks" / f"{file_stem(image_path)}.png"
    if _is_fresh(cached_image, image_path) and _is_fresh(cached_label, label_path):
        return {**item, "image": str(cached_image), "label": str(cached_label)}
    with Image.open(image_path) as image:
        full_size = displayed_size(image)
    if max(full_size) <= longer_side:
        return item
    size = _resized_size(full_size, longer_side)
    resized = read_photo(image_path, reduce_to=size).resize(size, Image.Resampling.LANCZOS)
    foreground = read_mask(label_path)
    mask = Image.fromarray(np.where(foreground, 255, 0).astype(np.uint8), "L").resize(size, Image.Resampling.NEAREST)
    cached_image.parent.mkdir(parents=True, exist_ok=True)
    cached_label.parent.mkdir(parents=True, exist_ok=True)
    _save_atomically(resized, cached_image, quality=CACHE_JPEG_QUALITY, subsampling=0)
    _save_atomically(mask, cached_label)
    return {**item, "image": str(cached_image), "label": str(cached_label)}


def _cache_all(pairs: Sequence[Mapping[str, str]], cache_dir: Path, longer_side: int) -> dict[str, dict[str, str]]:
    """Original image path -> cached item, for every pair."""
    names: dict[str, str] = {}
    for pair in pairs:
        other = names.setdefault(file_stem(pair["image"]), pair["image"])
        if other != pair["image"]:
            raise ValueError(f"--cache_size needs distinct image names; {other} and {pair['image']} share one.")
    items = _parallel(lambda p: cache_pair(p, cache_dir, longer_side), pairs, f"caching at {longer_side} px")
    return {pair["image"]: item for pair, item in zip(pairs, items, strict=True)}


# --------------------------------------------------------------------------------------------------------- main


def _sources(sources: Sequence[str], out: str | None, download: str | None) -> tuple[list[Path], list[Path], Path]:
    """The source folders, the archives and the data root, checked.

    Raises:
        ValueError: a source that does not exist or is neither a folder nor a zip; no source; no ``out`` where it
            cannot be guessed.
    """
    source_paths = [Path(str(s)).expanduser() for s in sources]
    for path in source_paths:
        if not path.exists():
            raise ValueError(f"source {path} does not exist.")
        if path.is_file() and path.suffix.lower() != ".zip":
            hint = " (extract PH2Dataset.rar first, e.g. with unrar or 7z)" if path.suffix.lower() == ".rar" else ""
            raise ValueError(f"source {path} is neither a folder nor a .zip archive{hint}.")
    if not source_paths and download is None:
        raise ValueError("give the dataset's folders or archives, or --download isic2016|isic2017|isic2018.")
    folders = [p for p in source_paths if p.is_dir()]
    if out is None:
        if len(folders) != 1 or len(source_paths) != 1:
            raise ValueError("pass --out: it defaults to the source folder only when there is exactly one.")
        out = str(folders[0])
    return folders, [p for p in source_paths if p.is_file()], Path(str(out)).expanduser().resolve()


def _usable_pairs(collected: Collected, roots: Sequence[Path]) -> list[dict[str, str]]:
    """The pairs that pass the bundle's own check (``bundle.checks.check_pair``, so that training and evaluation
    accept exactly the pairs listed here); the others are left out of ``collected`` and reported.

    Raises:
        ValueError: no pair is usable.
    """
    pairs = [pair for group in collected.groups.values() for pair in group]
    checks = _parallel(lambda pair: check_pair(pair, CHECK_DECODE_SIZE), pairs, "checking files")
    reasons = [check.problem for check in checks]
    collected.problems += [reason for reason in reasons if reason]
    bad = {pair["image"] for pair, reason in zip(pairs, reasons, strict=True) if reason}
    collected.groups = {k: [p for p in group if p["image"] not in bad] for k, group in collected.groups.items()}
    for problem in collected.problems:
        _warn(problem)
    usable = [pair for group in collected.groups.values() for pair in group]
    if not usable:
        raise ValueError(
            f"no usable image/mask pairs for layout {collected.layout} under {', '.join(map(str, roots))}."
        )
    _say(f"layout {collected.layout}: {len(usable)} pairs ({len(collected.problems)} problem(s) reported above)")
    return usable


def _fold_splits(usable: Sequence[dict[str, str]], folds: int, seed: int) -> list[dict[str, list]]:
    """``folds`` cross-validation splits: each fold held out as ``test``, the checkpoint chosen on 1/8 of the rest
    (PH2: 140/20/40); none for fewer than two folds."""
    fold_splits = []
    if folds >= 2:
        for rest, held_out in kfold(sorted(usable, key=lambda p: p["image"]), folds, seed):
            inner = split_items(rest, FOLD_VALIDATION_SIZES, seed, keys=("training", "validation"))
            fold_splits.append({**inner, "test": held_out})
    return fold_splits


def _write_datalists(out_dir: Path, datalist: str, splits: dict, fold_splits: list[dict]) -> tuple[Path, list[Path]]:
    """Write the datalist and the fold datalists into ``out_dir``; return their paths."""
    datalist_path = write_datalist(out_dir / str(datalist), splits, out_dir)
    _say(f"wrote {datalist_path}: " + ", ".join(f"{key} {len(items)}" for key, items in splits.items()))
    fold_paths = []
    for i, fold in enumerate(fold_splits):
        fold_paths.append(write_datalist(out_dir / f"{Path(str(datalist)).stem}_fold{i}.json", fold, out_dir))
    if fold_paths:
        _say(f"wrote {len(fold_paths)} fold datalists: {fold_paths[0].name} ... {fold_paths[-1].name}")
    return datalist_path, fold_paths


def prepare_data(
    *sources: str,
    out: str | None = None,
    layout: str = "auto",
    seed: int = 0,
    folds: int = 0,
    cache_size: int = 0,
    datalist: str = DATALIST_NAME,
    download: str | None = None,
    base_url: str | None = None,
    checksums: str | Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """
    Build a datalist for a dermoscopy dataset.

    Args:
        sources: zip archives (extracted into ``out``) and/or folders holding the dataset's folders (searched 3
            levels deep).
        out: the data root: where archives are extracted, the cache is written, and the datalist's paths start.
            Defaults to the single source folder.
        layout: ``auto``, ``isic2016``, ``isic2017``, ``isic2017_256``, ``isic2018``, ``ph2`` or ``generic``.
        seed: seed of the splits (same seed and file names, same split).
        folds: when >= 2, also write ``datalist_fold{i}.json`` for i = 0..folds-1: training = the other folds,
            validation = test = fold i.
        cache_size: when > 0, store copies whose longer side is this many pixels under ``<out>/cache<size>/``;
            the datalist's ``image``/``label`` then point at them and ``image_orig``/``label_orig`` at the originals.
        datalist: file name of the datalist, written into ``out``.
        download: ``isic2016``, ``isic2017`` or ``isic2018``: first fetch the official archives into
            ``<out>/downloads``.
        base_url: host replacing the official one for ``download`` (mirror, tests).
        checksums: JSON file (or mapping) of archive name -> ``"sha256:<hex>"``/``"md5:<hex>"``/null overriding the
            built-in checksums.

    Returns:
        A summary: ``layout``, ``datalist`` (path), ``counts`` per split, ``folds`` (paths), ``problems``.

    Raises:
        ValueError: for the problems that stop the run (message names the file or folder).
        DownloadError: when ``download`` fails.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose auto, {', '.join(LAYOUTS)}.")
    folders, archives, out_dir = _sources(sources, out, download)
    if download is not None:
        download = str(download)
        archives += download_dataset(download, out_dir / "downloads", base_url, load_checksums(checksums))
        layout = download if layout == "auto" else layout
    for archive in archives:
        extract_zip(archive, out_dir)
    roots = folders + ([out_dir] if archives else [])

    index = _folder_index(roots)
    layout = detect_layout(index) if layout == "auto" else layout
    collected = collect_pairs(layout, index)
    usable = _usable_pairs(collected, roots)
    splits = make_splits(collected, int(seed))
    fold_splits = _fold_splits(usable, int(folds), int(seed))
    if int(cache_size) > 0:
        cached = _cache_all(usable, out_dir / f"cache{int(cache_size)}", int(cache_size))
        splits = {key: [cached[p["image"]] for p in items] for key, items in splits.items()}
        fold_splits = [{key: [cached[p["image"]] for p in items] for key, items in fs.items()} for fs in fold_splits]
    datalist_path, fold_paths = _write_datalists(out_dir, datalist, splits, fold_splits)
    return {
        "layout": layout,
        "datalist": datalist_path,
        "counts": {key: len(items) for key, items in splits.items()},
        "folds": fold_paths,
        "problems": collected.problems,
    }


def main(argv: Iterable[str] | None = None) -> int:
    """Command line: run :func:`prepare_data`, turning expected failures into ``error:`` lines and status 1."""
    try:
        fire.Fire(prepare_data, command=list(argv) if argv is not None else None, serialize=lambda _: None)
    except (ValueError, DownloadError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
