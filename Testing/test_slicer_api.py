"""API conformance (issue 9): every Slicer, CTK and MRML name the module code and .ui files use exists.

``slicer.util`` and ``slicer.vtk*``/``slicer.q*`` names are checked against the real ``slicer-core`` wheel; what the
wheel lacks (ScriptedLoadableModule, parameterNodeWrapper, i18n, packaging, qMRML*/ctk* widgets) against
``slicer_api_manifest.json``, facts read from Slicer's and CTK's sources at v5.10.0 and v5.12.0 (names only).
"""

from __future__ import annotations

import ast
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import slicer
import slicer_testing  # noqa: F401  (puts the module folders on sys.path)

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((Path(__file__).with_name("slicer_api_manifest.json")).read_text())
TAGS = MANIFEST["slicer_tags"]
SOURCES = sorted(p for m in ("CLDLSegmentation", "CLDLTraining") for p in (ROOT / m).rglob("*.py"))
UI_FILES = sorted(ROOT.glob("CLDL*/Resources/UI/*.ui"))
#: Names only the newer Slicer has, each used behind a fallback (dependencies.ensurePackages catches ImportError).
NEWER_ONLY = {("slicer.packaging", "pip_ensure")}
#: Qt classes (not in the wheel or manifest) and their properties set in the .ui files.
QT_PROPERTIES = {
    "geometry",
    "text",
    "toolTip",
    "wordWrap",
    "minimum",
    "maximum",
    "singleStep",
    "value",
    "decimals",
    "enabled",
    "readOnly",
    "orientation",
    "textVisible",
    "maximumBlockCount",
    "checked",
    "flat",
    "collapsed",
    "leftMargin",
    "rightMargin",
    "topMargin",
    "bottomMargin",
    "alignment",
    "sizePolicy",
    "minimumSize",
    "maximumSize",
    "placeholderText",
    "lineWrapMode",
    "format",
    "font",
}


def _chain(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _trees():
    return [(path, ast.parse(path.read_text())) for path in SOURCES]


def _ui_widgets() -> dict[str, str]:
    """Widget name -> class in every .ui file."""
    widgets = {}
    for path in UI_FILES:
        for element in ET.parse(path).iter("widget"):
            widgets[element.get("name")] = element.get("class")
    return widgets


def _known(module: str, name: str) -> list[str]:
    return MANIFEST["python"].get(module, {}).get(name, {}).get("tags", [])


def test_imported_slicer_names_exist_in_every_checked_version() -> None:
    missing = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("slicer"):
                for alias in node.names:
                    if node.module == "slicer":
                        ok = hasattr(slicer, alias.name)
                    elif (node.module, alias.name) in NEWER_ONLY:
                        ok = TAGS[-1] in _known(node.module, alias.name)
                    else:
                        ok = set(TAGS) <= set(_known(node.module, alias.name))
                    if not ok:
                        missing.append(f"{path.name}: from {node.module} import {alias.name}")
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("slicer.") and alias.name not in MANIFEST["python"]:
                        missing.append(f"{path.name}: import {alias.name}")
    assert not missing


def test_slicer_util_names_exist_in_the_wheel_and_in_every_checked_version() -> None:
    used = {
        c.split(".")[2] for _, t in _trees() for n in ast.walk(t) if (c := _chain(n)) and c.startswith("slicer.util.")
    }
    assert used, "the scan found no slicer.util names"
    assert not [n for n in used if not hasattr(slicer.util, n)], "not in the slicer-core wheel's slicer.util"
    assert not [n for n in used if not set(TAGS) <= set(_known("slicer.util", n))], f"not in util.py at {TAGS}"
    assert "toList" not in used


def test_slicer_classes_and_mrml_members_exist_in_the_wheel() -> None:
    """``slicer.vtk*`` classes and their members (e.g. ``slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode``)."""
    missing = []
    for _, tree in _trees():
        for node in ast.walk(tree):
            chain = _chain(node)
            if chain and chain.startswith("slicer.vtk"):
                obj = slicer
                for part in chain.split(".")[1:]:
                    if not hasattr(obj, part):
                        missing.append(chain)
                        break
                    obj = getattr(obj, part)
    assert not missing


def test_ui_widget_classes_and_properties_exist_in_every_checked_version() -> None:
    missing = []
    for path in UI_FILES:
        for element in ET.parse(path).iter("widget"):
            cls = element.get("class")
            if not cls.startswith(("qMRML", "ctk")):
                assert cls.startswith("Q"), cls
                continue
            facts = MANIFEST["widgets"].get(cls)
            if facts is None or set(facts["tags"]) < set(TAGS):
                missing.append(f"{path.name}: class {cls}")
                continue
            for prop in element.findall("property"):
                name = prop.get("name")
                if name == "SlicerParameterName" or name in QT_PROPERTIES:
                    continue
                if not any(name in MANIFEST["widgets"].get(c, {}).get("properties", []) for c in _lineage(cls)):
                    missing.append(f"{path.name}: {cls}.{name}")
    assert not missing


def _lineage(cls: str) -> list[str]:
    chain = [cls]
    while chain[-1] in MANIFEST["widgets"] and MANIFEST["widgets"][chain[-1]]["base"]:
        chain.append(MANIFEST["widgets"][chain[-1]]["base"])
    return chain


def test_members_used_on_ctk_and_qmrml_widgets_exist() -> None:
    """``self.ui.<widget>.<member>`` on a qMRML/ctk widget: a property, slot, signal or method of its class."""
    widgets = _ui_widgets()
    missing = []
    for _, tree in _trees():
        for node in ast.walk(tree):
            chain = _chain(node)
            if not (chain and chain.startswith("self.ui.") and chain.count(".") == 3):
                continue
            _, _, name, member = chain.split(".")
            cls = widgets.get(name)
            assert cls is not None, f"self.ui.{name} is in no .ui file"
            if not cls.startswith(("qMRML", "ctk")) or member in ("connect", "enabled", "toolTip", "text"):
                continue
            facts = [MANIFEST["widgets"].get(c, {}) for c in _lineage(cls)]
            if not any(member in f.get("properties", []) + f.get("methods_and_signals", []) for f in facts):
                missing.append(f"{cls}.{member}")
    assert not missing


def test_ctk_enums_and_signals_used_exist() -> None:
    facts = MANIFEST["widgets"]
    assert {"Dirs", "Files"} <= set(facts["ctkPathLineEdit"]["enums"])
    assert "currentPathChanged" in facts["ctkPathLineEdit"]["methods_and_signals"]
    assert "currentNodeChanged" in facts["qMRMLNodeComboBox"]["methods_and_signals"]
    assert "setSegmentationNode" in facts["qMRMLSegmentationShow3DButton"]["methods_and_signals"]
    for member in ("setup", "resourcePath"):
        assert all(member in facts_ for facts_ in _members("ScriptedLoadableModuleWidget").values())


def _members(cls: str) -> dict[str, list[str]]:
    return MANIFEST["python"]["slicer.ScriptedLoadableModule"][cls]["members"]
