"""The module's headless Logic on Slicer Core (PyPI ``slicer-core``): run by tests/test_slicer_core_logic.py with the
Slicer Core venv's Python, never collected by pytest itself.

    python tests/slicer_core_scenario.py REPORT.json PHOTO.jpg WORKER_PYTHON OUTPUT_DIR
    python tests/slicer_core_scenario.py clicks REPORT.json PHOTO.jpg WORKER_PYTHON OUTPUT_DIR BUNDLE POINTS.json

Slicer Core has MRML and the module logics but no application, so this sets up what Slicer's application gives a
module (``slicer.mrmlScene`` and the Volumes, Segmentations and Terminologies logics on it), loads the photo as
Slicer's loader leaves a PNG/JPEG (an RGB vector volume, LPS axes, row 0 at the top), then drives the Logic as the
Widget does. It checks array equalities itself (a failed check exits non-zero) and writes what it saw to REPORT.
The first form runs this repository's bundle (the automatic demo network: points pick regions); ``clicks`` runs
BUNDLE (a click-guided network: points run it again), placing, moving and removing the points of POINTS.json
(``{"background": [row, column], "foreground": [row, column], "moved": [row, column]}``) and saving each mask.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import slicer
import vtk
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slicer_extension" / "SkinLesionSegmentation"))

from SkinLesionSegmentationLib import logic  # noqa: E402


def application() -> types.SimpleNamespace:
    """A scene and the module logics that ``slicer.util``'s segment and volume functions reach through ``slicer``."""
    scene = slicer.vtkMRMLScene()
    selection = slicer.vtkMRMLSelectionNode()
    selection.SetSingletonTag("Singleton")
    scene.AddNode(selection)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLScene(scene)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLScene(scene)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        volumes=types.SimpleNamespace(logic=lambda: volumes),
        segmentations=types.SimpleNamespace(logic=lambda: segmentations),
        terminologies=types.SimpleNamespace(logic=lambda: terminologies),
    )
    return slicer.modules


def load_photo(scene, path: Path):
    """The vector volume Slicer's loader makes of a photo: IJK-to-RAS diag(-1, -1, 1), spacing 1, origin 0."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    volume = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", path.stem)
    volume.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)
    slicer.util.updateVolumeFromArray(volume, rgb[None])
    volume.CreateDefaultDisplayNodes()
    return volume, rgb


def ras_of_pixel(volume, row: int, col: int) -> list[float]:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return list(matrix.MultiplyPoint([float(col), float(row), 0.0, 1.0])[:3])


def main(report_path: str, photo: str, worker_python: str, output_dir: str) -> None:
    modules = application()
    report: dict = {}
    report["terminology_context"] = logic.load_terminology(modules.terminologies.logic())
    entry = slicer.vtkSlicerTerminologyEntry()
    found = modules.terminologies.logic().FindTypeInTerminologyBy3dSlicerLabel(
        report["terminology_context"], "skin lesion", entry
    )
    report["terminology_found"] = bool(found)
    report["terminology_type"] = [entry.GetTypeObject().GetCodeValue(), entry.GetTypeObject().GetCodeMeaning()]
    report["terminology_category"] = [
        entry.GetCategoryObject().GetCodeValue(),
        entry.GetCategoryObject().GetCodeMeaning(),
    ]

    scene = slicer.mrmlScene
    volume, rgb = load_photo(scene, Path(photo))
    slicer_array = slicer.util.arrayFromVolume(volume)
    assert slicer_array.shape == (1, *rgb.shape), slicer_array.shape
    np.testing.assert_array_equal(slicer_array[0], rgb)

    session = logic.SkinLesionSegmentationLogic(Path(output_dir) / "cache")
    options = logic.WorkerOptions(
        bundle=str(REPO), python=(worker_python,), device="cpu", env=dict(os.environ), request_timeout=300
    )
    redraws = []
    session.onMaskUpdated = redraws.append
    try:
        answer = session.startSegmentation(volume, options).result(timeout=900)
        session.setProbability(volume, answer["prob"])
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} lesion")
        points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Remove")
        session.setInteraction(volume, segmentation, 0.5, None, points)
        report["clicks_guide_network"] = session.clicksGuideNetwork
        report["click_mode"] = session.clickModeText()
        runs_before_points = session.client.request("info")[0]["forward_count"]
        mask, segment_id = session.lesionMask(segmentation, volume)
        np.testing.assert_array_equal(mask, answer["pred"])
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        tag = vtk.reference("")
        segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
        report["segment"] = {"name": segment.GetName(), "color": list(segment.GetColor()), "terminology": str(tag)}
        report["lesion_pixels"] = int(mask.sum())

        # A Remove point on the lesion removes its region; dragged off it, the region comes back when the drag ends.
        rows, cols = np.nonzero(mask)
        on_lesion = (int(rows[len(rows) // 2]), int(cols[len(cols) // 2]))
        off_rows, off_cols = np.nonzero(mask == 0)
        off_lesion = (int(off_rows[0]), int(off_cols[0]))
        points.AddControlPoint(ras_of_pixel(volume, *on_lesion))  # fires PointPositionDefinedEvent
        report["after_place"] = int(session.lesionMask(segmentation, volume)[0][on_lesion])
        report["after_place_pixels"] = int(session.lesionMask(segmentation, volume)[0].sum())
        moving = slicer.vtkMRMLMarkupsDisplayNode.GetMovingInSliceViewAttributeName()
        points.SetAttribute(moving, "Red")  # as Slicer's markups widget marks a drag in progress
        points.SetNthControlPointPosition(0, ras_of_pixel(volume, *off_lesion))  # PointModifiedEvent during the drag
        report["during_drag_pixels"] = int(session.lesionMask(segmentation, volume)[0].sum())
        points.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)  # the drag ends
        points.SetAttribute(moving, "")
        np.testing.assert_array_equal(session.lesionMask(segmentation, volume)[0], answer["pred"])
        report["after_drag_pixels"] = int(session.lesionMask(segmentation, volume)[0].sum())
        points.SetNthControlPointPosition(0, ras_of_pixel(volume, *on_lesion))  # typed in: PointModifiedEvent alone
        report["after_modify"] = int(session.lesionMask(segmentation, volume)[0][on_lesion])
        points.RemoveAllControlPoints()  # PointRemovedEvent
        report["after_remove_pixels"] = int(session.lesionMask(segmentation, volume)[0].sum())
        report["redraws"] = len(redraws)
        report["network_runs_for_points"] = session.client.request("info")[0]["forward_count"] - runs_before_points

        png, seg = session.save(segmentation, volume, output_dir)
        report["saved"] = [str(png), str(seg)]
        np.save(Path(output_dir) / "mask.npy", session.lesionMask(segmentation, volume)[0])

        # Refine after Stop worker: the Logic starts the worker again.
        first_pid = session.client.pid
        session.stopWorker()
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        roi.SetXYZ(ras_of_pixel(volume, *on_lesion))
        roi.SetRadiusXYZ(40.0, 40.0, 1.0)
        refined = session.startRefinement(volume, roi, options).result(timeout=900)
        report["refined_shape"] = list(refined.shape)
        report["restarted"] = session.client is not None and session.client.running and session.client.pid != first_pid

        table = scene.AddNewNodeByClass("vtkMRMLTableNode")
        report["area_px"] = session.measure(segmentation, volume, 0.0, table)["area_px"]
        report["table_rows"] = table.GetNumberOfRows()
    finally:
        session.cleanup()
    Path(report_path).write_text(json.dumps(report, indent=2))


def wait_for_clicks(session, timeout: float = 300.0) -> None:
    """Poll the Logic as the Widget's timer does until the worker's answer to the points is in."""
    deadline = time.monotonic() + timeout
    while session.pollClicks():
        assert time.monotonic() < deadline, "no answer to the points"
        time.sleep(0.02)


def clicks_main(
    report_path: str, photo: str, worker_python: str, output_dir: str, bundle: str, points_path: str
) -> None:
    """Points that guide a click-guided network: each placement, move (typed, or dragged and let go) and removal
    runs the network once in the worker; the threshold does not; no points give back Segment's mask."""
    modules = application()
    logic.load_terminology(modules.terminologies.logic())
    wanted = json.loads(Path(points_path).read_text())
    scene = slicer.mrmlScene
    volume, _ = load_photo(scene, Path(photo))
    session = logic.SkinLesionSegmentationLogic(Path(output_dir) / "cache")
    options = logic.WorkerOptions(
        bundle=bundle, python=(worker_python,), device="cpu", env=dict(os.environ), request_timeout=300
    )
    report: dict = {"masks": {}, "runs": {}, "decoded": {}}
    redraws = []
    session.onMaskUpdated = redraws.append
    folder = Path(output_dir)

    def runs() -> int:
        return session.client.request("info")[0]["forward_count"]

    def record(step: str, before: int) -> None:
        wait_for_clicks(session)
        report["runs"][step] = runs() - before
        report["decoded"][step] = session.clickSummary(volume).get("decoded")
        np.save(folder / f"{step}.npy", session.lesionMask(segmentation, volume)[0])
        report["masks"][step] = str(folder / f"{step}.npy")

    try:
        report["mode_before_segment"] = session.clickModeText()
        answer = session.startSegmentation(volume, options).result(timeout=900)
        session.setProbability(volume, answer["prob"])
        report["clicks_guide_network"] = session.clicksGuideNetwork
        report["click_mode"] = session.clickModeText()
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} lesion")
        keep = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Keep")
        remove = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Remove")
        start = runs()
        session.setInteraction(volume, segmentation, 0.5, keep, remove)
        np.testing.assert_array_equal(session.lesionMask(segmentation, volume)[0], answer["pred"])
        report["runs"]["no_points"] = runs() - start
        np.save(folder / "segment.npy", answer["pred"])

        before = runs()
        remove.AddControlPoint(ras_of_pixel(volume, *wanted["background"]))  # PointPositionDefinedEvent
        report["request_running_after_place"] = session.pollClicks()  # answered in the background
        record("background", before)
        report["notes_after_background"] = redraws[-1]

        before = runs()
        keep.AddControlPoint(ras_of_pixel(volume, *wanted["foreground"]))
        record("background_foreground", before)

        before = runs()
        remove.SetNthControlPointPosition(0, ras_of_pixel(volume, *wanted["moved"]))  # typed in: PointModifiedEvent
        record("moved_background_foreground", before)

        # A drag: nothing is sent while the mouse moves, the network runs once when it is let go.
        before = runs()
        moving = slicer.vtkMRMLMarkupsDisplayNode.GetMovingInSliceViewAttributeName()
        remove.SetAttribute(moving, "Red")
        remove.SetNthControlPointPosition(0, ras_of_pixel(volume, *wanted["background"]))
        report["request_running_during_drag"] = session.pollClicks()
        remove.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
        remove.SetAttribute(moving, "")
        record("dragged_back", before)

        before = runs()
        session.setInteraction(volume, segmentation, 0.3, keep, remove)  # the threshold slider
        record("threshold_0.3", before)
        session.setInteraction(volume, segmentation, 0.5, keep, remove)

        before = runs()
        remove.RemoveAllControlPoints()  # PointRemovedEvent: the first point gone, the network runs again
        record("foreground_only", before)
        before = runs()
        keep.RemoveAllControlPoints()  # no points: Segment's map again, no network run
        record("no_points_again", before)
        report["redraws"] = len(redraws)
    finally:
        session.cleanup()
    Path(report_path).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    if sys.argv[1] == "clicks":
        clicks_main(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
