"""Skin lesion segmentation of dermoscopy photographs in 3D Slicer with the RFE U-Net MONAI bundle.

Thin glue: the computations live in ``SkinLesionSegmentationLib`` (pure Python, tested with pytest outside Slicer)
and the network runs in a separate worker process, so neither torch nor MONAI is imported when Slicer starts.
"""

import importlib.util
import logging
import os
import queue
import shutil
import sys
from typing import Annotated

import qt
import slicer
import vtk
from SkinLesionSegmentationLib import bundles, imaging, measurements, results
from SkinLesionSegmentationLib.client import WorkerCancelled, WorkerClient, WorkerError
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SETTINGS = "SkinLesionSegmentation"
DEVICES = ("auto", "cpu", "cuda")  # in the order of the device combo box


class SkinLesionSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Skin Lesion Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["RFE U-Net bundle contributors"]
        self.parent.helpText = (
            "Segments the skin lesion in a dermoscopy photograph (PNG/JPEG loaded as a single file) with the RFE U-Net "
            "MONAI bundle, running in a separate worker process. Threshold, keep/remove points and region refinement "
            "correct the result; measurements are geometry for research, not a diagnosis. "
            "Research use only; not a medical device."
        )
        self.parent.acknowledgementText = (
            "Zarrin and Nikkhah, RFE U-Net with the Adapt Exp loss (JADM 2025); MONAI; 3D Slicer."
        )


@parameterNodeWrapper
class SkinLesionSegmentationParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    foregroundPoints: vtkMRMLMarkupsFiducialNode
    backgroundPoints: vtkMRMLMarkupsFiducialNode
    refineRegion: vtkMRMLMarkupsROINode
    measurementTable: vtkMRMLTableNode
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    pixelSizeMm: Annotated[float, WithinRange(0.0, 100.0)] = 0.0


class SkinLesionSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._future = None
        self._onDone = None
        self._observedPoints = []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SkinLesionSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SkinLesionSegmentationLogic()

        settings = qt.QSettings()
        self.ui.bundlePathLineEdit.currentPath = settings.value(f"{SETTINGS}/bundle", self.logic.defaultBundlePath())
        self.ui.pythonComboBox.currentIndex = int(settings.value(f"{SETTINGS}/pythonChoice", 0))
        self.ui.externalPythonPathLineEdit.currentPath = settings.value(f"{SETTINGS}/externalPython", "")
        self.ui.deviceComboBox.currentIndex = int(settings.value(f"{SETTINGS}/device", 0))
        self.ui.outputFolderLineEdit.currentPath = settings.value(f"{SETTINGS}/outputFolder", "")
        self.ui.progressBar.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.bundlePathLineEdit.connect("currentPathChanged(QString)", self.onWorkerSettingsChanged)
        self.ui.pythonComboBox.connect("currentIndexChanged(int)", self.onWorkerSettingsChanged)
        self.ui.externalPythonPathLineEdit.connect("currentPathChanged(QString)", self.onWorkerSettingsChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onWorkerSettingsChanged)
        self.ui.outputFolderLineEdit.connect("currentPathChanged(QString)", self.onOutputFolderChanged)
        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        self.ui.stopWorkerButton.connect("clicked(bool)", self.onStopWorker)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.thresholdSliderWidget.connect("valueChanged(double)", self.updateMask)
        self.ui.foregroundPointsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onPointsChanged)
        self.ui.backgroundPointsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onPointsChanged)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.measureButton.connect("clicked(bool)", self.onMeasure)
        self.ui.saveButton.connect("clicked(bool)", self.onSave)
        self.ui.batchButton.connect("clicked(bool)", self.onBatch)

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(100)
        self.pollTimer.connect("timeout()", self.poll)
        self.pollTimer.start()

        self.onWorkerSettingsChanged()
        self.initializeParameterNode()

    def cleanup(self):
        """Slicer is closing or the module is reloaded: end the worker process tree."""
        self.pollTimer.stop()
        self.removeObservers()
        if self.logic:
            self.logic.cleanup()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLVectorVolumeNode")

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.onPointsChanged()

    # -- worker settings ---------------------------------------------------------------------------------------------

    def onWorkerSettingsChanged(self, *_):
        settings = qt.QSettings()
        settings.setValue(f"{SETTINGS}/bundle", self.ui.bundlePathLineEdit.currentPath)
        settings.setValue(f"{SETTINGS}/pythonChoice", self.ui.pythonComboBox.currentIndex)
        settings.setValue(f"{SETTINGS}/externalPython", self.ui.externalPythonPathLineEdit.currentPath)
        settings.setValue(f"{SETTINGS}/device", self.ui.deviceComboBox.currentIndex)
        external = self.ui.pythonComboBox.currentIndex == 1
        self.ui.externalPythonPathLineEdit.enabled = external
        self.ui.installButton.enabled = not external

    def onOutputFolderChanged(self, path):
        qt.QSettings().setValue(f"{SETTINGS}/outputFolder", path)

    def onInstall(self):
        try:
            bundleRoot = self.logic.resolveBundle(self.ui.bundlePathLineEdit.currentPath)
            with slicer.util.tryWithErrorDisplay("Installation failed.", waitCursor=True):
                if self.logic.installSlicerPythonRequirements(bundleRoot, askConfirmation=True):
                    self.addLog("PyTorch and the bundle's requirements are installed in Slicer's Python.")
        except (bundles.BundleChoiceError, WorkerError) as err:
            slicer.util.errorDisplay(str(err))

    def onStopWorker(self):
        self.logic.stopWorker()
        self.addLog("Worker stopped.")

    # -- background work ---------------------------------------------------------------------------------------------

    def runInBackground(self, message, start, onDone):
        """Start work on the worker; the Segment button turns into Cancel until ``onDone(result)`` has run."""
        if self._future is not None:
            return
        try:
            self._future = start()
        except (WorkerError, bundles.BundleChoiceError, ValueError) as err:
            slicer.util.errorDisplay(str(err))
            return
        self._onDone = onDone
        self.ui.statusLabel.text = message
        self.ui.applyButton.text = "Cancel"
        self.ui.progressBar.show()

    def poll(self):
        for line in self.logic.takeLogLines():
            self.addLog(line)
        if self._future is None or not self._future.done():
            return
        future, onDone = self._future, self._onDone
        self._future = self._onDone = None
        self.ui.applyButton.text = "Segment"
        self.ui.progressBar.hide()
        try:
            result = future.result()
        except WorkerCancelled:
            self.ui.statusLabel.text = "Cancelled."
            return
        except Exception as err:  # noqa: BLE001 - shown to the user in one line
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(str(err))
            return
        with slicer.util.tryWithErrorDisplay("Could not show the result.", waitCursor=True):
            self.ui.statusLabel.text = onDone(result) or "Done."

    def addLog(self, text):
        logging.info(text)
        self.ui.logTextEdit.appendPlainText(text)

    def onApply(self):
        if self._future is not None:
            self.ui.statusLabel.text = "Cancelling..."
            self.logic.cancel()
            return
        node = self._parameterNode
        if not node.inputVolume:
            slicer.util.errorDisplay("Choose a photo first.")
            return
        if not node.outputSegmentation:
            node.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{node.inputVolume.GetName()} lesion"
            )
        volume, segmentation = node.inputVolume, node.outputSegmentation

        def done(result):
            self.logic.setProbability(volume, result["prob"])
            self.updateMask()
            runs = result["forward_count"]
            return f"Segmented on {result['device']} in {result['seconds']:.2f} s (network runs so far: {runs})."

        self.runInBackground(
            "Segmenting...", lambda: self.logic.startSegmentation(volume, **self.logic.savedWorkerOptions()), done
        )
        segmentation.CreateDefaultDisplayNodes()

    # -- interaction -------------------------------------------------------------------------------------------------

    def onPointsChanged(self, *_):
        # Read the selectors, not the parameter node: this slot may run before the node is updated.
        for observed in self._observedPoints:
            self.removeObserver(observed, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.updateMask)
            self.removeObserver(observed, slicer.vtkMRMLMarkupsNode.PointRemovedEvent, self.updateMask)
        foreground = self.ui.foregroundPointsSelector.currentNode()
        background = self.ui.backgroundPointsSelector.currentNode()
        self._observedPoints = [points for points in (foreground, background) if points]
        for observed in self._observedPoints:
            self.addObserver(observed, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.updateMask)
            self.addObserver(observed, slicer.vtkMRMLMarkupsNode.PointRemovedEvent, self.updateMask)
        self.ui.foregroundPlaceWidget.setCurrentNode(foreground)
        self.ui.backgroundPlaceWidget.setCurrentNode(background)
        self.updateMask()

    def updateMask(self, *_):
        """Threshold and points from the cached probability map: no network run."""
        volume = self.ui.inputVolumeSelector.currentNode()
        segmentation = self.ui.outputSegmentationSelector.currentNode()
        if not volume or not segmentation or not self.logic.hasProbability(volume):
            return
        notes = self.logic.updateSegmentation(
            volume,
            segmentation,
            self.ui.thresholdSliderWidget.value,
            self.ui.foregroundPointsSelector.currentNode(),
            self.ui.backgroundPointsSelector.currentNode(),
        )
        self.ui.statusLabel.text = "; ".join(notes)

    def onRefine(self):
        node = self._parameterNode
        if not node.refineRegion or not self.logic.hasProbability(node.inputVolume):
            slicer.util.errorDisplay("Segment the photo and draw a region (ROI) first.")
            return
        volume, roi = node.inputVolume, node.refineRegion

        def done(probability):
            self.logic.setProbability(volume, probability)
            self.updateMask()
            return "Refined inside the region."

        self.runInBackground("Refining...", lambda: self.logic.startRefinement(volume, roi), done)

    def onMeasure(self):
        node = self._parameterNode
        if not node.outputSegmentation or not node.inputVolume:
            slicer.util.errorDisplay("Segment the photo first.")
            return
        if not node.measurementTable:
            node.measurementTable = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "Lesion measurements")
        with slicer.util.tryWithErrorDisplay("Measurement failed.", waitCursor=True):
            self.logic.measure(node.outputSegmentation, node.inputVolume, node.pixelSizeMm, node.measurementTable)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(node.measurementTable.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()

    def onSave(self):
        node = self._parameterNode
        folder = self.ui.outputFolderLineEdit.currentPath
        if not folder or not node.outputSegmentation or not node.inputVolume:
            slicer.util.errorDisplay("Choose an output folder and segment the photo first.")
            return
        with slicer.util.tryWithErrorDisplay("Saving failed.", waitCursor=True):
            png, seg = self.logic.save(node.outputSegmentation, node.inputVolume, folder)
            self.addLog(f"Saved {png} and {seg}")

    def onBatch(self):
        source, folder = self.ui.batchInputLineEdit.currentPath, self.ui.outputFolderLineEdit.currentPath
        if not source or not folder:
            slicer.util.errorDisplay("Choose a batch input folder and an output folder.")
            return

        def done(result):
            for _, reason in result["failures"]:
                self.addLog(f"FAILED {reason}")
            return f"Segmented {len(result['written'])} photos; {len(result['failures'])} failed (see the log)."

        self.runInBackground(
            "Segmenting the folder...",
            lambda: self.logic.startBatch(source, folder, **self.logic.savedWorkerOptions()),
            done,
        )


class SkinLesionSegmentationLogic(ScriptedLoadableModuleLogic):
    """Everything the widget does, without the widget; runs the network through one :class:`WorkerClient`."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = None
        self._clientKey = None
        self._logLines = queue.SimpleQueue()
        self._probability = {}  # volume node ID -> cached lesion probability map (rows, columns)

    def getParameterNode(self):
        return SkinLesionSegmentationParameterNode(super().getParameterNode())

    def cleanup(self):
        if self.client is not None:
            self.client.close()
            self.client = None

    # -- worker ------------------------------------------------------------------------------------------------------

    @staticmethod
    def defaultBundlePath():
        """This repository's bundle folder when the module runs from a source checkout, else nothing."""
        root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
        return root if bundles.is_bundle_folder(root) else ""

    @staticmethod
    def savedWorkerOptions():
        """Bundle, Python and device as last chosen in the module (stored in Slicer's settings)."""
        settings = qt.QSettings()
        external = int(settings.value(f"{SETTINGS}/pythonChoice", 0)) == 1
        return {
            "bundlePath": settings.value(f"{SETTINGS}/bundle", SkinLesionSegmentationLogic.defaultBundlePath()),
            "externalPython": settings.value(f"{SETTINGS}/externalPython", "") if external else "",
            "device": DEVICES[int(settings.value(f"{SETTINGS}/device", 0))],
        }

    @staticmethod
    def resolveBundle(path):
        """A bundle folder, or a bundle zip unpacked (safely, once) into Slicer's cache folder."""
        if not path:
            raise bundles.BundleChoiceError("Choose a bundle folder or bundle zip first.")
        return bundles.resolve_bundle(path, os.path.join(slicer.app.cachePath, SETTINGS, "bundles"))

    @staticmethod
    def slicerPythonHasRequirements():
        # find_spec locates the packages without importing them: Slicer stays free of torch until the worker runs.
        return all(importlib.util.find_spec(name) is not None for name in ("torch", "monai"))

    def installSlicerPythonRequirements(self, bundleRoot, askConfirmation=True):
        """Install PyTorch (through the PyTorch extension) and the bundle's packages into Slicer's Python."""
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise WorkerError(
                "Install the PyTorch extension from the Extensions Manager, restart Slicer, try again."
            ) from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled() and torchLogic.installTorch(askConfirmation=askConfirmation) is None:
            raise WorkerError("PyTorch was not installed; the module cannot run the bundle in Slicer's Python.")
        requirements = bundles.python_requirements(bundles.read_metadata(bundleRoot))
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            "Install these packages into Slicer's Python?\n" + "\n".join(requirements)
        ):
            return False
        slicer.util.pip_install(requirements)
        return True

    def worker(self, bundlePath, externalPython="", device="auto"):
        """The worker client for these settings; a change of settings stops the previous worker."""
        bundleRoot = str(self.resolveBundle(bundlePath))
        key = (bundleRoot, externalPython, device)
        if self.client is not None and self._clientKey == key:
            return self.client
        self.stopWorker()
        if externalPython:
            # Slicer's own Python variables must not leak into another interpreter.
            python, env = externalPython, slicer.util.startupEnvironment()
        else:
            if not self.slicerPythonHasRequirements() and not self.installSlicerPythonRequirements(bundleRoot):
                raise WorkerError("Slicer's Python lacks PyTorch and MONAI; install them or choose an external Python.")
            python = shutil.which("PythonSlicer") or os.path.join(os.path.dirname(sys.executable), "PythonSlicer")
            env = dict(os.environ)
        self.client = WorkerClient(python, bundleRoot, device=device, env=env, log=self._logLines.put)
        self._clientKey = key
        return self.client

    def stopWorker(self):
        if self.client is not None:
            self.client.close()
        self.client, self._clientKey = None, None

    def cancel(self):
        if self.client is not None:
            self.client.cancel()

    def takeLogLines(self):
        lines = []
        while not self._logLines.empty():
            lines.append(self._logLines.get())
        return lines

    # -- segmentation ------------------------------------------------------------------------------------------------

    def startSegmentation(self, volumeNode, bundlePath, externalPython="", device="auto"):
        """Returns a future of the worker's answer for the photo (``prob``, ``pred``, timing)."""
        client = self.worker(bundlePath, externalPython, device)
        photo = slicer.util.arrayFromVolume(volumeNode).copy()  # read here, on Slicer's thread
        return client.submit(client.segment, photo)

    def setProbability(self, volumeNode, probability):
        self._probability[volumeNode.GetID()] = probability

    def hasProbability(self, volumeNode):
        return volumeNode is not None and volumeNode.GetID() in self._probability

    def segmentSpec(self):
        info = self.client.info if self.client is not None else {}
        if not info:
            return results.SKIN_LESION
        return results.SegmentSpec(info["segment_name"], tuple(info["segment_color"]), info["segment_terminology"])

    @staticmethod
    def rasToIjk(volumeNode):
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetRASToIJKMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def pointsInPixels(self, pointsNode, volumeNode):
        if pointsNode is None or pointsNode.GetNumberOfControlPoints() == 0:
            return []
        positions = slicer.util.arrayFromMarkupsControlPoints(pointsNode, world=True)
        return imaging.pixels_from_ras(positions, self.rasToIjk(volumeNode))

    def segmentId(self, segmentationNode, volumeNode):
        """The lesion segment of ``segmentationNode``, created with the bundle's name, colour and terminology."""
        spec = self.segmentSpec()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        segmentId = segmentation.GetSegmentIdBySegmentName(spec.name)
        if not segmentId:
            segmentId = segmentation.AddEmptySegment("", spec.name, list(spec.color))
            if spec.terminology:
                segment = segmentation.GetSegment(segmentId)
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

    def startRefinement(self, volumeNode, roiNode):
        """Returns a future of the probability map with the ROI's inside segmented again at full network size."""
        bounds = [0.0] * 6
        roiNode.GetRASBounds(bounds)
        photo = imaging.photo_from_volume_array(slicer.util.arrayFromVolume(volumeNode))
        box = imaging.box_from_ras_bounds(bounds, self.rasToIjk(volumeNode), photo.shape[:2])
        client, probability = self.client, self._probability[volumeNode.GetID()]
        return client.submit(
            imaging.refine_in_region, photo, probability, box, lambda crop: client.segment(crop)["prob"]
        )

    def lesionMask(self, segmentationNode, volumeNode):
        segmentId = self.segmentId(segmentationNode, volumeNode)
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)[0], segmentId

    def measure(self, segmentationNode, volumeNode, pixelSizeMm, tableNode):
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

    def save(self, segmentationNode, volumeNode, folder):
        """Write ``<photo>_mask.png`` and ``<photo>.seg.nrrd`` of the lesion segment as it is now."""
        mask, segmentId = self.lesionMask(segmentationNode, volumeNode)
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        terminology = vtk.reference("")
        segment.GetTag(segment.GetTerminologyEntryTagName(), terminology)
        spec = results.SegmentSpec(segment.GetName(), tuple(segment.GetColor()), str(terminology))
        return results.write_results(mask, folder, volumeNode.GetName(), spec)

    def startBatch(self, inputFolder, outputFolder, bundlePath, externalPython="", device="auto"):
        client = self.worker(bundlePath, externalPython, device)
        return client.submit(client.batch, inputFolder, outputFolder)


class SkinLesionSegmentationTest(ScriptedLoadableModuleTest):
    """Inside Slicer: load a photo, segment it in the worker, threshold, click, save. Every function it calls is
    covered by pytest outside Slicer (tests/test_slicer_*.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_threshold_click_save()

    def test_segment_threshold_click_save(self):
        import numpy as np
        from PIL import Image

        folder = os.path.join(slicer.app.temporaryPath, "SkinLesionSegmentationTest")
        os.makedirs(folder, exist_ok=True)
        photo = np.full((120, 160, 3), (220, 180, 160), np.uint8)
        rows, cols = np.mgrid[:120, :160]
        photo[(rows - 30) ** 2 + (cols - 120) ** 2 < 20**2] = (120, 60, 50)
        Image.fromarray(photo).save(os.path.join(folder, "photo.png"))
        volume = slicer.util.loadVolume(os.path.join(folder, "photo.png"), {"singleFile": True})
        self.assertEqual(slicer.util.arrayFromVolume(volume).shape, (1, 120, 160, 3))

        logic = SkinLesionSegmentationLogic()
        try:  # with the bundle and Python chosen in the module
            answer = logic.startSegmentation(volume, **logic.savedWorkerOptions()).result(timeout=600)
            self.assertEqual(answer["prob"].shape, (120, 160))
            logic.setProbability(volume, answer["prob"])
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            logic.updateSegmentation(volume, segmentation, 0.5)
            mask, segmentId = logic.lesionMask(segmentation, volume)
            self.assertEqual(segmentation.GetSegmentation().GetSegment(segmentId).GetName(), "Skin lesion")
            np.testing.assert_array_equal(mask, answer["pred"])

            forwards = answer["forward_count"]
            logic.updateSegmentation(volume, segmentation, 0.99)
            self.assertLessEqual(logic.lesionMask(segmentation, volume)[0].sum(), mask.sum())
            self.assertEqual(logic.client.request("info")[0]["forward_count"], forwards)

            threshold = 0.5 if mask.any() else 0.0
            logic.updateSegmentation(volume, segmentation, threshold)
            row, col = np.argwhere(logic.lesionMask(segmentation, volume)[0])[0]
            ijkToRas = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(ijkToRas)
            points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
            points.AddControlPoint(list(ijkToRas.MultiplyPoint([float(col), float(row), 0.0, 1.0])[:3]))
            logic.updateSegmentation(volume, segmentation, threshold, backgroundPoints=points)
            self.assertEqual(logic.lesionMask(segmentation, volume)[0][row, col], 0)

            png, seg = logic.save(segmentation, volume, folder)
            self.assertEqual(Image.open(png).size, (160, 120))
            self.assertTrue(os.path.isfile(seg))
        finally:
            logic.cleanup()
        self.delayDisplay("Test passed")
