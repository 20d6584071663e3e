"""Skin lesion segmentation of dermoscopy photographs in 3D Slicer with the RFE U-Net MONAI bundle.

Thin glue for 3D Slicer 5.4 or later (``slicer.parameterNodeWrapper`` first ships in 5.4; 5.4-5.8 run Python 3.9,
5.10 and later 3.12): the computations live in ``SkinLesionSegmentationLib`` (its headless Logic is tested on Slicer
Core, the rest with pytest outside Slicer) and the network runs in a separate worker process, so neither torch nor
MONAI is imported when Slicer starts. Only the Widget reads Slicer's settings; the Logic gets explicit arguments.
"""

import importlib.util
import logging
import os
import shutil
import sys
import time
from typing import Annotated

import qt
import slicer
from SkinLesionSegmentationLib import bundles, logic, slicer_python
from SkinLesionSegmentationLib.client import WorkerCancelled, WorkerError
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
# A synthetic dermoscopy-like photo (the bundle's sample_data/images/synthetic_000.jpg), shipped with the module
SAMPLE_PHOTO = "SyntheticLesion.jpg"
SAMPLE_PHOTO_SHA256 = "28b1384bb67a4c03980e6b44bc536e9928e189801d5f7de9d06831ca6869e6b4"


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
            "correct the result: with a click-guided network the points run it again with every point, with an "
            "automatic one they keep or remove lesion regions. Measurements are geometry for research, not a "
            "diagnosis. "
            "Research use only; not a medical device."
        )
        self.parent.acknowledgementText = (
            "Zarrin and Nikkhah, RFE U-Net with the Adapt Exp loss (JADM 2025); MONAI; 3D Slicer."
        )
        slicer.app.connect("startupCompleted()", self.loadTerminology)
        slicer.app.connect("startupCompleted()", self.registerSampleData)

    def loadTerminology(self):
        """The "Skin lesion" type (SCT 95324001) is in no list Slicer ships: load the extension's .term.json."""
        logic.load_terminology(slicer.modules.terminologies.logic())

    def registerSampleData(self):
        """The module's sample photo in the Sample Data module (loaded as a single file, checksum checked)."""
        import SampleData

        photo = os.path.join(os.path.dirname(self.parent.path), "Resources", "SampleData", SAMPLE_PHOTO)
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="Skin Lesion Segmentation",
            sampleName="SyntheticLesion",
            uris=[qt.QUrl.fromLocalFile(photo).toString()],
            fileNames=[SAMPLE_PHOTO],
            nodeNames=["SyntheticLesion"],
            thumbnailFileName=photo,
            loadFileProperties={"singleFile": True},
            checksums=[f"SHA256:{SAMPLE_PHOTO_SHA256}"],
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
        self._message = ""
        self._startedAt = 0.0

    @staticmethod
    def defaultBundlePath():
        """This repository's bundle folder when the module runs from a source checkout, else nothing (an installed
        extension downloads one: Bundle URL and SHA-256)."""
        root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
        return root if bundles.is_bundle_folder(root) else ""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SkinLesionSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SkinLesionSegmentationLogic()
        self.logic.onMaskUpdated = self.onMaskUpdated

        settings = qt.QSettings()
        self.ui.bundlePathLineEdit.currentPath = settings.value(f"{SETTINGS}/bundle", self.defaultBundlePath())
        self.ui.bundleUrlLineEdit.text = settings.value(f"{SETTINGS}/bundleUrl", "")
        self.ui.bundleSha256LineEdit.text = settings.value(f"{SETTINGS}/bundleSha256", "")
        self.ui.pythonComboBox.currentIndex = int(settings.value(f"{SETTINGS}/pythonChoice", 0))
        self.ui.externalPythonPathLineEdit.currentPath = settings.value(f"{SETTINGS}/externalPython", "")
        self.ui.deviceComboBox.currentIndex = int(settings.value(f"{SETTINGS}/device", 0))
        self.ui.outputFolderLineEdit.currentPath = settings.value(f"{SETTINGS}/outputFolder", "")
        self.ui.progressBar.hide()
        self.ui.clickModeLabel.text = self.logic.clickModeText()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.bundlePathLineEdit.connect("currentPathChanged(QString)", self.onWorkerSettingsChanged)
        self.ui.bundleZipButton.connect("clicked(bool)", self.onChooseBundleZip)
        self.ui.downloadBundleButton.connect("clicked(bool)", self.onDownloadBundle)
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
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateMask)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateMask)
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
        """Slicer is closing or the module is reloaded: end the worker process tree (at once, also mid-start)."""
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

    # -- worker settings (read and written here only) ----------------------------------------------------------------

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

    def onChooseBundleZip(self):
        path = qt.QFileDialog.getOpenFileName(
            self.parent, "Choose a bundle zip", self.ui.bundlePathLineEdit.currentPath, "Bundle zip (*.zip)"
        )
        if path:
            self.ui.bundlePathLineEdit.currentPath = path

    def workerOptions(self):
        """The worker settings as chosen in the panel, for the Logic."""
        if self.ui.pythonComboBox.currentIndex == 1:
            python = self.ui.externalPythonPathLineEdit.currentPath
            if not python:
                raise WorkerError("Choose the external Python first.")
            # Slicer's own Python variables must not leak into another interpreter.
            python, env = (python,), slicer.util.startupEnvironment()
        else:
            python, env = (self.logic.slicerPython(),), dict(os.environ)
            if not self.logic.slicerPythonHasRequirements():
                raise WorkerError(
                    "Slicer's Python lacks PyTorch and MONAI: press 'Install PyTorch and MONAI into Slicer's Python', "
                    "or choose an external Python."
                )
        return logic.WorkerOptions(
            bundle=self.ui.bundlePathLineEdit.currentPath,
            python=python,
            device=DEVICES[self.ui.deviceComboBox.currentIndex],
            env=env,
        )

    def onDownloadBundle(self):
        url, sha256 = self.ui.bundleUrlLineEdit.text.strip(), self.ui.bundleSha256LineEdit.text.strip()
        settings = qt.QSettings()
        settings.setValue(f"{SETTINGS}/bundleUrl", url)
        settings.setValue(f"{SETTINGS}/bundleSha256", sha256)
        try:
            with slicer.util.WaitCursor():
                root = self.logic.downloadBundle(url, sha256)
        except bundles.BundleChoiceError as err:
            slicer.util.errorDisplay(str(err))
            return
        self.ui.bundlePathLineEdit.currentPath = str(root)
        self.addLog(f"Downloaded {url} (SHA-256 checked) into {root}")

    def onInstall(self):
        try:
            bundleRoot = self.logic.resolveBundle(self.ui.bundlePathLineEdit.currentPath)
            with slicer.util.tryWithErrorDisplay("Installation failed.", waitCursor=True):
                if self.logic.installSlicerPythonRequirements(bundleRoot, askConfirmation=True):
                    self.addLog("PyTorch and MONAI are installed in Slicer's Python.")
        except (bundles.BundleChoiceError, slicer_python.InstallPlanError, WorkerError) as err:
            slicer.util.errorDisplay(str(err))

    def onStopWorker(self):
        self.logic.stopWorker()
        self.addLog("Worker stopped.")

    # -- background work ---------------------------------------------------------------------------------------------

    def runInBackground(self, message, start, onDone):
        """Start work on the worker; the Segment button turns into Cancel until ``onDone(result)`` has run. The
        status line shows what runs and for how long."""
        if self._future is not None:
            return
        try:
            self._future = start()
        except Exception as err:  # noqa: BLE001 - one line for the user, never a silent failure
            slicer.util.errorDisplay(str(err))
            return
        self._onDone, self._message, self._startedAt = onDone, message, time.monotonic()
        self.ui.applyButton.text = "Cancel"
        self.ui.progressBar.show()
        self.showProgress()

    def showProgress(self):
        client = self.logic.client
        state = "starting the worker" if client is not None and not client.running else "working"
        self.ui.statusLabel.text = f"{self._message} ({state}, {time.monotonic() - self._startedAt:.0f} s)"

    def poll(self):
        for line in self.logic.takeLogLines():
            self.addLog(line)
        self.logic.pollClicks()  # the worker's answer to the points, when they guide the network
        if self._future is None:
            return
        if not self._future.done():
            self.showProgress()
            return
        future, onDone, seconds = self._future, self._onDone, time.monotonic() - self._startedAt
        self._future = self._onDone = None
        self.ui.applyButton.text = "Segment"
        self.ui.progressBar.hide()
        try:
            result = future.result()
        except WorkerCancelled:
            self.ui.statusLabel.text = f"Cancelled after {seconds:.1f} s."
            return
        except Exception as err:  # noqa: BLE001 - shown to the user in one line
            self.ui.statusLabel.text = f"Failed after {seconds:.1f} s."
            slicer.util.errorDisplay(str(err))
            return
        with slicer.util.tryWithErrorDisplay("Could not show the result.", waitCursor=True):
            self.ui.statusLabel.text = f"{onDone(result) or 'Done.'} ({seconds:.1f} s)"

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
            self.ui.clickModeLabel.text = self.logic.clickModeText()
            self.updateMask()
            runs = result["forward_count"]
            return f"Segmented on {result['device']} in {result['seconds']:.2f} s (network runs so far: {runs})."

        self.runInBackground("Segmenting", lambda: self.logic.startSegmentation(volume, self.workerOptions()), done)
        segmentation.CreateDefaultDisplayNodes()

    # -- interaction -------------------------------------------------------------------------------------------------

    def onPointsChanged(self, *_):
        # Read the selectors, not the parameter node: this slot may run before the node is updated.
        self.ui.foregroundPlaceWidget.setCurrentNode(self.ui.foregroundPointsSelector.currentNode())
        self.ui.backgroundPlaceWidget.setCurrentNode(self.ui.backgroundPointsSelector.currentNode())
        self.updateMask()

    def updateMask(self, *_):
        """Threshold and points from the cached probability map; the Logic then follows the points as they are
        placed, moved or removed (running a click-guided network again in the background, picking regions of the
        mask otherwise)."""
        self.logic.setInteraction(
            self.ui.inputVolumeSelector.currentNode(),
            self.ui.outputSegmentationSelector.currentNode(),
            self.ui.thresholdSliderWidget.value,
            self.ui.foregroundPointsSelector.currentNode(),
            self.ui.backgroundPointsSelector.currentNode(),
        )

    def onMaskUpdated(self, notes):
        self.ui.statusLabel.text = "; ".join(notes)

    def onRefine(self):
        node = self._parameterNode
        if not node.refineRegion or not self.logic.hasProbability(node.inputVolume):
            slicer.util.errorDisplay("Segment the photo and draw a region (ROI) first.")
            return
        volume, roi = node.inputVolume, node.refineRegion

        def done(probability):
            self.logic.setRefinedProbability(volume, probability)
            self.updateMask()
            return "Refined inside the region."

        # The worker for the current settings: started again if it was stopped.
        self.runInBackground("Refining", lambda: self.logic.startRefinement(volume, roi, self.workerOptions()), done)

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
            "Segmenting the folder",
            lambda: self.logic.startBatch(source, folder, self.workerOptions()),
            done,
        )


class SkinLesionSegmentationLogic(ScriptedLoadableModuleLogic, logic.SkinLesionSegmentationLogic):
    """The headless Logic (``SkinLesionSegmentationLib.logic``) with Slicer's parameter node and Slicer's Python."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        logic.SkinLesionSegmentationLogic.__init__(self, os.path.join(slicer.app.cachePath, SETTINGS))

    def getParameterNode(self):
        return SkinLesionSegmentationParameterNode(super().getParameterNode())

    @staticmethod
    def slicerPython():
        return shutil.which("PythonSlicer") or os.path.join(os.path.dirname(sys.executable), "PythonSlicer")

    @staticmethod
    def slicerPythonHasRequirements():
        # find_spec locates the packages without importing them: Slicer stays free of torch until the worker runs.
        return all(importlib.util.find_spec(name) is not None for name in ("torch", "monai"))

    def installSlicerPythonRequirements(self, bundleRoot, askConfirmation=True):
        """Install PyTorch (through the PyTorch extension) and MONAI into Slicer's Python, as
        ``slicer_python.install_plan`` chooses for this Python: nothing Slicer ships is upgraded or replaced."""
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise WorkerError(
                "Install the PyTorch extension from the Extensions Manager, restart Slicer, try again."
            ) from None
        plan = slicer_python.install_plan(
            sys.version_info, slicer_python.installed_distributions(), bundles.read_metadata(bundleRoot)
        )
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            f"Install into Slicer's Python {plan.python}:\n"
            + "\n".join([f"torch{plan.torch} (PyTorch extension)", *plan.requirements, *plan.notes])
            + "\nPackages already installed stay as they are."
        ):
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=plan.torch) is None:
                raise WorkerError("PyTorch was not installed; the module cannot run the bundle in Slicer's Python.")
            plan = slicer_python.install_plan(
                sys.version_info, slicer_python.installed_distributions(), bundles.read_metadata(bundleRoot)
            )
        if plan.requirements:
            constraints = os.path.join(slicer.app.temporaryPath, "SkinLesionSegmentation-constraints.txt")
            with open(constraints, "w", encoding="utf-8") as handle:
                handle.write("\n".join(plan.constraints) + "\n")
            slicer.util.pip_install(plan.pip_arguments(constraints))
        return True


class SkinLesionSegmentationTest(ScriptedLoadableModuleTest):
    """Inside Slicer, with its own data and no user settings: the module's sample photo loaded as Slicer loads it,
    a probability map the test makes (so no bundle or PyTorch is needed), threshold, a Remove point placed and
    moved, measure, save. The worker itself is tested outside Slicer (tests/test_slicer_*.py, the headless Logic on
    Slicer Core)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_threshold_points_measure_save()

    def test_threshold_points_measure_save(self):
        import numpy as np
        import vtk

        photoPath = os.path.join(os.path.dirname(__file__), "Resources", "SampleData", SAMPLE_PHOTO)
        volume = slicer.util.loadVolume(photoPath, {"singleFile": True})
        rows, cols = slicer.util.arrayFromVolume(volume).shape[1:3]
        grid_r, grid_c = np.mgrid[:rows, :cols]
        probability = np.where((grid_r - rows // 2) ** 2 + (grid_c - cols // 2) ** 2 < (rows // 4) ** 2, 0.9, 0.1)

        testLogic = logic.SkinLesionSegmentationLogic(os.path.join(slicer.app.temporaryPath, "SkinLesionTest"))
        try:
            testLogic.setProbability(volume, probability)
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
            testLogic.setInteraction(volume, segmentation, 0.5, None, points)
            mask, segmentId = testLogic.lesionMask(segmentation, volume)
            self.assertEqual(segmentation.GetSegmentation().GetSegment(segmentId).GetName(), "Skin lesion")
            np.testing.assert_array_equal(mask, probability > 0.5)

            ijkToRas = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(ijkToRas)
            points.AddControlPoint(list(ijkToRas.MultiplyPoint([cols // 2, rows // 2, 0.0, 1.0])[:3]))
            self.assertEqual(testLogic.lesionMask(segmentation, volume)[0].sum(), 0)  # the lesion is removed
            points.SetNthControlPointPosition(0, list(ijkToRas.MultiplyPoint([0.0, 0.0, 0.0, 1.0])[:3]))
            np.testing.assert_array_equal(testLogic.lesionMask(segmentation, volume)[0], probability > 0.5)

            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode")
            self.assertGreater(testLogic.measure(segmentation, volume, 0.0, table)["area_px"], 0)
            png, seg = testLogic.save(segmentation, volume, os.path.join(slicer.app.temporaryPath, "SkinLesionTest"))
            self.assertTrue(os.path.isfile(png) and os.path.isfile(seg))
        finally:
            testLogic.cleanup()
        self.delayDisplay("Test passed")
