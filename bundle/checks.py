"""Checking a data set before training or evaluation starts, so that a bad file is one line naming it, not a
traceback from inside a transform halfway through the first epoch.

Every pair is read once (photos at the working size where the format allows, which still reads every byte):

- the photo must decode (not empty, truncated, or another kind of file);
- the mask must decode, have the photo's size *as displayed* (EXIF orientation applied, as the photo is read), and
  be two-level: background and lesion. Values within 10 % of either level count as that level (JPEG noise); a mask
  holding a few distinct values with some in between (a label map with several labels) or with more than 5 % of
  its pixels in between (a photograph, a probability map, wide soft edges) is refused. Thin anti-aliased edges
  and colour-on-black masks pass and are thresholded at half, as ``bundle.images.lesion_binary`` does;
- empty and full masks are named in a warning, and a split where every mask is empty (or every one full) is refused.

With ``skip_bad_pairs`` the bad pairs are left out and listed instead. Training checks whatever pairs its datasets
end up with, whoever supplied the lists (the command line, MONAI Label, a user's Python): ``configs/train.json``
builds them with :func:`checked_dataset`. Training without validation pairs validates on a share of its training
pairs (:func:`training_splits`), so that a best model is chosen and ``model.pt`` written. ``scripts/prepare_data.py``
and evaluation (:func:`evaluation_pairs`) use the same :func:`check_pair`, so all of them accept and refuse the same
pairs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bundle.config import flag
from bundle.data import (
    DATALIST_NAME,
    DEFAULT_SPLIT_FRACTIONS,
    groups_apart,
    item_groups,
    load_datalist,
    original_files,
    split_items,
    with_output_names,
)
from bundle.errors import BadInputError, DataError
from bundle.files import threaded_map
from bundle.images import EXIF_ORIENTATION, displayed_size, lesion_binary, read_mask_values, read_photo

__all__ = [
    "MAX_IN_BETWEEN_SHARE",
    "check_pair",
    "checked_dataset",
    "checked_pairs",
    "evaluation_pairs",
    "require_validation",
    "training_splits",
]

logger = logging.getLogger(__name__)

LEVEL_TOLERANCE = 0.1  # a value within 10 % of the mask's maximum from 0 or from the maximum is that level
MAX_IN_BETWEEN_SHARE = 0.05
LABEL_MAP_VALUES = 8  # at most this many distinct values, some of them in between: several labels
VALIDATION_SHARE = 0.1  # of the training pairs, when a data set has no validation pairs
_LISTED = 5


@dataclass
class PairCheck:
    """The outcome of :func:`check_pair`: ``problem`` (one line naming the file) or the mask's lesion share."""

    item: dict[str, Any]
    problem: str | None = None
    lesion_share: float = 0.0


def _levels_problem(values: np.ndarray) -> str | None:
    """Why ``values`` (a mask, channels last) is not a two-level mask, or None."""
    levels = values[..., :3].max(axis=-1) if values.ndim == 3 else values
    peak = float(levels.max()) if levels.size else 0.0
    if peak <= 0:
        return None
    between = (levels > LEVEL_TOLERANCE * peak) & (levels < (1 - LEVEL_TOLERANCE) * peak)
    share = float(between.mean())
    if share == 0:
        return None
    distinct = np.unique(levels)
    if len(distinct) <= LABEL_MAP_VALUES:
        shown = ", ".join(f"{v:g}" for v in distinct.tolist())
        return f"holds {len(distinct)} different values ({shown}), not two (background and lesion): several labels?"
    if share > MAX_IN_BETWEEN_SHARE:
        return (
            f"is not a two-level mask: {share:.0%} of its pixels lie between background and lesion (a photograph, "
            "a probability map or blurred edges?); save it with two values, 0 and 255 (or 0 and 1)"
        )
    return None


def check_pair(item: Mapping[str, Any], working_size: int | None = None) -> PairCheck:
    """Read one ``{"image", "label"}`` pair and say what is wrong with it, if anything (see the module's text)."""
    check = PairCheck(dict(item))
    photo, mask = str(item["image"]), item.get("label")
    try:
        read_photo(photo, reduce_to=(working_size, working_size) if working_size else None)
        with Image.open(photo) as opened:  # the size as displayed, which the decoded copy may be reduced from
            photo_size = displayed_size(opened)
            rotated = opened.getexif().get(EXIF_ORIENTATION, 1) != 1
    except BadInputError as error:
        check.problem = str(error)
        return check
    if mask is None:
        return check
    try:
        values = read_mask_values(str(mask))
    except BadInputError as error:
        check.problem = str(error)
        return check
    mask_size = (int(values.shape[1]), int(values.shape[0]))
    if mask_size != photo_size:
        hint = " (the photo's EXIF orientation turns it: save the mask as the photo is displayed)" if rotated else ""
        check.problem = (
            f"{mask}: mask is {mask_size[0]}x{mask_size[1]} but its photo {photo} is {photo_size[0]}x{photo_size[1]}"
            f"{hint}"
        )
        return check
    problem = _levels_problem(values)
    if problem:
        check.problem = f"{mask}: {problem}"
        return check
    check.lesion_share = float(lesion_binary(values).mean())
    return check


def _listed(lines: Sequence[str]) -> str:
    more = f"; and {len(lines) - _LISTED} more (all logged above)" if len(lines) > _LISTED else ""
    return "; ".join(lines[:_LISTED]) + more


def _require_labels(items: Sequence[Mapping[str, Any]], where: str) -> None:
    """Refuse items without a ``"label"`` (the mask's path), naming the first, its keys and the key expected."""
    unlabelled = [item for item in items if not isinstance(item.get("label"), str)]
    if not unlabelled:
        return
    first = unlabelled[0]
    keys = ", ".join(f'"{key}"' for key in first)
    other = [key for key in first if key not in ("image", "label") and isinstance(first[key], str)]
    hint = f'; rename "{other[0]}" to "label"' if len(other) == 1 else ""
    raise DataError(
        f'{where}: {len(unlabelled)} of {len(items)} entries have no "label" (the mask\'s path), e.g. the entry of '
        f'{first.get("image")} has {keys}; each entry needs "image" and "label"{hint}.'
    )


def checked_pairs(
    items: Sequence[Mapping[str, Any]],
    split: str,
    skip_bad_pairs: bool = False,
    working_size: int | None = None,
    source: str = "",
) -> list[dict[str, Any]]:
    """Check every pair of one split (:func:`check_pair`, in threads) and return the usable ones.

    Args:
        items: the split's items, paths absolute (``bundle.data.load_datalist``).
        split: its name, for the messages.
        skip_bad_pairs: leave bad pairs out (each logged, and their count) instead of refusing (a yes/no word
            as the command line gives it works too).
        working_size: the network's input size, to decode photos no larger than needed.
        source: where the split comes from, for the messages (e.g. the datalist file).

    Raises:
        DataError: the split is empty (or empty once bad pairs are left out); an entry has no ``"label"``; a pair
            is bad and ``skip_bad_pairs`` is off (naming each file and its problem); or every mask is empty, or
            every one full.
    """
    where = f"the {split} split" + (f" of {source}" if source else "")
    skip_bad_pairs = flag(skip_bad_pairs, "skip_bad_pairs")
    if not items:
        raise DataError(f"{where} holds no image/mask pairs.")
    _require_labels(items, where)
    checks = list(threaded_map(lambda item: check_pair(item, working_size), items))
    bad = [c.problem for c in checks if c.problem]
    for line in bad:
        logger.error("%s (%s)", line, "left out" if skip_bad_pairs else where)
    if bad and not skip_bad_pairs:
        raise DataError(
            f"{len(bad)} bad pair(s) in {where}: {_listed(bad)}. Fix or remove them, or add --skip_bad_pairs true "
            "to leave them out."
        )
    good = [c for c in checks if not c.problem]
    if bad:
        logger.warning("Left out %d bad pair(s) of %s; %d remain.", len(bad), where, len(good))
    if not good:
        raise DataError(f"{where} holds no usable image/mask pair: all {len(items)} are bad.")
    for kind, share in (("empty (no lesion pixel)", 0.0), ("full (lesion everywhere)", 1.0)):
        named = [str(c.item.get("label")) for c in good if c.item.get("label") and c.lesion_share == share]
        if named and len(named) == len(good):
            raise DataError(
                f"every mask of {where} is {kind}, so there is nothing to learn or score: {_listed(named)}. "
                "Check that the masks mark the lesion (e.g. 255 on 0)."
            )
        for name in named:
            logger.warning("mask %s is %s", name, kind)
    return [c.item for c in good]


def checked_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Any,
    split: str = "training",
    skip_bad_pairs: bool = False,
    working_size: int | None = None,
    source: str = "",
    **cache_args: Any,
):
    """A MONAI ``CacheDataset`` of the pairs of ``data`` that pass :func:`checked_pairs`, checked before anything
    is decoded.

    ``configs/train.json`` builds its training and validation datasets with this, so the pairs are checked whoever
    set ``train#dataset#data`` / ``validate#dataset#data`` (MONAI Label replaces both with its own lists).

    Args:
        data: the ``{"image", "label"}`` items.
        transform: the dataset's transform.
        split: ``"training"`` or ``"validation"``, for the messages; an empty validation list is refused by
            :func:`require_validation`.
        skip_bad_pairs: leave bad pairs out instead of refusing.
        working_size: the network's input size (photos are decoded no larger than needed).
        source: where the items come from (the datalist file), for the messages.
        cache_args: passed on to ``CacheDataset`` (``cache_rate``, ``num_workers``, ``progress``...).

    Raises:
        DataError: as :func:`checked_pairs` and :func:`require_validation`.
    """
    from monai.data import CacheDataset

    if split == "validation":
        require_validation(data)
    return CacheDataset(checked_pairs(data, split, skip_bad_pairs, working_size, source), transform, **cache_args)


def _splits_described(dataset_dir: str | os.PathLike | None, datalist: str | os.PathLike | None) -> str:
    if not datalist and dataset_dir and not (Path(dataset_dir) / DATALIST_NAME).is_file():
        fractions = "/".join(f"{round(100 * f)}" for f in DEFAULT_SPLIT_FRACTIONS)
        return f"the {fractions} split by file-name hash of {dataset_dir}'s images/ and masks/"
    return f"the 'training' and 'validation' splits of {datalist or Path(dataset_dir or '.') / DATALIST_NAME}"


def training_splits(
    dataset_dir: str | os.PathLike | None,
    datalist: str | os.PathLike | None = None,
    seed: int = 0,
    group_by: str | int = "",
) -> dict[str, list[dict[str, Any]]]:
    """The ``training`` and ``validation`` items of a data set, whose pairs :func:`checked_dataset` then checks.

    With ``group_by``, splits given by the datalist must keep each group on one side (``bundle.data.groups_apart``).
    When it has no validation pairs (an empty or missing split, or a folder too small for the 80/10/10 split), a
    tenth of the training pairs (at least one), chosen by file-name hash with ``seed`` (whole groups with
    ``group_by``, see ``bundle.data.item_groups``), validates instead and the choice is logged, so that a best
    model is chosen and written.

    Raises:
        DataError: as ``bundle.data.load_datalist``, or fewer than two training pairs and no validation pairs.
    """
    source = str(datalist or dataset_dir)
    logger.info("Reading the training and validation lists of %s...", source)
    training = load_datalist(dataset_dir, datalist, key="training", group_by=group_by)
    try:
        validation = load_datalist(dataset_dir, datalist, key="validation", group_by=group_by)
    except DataError as error:
        if "no key 'validation'" not in str(error) and "no split 'validation'" not in str(error):
            raise
        validation = []
    root = _data_root(dataset_dir, datalist)
    if validation:
        groups_apart({"training": training, "validation": validation}, group_by, root)
        logger.info("Training on %d pairs, validating on %d: %s.", len(training), len(validation),
                    _splits_described(dataset_dir, datalist))  # fmt: skip
        return {"training": training, "validation": validation}
    if len(training) < 2:
        raise DataError(
            f"{source} has {len(training)} training pair and no validation pairs: training needs at least two pairs "
            "(one to validate on, which chooses models/model.pt)."
        )
    count = max(1, round(VALIDATION_SHARE * len(training)))
    groups = item_groups(training, group_by, root)
    parts = split_items(training, [len(training) - count, count], seed, ("training", "validation"), groups)
    if not parts["validation"]:
        raise DataError(
            f"{source} has no validation pairs and its {len(training)} training pairs are all in one group "
            f"(group_by {group_by!r}), so no group is left to validate on: add a validation split, or group by "
            "something finer."
        )
    logger.warning(
        "%s has no validation pairs: validating on %d of its %d training pairs instead: %s",
        source,
        len(parts["validation"]),
        len(training),
        ", ".join(Path(item["image"]).name for item in parts["validation"]),
    )
    logger.info("Training on %d pairs, validating on %d.", len(parts["training"]), len(parts["validation"]))
    return parts


def _data_root(dataset_dir: str | os.PathLike | None, datalist: str | os.PathLike | None) -> str:
    """Where relative paths start (``bundle.data.load_datalist``'s rule), for folder-level groups."""
    return str(dataset_dir or os.path.dirname(os.path.abspath(datalist or ".")))


def evaluation_pairs(
    dataset_dir: str | os.PathLike | None,
    datalist: str | os.PathLike | None,
    key: str = "test",
    skip_bad_pairs: bool = False,
    working_size: int | None = None,
    group_by: str | int = "",
) -> list[dict[str, Any]]:
    """The checked pairs of split ``key`` that evaluation scores, at their original resolution
    (``bundle.data.original_files``), each named for the report (``bundle.data.with_output_names``), split as
    training split them (``group_by``); with ``group_by``, a group that
    also lies in the training split is refused (``bundle.data.groups_apart``).

    Raises:
        DataError: as ``bundle.data.load_datalist`` and :func:`checked_pairs`.
    """
    items = load_datalist(dataset_dir, datalist, key=key, group_by=group_by)
    if str(group_by).strip() and key != "training":
        try:
            training = load_datalist(dataset_dir, datalist, key="training", group_by=group_by)
        except DataError:  # nothing was trained on from this datalist
            training = []
        groups_apart({"training": training, key: items}, group_by, _data_root(dataset_dir, datalist))
    items = original_files(items)
    return with_output_names(checked_pairs(items, key, skip_bad_pairs, working_size, str(datalist or dataset_dir)))


def require_validation(dataset: Sequence[Any]) -> None:
    """Refuse to train when the validation set is empty: nothing would choose ``models/model.pt``.

    :func:`training_splits` never leaves it empty; a caller that replaces ``validate#dataset#data`` itself can. MONAI
    Label does: its default ``val_split`` of 0.2 leaves no validation image when fewer than three are labelled.

    Raises:
        DataError: ``dataset`` holds no items.
    """
    if len(dataset) == 0:
        raise DataError(
            "no validation pairs: nothing would choose models/model.pt. In MONAI Label, label at least 3 images "
            "(its default val_split 0.2 leaves none for fewer) or raise val_split in the training request."
        )
