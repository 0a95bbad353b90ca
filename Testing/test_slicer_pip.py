"""pip never replaces Slicer's own packages (issue 21 item 8): the missing requirements are installed with numpy,
SimpleITK and VTK pinned by a constraints file (``pip_ensure(constraints=...)`` on 5.12, ``pip_install([...,
"-c", file])`` on 5.10), and a change to any of them after the install is an error that says so."""

from __future__ import annotations

import importlib.metadata
import json
import sys
import types
from pathlib import Path

import pytest
import slicer
import slicer_testing  # noqa: F401  (puts the module folders on sys.path)
from CLDLSegmentationLib import dependencies
from CLDLSegmentationLib.dependencies import (
    DependencyError,
    changedVersions,
    ensureRequirements,
    protectedVersions,
    writeConstraints,
)

MANIFEST = json.loads(Path(__file__).with_name("slicer_api_manifest.json").read_text())
MISSING = "cldl-test-package-that-does-not-exist>=1.0"


def test_protected_versions_are_the_installed_ones(tmp_path: Path) -> None:
    versions = protectedVersions()
    assert versions["numpy"] == importlib.metadata.version("numpy")
    assert set(versions) <= {"numpy", "SimpleITK", "vtk"}
    path = writeConstraints({"numpy": "2.1.0", "SimpleITK": "2.4.0"}, tmp_path)
    assert path.read_text() == "SimpleITK==2.4.0\nnumpy==2.1.0\n"
    assert changedVersions({"numpy": "2.1.0", "vtk": "9.4"}, {"numpy": "2.2.0"}) == [
        "numpy 2.1.0 -> 2.2.0",
        "vtk 9.4 -> removed",
    ]
    assert changedVersions({"numpy": "2.1.0"}, {"numpy": "2.1.0"}) == []


@pytest.fixture
def pipCalls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list:
    monkeypatch.setattr(slicer.util, "tempDirectory", lambda key: str(tmp_path / key))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: True, raising=False)
    return []


def _pipEnsure(calls: list):
    """``slicer.packaging.pip_ensure`` of 5.12, taking only the keywords it has (per the manifest)."""
    arguments = MANIFEST["python"]["slicer.packaging"]["pip_ensure"]["arguments"]["v5.12.0"]

    def pip_ensure(requirements, **kwargs):
        assert set(kwargs) <= set(arguments), set(kwargs) - set(arguments)
        calls.append(("pip_ensure", list(requirements), kwargs, Path(kwargs["constraints"]).read_text()))

    return pip_ensure


def test_slicer_5_12_installs_with_pip_ensure_and_constraints(pipCalls, monkeypatch) -> None:
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = _pipEnsure(pipCalls)
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    with pytest.raises(DependencyError, match="failed"):  # the stand-in installs nothing
        ensureRequirements([MISSING, "numpy"], requester="CLDL")
    ((name, requirements, kwargs, constraints),) = pipCalls
    assert requirements == [MISSING] and kwargs["requester"] == "CLDL"
    assert f"numpy=={importlib.metadata.version('numpy')}\n" in constraints


def test_slicer_5_10_installs_with_pip_install_and_constraints(pipCalls, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # 5.10 has no slicer.packaging
    arguments = MANIFEST["python"]["slicer.util"]["pip_install"]["arguments"]["v5.10.0"]
    assert arguments == ["requirements"], "5.10's pip_install takes one argument: a string or a list of pip args"
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements: pipCalls.append(requirements))
    with pytest.raises(DependencyError, match="failed"):
        ensureRequirements([MISSING])
    ((args),) = pipCalls
    assert args[0] == MISSING and args[1] == "-c" and "numpy==" in Path(args[2]).read_text()


def test_an_install_that_changes_slicer_packages_is_reported(pipCalls, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    versions = iter([{"numpy": "2.1.0", "SimpleITK": "2.4.0"}, {"numpy": "2.3.0", "SimpleITK": "2.4.0"}])
    monkeypatch.setattr(dependencies, "protectedVersions", lambda: next(versions))
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements: None)
    with pytest.raises(DependencyError, match=r"changed Slicer's own packages \(numpy 2.1.0 -> 2.3.0\)"):
        ensureRequirements([MISSING])


def test_the_install_question_says_what_is_downloaded_and_how_big() -> None:
    """Item 9: one question before a multi-gigabyte install names every package and its rough size."""
    text = dependencies.installQuestion(["torch>=2.4", "nibabel>=5.0"], "CLDL")
    assert "PyTorch (torch>=2.4) through the PyTorch extension" in text
    assert "roughly 2.5-3.5 GB" in text and "roughly 0.2 GB" in text and "- nibabel>=5.0: a few MB" in text
    assert text.endswith("Continue?")


def _pyTorchUtils(calls: list) -> types.ModuleType:
    """The PyTorch extension's module, taking only the keywords ``installTorch`` has (per the manifest)."""
    arguments = MANIFEST["pytorchutils"]["classes"]["PyTorchUtilsLogic"]["installTorch"]["arguments"]

    class PyTorchUtilsLogic:
        def installTorch(self, **kwargs):
            assert set(kwargs) <= set(arguments)
            calls.append(("installTorch", kwargs))
            return object()

    return types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic)


def test_one_question_before_installing_then_no_other_prompt(pipCalls, monkeypatch) -> None:
    monkeypatch.setattr(dependencies, "missingDependencies", lambda: ["torch>=2.4", MISSING])
    monkeypatch.setattr(dependencies, "installedTorchVersion", lambda: None)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", _pyTorchUtils(pipCalls))
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = _pipEnsure(pipCalls)
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(dependencies, "loadRequirements", lambda path: [MISSING])
    questions: list = []
    with pytest.raises(dependencies.DependencyError, match="cannot run without"):
        dependencies.ensureDependencies("CLDL", confirm=lambda text: questions.append(text) and False)
    assert len(questions) == 1 and "roughly" in questions[0] and pipCalls == [], "declined: nothing installed"
    with pytest.raises(dependencies.DependencyError, match="failed"):  # the stand-ins install nothing
        dependencies.ensureDependencies("CLDL", confirm=lambda text: True)
    (torch, kwargs), pip = pipCalls[0], pipCalls[1]
    assert torch == "installTorch" and kwargs["askConfirmation"] is False, "asked once, by CLDL"
    assert pip[0] == "pip_ensure" and pip[2]["prompt_install"] is False and pip[1] == [MISSING]


def test_deepbet_is_installed_without_its_dependencies(pipCalls, monkeypatch) -> None:
    """Raw-scan preparation's brain-extraction models come with the first install, through pip --no-deps (its
    declared GUI toolkit and pandas stay out of Slicer)."""
    lines = dependencies.loadRequirements(dependencies.noDepsRequirementsPath())
    assert lines == ["deepbet==1.0.2"]
    constraints = Path(__file__).parents[1] / "constraints.txt"
    assert "deepbet==1.0.2" in constraints.read_text()  # the engine's pin and the extension's agree
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements: pipCalls.append(requirements))
    with pytest.raises(DependencyError, match="failed"):  # the stand-in installs nothing
        dependencies.ensureWithoutDependencies([MISSING])
    assert pipCalls == [["--no-deps", MISSING]]
    pipCalls.clear()
    monkeypatch.setattr(dependencies, "installedTorchVersion", lambda: "2.13.0")
    monkeypatch.setattr(dependencies, "loadRequirements", lambda path: [MISSING] if "nodeps" in str(path) else [])
    assert dependencies.missingDependencies() == [MISSING]  # asked about in the one question
    monkeypatch.setattr(dependencies, "ensureTorch", lambda askConfirmation: None)
    with pytest.raises(DependencyError, match="failed"):
        dependencies.ensureDependencies("CLDL", confirm=lambda text: True)
    assert pipCalls == [["--no-deps", MISSING]]  # after the one question, with no other prompt
