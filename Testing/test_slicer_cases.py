"""Several loaded cases in a row (issue 14): grouping the scene's volumes into cases, the queue's decisions, and
``SegmentationLogic.segmentCases`` through the real engine, on a real MRML scene (slicer-core)."""

from __future__ import annotations

import time
import types
from pathlib import Path

import numpy as np
import pytest
import slicer
from slicer_testing import add_volume, oblique_matrix  # also puts the module folders on sys.path

# isort: split
from CLDLSegmentationLib.cases import CASE_COLUMNS, CaseQueue, LoadedCase, caseRows, findLoadedCases, splitCaseName
from CLDLSegmentationLib.logic import SegmentationLogic
from CLDLSegmentationLib.models import ModelInfo

from cldl.data.phantoms import brats_phantom
from cldl.tasks import BRATS, MMWHS_CT, modality_aliases

MODALITIES = BRATS.modalities


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BraTS_001_t1ce", ("BraTS_001", "t1ce")),
        ("BraTS_001_t1", ("BraTS_001", "t1")),
        ("BraTS-GLI-00001-000-t2f", ("BraTS-GLI-00001-000", "flair")),
        ("case7 FLAIR", ("case7", "flair")),
        ("flair_case1", ("case1", "flair")),
        ("case1_t2-flair", ("case1", "flair")),
        ("case1_t1-native", ("case1", "t1")),
        ("BraTS_001_flair_1", ("BraTS_001_1", "flair")),  # Slicer's name for a second copy: another case
        ("t2", ("", "t2")),
        ("BraTS_001_seg", None),
        ("MPRAGE", None),
    ],
)
def test_split_case_name(name: str, expected) -> None:
    assert splitCaseName(name, modality_aliases(MODALITIES)) == expected


def _case(scene, prefix: str, names=MODALITIES, shape=(4, 5, 6), separator: str = "_") -> list:
    rng = np.random.default_rng(len(prefix))
    return [add_volume(scene, rng.random(shape, np.float32), f"{prefix}{separator}{m}") for m in names]


def test_loaded_volumes_group_into_cases_with_their_problems(scene) -> None:
    first = _case(scene, "BraTS_001")
    second = _case(scene, "BraTS-GLI-00002-000", ("t2f", "t1n", "t1c", "t2w"), separator="-")
    _case(scene, "P3", ("FLAIR", "T1", "T1CE"), separator=" ")
    other_grid = _case(scene, "D")
    other_grid[3].SetIJKToRASMatrix(oblique_matrix())
    _case(scene, "E", ("flair", "t1", "t1ce", "t2", "t1w"))
    uncertainty = add_volume(scene, np.zeros((4, 5, 6), np.float32), "BraTS_001_flair CLDL uncertainty (entropy)")
    uncertainty.SetAttribute("CLDL.Map", "uncertainty")  # the module's own map: never an input
    add_volume(scene, np.zeros((4, 5, 6), np.uint8), "F_flair", labelmap=True)  # a label map: never an input
    add_volume(scene, np.zeros((4, 5, 6), np.float32), "chest CT")  # names no modality: ignored

    cases = findLoadedCases(scene, MODALITIES, "brats-anatomy")
    assert [c.name for c in cases] == ["BraTS-GLI-00002-000", "BraTS_001", "D", "E", "P3"]
    byName = {c.name: c for c in cases}
    assert list(byName["BraTS_001"].volumes.values()) == first
    assert list(byName["BraTS-GLI-00002-000"].volumes.values()) == second
    assert [c.name for c in cases if c.ready] == ["BraTS-GLI-00002-000", "BraTS_001"]
    assert byName["P3"].status() == "missing t2"
    assert "D_t2" in byName["D"].status() and "not on the grid" in byName["D"].status()
    assert byName["E"].status() == "more than one volume for t1 (E_t1, E_t1w)"
    assert caseRows(cases[1:2]) == [
        ("BraTS_001", "BraTS_001_flair, BraTS_001_t1, BraTS_001_t1ce, BraTS_001_t2", "ready")
    ]
    assert len(CASE_COLUMNS) == len(caseRows(cases)[0])


def test_a_case_the_model_already_segmented_is_marked(scene) -> None:
    volumes = _case(scene, "BraTS_001")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "BraTS_001 CLDL segmentation")
    segmentation.SetAttribute("CLDL.Input", volumes[0].GetID())
    segmentation.SetAttribute("CLDL.Model", "brats-anatomy")
    (case,) = findLoadedCases(scene, MODALITIES, "brats-anatomy")
    assert case.segmentation is segmentation and not case.ready and case.status() == "already segmented"
    (case,) = findLoadedCases(scene, MODALITIES, "brats-phantom-demo")  # another model: still to do
    assert case.ready and case.status() == "ready"


def test_volumes_named_only_by_modality_form_one_case_named_after_the_first(scene) -> None:
    volumes = _case(scene, "", separator="")
    (case,) = findLoadedCases(scene, MODALITIES)
    assert case.name == "flair" and case.ready and list(case.volumes.values()) == volumes


def test_with_one_input_every_volume_is_a_case(scene) -> None:
    add_volume(scene, np.ones((4, 5, 6), np.float32), "heart 2")
    add_volume(scene, np.ones((4, 5, 6), np.float32), "heart 1")
    colour = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "heart 3 rgb")
    slicer.util.updateVolumeFromArray(colour, np.ones((4, 5, 6, 3), np.uint8))
    cases = findLoadedCases(scene, MMWHS_CT.modalities)
    assert [(c.name, c.ready) for c in cases] == [("heart 1", True), ("heart 2", True), ("heart 3 rgb", False)]
    assert "not a scalar" in cases[2].problem


# -- the queue, with stand-in engine runs -------------------------------------------------------------------------


class FakeJob:
    """A SegmentationJob as the queue sees it: ends when the test says so, or when cancelled."""

    def __init__(self, case: LoadedCase, onProgress, onFinished) -> None:
        self.case, self.onProgress, self.onFinished = case, onProgress, onFinished
        self.status, self.result, self.error = "running", None, None

    def end(self, status: str, error: str | None = None) -> None:
        self.status, self.error = status, RuntimeError(error) if error else None
        self.result = types.SimpleNamespace(name=self.case.name) if status == "completed" else None
        self.onFinished(self)

    def cancel(self) -> None:
        self.end("cancelled")

    def poll(self) -> bool:
        return self.status == "running"


def _queue(names: list[str], refuse: str = ""):
    """A queue over cases ``names``; the start of case ``refuse`` raises; returns the queue and its records."""
    cases = [LoadedCase(name) for name in names]
    jobs, progress, changes, finished = [], [], [], []

    def start(case, onProgress, onFinished):
        if case.name == refuse:
            raise ValueError(f"input volume {case.name}_t1 holds no image data\nsecond line")
        jobs.append(FakeJob(case, onProgress, onFinished))
        return jobs[-1]

    queue = CaseQueue(
        cases,
        start,
        onProgress=lambda f, t: progress.append((f, t)),
        onCase=lambda run: changes.append((run.case.name, run.status)),
        onFinished=finished.append,
    )
    return queue, cases, jobs, progress, changes, finished


def test_the_queue_runs_cases_in_a_row_and_goes_on_after_failures() -> None:
    queue, cases, jobs, progress, changes, finished = _queue(["a", "b", "c", "d"], refuse="c")
    assert queue.begin() is queue and [j.case.name for j in jobs] == ["a"] and queue.running
    jobs[0].onProgress(0.5, "inference 1/2")
    assert progress[-1] == (pytest.approx(0.5 / 4), "case 1 of 4 (a): inference 1/2")
    jobs[0].end("completed")
    assert [j.case.name for j in jobs] == ["a", "b"] and progress[-1] == (0.25, "case 2 of 4 (b): starting")
    jobs[1].end("failed", "the engine stopped: model 'x' expects 4 images")
    jobs[1].onFinished(jobs[1])  # a second end of the same run is ignored
    assert [j.case.name for j in jobs] == ["a", "b", "d"]  # c could not start: reported, d runs
    assert caseRows(cases, queue)[1:] == [
        ("b", "", "failed: the engine stopped: model 'x' expects 4 images"),
        ("c", "", "failed: input volume c_t1 holds no image data"),
        ("d", "", "running"),
    ]
    jobs[2].end("completed")
    assert queue.status == "completed" and finished == [queue] and not queue.running
    assert changes == [
        ("a", "running"), ("a", "completed"), ("b", "running"), ("b", "failed"),
        ("c", "failed"), ("d", "running"), ("d", "completed"),
    ]  # fmt: skip
    assert [r.name for r in queue.results()] == ["a", "d"] and [r.case.name for r in queue.failed()] == ["b", "c"]
    assert queue.summary() == "2 of 4 case(s) segmented, 2 failed (b, c)"
    assert progress[-1] == (1.0, queue.summary()) and caseRows(cases, queue)[0][2].startswith("done in ")


def test_cancel_stops_the_running_case_and_the_rest() -> None:
    queue, cases, jobs, _, _, finished = _queue(["a", "b", "c"])
    queue.begin()
    jobs[0].end("completed")
    queue.cancel()
    assert [j.status for j in jobs] == ["completed", "cancelled"] and len(jobs) == 2  # c never started
    assert [run.status for run in queue.runs] == ["completed", "cancelled", "cancelled"]
    assert queue.status == "cancelled" and finished == [queue]
    assert queue.summary() == "1 of 3 case(s) segmented, 2 cancelled"
    queue.cancel()  # nothing left to stop
    assert finished == [queue] and not queue.poll()


def test_a_queue_of_cases_that_cannot_start_ends_at_once() -> None:
    queue, _, jobs, _, _, finished = _queue(["c"], refuse="c")
    assert queue.begin().status == "completed" and finished == [queue] and jobs == []
    empty, *_ = _queue([])
    assert empty.begin().status == "completed" and empty.summary() == "0 of 0 case(s) segmented"


# -- through the engine -------------------------------------------------------------------------------------------


def _loadCase(scene, name: str, seed: int, sameTwice: bool = False) -> None:
    phantom = brats_phantom(seed, shape=(32, 32, 32))
    for modality, image in zip(phantom.modalities, phantom.images):
        if sameTwice and modality == "t1":  # the FLAIR loaded again as T1: the engine refuses the case
            image = phantom.images[0]
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{name}_{modality}")
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(image))


def test_segment_cases_through_the_engine(scene, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Each case gets its own segmentation and uncertainty map named after it; a case the engine refuses is
    reported and the next one runs; the first finished case is the one shown; a re-run finds them done."""
    for name, seed in (("caseA", 1), ("caseC", 3)):
        _loadCase(scene, name, seed)
    _loadCase(scene, "caseB", 2, sameTwice=True)
    model = ModelInfo(key=str(tiny_checkpoint), title="tiny", task=BRATS)
    cases = findLoadedCases(scene, MODALITIES, model.key)
    assert [c.name for c in cases if c.ready] == ["caseA", "caseB", "caseC"]
    progress, logs = [], []
    logic = SegmentationLogic(scene, tempRoot=tmp_path)
    queue = logic.segmentCases(
        cases, model=model, device="cpu", wait=True, onProgress=lambda f, t: progress.append(t), onLog=logs.append
    )
    assert [run.status for run in queue.runs] == ["completed", "failed", "completed"], queue.summary()
    assert "identical voxels" in queue.runs[1].error
    assert any(t.startswith("case 2 of 3 (caseB): ") for t in progress) and progress[-1] == queue.summary()
    assert "case caseC: caseC_flair, caseC_t1, caseC_t1ce, caseC_t2" in logs
    first, third = queue.results()
    assert first.segmentationNode.GetName() == "caseA CLDL segmentation"
    assert third.segmentationNode.GetName() == "caseC CLDL segmentation"
    assert third.uncertaintyNode.GetName() == "caseC CLDL uncertainty (entropy)"
    assert third.uncertaintyNode.GetAttribute("CLDL.Input") == cases[2].volumes["flair"].GetID()
    composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundVolumeID() == first.uncertaintyNode.GetID()  # the views stay on the first case
    assert list(tmp_path.glob("CLDL-*")) == []
    again = findLoadedCases(scene, MODALITIES, model.key)
    assert [(c.name, c.status()) for c in again] == [
        ("caseA", "already segmented"),
        ("caseB", "ready"),
        ("caseC", "already segmented"),
    ]

    for name, seed in (("caseD", 4), ("caseE", 5)):
        _loadCase(scene, name, seed)
    nodes = scene.GetNumberOfNodes()
    todo = [c for c in findLoadedCases(scene, MODALITIES, model.key) if c.name in ("caseD", "caseE")]
    queue = logic.segmentCases(todo, model=model, device="cpu", tta=True)
    time.sleep(0.5)
    queue.cancel()
    assert [run.status for run in queue.runs] == ["cancelled", "cancelled"] and queue.status == "cancelled"
    assert queue.runs[0].job.process.returncode is not None and scene.GetNumberOfNodes() == nodes
