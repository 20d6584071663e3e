"""The module's headless Logic against a real MRML scene from Slicer Core (PyPI ``slicer-core``: Slicer's libraries
without Qt), with a real worker process running this repository's bundle (demo checkpoint: an automatic network,
points pick regions) or a copy of it with the click-guided checkpoint (points run the network), on a real ISIC photo.

Slicer Core lives in its own venv (``$RFE_SLICER_CORE_VENV``, default ``.ci-venv-slicer-core``; built by
``scripts/setup_slicer_core_venv.sh``, which ``.ci/run`` runs); the scenario runs there
(``tests/slicer_core_scenario.py``) and the worker runs with this interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slicer_extension" / "SkinLesionSegmentation"))

from SkinLesionSegmentationLib import results  # noqa: E402


def slicer_core_python() -> Path:
    venv = Path(os.environ.get("RFE_SLICER_CORE_VENV", REPO / ".ci-venv-slicer-core"))
    python = venv / "bin" / "python"
    if not python.is_file():
        pytest.skip(
            f"Slicer Core not found: no {python} (run scripts/setup_slicer_core_venv.sh, or set RFE_SLICER_CORE_VENV)"
        )
    return python


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, isic_val):
    python = slicer_core_python()
    import shutil

    from tests.small_bundle import copy_bundle

    folder = tmp_path_factory.mktemp("slicer-core")
    bundle = copy_bundle(folder / "bundle")  # with the automatic demo as its model: points pick regions
    (bundle / "models").mkdir()
    shutil.copyfile(REPO / "models" / "demo" / "rfeunet_resnet34_isic2017_128.pt", bundle / "models" / "model.pt")
    photo = isic_val / "images" / "ISIC_0012288.jpg"
    report = folder / "report.json"
    proc = subprocess.run(
        [
            str(python),
            str(REPO / "tests" / "slicer_core_scenario.py"),
            str(report),
            str(photo),
            sys.executable,
            str(folder),
            str(bundle),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(report.read_text()), folder, photo


def test_segment_lands_in_a_segmentation_node_with_the_modules_name_colour_and_terminology(scenario):
    report, _, _ = scenario
    assert report["lesion_pixels"] > 1000  # the demo model finds the lesion; the scenario checked mask == worker's
    assert report["segment"]["name"] == results.SKIN_LESION.name
    assert report["segment"]["color"] == pytest.approx(list(results.SKIN_LESION.color), abs=1e-3)
    assert report["segment"]["terminology"] == results.SKIN_LESION.terminology
    # The terminology comes from the shipped .term.json, loaded into Slicer's real Terminologies logic.
    assert report["terminology_context"] == results.TERMINOLOGY_CONTEXT
    assert report["terminology_found"]
    assert report["terminology_type"] == ["95324001", "Skin lesion"]
    assert report["terminology_category"] == ["49755003", "Morphologically Altered Structure"]


def test_the_mask_follows_a_placed_point_as_it_is_moved(scenario):
    report, _, _ = scenario
    assert report["clicks_guide_network"] is False and report["click_mode"].startswith("Clicks pick regions")
    assert report["network_runs_for_points"] == 0  # regions of the cached mask: no network run
    lesion = report["lesion_pixels"]
    assert report["after_place"] == 0 and report["after_place_pixels"] < lesion  # Remove point placed on the lesion
    assert report["during_drag_pixels"] == report["after_place_pixels"]  # no redraw at every mouse move
    assert report["after_drag_pixels"] == lesion  # end of the drag, off the lesion: the region is back
    assert report["after_modify"] == 0  # moved back by a modify alone: removed again
    assert report["after_remove_pixels"] == lesion  # point deleted
    assert report["redraws"] >= 5  # at least: setInteraction, place, drag end, modify, remove


def test_seg_nrrd_saved_by_slicers_storage_node_reads_back_with_slicerio(scenario):
    import slicerio
    from PIL import Image

    report, folder, photo = scenario
    png, seg = map(Path, report["saved"])
    mask = np.load(folder / "mask.npy")
    with Image.open(png) as written, Image.open(photo) as original:
        assert written.size == original.size
        np.testing.assert_array_equal(np.asarray(written) > 0, mask > 0)
    segmentation = slicerio.read_segmentation(str(seg))
    (segment,) = segmentation["segments"]
    assert segment["name"] == "Skin lesion"
    assert segment["color"] == pytest.approx(list(results.SKIN_LESION.color), abs=1e-3)
    assert segment["terminology"]["contextName"] == results.TERMINOLOGY_CONTEXT
    assert segment["terminology"]["category"] == ["SCT", "49755003", "Morphologically Altered Structure"]
    assert segment["terminology"]["type"] == ["SCT", "95324001", "Skin lesion"]
    assert not segment["nameAutoGenerated"] and not segment["colorAutoGenerated"]
    # Voxels back into photo pixels: the photo's IJK-to-LPS is the identity, so LPS x is the column and y the row.
    voxels = segmentation["voxels"]
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"])
    back = np.zeros_like(mask)
    i, j, k = np.nonzero(voxels == segment["labelValue"])
    lps = ijk_to_lps @ np.stack([i, j, k, np.ones_like(i)]).astype(float)
    back[np.round(lps[1]).astype(int), np.round(lps[0]).astype(int)] = 1
    np.testing.assert_array_equal(back, mask)


def test_refine_after_stop_worker_starts_the_worker_again(scenario):
    report, _, photo = scenario
    from PIL import Image

    with Image.open(photo) as original:
        assert report["refined_shape"] == [original.height, original.width]
    assert report["restarted"]
    assert report["area_px"] == report["lesion_pixels"] and report["table_rows"] > 5


@pytest.fixture(scope="module")
def click_scenario(tmp_path_factory, isic_val, click_checkpoint):
    """The Logic with a click-guided bundle (this repository's files, the click checkpoint as models/model.pt): the
    scenario places, moves and removes points chosen here on the automatic mask's error regions."""
    import shutil

    from bundle.images import read_mask
    from bundle.inference import LesionSegmenter
    from tests.small_bundle import copy_bundle
    from tests.test_slicer_clicks import correcting_points

    python = slicer_core_python()
    folder = tmp_path_factory.mktemp("slicer-core-clicks")
    bundle = copy_bundle(folder / "bundle")
    (bundle / "models").mkdir()
    shutil.copyfile(click_checkpoint, bundle / "models" / "model.pt")
    photo = isic_val / "images" / "ISIC_0012288.jpg"
    with Image.open(photo) as image:
        rgb = np.asarray(image.convert("RGB"))
    segmenter = LesionSegmenter(bundle_root=bundle, overrides={"writer": None})
    pred = segmenter.segment_array(rgb)["pred"].astype(bool)
    truth = read_mask(isic_val / "masks" / "ISIC_0012288.png")
    points = {kind: [int(y), int(x)] for kind, (x, y) in correcting_points(pred, truth).items()}
    row, col = points["background"]
    points["moved"] = [min(row + 12, rgb.shape[0] - 1), max(col - 20, 0)]
    (folder / "points.json").write_text(json.dumps(points))
    report = folder / "report.json"
    proc = subprocess.run(
        [
            str(python),
            str(REPO / "tests" / "slicer_core_scenario.py"),
            "clicks",
            str(report),
            str(photo),
            sys.executable,
            str(folder),
            str(bundle),
            str(folder / "points.json"),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(report.read_text()), points, segmenter, rgb


def test_points_guide_a_click_guided_network(click_scenario):
    """Placing, moving and removing a point runs the network once more in the worker (an earlier point changed:
    the points after it too), with every point in placing order, and the mask is the bundle's own ClickSession's
    for those points; the threshold runs nothing, and no points give back Segment's mask."""
    report, points, segmenter, rgb = click_scenario
    assert report["mode_before_segment"].startswith("Segment first")
    assert report["clicks_guide_network"] is True and report["click_mode"].startswith("Clicks guide the network")
    assert report["request_running_after_place"] is True  # the Logic did not wait for the worker
    assert report["request_running_during_drag"] is False  # nothing sent while the point is dragged
    assert report["notes_after_background"][0].startswith("The network ran with 0 Keep and 1 Remove point(s)")
    assert report["runs"] == {
        "no_points": 0,
        "background": 2,  # the first point on the photo: its mask without points (the previous mask), then with it
        "background_foreground": 1,
        "moved_background_foreground": 2,
        "dragged_back": 2,
        "threshold_0.3": 0,
        "foreground_only": 1,
        "no_points_again": 0,
    }

    # The photo went to the worker with the first point only (then the worker kept it); no points: no answer shown.
    assert report["decoded"] == {
        "background": True,
        "background_foreground": False,
        "moved_background_foreground": False,
        "dragged_back": False,
        "threshold_0.3": False,
        "foreground_only": False,
        "no_points_again": None,
    }

    def click(kind, positive):
        row, col = points[kind]
        return (float(col), float(row), positive)

    background, foreground, moved = click("background", False), click("foreground", True), click("moved", False)

    def expected(clicks):
        session = segmenter.session(rgb)
        result = session.predict()
        for x, y, positive in clicks:
            result = session.click(x, y, positive)
        return np.asarray(result["pred"]).T, np.asarray(result["prob"]).T

    masks = {step: np.load(path) for step, path in report["masks"].items()}
    for step, clicks in (
        ("background", [background]),
        ("background_foreground", [background, foreground]),
        ("moved_background_foreground", [moved, foreground]),
        ("foreground_only", [foreground]),
    ):
        differing = int((masks[step] != expected(clicks)[0]).sum())
        assert differing <= masks[step].size // 10000, f"{step}: {differing} pixels differ from ClickSession"
    assert (masks["background"] != masks["background_foreground"]).any()  # each point changed the mask
    np.testing.assert_array_equal(masks["dragged_back"], masks["background_foreground"])
    probability = expected([background, foreground])[1]
    differing = int((masks["threshold_0.3"] != (probability > 0.3)).sum())
    assert differing <= masks["threshold_0.3"].size // 10000
    segment = np.load(Path(report["masks"]["background"]).with_name("segment.npy"))
    np.testing.assert_array_equal(masks["no_points_again"], segment)
