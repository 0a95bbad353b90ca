"""The "CLDL demo brain tumour" Sample Data case (issue 9): file finding, engine call and loading on slicer-core,
and the module's startup glue (terminology + registration) with stand-ins for the application."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer_standins as standins
import slicer_testing  # noqa: F401  (puts the module folders on sys.path)
import vtk
from CLDLSegmentationLib import dependencies, sampledata
from CLDLSegmentationLib.process import ProcessError
from CLDLSegmentationLib.sampledata import (
    SAMPLE_MODALITIES,
    SAMPLE_NAME,
    downloadSample,
    findSampleFiles,
    makeSample,
    sampleFolder,
    sampleSourceArguments,
)
from CLDLSegmentationLib.terminology import CLDL_CONTEXT
from slicer_testing import new_scene

from cldl.data.phantoms import brats_phantom, write_case

MANIFEST = json.loads(Path(__file__).with_name("slicer_api_manifest.json").read_text())


def _writeCase(folder: Path, seed: int = 7) -> dict[str, Path]:
    """What ``cldl sample`` writes (BraTS layout), from a small phantom."""
    return write_case(brats_phantom(seed, shape=(24, 24, 24)), folder)


def _engine(calls: list, returncode: int = 0, stderr: str = ""):
    """A ``subprocess.run`` stand-in that writes the case where the command says, like the engine."""

    def run(command, **kwargs):
        calls.append(command)
        if returncode == 0:
            _writeCase(Path(command[command.index("--out") + 1]))
        return subprocess.CompletedProcess(command, returncode, "", stderr)

    return run


def test_find_sample_files_needs_every_modality_and_the_labels(tmp_path: Path) -> None:
    assert findSampleFiles(tmp_path / "absent") is None
    files = _writeCase(tmp_path)
    assert findSampleFiles(tmp_path) == files
    files["t1ce"].unlink()
    assert findSampleFiles(tmp_path) is None


def test_make_sample_runs_the_engine_once(tmp_path: Path) -> None:
    calls: list = []
    folder = sampleFolder(tmp_path)
    files = makeSample(folder, run=_engine(calls))
    assert set(files) == {*SAMPLE_MODALITIES, "seg"} and all(p.is_file() for p in files.values())
    assert calls[0][1:4] == ["-m", "cldl", "sample"] and calls[0][calls[0].index("--out") + 1] == str(folder)
    assert makeSample(folder, run=_engine(calls)) == files
    assert len(calls) == 1, "a complete case is not made again"


def test_make_sample_reports_the_engine_error(tmp_path: Path) -> None:
    message = "cldl: error: cldl sample builds the case from the MNI152 atlas of the nilearn package"
    with pytest.raises(ProcessError, match="nilearn"):
        makeSample(tmp_path, run=_engine([], returncode=1, stderr=f"warning\n{message}\n"))
    with pytest.raises(ProcessError, match="no complete case"):
        makeSample(tmp_path, run=lambda command, **kw: subprocess.CompletedProcess(command, 0, "", ""))


def test_download_sample_loads_four_volumes_and_the_reference(tmp_path: Path) -> None:
    scene = new_scene()
    nodes = downloadSample(None, tmp_path, scene, run=_engine([]))
    volumes, segmentation = nodes[:4], nodes[4]
    assert [v.GetName() for v in volumes] == ["FLAIR", "T1", "T1ce", "T2"]
    assert all(v.IsA("vtkMRMLScalarVolumeNode") and not v.IsA("vtkMRMLLabelMapVolumeNode") for v in volumes)
    assert segmentation.IsA("vtkMRMLSegmentationNode") and SAMPLE_NAME in segmentation.GetName()
    labels = brats_phantom(7, shape=(24, 24, 24)).labels
    assert segmentation.GetSegmentation().GetNumberOfSegments() == len(set(np.unique(labels)) - {0})
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0, "the temporary label map is removed"
    assert np.array_equal(slicer.util.arrayFromVolume(volumes[0]).shape, labels.shape)


def test_sample_source_arguments_fit_register_custom_sample_data_source_at_every_tag() -> None:
    arguments = sampleSourceArguments("icon.png", print)
    facts = MANIFEST["python"]["SampleData"]["SampleDataLogic.registerCustomSampleDataSource"]
    for tag in MANIFEST["slicer_tags"]:
        assert set(arguments) <= set(facts["arguments"][tag]), tag
    assert len(arguments["uris"]) == len(arguments["fileNames"]) == len(arguments["nodeNames"])


@pytest.fixture
def slicerApp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """slicer.app (connect, cachePath), slicer.modules.terminologies and SampleData stand-ins."""
    monkeypatch.setitem(sys.modules, "qt", standins.fakeQt({}))
    monkeypatch.setitem(sys.modules, "ctk", standins.fakeCtk())
    for name, module in standins.slicerPackages().items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("CLDLSegmentation", "CLDLSegmentationLib.widget"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    app = standins.FakeApplication(str(tmp_path / "cache"))
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", new_scene(), raising=False)
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(), raising=False)
    slicer.modules.terminologies = types.SimpleNamespace(logic=lambda: terminologies)
    sampleData = standins.fakeSampleData(MANIFEST)
    monkeypatch.setitem(sys.modules, "SampleData", sampleData)
    return app, terminologies, sampleData


def test_startup_loads_the_terminology_and_registers_the_sample(slicerApp, monkeypatch) -> None:
    app, terminologies, sampleData = slicerApp
    module = importlib.import_module("CLDLSegmentation")
    module.CLDLSegmentation(types.SimpleNamespace())
    assert [signal for signal, _ in app.connections] == ["startupCompleted()"]
    assert not sampleData.registered, "nothing before startup completes"
    app.connections[0][1]()
    names = vtk.vtkStringArray()
    terminologies.GetLoadedTerminologyNames(names)
    assert CLDL_CONTEXT in [names.GetValue(i) for i in range(names.GetNumberOfValues())]
    (arguments,) = sampleData.registered
    assert arguments["sampleName"] == SAMPLE_NAME and Path(arguments["thumbnailFileName"]).is_file()
    loaded: list = []
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda *a, **k: None)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", standins.noErrorDisplay)
    monkeypatch.setattr(dependencies, "ensureSampleDependencies", lambda requester: loaded.append(requester))
    monkeypatch.setattr(sampledata, "downloadSample", lambda *args: loaded.append(args) or [1])
    assert arguments["customDownloader"]("source") == [1]
    assert loaded == ["CLDL", ("source", app.cachePath, slicer.mrmlScene)], "dependencies first, then the case"


def test_download_sample_has_the_downloader_signature() -> None:
    """SampleData calls ``customDownloader(source)``: one positional argument besides what the module binds."""
    assert list(inspect.signature(sampledata.downloadSample).parameters)[0] == "source"


def test_sample_requirements_are_the_engine_anatomy_extra() -> None:
    import tomllib
    from CLDLSegmentationLib.dependencies import SAMPLE_REQUIREMENTS

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert list(SAMPLE_REQUIREMENTS) == pyproject["project"]["optional-dependencies"]["anatomy"]
