"""The CLDL Segmentation panel (Qt): parameter node, Slicer logic and widget; the module file only names them.

Everything here needs the Slicer application (``qt``, ``slicer.parameterNodeWrapper``); the decisions it makes are
plain functions of the Qt-free modules next to it, which are tested on a real MRML scene without Qt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from cldl.defaults import OVERLAP

from .cases import CASE_COLUMNS, caseRows, findLoadedCases
from .confidence import CONFIDENCE_COLUMNS, confidenceHeaderToolTips, confidenceRows, jumpToFocus
from .dependencies import ensureDependencies, upgradeTorch
from .logic import DeviceChoice, PrecisionChoice, SegmentationLogic, UncertaintyMapChoice
from .models import (
    checkpointModels,
    checkpointProblems,
    defaultModel,
    describeTorch,
    modelChoices,
    queriedCheckpoints,
    registryModels,
    rememberCheckpoint,
    startEngineInfo,
)
from .overlay import OVERLAY_ATTRIBUTE, OverlaySettings
from .panel import INPUT_ROLE, describeMap, guessInput, markedRegionName, updateOverlay
from .segmentations import markUncertainRegion, segmentNames
from .volumes import sameGrid

CHECKPOINTS_SETTING = "CLDL/Checkpoints"


def fillTable(
    table: qt.QTableWidget, columns: Sequence[str], rows: Sequence[Sequence[str]], toolTips: dict | None = None
) -> None:
    """Fill a ``QTableWidget``: one header per column (with its tool tip, if any), one item per cell."""
    table.setColumnCount(len(columns))
    for column, title in enumerate(columns):
        header = qt.QTableWidgetItem(title)
        header.setToolTip((toolTips or {}).get(title, ""))
        table.setHorizontalHeaderItem(column, header)
    table.setRowCount(len(rows))
    for row, texts in enumerate(rows):
        for column, text in enumerate(texts):
            table.setItem(row, column, qt.QTableWidgetItem(text))


@parameterNodeWrapper
class CLDLSegmentationParameterNode:
    """Settings of the module (saved with the scene); the input volumes are node references (one per modality)."""

    model: str = defaultModel()
    outputSegmentation: vtkMRMLSegmentationNode
    device: DeviceChoice = DeviceChoice.AUTO
    precision: PrecisionChoice = PrecisionChoice.AUTO
    tta: bool = False
    overlap: Annotated[float, WithinRange(0.0, 0.9)] = OVERLAP
    uncertaintyMap: UncertaintyMapChoice = UncertaintyMapChoice.ENTROPY
    keepProbabilities: bool = False
    ldlMaps: bool = False
    prepare: bool = False  # inputs are raw scans (cldl segment --prepare)
    overlayVolume: vtkMRMLScalarVolumeNode
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    transparentBelow: Annotated[float, WithinRange(0.0, 0.95)] = 0.05
    showLegend: bool = True
    uncertainThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


class CLDLSegmentationLogic(ScriptedLoadableModuleLogic, SegmentationLogic):
    """:class:`CLDLSegmentationLib.SegmentationLogic` on Slicer's scene, advanced by a Qt timer.

    Can be used without the GUI, from the Python console or a script::

        logic = CLDLSegmentationLogic()
        result = logic.segment([flair, t1, t1ce, t2], wait=True)  # the engine registry's default model
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationLogic.__init__(self, scene=None, singleShot=qt.QTimer.singleShot)

    def getParameterNode(self):
        return CLDLSegmentationParameterNode(super().getParameterNode())


class CLDLSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The GUI: reads widgets, calls the logic, shows progress."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._models = []  # the combo box's entries (ModelInfo)
        self._checkpoints = []  # the checkpoints cldl info described (ModelInfo)
        self._modelProblems = {}  # checkpoint path -> why it cannot be used
        self._asked = set()  # checkpoint paths cldl info was asked about
        self._inputSelectors = {}
        self._chosenInputs = set()  # modalities whose input the user picked (never guessed over)
        self._guessPending = False
        self._shownOverlay = None
        self._infoProcess = None
        self._confidence = {}  # the last run's result event: the confidence table's rows
        self._cases = []  # the loaded cases found for the chosen model (CLDLSegmentationLib.cases.LoadedCase)
        self._queue = None  # the running or last CaseQueue

    def setup(self, logic: CLDLSegmentationLogic | None = None) -> None:
        """Build the panel; ``logic`` replaces the module's logic (tests pass one with their own timer)."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CLDLSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic or CLDLSegmentationLogic()
        self.ui.overlayVolumeSelector.addAttribute("vtkMRMLScalarVolumeNode", OVERLAY_ATTRIBUTE, "1")

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.markUncertainButton.connect("clicked(bool)", self.onMarkUncertain)
        self.ui.upgradeTorchButton.connect("clicked(bool)", self.onUpgradeTorch)
        self.ui.confidenceTable.connect("cellClicked(int,int)", self.onConfidenceCellClicked)
        self.ui.findCasesButton.connect("clicked(bool)", self.onFindCases)
        self.ui.segmentCasesButton.connect("clicked(bool)", self.onSegmentCases)
        self._fillConfidenceTable({})

        self.initializeParameterNode()
        self._queryEngine()

    def cleanup(self) -> None:
        if self._infoProcess is not None:
            self._infoProcess.cancel()
        if self._job is not None:
            self._job.cancel()
        if self._queue is not None:
            self._queue.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.onFindCases()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        """The nodes are going away: cancel the running segmentation and case queue (they would import into
        removed nodes)."""
        self.setParameterNode(None)
        if self._job is not None and self._job.status == "running":
            self._job.cancel()
        if self._queue is not None:
            self._queue.cancel()
        self._cases = []

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._selectModel(self._parameterNode.model)
            for modality, selector in self._inputSelectors.items():
                reference = self._parameterNode.parameterNode.GetNodeReference(INPUT_ROLE + modality)
                selector.setCurrentNode(reference or selector.currentNode())
            self._onParameterNodeModified()

    # -- models and inputs -----------------------------------------------------------------------------------------

    def _chosenModel(self) -> str:
        return self._parameterNode.model if self._parameterNode else defaultModel()

    def _registry(self) -> list:
        try:
            return registryModels()
        except Exception as exc:  # the engine is missing or broken: say so, keep the GUI usable
            self._log(_("Cannot list the registered models: {error}").format(error=exc))
            return []

    def _fillModels(self) -> None:
        """Registry models, the checkpoints ``cldl info`` described, and the chosen model even when it is neither
        (being read, unreadable or missing: then it says why and cannot run), so that the combo box shows exactly
        the parameter node's model."""
        self._models = modelChoices(self._registry(), self._checkpoints, self._chosenModel(), self._modelProblems)
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for info in self._models:
            self.ui.modelComboBox.addItem(info.title, info.key)
        self.ui.modelComboBox.blockSignals(False)
        self._selectModel(self._chosenModel())

    def _queryEngine(self) -> None:
        """Ask the engine (a subprocess: torch never loads in Slicer) about torch, the device and the checkpoints:
        the remembered ones and the chosen one (a scene may have been saved with a checkpoint)."""
        if self._infoProcess is not None and self._infoProcess.running:
            self._infoProcess.cancel()  # a newer question replaces it
        stored = slicer.util.settingsValue(CHECKPOINTS_SETTING, None)
        paths = queriedCheckpoints(stored, self._chosenModel(), self._registry())
        self.ui.deviceInfoLabel.text = _("Checking PyTorch and the device...")
        for path in paths:
            self._modelProblems.pop(path, None)
        self._asked.update(paths)
        self._fillModels()
        try:
            self._infoProcess = startEngineInfo(paths, self._onEngineInfo, qt.QTimer.singleShot)
        except Exception as exc:  # no Python to run the engine: show it rather than fail
            self._onEngineInfo(None, str(exc), paths)

    def _onEngineInfo(self, info, error, paths=()) -> None:
        if info is None:
            self.ui.deviceInfoLabel.text = _("Cannot query the engine: {error}").format(error=error)
            self._showStatus(self.ui.deviceInfoLabel.text)
            for path in paths or [m.key for m in self._models if not m.usable]:
                self._modelProblems[path] = _("Cannot read the checkpoint: {error}").format(error=error)
        else:
            self.ui.deviceInfoLabel.text = describeTorch(info["torch"])
            if not info["torch"].get("installed") or info["torch"].get("supported") is False:
                self._showStatus(self.ui.deviceInfoLabel.text)  # the Options section that holds it is collapsed
            self._checkpoints, errors = checkpointModels(info)
            self._modelProblems.update(checkpointProblems(info))
            for message in errors:
                self._log(_("Skipping checkpoint {message}").format(message=message))
        self._fillModels()

    def _selectModel(self, key: str) -> None:
        """Show ``key`` (the parameter node's model) in the combo box; a key it lacks is added as unavailable."""
        index = self.ui.modelComboBox.findData(key)
        if index < 0 and key and key not in {m.key for m in self._models}:
            if Path(key).is_file() and key not in self._asked:
                self._queryEngine()  # a scene saved with a checkpoint never described here: ask, list it meanwhile
            else:
                self._fillModels()  # adds the key (modelChoices), then selects it
            return
        self.ui.modelComboBox.currentIndex = max(index, 0)
        self.onModelChanged(self.ui.modelComboBox.currentIndex)

    def _currentModel(self):
        index = self.ui.modelComboBox.currentIndex
        return self._models[index] if 0 <= index < len(self._models) else None

    def onModelChanged(self, index: int) -> None:
        info = self._currentModel()
        if info is None:
            self.ui.modelInfoLabel.text = _("No model: reinstall the CLDL extension or load a checkpoint.")
            return
        if self._parameterNode and self._parameterNode.model != info.key:
            self._parameterNode.model = info.key
        if not info.usable:
            self.ui.modelInfoLabel.text = info.description
            self._checkCanApply()
            return
        names = ", ".join(segmentNames(info.task)[1:])
        self.ui.modelInfoLabel.text = f"{info.description}\n" + _("Segments: {names}").format(names=names)
        self._buildInputSelectors(info.modalities)
        self.onFindCases()

    def _buildInputSelectors(self, modalities) -> None:
        """One volume selector per modality the model expects, stored as parameter node references."""
        if tuple(self._inputSelectors) == tuple(modalities):
            return
        layout = self.ui.inputVolumesWidget.layout()
        for selector in self._inputSelectors.values():
            layout.removeRow(selector)
        self._inputSelectors = {}
        self._chosenInputs = set()
        volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        for modality in modalities:
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.addEnabled = selector.removeEnabled = False
            selector.noneEnabled = True
            selector.setMRMLScene(slicer.mrmlScene)
            selector.toolTip = _("Input volume for {modality}").format(modality=modality)
            reference = (
                self._parameterNode.parameterNode.GetNodeReference(INPUT_ROLE + modality)
                if self._parameterNode
                else None
            )
            selector.setCurrentNode(reference or guessInput(modality, volumes))
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node, m=modality: self._onInputChosen(m, node))
            layout.addRow(f"{modality}:", selector)
            self._inputSelectors[modality] = selector
            self._setInput(modality, selector.currentNode())

    def _onInputChosen(self, modality: str, node) -> None:
        """A selector changed: by the user (then it is never guessed over), or by :meth:`_guessInputs`."""
        if not self._guessPending:
            self._chosenInputs.add(modality)
        self._setInput(modality, node)

    def onNodeAdded(self, caller, event) -> None:
        """Volumes loaded after the selectors were built: guess the empty inputs once the loading is done."""
        if self._inputSelectors and not self._guessPending:
            self._guessPending = True
            qt.QTimer.singleShot(0, self._guessInputs)

    def _guessInputs(self) -> None:
        """Fill each empty input the user has not chosen from the volume names (:func:`guessInput`)."""
        volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        try:
            for modality, selector in self._inputSelectors.items():
                if modality not in self._chosenInputs and selector.currentNode() is None:
                    guess = guessInput(modality, volumes)
                    if guess is not None:
                        selector.setCurrentNode(guess)
                        self._setInput(modality, guess)
        finally:
            self._guessPending = False

    def _setInput(self, modality: str, node) -> None:
        if self._parameterNode:
            self._parameterNode.parameterNode.SetNodeReferenceID(INPUT_ROLE + modality, node.GetID() if node else None)
            nodes = [s.currentNode() for s in self._inputSelectors.values()]
            if all(nodes) and not all(sameGrid(nodes[0], other) for other in nodes[1:]):
                self._parameterNode.prepare = True  # inputs on several grids are raw scans
        self._checkCanApply()

    def onLoadModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Load a CLDL checkpoint"), "", _("CLDL checkpoint (*.pt)")
        )
        if not path:
            return
        stored = slicer.util.settingsValue(CHECKPOINTS_SETTING, None)
        qt.QSettings().setValue(CHECKPOINTS_SETTING, rememberCheckpoint(stored, path))
        self._parameterNode.model = str(Path(path).resolve())
        self._queryEngine()  # lists it as "reading..." at once, then as described (or why it cannot be used)

    def onUpgradeTorch(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot install PyTorch."), waitCursor=True):
            if upgradeTorch():
                self._queryEngine()

    # -- running ---------------------------------------------------------------------------------------------------

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._checkCanApply()
        self._updateOverlay()

    def _checkCanApply(self) -> None:
        running = self._job is not None and self._job.status == "running"
        batch = self._queue is not None and self._queue.running
        model = self._currentModel()
        usable = model is not None and model.usable
        ready = bool(self._inputSelectors) and all(s.currentNode() for s in self._inputSelectors.values())
        self.ui.applyButton.enabled = running or (not batch and ready and usable)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.segmentCasesButton.enabled = batch or (not running and usable)
        self.ui.segmentCasesButton.text = _("Cancel") if batch else _("Segment all cases")
        self.ui.markUncertainButton.enabled = bool(
            self._parameterNode and self._parameterNode.overlayVolume and self._parameterNode.outputSegmentation
        )

    def _showStatus(self, text: str) -> None:
        """The line under Apply (never in a collapsed section): progress, the torch state, the last error."""
        if not (self._job is not None and self._job.status == "running"):
            self.ui.statusLabel.text = text

    @contextlib.contextmanager
    def _statusOnError(self, what: str):
        """Show an exception on the status line too (``tryWithErrorDisplay`` shows it in a pop-up)."""
        try:
            yield
        except Exception as exc:
            self.ui.statusLabel.text = f"{what} {exc}"
            raise

    def onApplyButton(self) -> None:
        if self._job is not None and self._job.status == "running":
            self._job.cancel()
            return
        message = _("Failed to start the segmentation.")
        with slicer.util.tryWithErrorDisplay(message, waitCursor=True), self._statusOnError(message):
            self._prepareRun()
            self._job = self.logic.segment(
                {m: s.currentNode() for m, s in self._inputSelectors.items()},
                model=self._currentModel(),
                outputSegmentation=self._parameterNode.outputSegmentation,
                onProgress=self._onProgress,
                onLog=self._log,
                onFinished=self._onFinished,
                **self._options(),
            )
            self._checkCanApply()

    def _prepareRun(self) -> None:
        """What every run needs first: the engine's packages, the overlay settings, an empty log and table."""
        ensureDependencies(requester="CLDL")
        p = self._parameterNode
        self.logic.overlaySettings = OverlaySettings(p.overlayOpacity, p.transparentBelow, p.showLegend)
        self.ui.logTextEdit.clear()
        self._fillConfidenceTable({})

    def _options(self) -> dict:
        """The engine options chosen in the panel (keywords of SegmentationOptions)."""
        p = self._parameterNode
        return {
            "device": p.device.value,
            "precision": p.precision.value,
            "tta": p.tta,
            "overlap": p.overlap,
            "uncertaintyMap": p.uncertaintyMap.value,
            "keepProbabilities": p.keepProbabilities,
            "ldlMaps": p.ldlMaps,
            "prepare": p.prepare,
        }

    def _onProgress(self, fraction: float, text: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = text

    def _log(self, message: str) -> None:
        self.ui.logTextEdit.appendPlainText(message)

    def _onFinished(self, job) -> None:
        self._checkCanApply()
        if job.status == "completed":
            self._showResult(job.result)
        elif job.status == "failed":
            self.ui.statusLabel.text = _("Segmentation failed: {error}").format(error=job.error)
            self.ui.logCollapsibleButton.collapsed = False
            slicer.util.errorDisplay(
                _("Segmentation failed: {error}").format(error=job.error), detailedText=job.process.stderr
            )

    def _showResult(self, result) -> None:
        """Make a run's segmentation and uncertainty map the panel's output and map, and fill the table."""
        parameters = self._parameterNode or self.logic.getParameterNode()  # the user may have left the module
        parameters.outputSegmentation = result.segmentationNode
        self.ui.show3DButton.setSegmentationNode(result.segmentationNode)
        parameters.overlayVolume = result.uncertaintyNode
        self._fillConfidenceTable(result.summary)

    # -- several loaded cases --------------------------------------------------------------------------------------

    def onFindCases(self, checked: bool = False) -> None:
        """Group the loaded volumes into cases for the chosen model (not while a queue runs)."""
        if self._queue is not None and self._queue.running:
            return
        info = self._currentModel()
        self._cases = findLoadedCases(slicer.mrmlScene, info.modalities, info.key) if info and info.usable else []
        self._queue = None
        self._fillCasesTable()

    def _fillCasesTable(self) -> None:
        """One row per case found: name, volumes, status (ready, a problem, or the queue's progress)."""
        fillTable(self.ui.casesTable, CASE_COLUMNS, caseRows(self._cases, self._queue))

    def onSegmentCases(self, checked: bool = False) -> None:
        """Segment every ready case in a row, or cancel the running queue."""
        if self._queue is not None and self._queue.running:
            self._queue.cancel()
            return
        message = _("Failed to start segmenting the cases.")
        with slicer.util.tryWithErrorDisplay(message, waitCursor=True), self._statusOnError(message):
            self.onFindCases()
            ready = [case for case in self._cases if case.ready]
            if not ready:
                raise ValueError(_("No case is ready: load volumes named <case>_<input> (see the table)."))
            self.ui.casesCollapsibleButton.collapsed = False
            self._prepareRun()
            self._queue = self.logic.segmentCases(
                ready,
                model=self._currentModel(),
                onProgress=self._onProgress,
                onLog=self._log,
                onCase=lambda run: self._fillCasesTable(),
                onFinished=self._onCasesFinished,
                **self._options(),
            )
            self._fillCasesTable()
            self._checkCanApply()

    def _onCasesFinished(self, queue) -> None:
        """Show the first case segmented; report the cases that failed (the others ran)."""
        self._checkCanApply()
        self._fillCasesTable()
        self.ui.statusLabel.text = queue.summary()
        results = queue.results()
        if results:
            self._showResult(results[0])
        if queue.failed():
            self.ui.logCollapsibleButton.collapsed = False
            slicer.util.errorDisplay(
                _("Some cases could not be segmented: {summary}").format(summary=queue.summary()),
                detailedText="\n".join(f"{run.case.name}: {run.error}" for run in queue.failed()),
            )

    # -- overlay ---------------------------------------------------------------------------------------------------

    def _updateOverlay(self) -> None:
        p = self._parameterNode
        if p is not None:
            settings = OverlaySettings(p.overlayOpacity, p.transparentBelow, p.showLegend)
            self._shownOverlay = updateOverlay(self._shownOverlay, p.overlayVolume, settings, slicer.mrmlScene)
            self.ui.mapDescriptionLabel.text = describeMap(p.overlayVolume)

    def onMarkUncertain(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot mark the uncertain region."), waitCursor=True):
            name = markedRegionName(p.overlayVolume, p.uncertainThreshold)
            markUncertainRegion(p.outputSegmentation, p.overlayVolume, p.uncertainThreshold, name)

    # -- confidence table ------------------------------------------------------------------------------------------

    def _fillConfidenceTable(self, summary: dict) -> None:
        """One row per segment of the result event's ``confidence`` (empty before a run)."""
        self._confidence = summary
        fillTable(
            self.ui.confidenceTable, CONFIDENCE_COLUMNS, confidenceRows(summary), confidenceHeaderToolTips(summary)
        )

    def onConfidenceCellClicked(self, row: int, column: int) -> None:
        """Centre the slice views on the clicked segment's most uncertain region."""
        if jumpToFocus(self._confidence, row, slicer.mrmlScene) is None:
            self.ui.statusLabel.text = _("This segment is empty: nothing to show.")


def runSelfTests(folder: str | Path, name: str) -> None:
    """Run the self-test module ``name`` of ``folder`` (a module's ``Testing/Python``) as ctest does
    (``slicer.testing.runUnitTest``): every test method of every test case in it; raise if one failed."""
    import sys
    import unittest

    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    result = unittest.TextTestRunner(verbosity=2).run(unittest.defaultTestLoader.loadTestsFromName(name))
    if not result.wasSuccessful():
        raise AssertionError(f"{name}: {len(result.failures)} failed, {len(result.errors)} errors (see the log)")
