"""The modules stay thin and the Slicer side stays light (issue 21): module files only name the classes Slicer looks
up; the Lib's Qt-free modules import without Qt, and no module of the Slicer side loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("CLDLSegmentation", "CLDLTraining")
#: Lib modules that need the Slicer application (Qt); every other Lib module must import without it.
QT_MODULES = {"widget"}


@pytest.mark.parametrize("module", MODULES)
def test_module_file_is_thin(module: str) -> None:
    path = ROOT / module / f"{module}.py"
    assert len(path.read_text().splitlines()) <= 150
    classes = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef)}
    assert classes == {module, f"{module}Test"}, "the widget and logic live in the Lib (widget.py)"


def _libModules() -> list[str]:
    names = []
    for module in MODULES:
        for path in sorted((ROOT / module / f"{module}Lib").glob("*.py")):
            if path.stem not in QT_MODULES:
                names.append(f"{module}Lib" if path.stem == "__init__" else f"{module}Lib.{path.stem}")
    return names


BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
        return None

sys.meta_path.insert(0, Blocker())
for folder in {folders!r}:
    sys.path.insert(0, folder)
"""


def _runBlocked(blocked: set[str], code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python where importing any of ``blocked`` fails, as it would in a bare Slicer."""
    folders = [str(ROOT), *(str(ROOT / m) for m in MODULES)]
    script = BLOCKER.format(blocked=sorted(blocked), folders=folders) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_lib_modules_import_without_qt_and_without_torch() -> None:
    """Every Qt-free Lib module imports with qt, ctk and torch unimportable, and none of them loads torch."""
    names = _libModules()
    assert "CLDLSegmentationLib.sampledata" in names and "CLDLTrainingLib.logic" in names
    done = _runBlocked(
        {"qt", "ctk", "torch"},
        f"""
        import importlib, sys
        for name in {names!r}:
            importlib.import_module(name)
        assert "torch" not in sys.modules
        print("imported", len({names!r}))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert f"imported {len(names)}" in done.stdout


def test_the_blocker_can_fail() -> None:
    done = _runBlocked({"torch"}, "import cldl.data.preprocess")
    assert done.returncode != 0 and "blocked by the test" in done.stderr


def test_training_overrides_of_the_panel() -> None:
    from types import SimpleNamespace

    import slicer_testing  # noqa: F401  (puts the module folders on sys.path)
    from CLDLSegmentationLib import DeviceChoice
    from CLDLTrainingLib import trainingOverrides

    p = SimpleNamespace(
        epochs=5, itersPerEpoch=7, patchSize=64, learningRate=0.01, curriculum="pacing", gpus=1, device=DeviceChoice.CPU
    )
    assert trainingOverrides(p) == {
        "epochs": 5, "iters_per_epoch": 7, "patch_size": 64, "lr": 0.01, "curriculum": "pacing", "device": "cpu"
    }  # fmt: skip
    assert trainingOverrides(p, resume=True) == {"epochs": 5, "device": "cpu"}
    p.gpus = 2
    assert trainingOverrides(p)["device"] is None and trainingOverrides(p, resume=True)["device"] is None


def _bratsFolder(folder: Path) -> Path:
    from cldl.data.phantoms import brats_phantom, write_case

    for seed in (1, 2):
        write_case(brats_phantom(seed, shape=(16, 16, 16)), folder)
    return folder


def test_dataset_check_runs_in_the_engine_not_in_slicer(tmp_path: Path) -> None:
    """Choosing a dataset folder asks the engine (a subprocess): the panel's Python never imports torch for it."""
    data = _bratsFolder(tmp_path / "data")
    done = _runBlocked(
        {"qt", "ctk", "torch"},
        f"""
        import sys
        from CLDLTrainingLib.logic import TrainingLogic, describeDatasetReport

        reports = []
        TrainingLogic(charts=False).checkDataset({str(data)!r}, "brats", lambda r, e: reports.append((r, e)))
        (report, error), = reports
        assert error is None, error
        assert "torch" not in sys.modules
        print(describeDatasetReport(report))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2 cases found (2 with a label map); layout: brats, task brats"


def test_module_files_and_widgets_import_without_torch() -> None:
    """The Qt side too (module files, ``widget.py``; Qt, CTK and Slicer's Python packages from the stand-ins):
    importing every module of the Slicer side never imports torch."""
    done = _runBlocked(
        {"torch"},
        f"""
        import importlib, sys
        sys.path.insert(0, {str(ROOT / "Testing")!r})
        import slicer_standins as standins
        sys.modules["qt"], sys.modules["ctk"] = standins.fakeQt({{}}), standins.fakeCtk()
        sys.modules.update(standins.slicerPackages())
        for name in ("CLDLSegmentation", "CLDLTraining", "CLDLSegmentationLib.widget", "CLDLTrainingLib.widget"):
            importlib.import_module(name)
        assert "torch" not in sys.modules
        print("imported")
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"
