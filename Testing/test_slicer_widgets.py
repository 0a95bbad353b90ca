"""Widget smoke test (issue 9): both module files import and their widgets' ``setup()`` runs on a real MRML scene
(slicer-core) with stand-ins only for Qt/CTK widgets and the Python packages the wheel lacks (slicer_standins).
slicer.util, MRML and the Lib are real: a name that does not exist (e.g. ``slicer.util.toList``) fails here."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import slicer
import slicer_standins as standins
import slicer_testing  # noqa: F401  (puts the module folders on sys.path)
from CLDLSegmentationLib.dependencies import DependencyError
from slicer_testing import CONFIDENCE_SUMMARY as SUMMARY
from slicer_testing import add_volume, new_scene

CHECKPOINTS_SETTING = "CLDL/Checkpoints"
#: The module files and the Lib modules that import qt (imported afresh over the stand-ins in each test).
WIDGET_MODULES = ("CLDLSegmentation", "CLDLTraining", "CLDLSegmentationLib.widget", "CLDLTrainingLib.widget")


@pytest.fixture
def slicerApp(monkeypatch: pytest.MonkeyPatch):
    """A real scene as ``slicer.mrmlScene``; fake ``qt``/``ctk``; loadUI/childWidgetVariables over the .ui files."""
    settings: dict = {}
    monkeypatch.setitem(sys.modules, "qt", standins.fakeQt(settings))
    monkeypatch.setitem(sys.modules, "ctk", standins.fakeCtk())
    for name, module in standins.slicerPackages().items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in WIDGET_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(slicer, "qMRMLNodeComboBox", standins.FakeNodeComboBox, raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: standins.FakeWidget(str(path), "QWidget"))
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda root: standins.widgetsOf(root.objectName))
    standins.Timers.queue.clear()
    scene = new_scene()
    slicer.mrmlScene = scene
    yield settings
    del slicer.mrmlScene
    scene.Clear(1)


def _segmentationWidget(monkeypatch: pytest.MonkeyPatch, queried: list, logic=None):
    """The panel's module (``CLDLSegmentationLib.widget``) and its widget after ``setup(logic)``."""
    module = importlib.import_module("CLDLSegmentationLib.widget")
    assert importlib.import_module("CLDLSegmentation").CLDLSegmentationWidget is module.CLDLSegmentationWidget

    def startEngineInfo(paths, onDone, singleShot):
        queried.append(list(paths))
        onDone(None, "no engine in this test")

    monkeypatch.setattr(module, "startEngineInfo", startEngineInfo)
    widget = module.CLDLSegmentationWidget()
    widget.setup(logic)
    return module, widget


@pytest.mark.parametrize("stored", ["one", "list", "empty", "unset"])
def test_segmentation_setup_fills_models_and_inputs(slicerApp, monkeypatch, tmp_path: Path, stored: str) -> None:
    """A stored checkpoint setting that is a string (one item, as Slicer's INI returns it), a list or empty."""
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(b"x")
    second.write_bytes(b"x")
    value = {"one": str(first), "list": [str(first), str(second)], "empty": ""}.get(stored)
    if stored != "unset":
        slicerApp[CHECKPOINTS_SETTING] = value
    for name in ("BraTS_flair", "BraTS_t1", "BraTS_t1ce", "BraTS_t2"):
        add_volume(slicer.mrmlScene, slicer_testing.np.zeros((4, 4, 4), "float32"), name)
    queried: list = []
    module, widget = _segmentationWidget(monkeypatch, queried)

    expected = {"one": [str(first)], "list": [str(first), str(second)]}.get(stored, [])
    assert queried == [expected]
    assert widget.ui.deviceInfoLabel.text.startswith("Cannot query the engine")
    combo = widget.ui.modelComboBox
    assert combo.items and combo.currentIndex == combo.findData(widget._parameterNode.model) >= 0
    modalities = widget._currentModel().modalities
    rows = widget.ui.inputVolumesWidget.layout().rows
    assert [label for label, _ in rows] == [f"{m}:" for m in modalities]
    assert all(selector.currentNode() is not None for _, selector in rows), "inputs guessed from the volume names"
    assert widget.ui.applyButton.enabled is True
    signals = {w.objectName: [s for s, _ in w.connections] for w in vars(widget.ui).values() if w.connections}
    assert signals["modelComboBox"] == ["currentIndexChanged(int)"] and signals["applyButton"] == ["clicked(bool)"]
    for _, selector in rows:
        assert [s for s, _ in selector.connections] == ["currentNodeChanged(vtkMRMLNode*)"]
    assert signals["confidenceTable"] == ["cellClicked(int,int)"]
    assert signals["findCasesButton"] == signals["segmentCasesButton"] == ["clicked(bool)"]
    table = widget.ui.confidenceTable
    assert [table.headers[c].text for c in range(table.columnCount)] == list(module.CONFIDENCE_COLUMNS)
    assert table.rowCount == 0 and widget._parameterNode.ldlMaps is False
    cases = widget.ui.casesTable
    assert [cases.headers[c].text for c in range(cases.columnCount)] == list(module.CASE_COLUMNS)
    assert cases.texts() == [("BraTS", "BraTS_flair, BraTS_t1, BraTS_t1ce, BraTS_t2", "ready")]
    assert widget.ui.segmentCasesButton.enabled is True
    widget.cleanup()


def _regionMap(scene):
    """A segmentation and a 2 mm region-ambiguity map as the Lib imports them (high in the top slices)."""
    values = slicer_testing.np.zeros((6, 7, 8), "float32")
    values[:2] = 0.9
    mapNode = add_volume(scene, values, "flair CLDL Region ambiguity (mixed tissue), 2 mm regions")
    for key, value in {"CLDL.Map": "ldl", "CLDL.Kind": "ambiguity", "CLDL.Overlay": "1"}.items():
        mapNode.SetAttribute(key, value)
    mapNode.SetAttribute("CLDL.Title", "Region ambiguity (mixed tissue), 2 mm regions")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    return mapNode, segmentation


def test_segmentation_run_fills_the_confidence_table_and_a_row_click_jumps(slicerApp, monkeypatch) -> None:
    """Apply passes Region maps and empties the table; the finished run fills it; a click centres the views."""
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", standins.noErrorDisplay)
    module, widget = _segmentationWidget(monkeypatch, [])
    monkeypatch.setattr(module, "ensureDependencies", lambda requester: None)
    table, scene = widget.ui.confidenceTable, slicer.mrmlScene
    mapNode, segmentation = _regionMap(scene)
    job = types.SimpleNamespace(status="completed", result=types.SimpleNamespace(
        segmentationNode=segmentation, uncertaintyNode=mapNode, summary=SUMMARY))  # fmt: skip
    widget._onFinished(job)
    assert table.texts() == [("NCR", "0.0", "-", "0.0", "0.0"), ("ET", "5.9", "0.21", "1.2", "0.4")]
    assert "within 0.2" in table.headers[module.CONFIDENCE_COLUMNS.index("Could flip (ml)")].toolTip

    sliceNodes = [scene.AddNewNodeByClass("vtkMRMLSliceNode") for _ in range(2)]
    table.click(1, 3)
    for node in sliceNodes:
        centre = [node.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
        assert centre == pytest.approx([-10.0, 20.0, 30.0])  # the ET focus, LPS -> RAS
    table.click(0)
    assert "empty" in widget.ui.statusLabel.text

    captured: dict = {}
    widget._parameterNode.ldlMaps = True
    widget.logic.segment = lambda inputs, **options: (
        captured.update(options) or types.SimpleNamespace(status="running", cancel=lambda: None)
    )
    widget.onApplyButton()
    assert captured["ldlMaps"] is True and table.rowCount == 0
    widget.cleanup()


def test_segmentation_map_choice_describes_and_marks_any_map(slicerApp, monkeypatch) -> None:
    """A region map chosen as Map: the line under it says what it shows; marking names the segment after it."""
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", standins.noErrorDisplay)
    _, widget = _segmentationWidget(monkeypatch, [])
    mapNode, segmentation = _regionMap(slicer.mrmlScene)
    p = widget._parameterNode
    p.overlayVolume, p.outputSegmentation = mapNode, segmentation
    widget._onParameterNodeModified()
    assert widget.ui.mapDescriptionLabel.text.startswith("Region ambiguity (mixed tissue), 2 mm regions: how mixed")
    assert widget.ui.markUncertainButton.enabled is True
    widget.onMarkUncertain()
    names = [segmentation.GetSegmentation().GetNthSegment(n).GetName() for n in range(1)]
    assert names == ["Region ambiguity (mixed tissue), 2 mm regions > 0.50"]
    p.overlayVolume = None
    widget._onParameterNodeModified()
    assert widget.ui.mapDescriptionLabel.text == "" and widget.ui.markUncertainButton.enabled is False
    widget.cleanup()


def test_segmentation_setup_fails_on_a_missing_slicer_name(slicerApp, monkeypatch) -> None:
    """The smoke test can fail: a call to a name slicer.util lacks (the old ``toList``) raises in setup()."""
    module = importlib.import_module("CLDLSegmentationLib.widget")
    monkeypatch.setattr(module, "queriedCheckpoints", lambda value, chosen, registry: slicer.util.toList(value))
    with pytest.raises(AttributeError, match="toList"):
        module.CLDLSegmentationWidget().setup()


def test_training_setup_binds_paths_and_buttons(slicerApp, tmp_path: Path) -> None:
    module = importlib.import_module("CLDLTrainingLib.widget")
    assert importlib.import_module("CLDLTraining").CLDLTrainingWidget is module.CLDLTrainingWidget
    widget = module.CLDLTrainingWidget()
    logic = module.CLDLTrainingLogic()
    widget.setup(logic)
    assert widget.logic is logic, "setup() takes the logic to use (tests pass their own)"
    ui = widget.ui
    assert ui.dataDirPathLineEdit.filters == standins.FakePathLineEdit.Dirs
    assert ui.configPathLineEdit.filters == standins.FakePathLineEdit.Files
    assert ui.chartComboBox.items == [(c, None) for c in module.CHARTS]
    assert not ui.startButton.enabled and not ui.resumeButton.enabled and not ui.stopButton.enabled
    for name in module.PATH_FIELDS.values():
        assert [s for s, _ in getattr(ui, name).connections] == ["currentPathChanged(QString)"]
    (tmp_path / "last.pt").write_bytes(b"")
    widget._setPath("outDir", str(tmp_path))
    widget._updateGui()
    assert ui.resumeButton.enabled and not ui.startButton.enabled
    assert ui.outDirPathLineEdit.currentPath == str(tmp_path)
    widget.cleanup()


class FakeJob:
    """A running SegmentationJob as the case queue sees it: ends when the test says so, or when cancelled."""

    def __init__(self, inputs, options: dict) -> None:
        self.inputs, self.options, self.status, self.result, self.error = inputs, options, "running", None, None

    def end(self, status: str, result=None, error: str = "") -> None:
        self.status, self.result, self.error = status, result, RuntimeError(error) if error else None
        self.options["onFinished"](self)

    def cancel(self) -> None:
        self.end("cancelled")


def test_segmentation_segments_loaded_cases_in_a_row(slicerApp, monkeypatch) -> None:
    """Segment all cases: every ready case runs in turn (progress "case 1 of 2"), a failed case is reported at the
    end without stopping the next, the first finished case is shown; the button cancels a running queue."""
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", standins.noErrorDisplay)
    errors: list = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append((text, kw)))
    scene = slicer.mrmlScene
    for case in ("A", "B"):
        for m in ("flair", "t1", "t1ce", "t2"):
            add_volume(scene, slicer_testing.np.ones((4, 4, 4), "float32"), f"{case}_{m}")
    add_volume(scene, slicer_testing.np.ones((4, 4, 4), "float32"), "C_flair")
    module, widget = _segmentationWidget(monkeypatch, [])
    monkeypatch.setattr(module, "ensureDependencies", lambda requester: None)
    ui, jobs = widget.ui, []
    widget.logic.segment = lambda inputs, **options: jobs.append(FakeJob(inputs, options)) or jobs[-1]
    widget._parameterNode.ldlMaps = True

    widget.onFindCases()
    assert [row[2] for row in ui.casesTable.texts()] == ["ready", "ready", "missing t1, t1ce, t2"]
    widget.onSegmentCases()
    assert len(jobs) == 1 and jobs[0].options["name"] == "A" and jobs[0].options["options"].ldlMaps is True
    assert [n.GetName() for n in jobs[0].inputs.values()] == ["A_flair", "A_t1", "A_t1ce", "A_t2"]
    assert ui.segmentCasesButton.text == "Cancel" and ui.applyButton.enabled is False
    assert [row[2] for row in ui.casesTable.texts()] == ["running", "queued", "missing t1, t1ce, t2"]
    jobs[0].options["onProgress"](0.5, "inference 1/2")
    assert ui.statusLabel.text == "case 1 of 2 (A): inference 1/2" and ui.progressBar.value == 25

    mapNode, segmentation = _regionMap(scene)
    jobs[0].end(
        "completed", types.SimpleNamespace(segmentationNode=segmentation, uncertaintyNode=mapNode, summary=SUMMARY)
    )
    assert len(jobs) == 2 and jobs[1].options["name"] == "B" and jobs[1].options["show"] is False
    jobs[1].end("failed", error="the engine stopped")
    assert (
        ui.casesTable.texts()[0][2].startswith("done in ")
        and ui.casesTable.texts()[1][2] == "failed: the engine stopped"
    )
    assert ui.statusLabel.text == "1 of 2 case(s) segmented, 1 failed (B)"
    assert errors == [("Some cases could not be segmented: 1 of 2 case(s) segmented, 1 failed (B)",
                       {"detailedText": "B: the engine stopped"})]  # fmt: skip
    assert widget._parameterNode.outputSegmentation is segmentation and widget._parameterNode.overlayVolume is mapNode
    assert ui.confidenceTable.rowCount == 2 and ui.segmentCasesButton.text == "Segment all cases"

    widget.onSegmentCases()  # again: both cases run (the stand-in results did not come from them)
    widget.onSegmentCases()  # Cancel
    assert [j.status for j in jobs[2:]] == ["cancelled"] and widget._queue.status == "cancelled"
    assert [row[2] for row in ui.casesTable.texts()[:2]] == ["cancelled", "cancelled"]
    assert ui.applyButton.enabled is True and len(errors) == 1
    widget.cleanup()


def _runTimers(until, timeout: float = 120.0) -> None:
    """Run the queued ``qt.QTimer.singleShot`` callbacks (as Slicer's event loop would) until ``until()``."""
    import time

    deadline = time.monotonic() + timeout
    while not until():
        assert standins.Timers.queue and time.monotonic() < deadline, "nothing left to run"
        _, callback = standins.Timers.queue.pop(0)
        time.sleep(0.05)
        callback()


def test_training_dataset_folder_is_checked_by_the_engine_in_the_background(slicerApp, tmp_path: Path) -> None:
    """Choosing a folder starts ``cldl datasets check --quick`` (no file read, no torch here); Check dataset reads
    every file and logs the report; a newer check cancels the running one."""
    from cldl.data.phantoms import brats_phantom, write_case

    for seed in (1, 2):
        write_case(brats_phantom(seed, shape=(16, 16, 16)), tmp_path / "data")
    module = importlib.import_module("CLDLTrainingLib.widget")
    widget = module.CLDLTrainingWidget()
    widget.setup()
    ui = widget.ui
    widget._setPath("dataDir", str(tmp_path / "data"))
    widget._updateGui()
    assert ui.datasetInfoLabel.text == "Finding the cases..."
    assert "--quick" in widget._checkProcess.command
    _runTimers(lambda: not widget._checkProcess.running)
    assert ui.datasetInfoLabel.text == "2 cases found (2 with a label map); layout: brats, task brats"
    assert ui.logTextEdit.calls == []

    widget.onCheckDataset()
    first = widget._checkProcess
    widget.onCheckDataset()  # again at once: the first check is cancelled and reports nothing
    assert first.cancelled and "--quick" not in widget._checkProcess.command
    _runTimers(lambda: not widget._checkProcess.running and not first.running)
    logged = [args[0] for name, args in ui.logTextEdit.calls if name == "appendPlainText"]
    assert "OK: no problems found" in logged and ui.logCollapsibleButton.collapsed is False
    assert ui.datasetInfoLabel.text.startswith("2 cases found")
    widget._setPath("dataDir", str(tmp_path / "missing"))
    widget._updateGui()
    _runTimers(lambda: not widget._checkProcess.running)
    assert "no such file" in ui.datasetInfoLabel.text
    widget.cleanup()


class EngineInfo:
    """``startEngineInfo`` whose answer the test gives later (as the subprocess would, some seconds on)."""

    def __init__(self) -> None:
        self.queries: list = []
        self.cancelled: list = []

    def __call__(self, paths, onDone, singleShot):
        self.queries.append((list(paths), onDone))
        return types.SimpleNamespace(running=True, cancel=lambda: self.cancelled.append(list(paths)))

    def answer(self, checkpoints: list, torchInstalled: bool = False) -> None:
        _, onDone = self.queries[-1]
        onDone({"torch": {"installed": torchInstalled}, "checkpoints": checkpoints}, None)


def _described(path: Path) -> dict:
    from cldl.tasks import BRATS

    return {"path": str(path), "task": BRATS.to_dict(), "patch_size": [32, 32, 32], "epoch": 3}


def test_a_scene_saved_with_a_checkpoint_keeps_it_while_the_engine_reads_it(slicerApp, monkeypatch, tmp_path) -> None:
    """Item 5: the parameter node's checkpoint (never loaded on this computer) is listed as "reading..." and kept;
    nothing writes the default model over it before ``cldl info`` answers; then it is described and usable."""
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"x")
    module = importlib.import_module("CLDLSegmentationLib.widget")
    module.CLDLSegmentationLogic().getParameterNode().model = str(checkpoint)  # as a loaded scene holds it
    engine = EngineInfo()
    monkeypatch.setattr(module, "startEngineInfo", engine)
    widget = module.CLDLSegmentationWidget()
    widget.setup()
    combo, p = widget.ui.modelComboBox, widget._parameterNode
    assert engine.queries[-1][0] == [str(checkpoint)], "the scene's checkpoint is asked about"
    assert p.model == str(checkpoint) and combo.items[combo.currentIndex] == ("best.pt (reading...)", p.model)
    assert widget.ui.applyButton.enabled is False and "Reading the checkpoint" in widget.ui.modelInfoLabel.text

    engine.answer([_described(checkpoint)])
    assert p.model == str(checkpoint) and combo.items[combo.currentIndex][1] == str(checkpoint)
    assert widget._currentModel().usable and "epoch 3" in widget.ui.modelInfoLabel.text
    assert [label for label, _ in widget.ui.inputVolumesWidget.layout().rows] == ["flair:", "t1:", "t1ce:", "t2:"]

    other = tmp_path / "other.pt"  # another scene, loaded while the module is open, chose another checkpoint
    other.write_bytes(b"x")
    widget.setParameterNode(None)
    module.CLDLSegmentationLogic().getParameterNode().model = str(other)
    widget.initializeParameterNode()
    assert engine.queries[-1][0] == [str(other)] and widget._parameterNode.model == str(other)
    assert combo.items[combo.currentIndex] == ("other.pt (reading...)", str(other))
    widget.cleanup()


def test_load_checkpoint_says_what_happens_and_never_disagrees_with_the_parameter_node(
    slicerApp, monkeypatch, tmp_path
) -> None:
    """Item 2: a loaded checkpoint is listed at once (reading...), then described by the engine (torch not needed)
    or shown as unusable with the engine's reason; Apply is off until it can run; the choice is remembered."""
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    good.write_bytes(b"x")
    bad.write_bytes(b"x")
    engine = EngineInfo()
    module, widget = _segmentationWidget(monkeypatch, [])
    monkeypatch.setattr(module, "startEngineInfo", engine)
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None)
    combo, p = widget.ui.modelComboBox, widget._parameterNode

    standins.FileDialog.answer = ""
    widget.onLoadModel()  # Cancel: nothing changes
    assert engine.queries == [] and p.model == module.defaultModel()

    standins.FileDialog.answer = str(bad)
    widget.onLoadModel()
    assert p.model == str(bad) and combo.items[combo.currentIndex] == ("bad.pt (reading...)", str(bad))
    engine.answer([{"path": str(bad), "error": f"{bad}: not a CLDL checkpoint (not a torch.save archive)"}])
    assert p.model == str(bad) and combo.items[combo.currentIndex] == ("bad.pt (cannot be used)", str(bad))
    assert "not a torch.save archive" in widget.ui.modelInfoLabel.text and widget.ui.applyButton.enabled is False
    assert any("Skipping checkpoint" in args[0] for name, args in widget.ui.logTextEdit.calls)

    standins.FileDialog.answer = str(good)
    widget.onLoadModel()
    assert engine.cancelled == [[str(bad)]], "the earlier question is cancelled: only the newest answer counts"
    assert engine.queries[-1][0] == [str(bad), str(good)] and slicerApp[CHECKPOINTS_SETTING] == [str(bad), str(good)]
    engine.answer([{"path": str(bad), "error": "still bad"}, _described(good)])
    assert p.model == str(good) and combo.items[combo.currentIndex] == ("good.pt (tmp_path)".replace(
        "tmp_path", tmp_path.name), str(good))  # fmt: skip
    assert "PyTorch is not installed yet" in widget.ui.deviceInfoLabel.text
    assert combo.findData(str(bad)) == -1, "an unreadable checkpoint that is not the chosen one is not offered"
    widget.cleanup()


def test_closing_the_scene_cancels_a_single_run_and_the_case_queue(slicerApp, monkeypatch) -> None:
    """Item 4: StartCloseEvent cancels the running Apply run as well as the queue (no import into removed nodes)."""
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", standins.noErrorDisplay)
    scene = slicer.mrmlScene
    for m in ("flair", "t1", "t1ce", "t2"):
        add_volume(scene, slicer_testing.np.ones((4, 4, 4), "float32"), f"A_{m}")
    module, widget = _segmentationWidget(monkeypatch, [])
    monkeypatch.setattr(module, "ensureDependencies", lambda requester: None)
    jobs: list = []
    widget.logic.segment = lambda inputs, **options: jobs.append(FakeJob(inputs, options)) or jobs[-1]
    widget.onApplyButton()
    assert jobs[0].status == "running" and widget.ui.applyButton.text == "Cancel"
    scene.InvokeEvent(scene.StartCloseEvent)  # what Close Scene does first
    assert jobs[0].status == "cancelled" and widget.ui.applyButton.text == "Apply"
    widget.cleanup()


def test_inputs_are_guessed_again_when_volumes_are_loaded_but_never_over_a_user_choice(slicerApp, monkeypatch) -> None:
    """Item 6: volumes loaded after the panel was built fill the empty inputs (the scene's NodeAddedEvent), except
    an input the user set, even to None."""
    module, widget = _segmentationWidget(monkeypatch, [])
    scene, rows = slicer.mrmlScene, widget.ui.inputVolumesWidget.layout().rows
    selectors = {label[:-1]: selector for label, selector in rows}
    assert all(s.currentNode() is None for s in selectors.values())
    ((signal, chooseT1),) = selectors["t1"].connections
    chooseT1(None)  # the user picks "None" for T1 on purpose
    standins.Timers.queue.clear()
    volumes = {m: add_volume(scene, slicer_testing.np.ones((4, 4, 4), "float32"), f"B_{m}") for m in selectors}
    assert len(standins.Timers.queue) == 1, "one guess for a burst of added nodes, after the loading"
    standins.Timers.queue.pop()[1]()
    chosen = {m: s.currentNode() for m, s in selectors.items()}
    assert chosen == {"flair": volumes["flair"], "t1": None, "t1ce": volumes["t1ce"], "t2": volumes["t2"]}
    references = widget._parameterNode.parameterNode
    assert references.GetNodeReferenceID("CLDLInput_flair") == volumes["flair"].GetID()
    assert references.GetNodeReferenceID("CLDLInput_t1") is None
    other = add_volume(scene, slicer_testing.np.ones((4, 4, 4), "float32"), "C_flair")
    standins.Timers.queue.pop()[1]()
    assert selectors["flair"].currentNode() is volumes["flair"] and other is not None, "a filled input is kept"
    widget.cleanup()
    add_volume(scene, slicer_testing.np.ones((4, 4, 4), "float32"), "D_flair")
    assert not standins.Timers.queue, "no observer after cleanup"


def test_status_line_shows_the_torch_state_and_the_last_error(slicerApp, monkeypatch) -> None:
    """Item 9: what is missing, and every failure, reach the status line under Apply, which no collapsed section
    hides (the torch line is in the collapsed Options section; the log is collapsed too)."""
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", standins.noErrorDisplay)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: None)
    engine = EngineInfo()
    module = importlib.import_module("CLDLSegmentationLib.widget")
    monkeypatch.setattr(module, "startEngineInfo", engine)
    widget = module.CLDLSegmentationWidget()
    widget.setup()
    ui = widget.ui
    engine.answer([])
    assert ui.statusLabel.text.startswith("PyTorch is not installed yet") and "GB" in ui.statusLabel.text
    engine.queries[-1][1](None, "PythonSlicer not found")
    assert ui.statusLabel.text == "Cannot query the engine: PythonSlicer not found"

    def declined(requester):
        raise DependencyError("CLDL cannot run without torch>=2.4")

    monkeypatch.setattr(module, "ensureDependencies", declined)
    with pytest.raises(DependencyError):
        widget.onApplyButton()
    assert ui.statusLabel.text == "Failed to start the segmentation. CLDL cannot run without torch>=2.4"
    job = types.SimpleNamespace(status="failed", error=RuntimeError("out of memory"), process=types.SimpleNamespace(
        stderr=""))  # fmt: skip
    widget._onFinished(job)
    assert ui.statusLabel.text == "Segmentation failed: out of memory"
    widget.cleanup()

    training = importlib.import_module("CLDLTrainingLib.widget")
    panel = training.CLDLTrainingWidget()
    panel.setup()
    monkeypatch.setattr(training, "ensureDependencies", declined)
    with pytest.raises(DependencyError):
        panel.onStart()
    assert panel.ui.statusLabel.text == "Failed to start training. CLDL cannot run without torch>=2.4"
    failed = types.SimpleNamespace(status="failed", error=RuntimeError("no GPU"), process=types.SimpleNamespace(
        stderr=""), bestCheckpoint=Path("/nonexistent/best.pt"))  # fmt: skip
    panel._onFinished(failed)
    assert panel.ui.statusLabel.text == "Training failed: no GPU"
    panel.cleanup()


def test_inputs_on_several_grids_turn_on_raw_scans(slicerApp, monkeypatch) -> None:
    """Inputs that are not on one grid tick "Inputs are raw scans", and Apply passes prepare=True to the logic."""
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", standins.noErrorDisplay)
    scene = slicer.mrmlScene
    for name in ("BraTS_flair", "BraTS_t1", "BraTS_t1ce"):
        add_volume(scene, slicer_testing.np.zeros((4, 4, 4), "float32"), name)
    module, widget = _segmentationWidget(monkeypatch, [])
    monkeypatch.setattr(module, "ensureDependencies", lambda requester: None)
    assert widget._parameterNode.prepare is False  # t2 not chosen yet: nothing to compare
    rows = dict(widget.ui.inputVolumesWidget.layout().rows)
    thick = add_volume(
        scene, slicer_testing.np.zeros((2, 4, 4), "float32"), "BraTS_t2", slicer_testing.oblique_matrix()
    )
    rows["t2:"].setCurrentNode(thick)
    widget._onInputChosen("t2", thick)
    assert widget._parameterNode.prepare is True
    captured: dict = {}
    widget.logic.segment = lambda inputs, **options: (
        captured.update(options) or types.SimpleNamespace(status="running", cancel=lambda: None)
    )
    widget.onApplyButton()
    assert captured["prepare"] is True
    widget.cleanup()
