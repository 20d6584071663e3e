"""The paper's segmentation metrics (section 4.3): per-image and pooled IoU and Dice, plus HD95 and ISIC's Jaccard.

For binary masks A (prediction) and B (ground truth) of one image, with tp, fp, fn counted in pixels:

- IoU = |A ∩ B| / |A ∪ B| = tp / (tp + fp + fn)                      (eq. 8 and 12)
- Dice = 2 |A ∩ B| / (|A| + |B|) = 2 tp / (2 tp + fp + fn)           (eq. 14; eq. 10 prints |A ∪ B| as the
  denominator, a typo: that ratio exceeds 1 for a perfect match)
- mIoU, mDice: the per-image scores averaged over images              (eq. 9 and 11)
- IoU*, Dice*: the same formulas on tp, fp, fn summed over all images  (eq. 13 and 15)
- HD95: the 95th-percentile symmetric Hausdorff distance between the mask boundaries, in pixels (MONAI's)
- thresholded Jaccard: the ISIC 2018 challenge's score, the mean of per-image IoUs with those below 0.65 counted as 0

Empty masks: both empty gives IoU = Dice = 1 and HD95 = 0 (nothing to find, nothing found); exactly one empty gives
IoU = Dice = 0 and HD95 = the image diagonal, the largest distance two pixels of the image can have, so that a missed
or hallucinated lesion is penalised as the worst possible boundary error and the mean HD95 stays finite.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, get_confusion_matrix

from bundle.files import write_text_atomically

__all__ = ["binary_confusion", "per_image_scores", "SegmentationScores", "PER_IMAGE_COLUMNS"]

PER_IMAGE_COLUMNS = ("name", "iou", "dice", "hd95", "tp", "fp", "fn", "tn")


def _binary_mask(mask: np.ndarray | torch.Tensor, arg_name: str) -> torch.Tensor:
    """Return ``mask`` as a CPU bool tensor, refusing values other than 0 and 1 (e.g. probabilities)."""
    mask = torch.as_tensor(mask).detach().cpu()
    if mask.dtype != torch.bool:
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError(f"{arg_name} must be a binary mask holding only 0 and 1 (or bool); threshold it first.")
        mask = mask != 0
    return mask


def _binary_pair(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    pred_mask, target_mask = _binary_mask(pred, "pred"), _binary_mask(target, "target")
    if pred_mask.shape != target_mask.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred_mask.shape)} "
            f"and target {tuple(target_mask.shape)}."
        )
    if pred_mask.ndim not in (2, 3):
        raise ValueError(
            f"pred and target must be single masks of shape (H, W) or (H, W, D) without batch or channel "
            f"dimensions, got {tuple(pred_mask.shape)}."
        )
    return pred_mask, target_mask


def _confusion(pred_mask: torch.Tensor, target_mask: torch.Tensor) -> tuple[int, int, int, int]:
    # MONAI wants one-hot (B, C, spatial...) and returns (tp, fp, tn, fn) per batch item and channel.
    tp, fp, tn, fn = get_confusion_matrix(pred_mask[None, None].float(), target_mask[None, None].float())[0, 0]
    return int(tp), int(fp), int(fn), int(tn)


def binary_confusion(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    """
    Count the pixels of one binary mask pair (lesion = 1) as (tp, fp, fn, tn).

    Args:
        pred: predicted mask of shape (H, W) or (H, W, D), bool or 0/1, NumPy or torch.
        target: ground-truth mask of the same shape.

    Raises:
        ValueError: when the shapes differ or are not 2D/3D, or a mask holds values other than 0 and 1.
    """
    return _confusion(*_binary_pair(pred, target))


def _hd95(pred_mask: torch.Tensor, target_mask: torch.Tensor) -> float:
    pred_empty, target_empty = not pred_mask.any(), not target_mask.any()
    if pred_empty and target_empty:
        return 0.0
    if pred_empty or target_empty:
        return math.dist([0] * pred_mask.ndim, [size - 1 for size in pred_mask.shape])
    distance = compute_hausdorff_distance(
        pred_mask[None, None].float(), target_mask[None, None].float(), include_background=True, percentile=95
    )
    return float(distance)


def _overlap_scores(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """IoU and Dice from pixel counts; 1.0 for both when neither mask has a lesion pixel."""
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)


def per_image_scores(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> dict[str, float | int]:
    """
    Score one predicted mask against its ground truth.

    Args:
        pred: predicted mask of shape (H, W) or (H, W, D), bool or 0/1, NumPy or torch.
        target: ground-truth mask of the same shape.

    Returns:
        ``{"iou", "dice", "hd95", "tp", "fp", "fn", "tn"}``; see the module docstring for the formulas and the
        empty-mask conventions. ``hd95`` is in pixels.

    Raises:
        ValueError: when the shapes differ or are not 2D/3D, or a mask holds values other than 0 and 1.
    """
    pred_mask, target_mask = _binary_pair(pred, target)
    tp, fp, fn, tn = _confusion(pred_mask, target_mask)
    iou, dice = _overlap_scores(tp, fp, fn)
    return {"iou": iou, "dice": dice, "hd95": _hd95(pred_mask, target_mask), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


class SegmentationScores:
    """
    Accumulate per-image scores over a set of images and summarise them as in the paper's tables.

    Example::

        scores = SegmentationScores()
        for name, pred, label in results:
            scores.add(pred, label, name=name)
        scores.summary()  # {"n_images", "mIoU", "mDice", "IoU_star", "Dice_star", "thresholded_jaccard", "HD95"}
        scores.to_csv("eval/scores.csv")

    Args:
        jaccard_threshold: per-image IoUs below it count as 0 in ``thresholded_jaccard`` (0.65 in ISIC 2018).
    """

    def __init__(self, jaccard_threshold: float = 0.65) -> None:
        self.jaccard_threshold = jaccard_threshold
        self.per_image: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.per_image)

    def add(
        self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, name: str | None = None
    ) -> dict[str, Any]:
        """
        Score one image (see :func:`per_image_scores`) and keep the result.

        Args:
            pred: predicted mask of shape (H, W) or (H, W, D), bool or 0/1, NumPy or torch.
            target: ground-truth mask of the same shape.
            name: identifies the image in the per-image table; defaults to its index as a string.

        Returns:
            the image's row: ``{"name", "iou", "dice", "hd95", "tp", "fp", "fn", "tn"}``.
        """
        row = {"name": str(len(self.per_image)) if name is None else name, **per_image_scores(pred, target)}
        self.per_image.append(row)
        return row

    def summary(self) -> dict[str, float | int]:
        """
        Return ``n_images``, ``mIoU`` and ``mDice`` (per-image means, eq. 9 and 11), ``IoU_star`` and ``Dice_star``
        (pooled over all pixels, eq. 13 and 15), ``thresholded_jaccard`` and ``HD95`` (mean over images, pixels).

        Raises:
            ValueError: when no image has been added.
        """
        if not self.per_image:
            raise ValueError("no images have been added; call add() before summary().")
        ious = np.array([row["iou"] for row in self.per_image], dtype=np.float64)
        iou_star, dice_star = _overlap_scores(*(sum(row[key] for row in self.per_image) for key in ("tp", "fp", "fn")))
        return {
            "n_images": len(self.per_image),
            "mIoU": float(ious.mean()),
            "mDice": float(np.mean([row["dice"] for row in self.per_image])),
            "IoU_star": iou_star,
            "Dice_star": dice_star,
            "thresholded_jaccard": float(np.where(ious >= self.jaccard_threshold, ious, 0.0).mean()),
            "HD95": float(np.mean([row["hd95"] for row in self.per_image])),
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write ``{"summary": summary(), "per_image": per_image}`` to ``path`` atomically; return the path."""
        text = json.dumps({"summary": self.summary(), "per_image": self.per_image}, indent=2)
        return write_text_atomically(path, text + "\n")

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write one row per image and a final ``mean`` row (column means) to ``path`` atomically; return the path."""
        summary = self.summary()
        mean_row = {"name": "mean", "iou": summary["mIoU"], "dice": summary["mDice"], "hd95": summary["HD95"]}
        mean_row.update({key: float(np.mean([row[key] for row in self.per_image])) for key in ("tp", "fp", "fn", "tn")})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=PER_IMAGE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.per_image)
        writer.writerow(mean_row)
        return write_text_atomically(path, buffer.getvalue())
