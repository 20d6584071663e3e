"""The module's Logic, headless: MRML nodes in, MRML nodes out, every choice passed as an argument.

It needs Slicer's MRML and ``slicer.util`` but no Qt and no settings (the Widget reads the settings and passes
:class:`WorkerOptions`), so it also runs on Slicer Core (PyPI ``slicer-core``) where the tests drive it against a
real MRML scene. The network runs in the worker process through one :class:`~.client.WorkerClient`; the threshold
works on the cached probability map and runs no network.

Points work in one of two ways, chosen by the bundle's network (the worker's ``guidance``): a click-guided network
gets them (*clicks guide the network*: every point placed, moved or removed runs it again in the worker with all the
points in the order they were placed, in the background; :meth:`pollClicks` takes the answer), an automatic one
does not (*clicks pick regions*: Keep / Remove points keep or delete connected regions of the cached mask).
"""

from __future__ import annotations

import concurrent.futures
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
from .client import WorkerCancelled, WorkerClient

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
CLICK_MODES = {
    True: "Clicks guide the network: each point placed, moved or deleted runs it again with all the points "
    "(Keep: lesion here; Remove: not lesion here).",
    False: "Clicks pick regions: Keep keeps the lesion regions under its points, Remove deletes them (this bundle's "
    "network takes no clicks).",
    None: "Segment first: the bundle's network decides whether points guide it or pick regions.",
}


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
        # Whether the network of the last segmentation takes clicks (None: nothing segmented yet).
        self.clicksGuideNetwork: bool | None = None
        self._clickAnswers: dict[str, tuple[list, np.ndarray, dict]] = {}  # volume ID -> (clicks, probability, summary)
        self._clickOrder: list[tuple[str, str]] = []  # (markups node ID, control point ID), in placing order
        self._clickFuture: concurrent.futures.Future | None = None
        self._clickRequest: tuple[str, list] | None = None

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
        """The probability map of the whole photo (Segment): the mask without points. With a worker, its network
        decides how points work from now on (:attr:`clicksGuideNetwork`)."""
        self._probability[volumeNode.GetID()] = np.asarray(probability, dtype=np.float32)
        self._clickAnswers.pop(volumeNode.GetID(), None)
        self.clicksGuideNetwork = bool(self.client.info.get("guidance")) if self.client is not None else False

    def setRefinedProbability(self, volumeNode, probability: np.ndarray) -> None:
        """Refine in region's map: it replaces the map on screen (with points guiding the network, the points'
        answer, until they change again: then the network runs on the whole photo)."""
        answer = self._shownClickAnswer(volumeNode)
        if answer is None:
            self._probability[volumeNode.GetID()] = np.asarray(probability, dtype=np.float32)
        else:
            self._clickAnswers[volumeNode.GetID()] = (answer[0], np.asarray(probability, dtype=np.float32), answer[2])

    def hasProbability(self, volumeNode) -> bool:
        return volumeNode is not None and volumeNode.GetID() in self._probability

    def probability(self, volumeNode) -> np.ndarray:
        """The probability map on screen: the points' answer when points guide the network, else the photo's."""
        answer = self._shownClickAnswer(volumeNode)
        return answer[1] if answer is not None else self._probability[volumeNode.GetID()]

    def _shownClickAnswer(self, volumeNode):
        """The click answer shown for ``volumeNode``: with points guiding the network and at least one point, the
        newest answer (until the next one comes); None shows the photo's own map."""
        if not self.clicksGuideNetwork or not self._interactionClicks(volumeNode):
            return None
        return self._clickAnswers.get(volumeNode.GetID())

    def _interactionClicks(self, volumeNode) -> list[tuple]:
        """:meth:`clicksInOrder` of the points of :meth:`setInteraction` (none for another photo)."""
        interaction = self._interaction or {}
        if interaction.get("volumeNode") is not volumeNode:
            return []
        return self.clicksInOrder(volumeNode, interaction["foregroundPoints"], interaction["backgroundPoints"])

    def clickSummary(self, volumeNode) -> dict:
        """The worker's figures for the points' answer on screen (``network_runs``, ``decoded``, ``seconds``,
        ``forward_count``); empty when none is shown."""
        answer = self._shownClickAnswer(volumeNode)
        return dict(answer[2]) if answer is not None else {}

    def clickModeText(self) -> str:
        """One line for the panel: how points work with the network of the last segmentation."""
        return CLICK_MODES[self.clicksGuideNetwork]

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
        return [pixel for _, pixel in self._definedPoints(pointsNode, volumeNode)]

    def _definedPoints(self, pointsNode, volumeNode) -> list[tuple[str, tuple[float, float]]]:
        """(control point ID, (row, column)) of the points whose position is defined."""
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
        pixels = imaging.pixels_from_ras(positions, self.rasToIjk(volumeNode))
        return [(pointsNode.GetNthControlPointID(i), pixels[n]) for n, i in enumerate(defined)]

    def clicksInOrder(self, volumeNode, foregroundPoints=None, backgroundPoints=None) -> list[tuple]:
        """The defined points as clicks ``(x, y, positive)`` (x the column, y the row) in the order they were placed:
        a point keeps its place while it is moved. A node chosen for both kinds gives foreground points."""
        current = {}
        for node, positive in ((backgroundPoints, False), (foregroundPoints, True)):
            for pointId, (row, col) in self._definedPoints(node, volumeNode):
                current[(node.GetID(), pointId)] = (col, row, positive)
        kept = [key for key in self._clickOrder if key in current]
        self._clickOrder = kept + [key for key in current if key not in kept]
        return [current[key] for key in self._clickOrder]

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
        """Segment from the probability map on screen and the threshold, and, when points pick regions, the points;
        returns notes for the user."""
        mask = imaging.threshold_probability(self.probability(volumeNode), threshold)
        if self.clicksGuideNetwork:
            notes = self._clickNotes(volumeNode)
        else:
            mask, notes = imaging.apply_clicks(
                mask,
                self.pointsInPixels(foregroundPoints, volumeNode),
                self.pointsInPixels(backgroundPoints, volumeNode),
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
        """Redraw the mask with the settings of :meth:`setInteraction` (nothing without a probability map); when
        points guide the network and they changed since its last answer, ask the worker again (in the background:
        :meth:`pollClicks` redraws when the answer comes)."""
        interaction = self._interaction
        if not interaction or not interaction["segmentationNode"] or not self.hasProbability(interaction["volumeNode"]):
            return []
        if self.clicksGuideNetwork:
            self._requestClicks(interaction)
        notes = self.updateSegmentation(**interaction)
        if self.onMaskUpdated is not None:
            self.onMaskUpdated(notes)
        return notes

    def _requestClicks(self, interaction: dict) -> None:
        """Send the points to the worker unless its answer for them is shown or a request is running (when that
        one ends, :meth:`pollClicks` comes back here with the points as they are then)."""
        volumeNode = interaction["volumeNode"]
        clicks = self._interactionClicks(volumeNode)
        answer = self._clickAnswers.get(volumeNode.GetID())
        if not clicks or (answer is not None and answer[0] == clicks) or self._clickFuture is not None:
            return
        if self.client is None:
            return  # stopped: _clickNotes says so
        photo = slicer.util.arrayFromVolume(volumeNode).copy()  # read here, on Slicer's thread
        # The worker keeps the photo under this name: the node, and VTK's modification time of its voxels (a global
        # counter, so an edited photo or a new one under a reused node ID gets a new name); no hash of the pixels.
        key = f"{volumeNode.GetID()}@{volumeNode.GetImageData().GetMTime()}"
        self._clickRequest = (volumeNode.GetID(), clicks)
        self._clickFuture = self.client.submit(self.client.click, photo, clicks, key=key)

    def pollClicks(self) -> bool:
        """Take the worker's answer to the points once it has come (the Widget calls this from its timer): keep it,
        redraw, and send the points again if they changed meanwhile. Returns whether a request is still running."""
        future = self._clickFuture
        if future is None or not future.done():
            return future is not None
        self._clickFuture = None
        volumeId, clicks = self._clickRequest
        try:
            answer = future.result()
        except (WorkerCancelled, concurrent.futures.CancelledError):
            return False
        except Exception as err:  # noqa: BLE001 - one line for the user; the next point change asks again
            if self.onMaskUpdated is not None:
                self.onMaskUpdated([f"The network could not take the points: {err}"])
            return False
        summary = {k: answer[k] for k in ("network_runs", "decoded", "seconds", "forward_count") if k in answer}
        self._clickAnswers[volumeId] = (clicks, np.asarray(answer["prob"], dtype=np.float32), summary)
        self.updateInteraction()
        return self._clickFuture is not None

    def _clickNotes(self, volumeNode) -> list[str]:
        clicks = self._interactionClicks(volumeNode)
        if not clicks:
            return []
        if self.client is None:
            return ["The worker is stopped: press Segment to start it again; the points guide its network."]
        answer = self._clickAnswers.get(volumeNode.GetID())
        if answer is None or answer[0] != clicks:
            return [f"Running the network with {len(clicks)} point(s)..."]
        positive = sum(1 for *_, p in clicks if p)
        summary = answer[2]
        ran = f"; {summary['network_runs']} network run(s) in {summary['seconds']:.2f} s" if summary else ""
        return [f"The network ran with {positive} Keep and {len(clicks) - positive} Remove point(s){ran}."]

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
        client, probability = self.worker(options), self.probability(volumeNode)
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
