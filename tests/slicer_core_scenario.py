"""The module's headless Logic on Slicer Core (PyPI ``slicer-core``): run by tests/test_slicer_core_logic.py with the
Slicer Core venv's Python, never collected by pytest itself.

    python tests/slicer_core_scenario.py REPORT.json PHOTO.jpg WORKER_PYTHON OUTPUT_DIR

Slicer Core has MRML and the module logics but no application, so this sets up what Slicer's application gives a
module (``slicer.mrmlScene`` and the Volumes, Segmentations and Terminologies logics on it), loads the photo as
Slicer's loader leaves a PNG/JPEG (an RGB vector volume, LPS axes, row 0 at the top), then drives the Logic as the
Widget does. It checks array equalities itself (a failed check exits non-zero) and writes what it saw to REPORT.
"""

from __future__ import annotations

import json
import os
import sys
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


if __name__ == "__main__":
    main(*sys.argv[1:])
