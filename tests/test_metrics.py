"""The paper's metrics on small masks whose scores are counted by hand."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from bundle.metrics import PER_IMAGE_COLUMNS, SegmentationScores, binary_confusion, per_image_scores

# Hand-counted 4x5 pair. pred has 7 pixels, target 7:
#   tp: (0,2) (1,1) (1,2) (1,3) (2,2) = 5;  fp: (0,1) (2,3) = 2;  fn: (0,3) (2,1) = 2;  tn: 20 - 9 = 11
# IoU = 5 / 9, Dice = 10 / 14. Every mismatched pixel is 1 pixel from the other mask's boundary and the shared
# boundary pixels are 0 apart, so the largest boundary distances (and their 95th percentile) are 1.
PRED_4X5 = np.array(
    [
        [0, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0],
    ]
)
TARGET_4X5 = np.array(
    [
        [0, 0, 1, 1, 0],
        [0, 1, 1, 1, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0],
    ]
)


def test_binary_confusion_hand_counted():
    assert binary_confusion(PRED_4X5, TARGET_4X5) == (5, 2, 2, 11)
    # one more predicted pixel at (3, 0) is one more false positive, or a false negative with the roles swapped
    pred_plus = PRED_4X5.copy()
    pred_plus[3, 0] = 1
    assert binary_confusion(pred_plus, TARGET_4X5) == (5, 3, 2, 10)
    assert binary_confusion(TARGET_4X5, pred_plus) == (5, 2, 3, 10)


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a,
        lambda a: a.astype(bool),
        lambda a: a.astype(np.uint8),
        lambda a: torch.from_numpy(a).float(),
        lambda a: torch.from_numpy(a).bool(),
    ],
    ids=["int-numpy", "bool-numpy", "uint8-numpy", "float-torch", "bool-torch"],
)
def test_per_image_scores_hand_counted(convert):
    scores = per_image_scores(convert(PRED_4X5), convert(TARGET_4X5))
    assert (scores["tp"], scores["fp"], scores["fn"], scores["tn"]) == (5, 2, 2, 11)
    assert scores["iou"] == pytest.approx(5 / 9)
    assert scores["dice"] == pytest.approx(10 / 14)
    assert scores["hd95"] == pytest.approx(1.0)


def test_pooled_scores_differ_from_per_image_means():
    # image "large": a 4x4 lesion found exactly -> IoU = Dice = 1
    # image "small": a 1-pixel lesion missed, 1 pixel predicted elsewhere -> tp 0, fp 1, fn 1 -> IoU = Dice = 0
    # per-image means: mIoU = mDice = 0.5; pooled: tp 16, fp 1, fn 1 -> IoU* = 16/18, Dice* = 32/34
    large = np.zeros((8, 8), dtype=bool)
    large[2:6, 2:6] = True
    small_target = np.zeros((8, 8), dtype=bool)
    small_target[1, 1] = True
    small_pred = np.zeros((8, 8), dtype=bool)
    small_pred[6, 6] = True
    scores = SegmentationScores()
    scores.add(large, large, name="large")
    scores.add(small_pred, small_target, name="small")
    summary = scores.summary()
    assert summary["n_images"] == 2
    assert summary["mIoU"] == pytest.approx(0.5)
    assert summary["mDice"] == pytest.approx(0.5)
    assert summary["IoU_star"] == pytest.approx(16 / 18)
    assert summary["Dice_star"] == pytest.approx(32 / 34)
    assert [row["name"] for row in scores.per_image] == ["large", "small"]


@pytest.mark.parametrize("offset", [1, 2, 3, 5])
def test_hd95_of_squares_offset_by_d_is_d(offset):
    # Every boundary pixel of one square is at most d from the other's boundary, and whole sides (far more than 5%
    # of the boundary) are exactly d away, so the 95th percentile is d in both directions.
    pred = np.zeros((40, 40), dtype=bool)
    target = np.zeros((40, 40), dtype=bool)
    pred[5:25, 5:25] = True
    target[5:25, 5 + offset : 25 + offset] = True
    assert per_image_scores(pred, target)["hd95"] == pytest.approx(offset)
    assert per_image_scores(target, pred)["hd95"] == pytest.approx(offset)


def test_hd95_ignores_a_stray_outlier_pixel():
    # A 20x20 square found exactly plus one false-positive pixel 11 pixels right of it: the stray pixel is 1 of the
    # 77 predicted boundary pixels, under 5% of them, so HD95 stays 0 while the plain Hausdorff distance is 11.
    target = np.zeros((40, 40), dtype=bool)
    target[5:25, 5:25] = True
    pred = target.copy()
    pred[24, 35] = True  # the square's nearest pixel is (24, 24)
    assert per_image_scores(pred, target)["hd95"] == pytest.approx(0.0)


def test_hd95_of_cubes_offset_by_d_is_d():
    pred = np.zeros((16, 16, 16), dtype=bool)
    target = np.zeros((16, 16, 16), dtype=bool)
    pred[3:11, 3:11, 3:11] = True
    target[3:11, 3:11, 5:13] = True
    scores = per_image_scores(pred, target)
    assert scores["hd95"] == pytest.approx(2.0)
    assert scores["iou"] == pytest.approx(6 / 10)  # overlap 8x8x6 of a union 8x8x10


def test_one_pixel_masks():
    # single pixels 3 rows and 4 columns apart: a 3-4-5 triangle
    pred = np.zeros((10, 10), dtype=bool)
    target = np.zeros((10, 10), dtype=bool)
    pred[1, 1] = True
    target[4, 5] = True
    apart = per_image_scores(pred, target)
    assert (apart["iou"], apart["dice"], apart["tp"], apart["fp"], apart["fn"]) == (0.0, 0.0, 0, 1, 1)
    assert apart["hd95"] == pytest.approx(5.0)
    same = per_image_scores(target, target)
    assert (same["iou"], same["dice"], same["hd95"], same["tp"]) == (1.0, 1.0, 0.0, 1)
    single_pixel_image = per_image_scores(np.ones((1, 1)), np.ones((1, 1)))
    assert (single_pixel_image["iou"], single_pixel_image["hd95"]) == (1.0, 0.0)


def test_both_empty_is_a_perfect_score():
    empty = np.zeros((6, 8), dtype=bool)
    scores = per_image_scores(empty, empty)
    assert scores == {"iou": 1.0, "dice": 1.0, "hd95": 0.0, "tp": 0, "fp": 0, "fn": 0, "tn": 48}


@pytest.mark.parametrize("missing", ["pred", "target"])
def test_one_empty_scores_zero_and_the_image_diagonal(missing):
    empty = np.zeros((6, 8), dtype=bool)
    lesion = empty.copy()
    lesion[2:4, 3:5] = True
    pred, target = (empty, lesion) if missing == "pred" else (lesion, empty)
    scores = per_image_scores(pred, target)
    assert scores["iou"] == 0.0 and scores["dice"] == 0.0
    assert scores["hd95"] == pytest.approx(math.hypot(5, 7))  # from pixel (0, 0) to pixel (5, 7)


def test_full_image_masks():
    full = np.ones((5, 7), dtype=bool)
    assert per_image_scores(full, full) == {"iou": 1.0, "dice": 1.0, "hd95": 0.0, "tp": 35, "fp": 0, "fn": 0, "tn": 0}


def test_thresholded_jaccard_zeroes_ious_below_threshold():
    target = np.zeros((4, 20), dtype=bool)
    target[1] = True  # 20 lesion pixels
    scores, strict = SegmentationScores(), SegmentationScores(jaccard_threshold=0.9)
    for n_found in (20, 12, 13, 16):  # IoU 1.0, 0.6 (below 0.65 -> 0), 0.65 (kept), 0.8
        pred = np.zeros_like(target)
        pred[1, :n_found] = True
        scores.add(pred, target)
        strict.add(pred, target)
    summary = scores.summary()
    assert [row["iou"] for row in scores.per_image] == pytest.approx([1.0, 0.6, 0.65, 0.8])
    assert summary["mIoU"] == pytest.approx((1.0 + 0.6 + 0.65 + 0.8) / 4)
    assert summary["thresholded_jaccard"] == pytest.approx((1.0 + 0.0 + 0.65 + 0.8) / 4)
    assert strict.summary()["thresholded_jaccard"] == pytest.approx(1.0 / 4)


def test_hd95_summary_is_the_mean_over_images():
    scores = SegmentationScores()
    scores.add(PRED_4X5, TARGET_4X5)  # hd95 1
    scores.add(np.zeros((4, 5)), TARGET_4X5)  # missed: the diagonal, hypot(3, 4) = 5
    assert scores.summary()["HD95"] == pytest.approx((1.0 + 5.0) / 2)
    assert [row["name"] for row in scores.per_image] == ["0", "1"]


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"pred \(4, 5\).*target \(4, 6\)"):
        binary_confusion(np.zeros((4, 5)), np.zeros((4, 6)))


@pytest.mark.parametrize("shape", [(5,), (1, 1, 4, 5)])
def test_masks_must_be_2d_or_3d(shape):
    with pytest.raises(ValueError, match="single masks"):
        per_image_scores(np.zeros(shape), np.zeros(shape))


@pytest.mark.parametrize("which", ["pred", "target"])
def test_non_binary_values_raise(which):
    probabilities = np.full((4, 5), 0.7)
    masks = {"pred": PRED_4X5, "target": TARGET_4X5, which: probabilities}
    with pytest.raises(ValueError, match=f"{which} must be a binary mask"):
        per_image_scores(masks["pred"], masks["target"])


def test_summary_without_images_raises():
    with pytest.raises(ValueError, match="no images"):
        SegmentationScores().summary()


def filled_scores() -> SegmentationScores:
    scores = SegmentationScores()
    scores.add(PRED_4X5, TARGET_4X5, name="isic_0001")
    scores.add(TARGET_4X5, TARGET_4X5, name="isic_0002")
    scores.add(np.zeros((4, 5)), np.zeros((4, 5)), name="isic_0003")
    return scores


def test_to_json_reads_back(tmp_path):
    scores = filled_scores()
    path = scores.to_json(tmp_path / "eval" / "scores.json")
    written = json.loads(path.read_text())
    assert written["summary"] == scores.summary()
    assert written["per_image"] == scores.per_image
    assert written["summary"]["mIoU"] == pytest.approx((5 / 9 + 1.0 + 1.0) / 3)
    assert sorted(p.name for p in path.parent.iterdir()) == ["scores.json"]  # no temporary file left behind


def test_to_csv_reads_back_with_mean_row(tmp_path):
    scores = filled_scores()
    path = scores.to_csv(tmp_path / "scores.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == PER_IMAGE_COLUMNS
    assert [row["name"] for row in rows] == ["isic_0001", "isic_0002", "isic_0003", "mean"]
    assert float(rows[0]["iou"]) == pytest.approx(5 / 9)
    assert int(rows[0]["fp"]) == 2
    summary = scores.summary()
    assert float(rows[-1]["iou"]) == pytest.approx(summary["mIoU"])
    assert float(rows[-1]["dice"]) == pytest.approx(summary["mDice"])
    assert float(rows[-1]["hd95"]) == pytest.approx(summary["HD95"])
    assert float(rows[-1]["tp"]) == pytest.approx((5 + 7 + 0) / 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]


def test_rewriting_replaces_the_file(tmp_path):
    scores = filled_scores()
    path = tmp_path / "scores.json"
    path.write_text("stale")
    scores.to_json(path)
    assert json.loads(path.read_text())["summary"]["n_images"] == 3
