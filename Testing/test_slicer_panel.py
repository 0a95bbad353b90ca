"""The panels' decisions as plain functions (issue 9): stored settings, model list, engine facts in a subprocess,
run endings, input guessing, overlay updates and training-folder rules, on a real MRML scene (slicer-core)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer_testing  # noqa: F401  (puts the module folders on sys.path)
from CLDLSegmentationLib.logic import SegmentationJob, SegmentationOptions
from CLDLSegmentationLib.models import (
    ModelInfo,
    checkpointModels,
    checkpointProblems,
    defaultModel,
    describeTorch,
    engineInfo,
    modelChoices,
    modelList,
    queriedCheckpoints,
    registryModels,
    rememberCheckpoint,
    storedPaths,
)
from CLDLSegmentationLib.overlay import OverlaySettings
from CLDLSegmentationLib.panel import guessInput, updateOverlay
from CLDLSegmentationLib.process import JsonLinesProcess
from CLDLTrainingLib import isSet, resolveTask, runExists
from slicer_testing import add_volume

from cldl import defaults
from cldl.tasks import get_task


@pytest.mark.parametrize(
    ("stored", "expected"),
    [("/a/x.pt", ["/a/x.pt"]), (["/a/x.pt", "/b/y.pt"], ["/a/x.pt", "/b/y.pt"]), (None, []), ("", []), ((), [])],
)
def test_stored_paths_accept_what_slicer_settings_return(stored, expected) -> None:
    """Slicer's INI settings give a one-item list back as a string (and nothing as None or "")."""
    assert storedPaths(stored) == expected
    assert rememberCheckpoint(stored, "/c/z.pt") == [*expected, str(Path("/c/z.pt").resolve())]
    assert rememberCheckpoint(expected, expected[0] if expected else "/c/z.pt")[-1] == str(
        Path(expected[0] if expected else "/c/z.pt").resolve()
    )


def test_engine_info_runs_in_a_subprocess_and_describes_checkpoints(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """torch facts and checkpoint descriptions come from `cldl info --json`; unreadable files are reported."""
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    info = engineInfo([tiny_checkpoint, bad], python=sys.executable)
    assert info["torch"]["installed"] and info["torch"]["supported"] is True
    assert info["torch_requirement"] == defaults.TORCH_REQUIREMENT
    models, errors = checkpointModels(info)
    assert [m.key for m in models] == [str(tiny_checkpoint.resolve())]
    assert models[0].modalities == get_task("brats").modalities and "epoch" in models[0].description
    assert len(errors) == 1 and str(bad) in errors[0]
    registry = registryModels()
    listed = modelList(registry, models + models)
    assert [m.key for m in listed] == [m.key for m in registry] + [str(tiny_checkpoint.resolve())]
    assert defaultModel() in [m.key for m in registry]
    assert "too old" in describeTorch({"installed": True, "supported": False, "version": "2.0.1"})
    assert "not installed" in describeTorch({"installed": False})


def test_a_failure_while_polling_ends_the_run_and_removes_its_folder(scene, tmp_path: Path) -> None:
    """An exception in an event handler (here the progress callback) must not leave the job running for ever."""
    engine = tmp_path / "engine.py"
    engine.write_text(
        "import json, time\n"
        "print(json.dumps({'event': 'progress', 'stage': 'inference', 'done': 1, 'total': 4}), flush=True)\n"
        "time.sleep(60)\n"
    )
    workDir = tmp_path / "work"
    workDir.mkdir()
    finished = []

    def broken(fraction: float, text: str) -> None:
        raise RuntimeError("the progress bar is gone")

    process = JsonLinesProcess([sys.executable, str(engine)]).start()
    model = ModelInfo("m", "m", get_task("brats"))
    job = SegmentationJob(
        None, process, [], model, SegmentationOptions(), workDir, {}, onProgress=broken, onFinished=finished.append
    )
    with pytest.raises(RuntimeError, match="progress bar is gone"):
        job.wait(timeout=30)  # ends with the error instead of timing out
    assert job.status == "failed" and "progress bar is gone" in str(job.error)
    assert finished == [job] and not workDir.exists() and process.returncode is not None


def test_guess_input_matches_whole_words(scene) -> None:
    volumes = [add_volume(scene, np.zeros((2, 2, 2), np.float32), n) for n in ("case_t1ce", "case_t1", "flair")]
    assert guessInput("t1", volumes) is volumes[1]
    assert guessInput("t1ce", volumes) is volumes[0]
    assert guessInput("FLAIR", volumes) is volumes[2]
    assert guessInput("t2", volumes) is None


def test_overlay_changes_touch_only_what_changed(scene) -> None:
    """A new map is shown over its input; opacity/threshold/legend changes leave the user's layers alone."""
    user = add_volume(scene, np.zeros((4, 5, 6), np.float32), "user background")
    label = add_volume(scene, np.zeros((4, 5, 6), np.uint8), "user labels", labelmap=True)
    source = add_volume(scene, np.zeros((4, 5, 6), np.float32), "input")
    uncertainty = add_volume(scene, np.random.default_rng(0).random((4, 5, 6)).astype(np.float32), "u")
    uncertainty.SetAttribute("CLDL.Map", "uncertainty")
    uncertainty.SetAttribute("CLDL.Input", source.GetID())
    composites = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(3)]
    for composite in composites:
        composite.SetBackgroundVolumeID(user.GetID())
        composite.SetLabelVolumeID(label.GetID())
    state = updateOverlay(None, uncertainty, OverlaySettings(0.6, 0.05, True), scene)
    for composite in composites:
        assert composite.GetForegroundVolumeID() == uncertainty.GetID()
        assert (composite.GetBackgroundVolumeID(), composite.GetLabelVolumeID()) == (user.GetID(), label.GetID())
    composites[0].SetForegroundOpacity(0.3)  # the user drags the slice view's own opacity slider
    state = updateOverlay(state, uncertainty, OverlaySettings(0.6, 0.2, True), scene)
    assert uncertainty.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.2)
    assert composites[0].GetForegroundOpacity() == pytest.approx(0.3)  # not reset by a threshold change
    state = updateOverlay(state, uncertainty, OverlaySettings(0.8, 0.2, True), scene)
    assert all(c.GetForegroundOpacity() == pytest.approx(0.8) for c in composites)
    state = updateOverlay(state, uncertainty, OverlaySettings(0.8, 0.2, False), scene)
    assert not slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(uncertainty).GetVisibility()
    updateOverlay(state, None, OverlaySettings(0.8, 0.2, False), scene)
    assert all(c.GetForegroundVolumeID() is None and c.GetBackgroundVolumeID() == user.GetID() for c in composites)


def test_training_folder_rules(tmp_path: Path) -> None:
    assert not isSet("") and not isSet(".") and not isSet(None) and isSet(tmp_path)
    assert not runExists("") and not runExists(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"")
    assert runExists(tmp_path) and runExists(str(tmp_path))
    assert resolveTask("brats", tmp_path) == "brats"
    assert resolveTask(defaults.CUSTOM_TASK, tmp_path) == str(tmp_path / "dataset.json")


def test_defaults_have_one_home() -> None:
    """The engine's defaults (cldl.defaults) are what the engine, its CLI and the Slicer modules use."""
    from cldl.commands.main import build_parser
    from cldl.inference.predictor import DEFAULT_OVERLAP
    from cldl.method.curriculum import CURRICULUM_MODES
    from cldl.tasks import BUILTIN_TASKS
    from cldl.training.config import TrainConfig

    config = TrainConfig(data="unused")
    assert (config.epochs, config.iters_per_epoch, config.lr) == (
        defaults.EPOCHS,
        defaults.ITERS_PER_EPOCH,
        defaults.LEARNING_RATE,
    )
    assert list(config.patch_size) == [defaults.PATCH_SIZE] * 3 and config.curriculum == defaults.CURRICULUM
    assert config.val_overlap == DEFAULT_OVERLAP == defaults.OVERLAP and CURRICULUM_MODES == defaults.CURRICULUM_MODES
    assert set(defaults.TASKS) == set(BUILTIN_TASKS)
    with pytest.raises(ValueError, match="multiples of 16"):
        TrainConfig.from_dict({**dataclasses.asdict(config), "patch_size": [40, 40, 40]})
    with pytest.raises(ValueError, match="multiples of 16"):
        defaults.check_patch_size(40)
    assert defaults.check_patch_size(64) == [64] * 3
    segment = build_parser().parse_args(["segment", "--model", "m", "-i", "x", "-o", "y"])
    assert segment.overlap == defaults.OVERLAP
    assert defaults.torch_supported("2.5.1+cu124") and not defaults.torch_supported("2.0.1")
    assert json.dumps(defaults.TORCH_REQUIREMENT) == '">=2.1"'


def test_model_choices_always_hold_the_chosen_model(tmp_path: Path) -> None:
    """Item 2/5: the combo box lists the chosen model even before (or without) a description, saying why."""
    registry = registryModels()
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"x")
    keys = [m.key for m in modelChoices(registry, [], defaultModel())]
    assert keys == [m.key for m in registry], "a registry model adds nothing"
    reading = modelChoices(registry, [], str(checkpoint))[-1]
    assert (reading.key, reading.title, reading.usable) == (str(checkpoint), "best.pt (reading...)", False)
    assert reading.modalities == ()
    broken = modelChoices(registry, [], str(checkpoint), {str(checkpoint): "damaged"})[-1]
    assert (broken.title, broken.description) == ("best.pt (cannot be used)", "damaged")
    missing = modelChoices(registry, [], str(tmp_path / "gone.pt"))[-1]
    assert missing.title == "gone.pt (missing)" and "no such checkpoint file" in missing.description
    assert queriedCheckpoints([str(checkpoint), "/nope.pt"], str(checkpoint), registry) == [str(checkpoint)]
    assert queriedCheckpoints(None, defaultModel(), registry) == []
    assert checkpointProblems({"checkpoints": [{"path": "/a.pt", "error": "bad"}, {"path": "/b.pt"}]}) == {
        "/a.pt": "bad"
    }


def test_a_cancelled_engine_question_reports_nothing() -> None:
    """The panel cancels a ``cldl info`` that a newer one replaces: its callback must never run."""
    import time

    from CLDLSegmentationLib.models import startEngineInfo

    timers, answers = [], []
    process = startEngineInfo([], lambda info, error: answers.append((info, error)), lambda ms, f: timers.append(f),
                              python=sys.executable)  # fmt: skip
    process.cancel()
    deadline = time.monotonic() + 30
    while timers and time.monotonic() < deadline:
        timers.pop(0)()
        time.sleep(0.01)
    assert not timers and answers == [] and process.cancelled
