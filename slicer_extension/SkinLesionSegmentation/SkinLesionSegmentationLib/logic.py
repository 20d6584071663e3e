"""The module's Logic, headless: MRML nodes in, MRML nodes out, every choice passed as an argument.

It needs Slicer's MRML and ``slicer.util`` but no Qt and no settings (the Widget reads the settings and passes
:class:`WorkerOptions`), so it also runs on Slicer Core (PyPI ``slicer-core``) where the tests drive it against a
real MRML scene. The network runs in the worker process through one :class:`~.client.WorkerClient`; thresholds and
points work on the cached probability map and run no network.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from slicer.util import VTKObservationMixin

from . import bundles, imaging, measurements, results
from .client import WorkerClient

TERMINOLOGY_FILE = (
    Path(__file__).resolve().parents[1]
    / "Resources"
    / "SegmentationCategoryTypeModifier-SkinLesionSegmentation.term.json"
)
# A point placed, moved (by typing, a script, or at the end of a drag), or removed redraws the mask. While a point is
# dragged, Slicer fires PointModifiedEvent at every mouse move; the mask is redrawn when the drag ends instead.
POINT_EVENTS = (
    "PointPositionDefinedEvent",
    "PointPositionUndefinedEvent",
    "PointEndInteractionEvent",
    "PointRemovedEvent",
)
POINT_MOVED_EVENT = "PointModifiedEvent"


@dataclass(frozen=True)
class WorkerOptions:
    """How to run the worker: the bundle (folder or zip), the Python command, the device and its environment."""

    bundle: str
    python: tuple[str, ...]
    device: str = "auto"
    env: dict | None = field(default=None, compare=True, hash=False)
    request_timeout: float = 600.0


def load_terminology(terminologies_logic) -> str:
    """Load the extension's ``.term.json`` into Slicer's Terminologies logic; returns its context name."""
    return terminologies_logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))


class SkinLesionSegmentationLogic(VTKObservationMixin):
    """Segment, correct, measure and save a photo's lesion; see the module docstring.

    Args:
        cache_dir: where bundle zips are unpacked and downloaded bundles kept (Slicer's cache folder).
    """

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        VTKObservationMixin.__init__(self)
        self.cache_dir = Path(cache_dir)
        self.client: WorkerClient | None = None
        self._options: WorkerOptions | None = None
        self._log_lines: queue.SimpleQueue = queue.SimpleQueue()
        self._probability: dict[str, np.ndarray] = {}  # volume node ID -> lesion probability (rows, columns)
        self._interaction: dict | None = None
        self.onMaskUpdated: Callable[[list[str]], None] | None = None  # notes for the user after a redraw

    def cleanup(self) -> None:
        self.removeObservers()
        self.stopWorker()

    # -- bundle and worker ---------------------------------------------------------------------------------------

    def resolveBundle(self, path: str) -> Path:
        """A bundle folder, or a bundle zip unpacked (safely, once) into the cache folder."""
        if not path:
            raise bundles.BundleChoiceError("Choose a bundle folder or bundle zip first.")
        return bundles.resolve_bundle(path, self.cache_dir / "bundles")

    def downloadBundle(self, url: str, sha256: str) -> Path:
        """Download a bundle zip, check its SHA-256, unpack it; returns the bundle folder."""
        return bundles.fetch_bundle(url, sha256, self.cache_dir / "bundles")

    def worker(self, options: WorkerOptions) -> WorkerClient:
        """The worker client for ``options``; other options stop the previous worker first."""
        root = self.resolveBundle(options.bundle)
        if self.client is not None and self._options == options and self.client.bundle_root == str(root):
            return self.client
        self.stopWorker()
        self.client = WorkerClient(
            list(options.python),
            root,
            device=options.device,
            env=options.env,
            log=self._log_lines.put,
            request_timeout=options.request_timeout,
        )
        self._options = options
        return self.client

    def stopWorker(self) -> None:
        """End the worker process tree at once (also while it starts); the next request starts a new one."""
        client, self.client, self._options = self.client, None, None
        if client is not None:
            client.close()

    def cancel(self) -> None:
        if self.client is not None:
            self.client.cancel()

    def takeLogLines(self) -> list[str]:
        lines = []
        while not self._log_lines.empty():
            lines.append(self._log_lines.get())
        return lines

    # -- segmentation --------------------------------------------------------------------------------------------

    def startSegmentation(self, volumeNode, options: WorkerOptions):
        """A future of the worker's answer for the photo (``prob``, ``pred``, timing)."""
        client = self.worker(options)
        photo = slicer.util.arrayFromVolume(volumeNode).copy()  # read here, on Slicer's thread
        return client.submit(client.segment, photo)

    def setProbability(self, volumeNode, probability: np.ndarray) -> None:
        self._probability[volumeNode.GetID()] = np.asarray(probability, dtype=np.float32)

    def hasProbability(self, volumeNode) -> bool:
        return volumeNode is not None and volumeNode.GetID() in self._probability

    def segmentSpec(self) -> results.SegmentSpec:
        info = self.client.info if self.client is not None else {}
        if not info:
            return results.SKIN_LESION
        return results.SegmentSpec(info["segment_name"], tuple(info["segment_color"]), info["segment_terminology"])

    @staticmethod
    def rasToIjk(volumeNode) -> np.ndarray:
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetRASToIJKMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def pointsInPixels(self, pointsNode, volumeNode) -> list[tuple[float, float]]:
        """(row, column) of the points whose position is defined (a point being placed has none yet)."""
        if pointsNode is None:
            return []
        defined = [
            i
            for i in range(pointsNode.GetNumberOfControlPoints())
            if pointsNode.GetNthControlPointPositionStatus(i) == pointsNode.PositionDefined
        ]
        if not defined:
            return []
        positions = slicer.util.arrayFromMarkupsControlPoints(pointsNode, world=True)[defined]
        return imaging.pixels_from_ras(positions, self.rasToIjk(volumeNode))

    def segmentId(self, segmentationNode, volumeNode) -> str:
        """The lesion segment of ``segmentationNode``, created with the bundle's name, colour and terminology."""
        spec = self.segmentSpec()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        segmentId = segmentation.GetSegmentIdBySegmentName(spec.name)
        if not segmentId:
            segmentId = segmentation.AddEmptySegment("", spec.name, list(spec.color))
            segment = segmentation.GetSegment(segmentId)
            segment.SetNameAutoGenerated(False)  # the bundle's name and colour, not ones Slicer may replace
            segment.SetColorAutoGenerated(False)
            if spec.terminology:
                segment.SetTag(segment.GetTerminologyEntryTagName(), spec.terminology)
        return segmentId

    def updateSegmentation(self, volumeNode, segmentationNode, threshold, foregroundPoints=None, backgroundPoints=None):
        """Segment from the cached probability map, the threshold and the points; returns notes for the user."""
        mask = imaging.threshold_probability(self._probability[volumeNode.GetID()], threshold)
        mask, notes = imaging.apply_clicks(
            mask, self.pointsInPixels(foregroundPoints, volumeNode), self.pointsInPixels(backgroundPoints, volumeNode)
        )
        segmentId = self.segmentId(segmentationNode, volumeNode)
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            imaging.mask_to_volume_array(mask), segmentationNode, segmentId, volumeNode
        )
        return notes

    # -- points that follow the mask -----------------------------------------------------------------------------

    def setInteraction(self, volumeNode, segmentationNode, threshold, foregroundPoints=None, backgroundPoints=None):
        """Redraw the mask now and whenever a point of ``foregroundPoints`` / ``backgroundPoints`` is placed, moved
        or removed (observing the nodes' point events); :attr:`onMaskUpdated` gets the notes."""
        self.removeObservers(self._onPointsChanged)
        self.removeObservers(self._onPointMoved)
        self._interaction = {
            "volumeNode": volumeNode,
            "segmentationNode": segmentationNode,
            "threshold": threshold,
            "foregroundPoints": foregroundPoints,
            "backgroundPoints": backgroundPoints,
        }
        for points in {id(p): p for p in (foregroundPoints, backgroundPoints) if p is not None}.values():
            for event in POINT_EVENTS:
                self.addObserver(points, getattr(slicer.vtkMRMLMarkupsNode, event), self._onPointsChanged)
            self.addObserver(points, getattr(slicer.vtkMRMLMarkupsNode, POINT_MOVED_EVENT), self._onPointMoved)
        return self.updateInteraction()

    def updateInteraction(self) -> list[str]:
        """Redraw the mask with the settings of :meth:`setInteraction` (nothing without a probability map)."""
        interaction = self._interaction
        if not interaction or not interaction["segmentationNode"] or not self.hasProbability(interaction["volumeNode"]):
            return []
        notes = self.updateSegmentation(**interaction)
        if self.onMaskUpdated is not None:
            self.onMaskUpdated(notes)
        return notes

    def _onPointsChanged(self, caller, event) -> None:
        self.updateInteraction()

    def _onPointMoved(self, caller, event) -> None:
        if caller.GetAttribute(slicer.vtkMRMLMarkupsDisplayNode.GetMovingInSliceViewAttributeName()):
            return  # a drag in progress: redrawn at PointEndInteractionEvent
        self.updateInteraction()

    # -- region, measurements, results ---------------------------------------------------------------------------

    def startRefinement(self, volumeNode, roiNode, options: WorkerOptions):
        """A future of the probability map with the ROI's inside segmented again at full network size.

        Uses the worker for ``options``, starting it again if it was stopped.
        """
        bounds = [0.0] * 6
        roiNode.GetRASBounds(bounds)
        photo = imaging.photo_from_volume_array(slicer.util.arrayFromVolume(volumeNode))
        box = imaging.box_from_ras_bounds(bounds, self.rasToIjk(volumeNode), photo.shape[:2])
        client, probability = self.worker(options), self._probability[volumeNode.GetID()]
        return client.submit(
            imaging.refine_in_region, photo, probability, box, lambda crop: client.segment(crop)["prob"]
        )

    def lesionMask(self, segmentationNode, volumeNode) -> tuple[np.ndarray, str]:
        segmentId = self.segmentId(segmentationNode, volumeNode)
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)[0], segmentId

    def measure(self, segmentationNode, volumeNode, pixelSizeMm, tableNode) -> dict:
        """Fill ``tableNode`` with the lesion's measurements (as edited in the Segment Editor, too)."""
        mask, _ = self.lesionMask(segmentationNode, volumeNode)
        values = measurements.measure(mask, pixelSizeMm or None)
        tableNode.RemoveAllColumns()
        table = tableNode.GetTable()
        for name in ("Measurement", "Value"):
            column = vtk.vtkStringArray()
            column.SetName(name)
            table.AddColumn(column)
        for name, value in values.items():
            if value is not None:
                table.InsertNextBlankRow()
                row = table.GetNumberOfRows() - 1
                table.SetValue(row, 0, vtk.vtkVariant(name))
                table.SetValue(row, 1, vtk.vtkVariant(f"{value:.4g}"))
        table.InsertNextBlankRow()
        table.SetValue(table.GetNumberOfRows() - 1, 0, vtk.vtkVariant(measurements.DISCLAIMER))
        tableNode.Modified()
        return values

    def save(self, segmentationNode, volumeNode, folder) -> tuple[Path, Path]:
        """Write ``<photo>_mask.png`` (the lesion segment, 0/255) and ``<photo>.seg.nrrd`` (the segmentation, by
        Slicer's own storage node, so segments added in the Segment Editor are kept too)."""
        mask, _ = self.lesionMask(segmentationNode, volumeNode)
        png, seg = results.result_paths(folder, volumeNode.GetName())
        results.write_mask_png(mask, png)
        # Written under a temporary folder and moved into place: an interrupted save leaves no half file.
        staging = Path(tempfile.mkdtemp(prefix=".seg-", dir=seg.parent))
        try:
            storage = segmentationNode.CreateDefaultStorageNode()
            storage.SetFileName(str(staging / seg.name))
            if not storage.WriteData(segmentationNode):
                raise OSError(f"{seg}: Slicer could not write the segmentation")
            os.replace(staging / seg.name, seg)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return png, seg

    def startBatch(self, inputFolder, outputFolder, options: WorkerOptions):
        """A future of the worker's Segment folder result (``written``, ``failures``)."""
        client = self.worker(options)
        return client.submit(client.batch, inputFolder, outputFolder)
