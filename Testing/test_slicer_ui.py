"""The module widgets and their .ui files agree (static checks: ast and XML, no Slicer or Qt needed).

- every ``self.ui.<name>`` the module code uses is a widget in its .ui file;
- every ``SlicerParameterName`` in the .ui is a field of the module's ``@parameterNodeWrapper`` class, and the
  widget class can represent the field's type (the rules of Slicer's parameterNodeWrapper GUI connectors);
- every attribute read from the parameter node in the module code is a field (or a wrapper method).
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("CLDLSegmentation", "CLDLTraining")
WRAPPER_MEMBERS = {"connectGui", "disconnectGui", "parameterNode", "connectParametersToGui", "default", "isCached"}

# widget classes that Slicer's GUI connectors bind to each kind of field
WIDGETS_FOR_KIND = {
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"},
    "int": {"QSpinBox", "QSlider", "ctkSliderWidget", "QDoubleSpinBox", "ctkDoubleSpinBox"},
    "float": {"QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "qMRMLSpinBox"},
    "choice": {"QComboBox", "ctkComboBox"},
    "enum": {"QComboBox", "ctkComboBox"},
    "str": {"QLineEdit", "QLabel", "QTextEdit"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView", "qMRMLSubjectHierarchyComboBox"},
}


def _module_tree(module: str) -> ast.Module:
    """The panel's code: ``<module>Lib/widget.py`` (the module file only names its classes)."""
    return ast.parse((ROOT / module / f"{module}Lib" / "widget.py").read_text())


def _ui(module: str) -> ET.Element:
    return ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui").getroot()


def _ui_widgets(root: ET.Element) -> dict[str, ET.Element]:
    return {w.get("name"): w for w in root.iter("widget")}


def _parameter_names(root: ET.Element) -> dict[str, str]:
    """SlicerParameterName -> widget class."""
    found = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                found[prop.find("string").text] = widget.get("class")
    return found


def _enum_names(tree: ast.Module) -> set[str]:
    """Enum classes the module can see: defined (a class, or ``choiceEnum`` of a ``cldl.defaults`` list) or imported
    from its Lib (checked in the Lib source)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("CLDLSegmentationLib")):
            for alias in node.names:
                names.add(alias.name)
    enums = set()
    for path in (ROOT / "CLDLSegmentation" / "CLDLSegmentationLib").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b) in ("enum.Enum", "Enum") for b in node.bases):
                enums.add(node.name)
            made = isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)  # X = choiceEnum(...)
            if made and ast.unparse(node.value.func) == "choiceEnum":
                enums.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names & enums


def _kind(annotation: ast.expr, enums: set[str]) -> str:
    text = ast.unparse(annotation)
    if "Choice(" in text:
        return "choice"
    base = text.split("[", 1)[1].split(",", 1)[0].strip() if text.startswith("Annotated[") else text
    if base in enums:
        return "enum"
    if base.startswith("vtkMRML"):
        return "node"
    if base in ("Path", "pathlib.Path"):
        return "path"
    return base


def _parameter_fields(tree: ast.Module) -> tuple[str, dict[str, ast.expr]]:
    """The @parameterNodeWrapper class: its name and its fields' annotations."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            fields = {
                stmt.target.id: stmt.annotation
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            }
            return node.name, fields
    raise AssertionError("no @parameterNodeWrapper class")


def _ui_uses(tree: ast.Module) -> set[str]:
    """Names used as ``self.ui.<name>``."""
    used = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            used.add(node.attr)
    return used


def _parameter_reads(tree: ast.Module) -> set[str]:
    """Attributes read from ``self._parameterNode`` or a local alias ``p = self._parameterNode``."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and ast.unparse(node.value) == "self._parameterNode":
            aliases.update(t.id for t in node.targets if isinstance(t, ast.Name))
    reads = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = ast.unparse(node.value)
            if owner == "self._parameterNode" or owner in aliases:
                reads.add(node.attr)
    return reads


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_name_used_in_code_exists(module: str) -> None:
    widgets = _ui_widgets(_ui(module))
    missing = sorted(_ui_uses(_module_tree(module)) - set(widgets))
    assert not missing, f"{module}.py uses self.ui.{missing} that {module}.ui does not define"


@pytest.mark.parametrize("module", MODULES)
def test_every_slicer_parameter_name_is_a_field_of_a_matching_type(module: str) -> None:
    tree = _module_tree(module)
    name, fields = _parameter_fields(tree)
    assert name == f"{module}ParameterNode"
    enums = _enum_names(tree)
    bound = _parameter_names(_ui(module))
    assert bound, "no widget is bound to the parameter node"
    for parameter, widget_class in bound.items():
        assert parameter in fields, f"{module}.ui binds SlicerParameterName {parameter!r}, not a field of {name}"
        kind = _kind(fields[parameter], enums)
        assert widget_class in WIDGETS_FOR_KIND[kind], f"{parameter}: a {widget_class} cannot show a {kind} field"


@pytest.mark.parametrize("module", MODULES)
def test_parameter_node_reads_are_fields(module: str) -> None:
    tree = _module_tree(module)
    _, fields = _parameter_fields(tree)
    unknown = sorted(_parameter_reads(tree) - set(fields) - WRAPPER_MEMBERS)
    assert not unknown, f"{module}.py reads parameter node attributes {unknown} that are not fields"


@pytest.mark.parametrize("module", MODULES)
def test_ui_file_is_a_loadable_designer_file(module: str) -> None:
    """Root class qMRMLWidget named after the module; every custom widget declared; scene connections valid."""
    root = _ui(module)
    top = root.find("widget")
    assert (root.findtext("class"), top.get("class"), top.get("name")) == (module, "qMRMLWidget", module)
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if c.startswith(("q", "ctk"))}
    assert custom <= declared, f"undeclared custom widgets {sorted(custom - declared)}"
    widgets = _ui_widgets(root)
    for connection in root.iter("connection"):
        receiver = connection.findtext("receiver")
        assert receiver in widgets and widgets[receiver].get("class") == "qMRMLNodeComboBox"
    node_combos = {n for n, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection")}
    assert node_combos <= connected, f"node selectors without setMRMLScene: {sorted(node_combos - connected)}"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
