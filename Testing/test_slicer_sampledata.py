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
from CLDLSegmentationLib.sampledata import (
    SAMPLE_NAME,
    downloadSample,
    findSampleFiles,
    sampleFolder,
    sampleSourceArguments,
)
from CLDLSegmentationLib.terminology import CLDL_CONTEXT
from slicer_testing import new_scene

from cldl.data.phantoms import brats_phantom, write_case

MANIFEST = json.loads(Path(__file__).with_name("slicer_api_manifest.json").read_text())


def _writeCase(folder: Path, seed: int = 7) -> dict[str, Path]:
    """A case in the shipped layout, from a small phantom."""
    return write_case(brats_phantom(seed, shape=(24, 24, 24)), folder)


def test_find_sample_files_needs_every_modality_and_the_labels(tmp_path: Path) -> None:
    assert findSampleFiles(tmp_path / "absent") is None
    files = _writeCase(tmp_path)
    assert findSampleFiles(tmp_path) == files
    files["t1ce"].unlink()
    assert findSampleFiles(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="reinstall the CLDL extension"):
        downloadSample(None, new_scene(), tmp_path)


def test_download_sample_loads_four_volumes_and_the_reference(tmp_path: Path) -> None:
    scene = new_scene()
    _writeCase(tmp_path)
    nodes = downloadSample(None, scene, tmp_path)
    volumes, segmentation = nodes[:4], nodes[4]
    assert [v.GetName() for v in volumes] == ["FLAIR", "T1", "T1ce", "T2"]
    assert all(v.IsA("vtkMRMLScalarVolumeNode") and not v.IsA("vtkMRMLLabelMapVolumeNode") for v in volumes)
    assert segmentation.IsA("vtkMRMLSegmentationNode") and SAMPLE_NAME in segmentation.GetName()
    labels = brats_phantom(7, shape=(24, 24, 24)).labels
    assert segmentation.GetSegmentation().GetNumberOfSegments() == len(set(np.unique(labels)) - {0})
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0, "the temporary label map is removed"
    assert np.array_equal(slicer.util.arrayFromVolume(volumes[0]).shape, labels.shape)


def test_the_shipped_case_loads_without_any_engine_run_or_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 3: the first click only reads the few-MB case shipped in Resources/SampleData: no subprocess (engine,
    pip), no package installed, torch never imported for it."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the Sample Data case must not start a process or install anything")

    monkeypatch.setattr(subprocess, "run", forbidden)
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    for name in ("ensureDependencies", "ensureTorch", "ensureRequirements"):
        monkeypatch.setattr(dependencies, name, forbidden)
    files = findSampleFiles(sampleFolder())
    assert files is not None, "Resources/SampleData holds the case"
    sizes = {name: path.stat().st_size for name, path in files.items()}
    assert sum(sizes.values()) < 5e6 and max(sizes.values()) < 1.5e6, sizes
    scene = new_scene()
    volumes = downloadSample(None, scene)[:4]
    arrays = [slicer.util.arrayFromVolume(v) for v in volumes]
    assert all(a.dtype == np.int16 and a.shape == arrays[0].shape for a in arrays)
    spacing = volumes[0].GetSpacing()
    assert spacing == pytest.approx((1.2, 1.2, 1.2)) and all(0 < n < 200 for n in arrays[0].shape), "cropped"
    cmake = (Path(sampledata.__file__).parents[1] / "CMakeLists.txt").read_text()
    for path in files.values():
        assert path.relative_to(sampleFolder().parent.parent).as_posix() in cmake, f"{path.name} is not installed"


def test_sample_source_arguments_fit_register_custom_sample_data_source_at_every_tag() -> None:
    arguments = sampleSourceArguments("icon.png", print)
    facts = MANIFEST["python"]["SampleData"]["SampleDataLogic.registerCustomSampleDataSource"]
    for tag in MANIFEST["slicer_tags"]:
        assert set(arguments) <= set(facts["arguments"][tag]), tag
    assert len(arguments["uris"]) == len(arguments["fileNames"]) == len(arguments["nodeNames"])


@pytest.fixture
def slicerApp(monkeypatch: pytest.MonkeyPatch):
    """slicer.app (connect), slicer.modules.terminologies and SampleData stand-ins."""
    monkeypatch.setitem(sys.modules, "qt", standins.fakeQt({}))
    monkeypatch.setitem(sys.modules, "ctk", standins.fakeCtk())
    for name, module in standins.slicerPackages().items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("CLDLSegmentation", "CLDLSegmentationLib.widget"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    app = standins.FakeApplication()
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
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", standins.noErrorDisplay)
    monkeypatch.setattr(sampledata, "downloadSample", lambda *args: loaded.append(args) or [1])
    assert arguments["customDownloader"]("source") == [1]
    assert loaded == [("source", slicer.mrmlScene)], "the shipped case, loaded into the scene"


def test_download_sample_has_the_downloader_signature() -> None:
    """SampleData calls ``customDownloader(source)``: one positional argument besides what the module binds."""
    assert list(inspect.signature(sampledata.downloadSample).parameters)[0] == "source"
