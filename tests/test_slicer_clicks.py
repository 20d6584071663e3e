"""The Slicer worker's click requests against a real worker process, a click-guided checkpoint (the
``click_checkpoint`` fixture) and real ISIC 2017 photos, with the points the module sends.

The error regions are found at test time: each candidate photo is segmented without points, compared with its
ground-truth mask, and the largest false-lesion or missed-lesion region (8-connected) is clicked at its deepest
point, as the simulated user of the interactive evaluation clicks. The candidates are photos whose automatic masks
have large regions of each kind with the fine-tuned click-guided model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slicer_extension" / "SkinLesionSegmentation"))

from SkinLesionSegmentationLib import worker as worker_module  # noqa: E402
from SkinLesionSegmentationLib.client import WorkerClient, WorkerError  # noqa: E402

# Photos of isic2017_val whose automatic mask has a large false-lesion region (FALSE) or a large missed one (MISSED).
FALSE_CANDIDATES = ("ISIC_0012288", "ISIC_0001769")
MISSED_CANDIDATES = ("ISIC_0012288", "ISIC_0001769")
SMALLEST_REGION = 2000  # pixels: several times a click's disk (3 of 128 working pixels: about 24 photo pixels)


def read_pair(isic_val: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    from bundle.images import read_mask

    with Image.open(isic_val / "images" / f"{name}.jpg") as image:
        photo = np.asarray(image.convert("RGB"))
    return photo, read_mask(isic_val / "masks" / f"{name}.png")


def iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float((a & b).sum() / max((a | b).sum(), 1))


def largest_region(error: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The largest 8-connected region of ``error`` (rows, columns) and its deepest point as ``(x, y)``."""
    labels, count = ndimage.label(error, structure=np.ones((3, 3), bool))
    if not count:
        return np.zeros_like(error, bool), (0.0, 0.0)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    region = labels == int(np.argmax(sizes))
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return region, (float(col), float(row))


def correcting_points(pred: np.ndarray, truth: np.ndarray) -> dict[str, tuple[float, float]]:
    """``(x, y)`` of a background point (deepest in the largest false region, else in the lesion) and a foreground
    point (deepest in the largest missed region, else in the background) on a (rows, columns) mask."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    false, missed = pred & ~truth, truth & ~pred
    return {
        "background": largest_region(false if false.any() else pred)[1],
        "foreground": largest_region(missed if missed.any() else ~pred)[1],
    }


@pytest.fixture(scope="module")
def click_worker(click_checkpoint):
    client = WorkerClient(
        sys.executable, REPO, device="cpu", overrides={"ckpt_path": str(click_checkpoint)}, env=dict(os.environ)
    )
    info = client.start()
    assert info["guidance"], f"{click_checkpoint} is not a click-guided checkpoint"
    yield client
    client.close()


@pytest.fixture(scope="module")
def without_points(click_worker, isic_val):
    """name -> (photo, truth, the worker's answer with no points) for the candidate photos."""
    answers = {}
    for name in dict.fromkeys(FALSE_CANDIDATES + MISSED_CANDIDATES):
        photo, truth = read_pair(isic_val, name)
        answers[name] = photo, truth, click_worker.click(photo, [])
    return answers


def chosen(without_points, names, kind) -> tuple[str, np.ndarray, tuple[float, float]]:
    """The candidate photo with the largest error region of ``kind`` ("false" or "missed"), its region and point."""
    best = None
    for name in names:
        _, truth, answer = without_points[name]
        pred = answer["pred"].astype(bool)
        region, point = largest_region(pred & ~truth if kind == "false" else truth & ~pred)
        if best is None or region.sum() > best[1].sum():
            best = (name, region, point)
    assert best[1].sum() >= SMALLEST_REGION, f"no {kind} region of {SMALLEST_REGION} pixels in {names}"
    return best


def test_no_points_give_the_segment_requests_mask(click_worker, without_points):
    for photo, _, answer in without_points.values():
        segmented = click_worker.segment(photo)
        np.testing.assert_array_equal(answer["pred"], segmented["pred"])
        np.testing.assert_allclose(answer["prob"], segmented["prob"], atol=1e-6)
        assert answer["pred"].shape == photo.shape[:2]


def test_a_background_point_in_a_false_lesion_region_removes_it(click_worker, without_points):
    name, region, (x, y) = chosen(without_points, FALSE_CANDIDATES, "false")
    photo, truth, before = without_points[name]
    after = click_worker.click(photo, [(x, y, False)])
    assert after["network_runs"] == 1 and not after["decoded"]  # the photo's session was kept
    assert before["pred"][region].all()  # without points the whole region is called lesion
    kept = float(after["pred"][region].mean())
    assert kept < 0.5, f"{name}: {kept:.0%} of the false region at ({x:.0f}, {y:.0f}) is still lesion"
    assert after["pred"][int(y), int(x)] == 0
    assert iou(after["pred"], truth) > iou(before["pred"], truth)


def test_a_foreground_point_in_a_missed_lesion_region_adds_it(click_worker, without_points):
    name, region, (x, y) = chosen(without_points, MISSED_CANDIDATES, "missed")
    photo, truth, before = without_points[name]
    after = click_worker.click(photo, [(x, y, True)])
    assert after["network_runs"] == 1
    assert not before["pred"][region].any()  # without points none of the region is lesion
    added = float(after["pred"][region].mean())
    assert added > 0.5, f"{name}: only {added:.0%} of the missed region at ({x:.0f}, {y:.0f}) became lesion"
    assert after["pred"][int(y), int(x)] == 1
    assert iou(after["pred"], truth) > iou(before["pred"], truth)


def test_the_answer_follows_the_ordered_points_like_the_bundles_click_session(
    click_worker, without_points, click_checkpoint, isic_val
):
    """Each list of points gets the mask of the bundle's own ClickSession clicked in that order (the previous mask
    chained through the list); removing or moving the last point costs one network run and gives back exactly what
    that list gave before; an earlier point changed replays the points after it."""
    from bundle.inference import LesionSegmenter

    segmenter = LesionSegmenter(bundle_root=REPO, overrides={"ckpt_path": str(click_checkpoint), "writer": None})
    name = FALSE_CANDIDATES[0]
    photo, truth, before = without_points[name]
    points = correcting_points(before["pred"], truth)
    negative, positive = points["background"], points["foreground"]
    first, second, moved = (*negative, False), (*positive, True), (negative[0] + 15.0, negative[1] - 10.0, False)

    def expected(clicks):
        session = segmenter.session(photo)
        result = session.predict()
        for x, y, is_positive in clicks:
            result = session.click(x, y, is_positive)
        return np.asarray(result["pred"]).T

    def agrees(answer, clicks):
        differing = int((answer["pred"] != expected(clicks)).sum())
        assert differing <= answer["pred"].size // 10000, f"{differing} pixels differ from ClickSession for {clicks}"

    one = click_worker.click(photo, [first])
    two = click_worker.click(photo, [first, second])
    assert two["network_runs"] == 1
    agrees(one, [first])
    agrees(two, [first, second])
    back = click_worker.click(photo, [first])  # the second point removed
    assert back["network_runs"] == 1
    np.testing.assert_array_equal(back["pred"], one["pred"])
    np.testing.assert_array_equal(back["prob"], one["prob"])
    replayed = click_worker.click(photo, [moved, second])  # the first point moved: both run again
    assert replayed["network_runs"] == 2
    agrees(replayed, [moved, second])
    only_second = click_worker.click(photo, [second])  # the first point removed
    assert only_second["network_runs"] == 1
    agrees(only_second, [second])
    none = click_worker.click(photo, [])
    np.testing.assert_array_equal(none["pred"], before["pred"])

    # The worker keeps MAX_CLICK_SESSIONS photos: clicking others drops this one, which is then sent again.
    others = [n for n in sorted(p.stem for p in (isic_val / "images").glob("*.jpg")) if n not in without_points]
    for other in others[: worker_module.MAX_CLICK_SESSIONS]:
        assert click_worker.click(read_pair(isic_val, other)[0], [])["decoded"]
    assert click_worker.request("info")[0]["click_sessions"] == worker_module.MAX_CLICK_SESSIONS
    again = click_worker.click(photo, [first, second])  # sent without the photo first: the worker asks for it
    assert again["decoded"] and again["network_runs"] == 3
    np.testing.assert_array_equal(again["pred"], two["pred"])


def test_bad_click_requests_fail_in_one_line(click_worker):
    with pytest.raises(WorkerError, match="not a list of \\[x, y, positive\\]"):
        click_worker.request("click", {"photo": "abc", "clicks": [[1, 2]]})
    with pytest.raises(WorkerError, match="names no 'photo'"):
        click_worker.request("click", {"clicks": []})
    assert click_worker.request("click", {"photo": "never-sent", "clicks": []})[0] == {"needs_image": True}


def test_an_automatic_bundle_takes_no_clicks_and_says_so(isic_val):
    """The demo automatic network: the worker reports no guidance (the module then picks regions with the points,
    tests/test_slicer_core_logic.py) and refuses a click request in one line."""
    photo, _ = read_pair(isic_val, FALSE_CANDIDATES[0])
    client = WorkerClient(sys.executable, REPO, device="cpu", env=dict(os.environ))
    try:
        assert client.start()["guidance"] == []
        with pytest.raises(WorkerError, match="takes no clicks") as raised:
            client.click(photo, [(10.0, 10.0, True)])
        assert "\n" not in str(raised.value)
        assert client.request("info")[0]["forward_count"] == 0
    finally:
        client.close()
