"""The CLDL Training panel (Qt): parameter node, Slicer logic and widget; the module file only names them.

Needs the Slicer application (``qt``, ``ctk``, ``slicer.parameterNodeWrapper``); the run itself is
:class:`CLDLTrainingLib.TrainingLogic`, Qt-free.
"""

from __future__ import annotations

from typing import Annotated

import ctk
import qt
import slicer
import vtk
from CLDLSegmentationLib import DeviceChoice
from CLDLSegmentationLib.dependencies import ensureDependencies
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from cldl import defaults

from .logic import TrainingLogic, describeDatasetReport, isSet, resolveTask, runExists, trainingOverrides

TASKS = [*defaults.TASKS, defaults.CUSTOM_TASK]  # custom: dataset.json in the dataset folder
PATH_FIELDS = {"dataDir": "dataDirPathLineEdit", "configFile": "configPathLineEdit", "outDir": "outDirPathLineEdit"}
CHARTS = ["Training losses", "Validation Dice"]


@parameterNodeWrapper
class CLDLTrainingParameterNode:
    """Settings of a training run (saved with the scene); paths are strings ("" = not chosen; the GUI connector of
    ``ctkPathLineEdit`` only takes ``Path``, which shows an empty path as ".")."""

    dataDir: str = ""
    task: Annotated[str, Choice(TASKS)] = defaults.TASKS[0]
    configFile: str = ""
    outDir: str = ""
    epochs: Annotated[int, WithinRange(1, 10000)] = defaults.EPOCHS
    itersPerEpoch: Annotated[int, WithinRange(1, 100000)] = defaults.ITERS_PER_EPOCH
    patchSize: Annotated[int, WithinRange(defaults.PATCH_MULTIPLE, 256)] = defaults.PATCH_SIZE
    learningRate: Annotated[float, WithinRange(1e-6, 1.0)] = defaults.LEARNING_RATE
    curriculum: Annotated[str, Choice(list(defaults.CURRICULUM_MODES))] = defaults.CURRICULUM
    gpus: Annotated[int, WithinRange(1, 16)] = 1
    device: DeviceChoice = DeviceChoice.AUTO


class CLDLTrainingLogic(ScriptedLoadableModuleLogic, TrainingLogic):
    """:class:`CLDLTrainingLib.TrainingLogic` on Slicer's scene; running handles advance with a Qt timer.

    From the Python console::

        logic = slicer.util.getModuleLogic("CLDLTraining")
        handle = logic.train("/data/BraTS2018/Training", "brats", "/runs/brats", overrides={"epochs": 100})
        handle.progress, handle.metrics[-1:], handle.stop()
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        TrainingLogic.__init__(self, scene=None, singleShot=qt.QTimer.singleShot)

    def getParameterNode(self):
        return CLDLTrainingParameterNode(super().getParameterNode())


class CLDLTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The GUI: run settings, Start / Stop / Resume, progress, charts."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._handle = None
        self._checkProcess = None
        self._summarized = None
        self._chartShown = False

    def setup(self, logic: CLDLTrainingLogic | None = None) -> None:
        """Build the panel; ``logic`` replaces the module's logic (tests pass one with their own timer)."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CLDLTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic or CLDLTrainingLogic()
        self.ui.dataDirPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.outDirPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.configPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.configPathLineEdit.nameFilters = ["Training config (*.json *.yaml *.yml)"]
        self.ui.chartComboBox.addItems([_(c) for c in CHARTS])

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.checkDatasetButton.connect("clicked(bool)", self.onCheckDataset)
        self.ui.chartComboBox.connect("currentIndexChanged(int)", self._showChart)
        for field, name in PATH_FIELDS.items():
            getattr(self.ui, name).connect("currentPathChanged(QString)", lambda path, f=field: self._setPath(f, path))
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Closing Slicer (or reloading the module) stops a running training after a checkpoint (resume it later)."""
        if self._running():
            self._handle.stop()
        if self._checkProcess is not None:
            self._checkProcess.cancel()
        self.removeObservers()

    def _setPath(self, field: str, path: str) -> None:
        if self._parameterNode is not None and getattr(self._parameterNode, field) != path:
            setattr(self._parameterNode, field, path)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    # -- state -----------------------------------------------------------------------------------------------------

    def _running(self) -> bool:
        return self._handle is not None and self._handle.running

    def _task(self) -> str:
        return resolveTask(self._parameterNode.task, self._parameterNode.dataDir)

    def _updateGui(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        for field, name in PATH_FIELDS.items():
            widget = getattr(self.ui, name)
            if widget.currentPath != getattr(p, field):
                widget.currentPath = getattr(p, field)
        running = self._running()
        hasRun = runExists(p.outDir)
        self.ui.startButton.enabled = not running and isSet(p.dataDir) and isSet(p.outDir) and not hasRun
        self.ui.resumeButton.enabled = not running and hasRun
        self.ui.stopButton.enabled = running
        self.ui.startButton.toolTip = (
            _("The run folder already holds a run: resume it or choose another folder")
            if hasRun
            else _("Start a new run in the run folder")
        )
        if isSet(p.dataDir) and (p.dataDir, p.task) != self._summarized:
            self._summarized = (p.dataDir, p.task)
            self._checkDataset(quick=True)

    def _log(self, message: str) -> None:
        self.ui.logTextEdit.appendPlainText(message)

    def _onProgress(self, fraction: float, text: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = text

    def _onMetrics(self, record) -> None:
        if not self._chartShown:  # switch the layout once per run, not after every epoch
            self._showChart()

    def _onFinished(self, handle) -> None:
        self._updateGui()
        self.ui.stopButton.text = _("Stop")
        if handle.status == "failed":
            self.ui.statusLabel.text = _("Training failed: {error}").format(error=handle.error)
            self.ui.logCollapsibleButton.collapsed = False
            slicer.util.errorDisplay(
                _("Training failed: {error}").format(error=handle.error), detailedText=handle.process.stderr
            )
        elif handle.bestCheckpoint.is_file():
            self._log(_("Best checkpoint: {path} (load it in CLDL Segmentation)").format(path=handle.bestCheckpoint))

    def _showChart(self, index=None) -> None:
        if self._handle is None or self._handle.curves is None:
            return
        chart = self._handle.curves.charts[max(self.ui.chartComboBox.currentIndex, 0)]
        slicer.modules.plots.logic().ShowChartInLayout(chart)
        self._chartShown = True

    # -- actions ---------------------------------------------------------------------------------------------------

    def _startRun(self, resume: bool) -> None:
        message = _("Failed to start training.")
        with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
            try:
                self._launch(resume)
            except Exception as exc:  # shown in a pop-up by tryWithErrorDisplay, and kept on the status line
                self.ui.statusLabel.text = f"{message} {exc}"
                raise
        self._updateGui()

    def _launch(self, resume: bool) -> None:
        p = self._parameterNode
        ensureDependencies(requester="CLDL")
        self.ui.logTextEdit.clear()
        self.ui.statusLabel.text = _("Starting the engine...")
        callbacks = dict(
            onProgress=self._onProgress, onLog=self._log, onMetrics=self._onMetrics, onFinished=self._onFinished
        )
        overrides = trainingOverrides(p, resume)
        if resume:
            self._handle = self.logic.train(None, None, p.outDir, None, overrides, p.gpus, resume=True, **callbacks)
        else:
            config = p.configFile if isSet(p.configFile) else None
            self._handle = self.logic.train(p.dataDir, self._task(), p.outDir, config, overrides, p.gpus, **callbacks)
        self._chartShown = False
        self._showChart()

    def onStart(self) -> None:
        self._startRun(resume=False)

    def onResume(self) -> None:
        self._startRun(resume=True)

    def onStop(self) -> None:
        if not self._running():
            return
        self._handle.stop(force=self._handle.stopRequested)
        self.ui.stopButton.text = _("Kill")

    def onCheckDataset(self) -> None:
        """Read every file of the dataset folder in the engine; the report goes to the log."""
        if isSet(self._parameterNode.dataDir):
            self.ui.logCollapsibleButton.collapsed = False
            self._checkDataset(quick=False)

    def _checkDataset(self, quick: bool) -> None:
        """``cldl datasets check`` in the background (file names only when ``quick``); the last check wins."""
        if self._checkProcess is not None and self._checkProcess.running:
            self._checkProcess.cancel()
        p = self._parameterNode
        self.ui.datasetInfoLabel.text = _("Finding the cases...") if quick else _("Reading every file...")
        try:
            self._checkProcess = self.logic.checkDataset(
                p.dataDir, self._task(), self._onDatasetChecked, quick=quick, onLog=None if quick else self._log
            )
        except Exception as exc:  # no Python to run the engine: say so, do not raise in an observer
            self._onDatasetChecked(None, str(exc))

    def _onDatasetChecked(self, report, error) -> None:
        self.ui.datasetInfoLabel.text = describeDatasetReport(report) if report else str(error)
