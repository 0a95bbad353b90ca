"""API conformance (issue 9): every Slicer, CTK and MRML name the module code and .ui files use exists.

``slicer.util`` and ``slicer.vtk*``/``slicer.q*`` names are checked against the real ``slicer-core`` wheel; what the
wheel lacks (ScriptedLoadableModule, parameterNodeWrapper, i18n, packaging, qMRML*/ctk* widgets) against
``slicer_api_manifest.json``, facts read from Slicer's and CTK's sources at v5.10.0 and v5.12.0 (names only).
"""

from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import slicer
import slicer_testing  # noqa: F401  (puts the module folders on sys.path)

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((Path(__file__).with_name("slicer_api_manifest.json")).read_text())
TAGS = MANIFEST["slicer_tags"]
SOURCES = sorted(p for m in ("CLDLSegmentation", "CLDLTraining") for p in (ROOT / m).rglob("*.py"))
UI_FILES = sorted(ROOT.glob("CLDL*/Resources/UI/*.ui"))
#: Names only the newer Slicer has, each used behind a fallback (dependencies.ensureRequirements catches ImportError).
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


# -- MRML/VTK methods called on variables ----------------------------------------------------------------------

#: Receiver of each CamelCase method call, per file, read from the code: the class whose instances it holds
#: (``slicer.*`` and ``vtk.*`` classes of the slicer-core wheel). A new receiver must be added here.
RECEIVERS: dict[str, dict[str, str]] = {
    "CLDLSegmentationSelfTest.py": {
        "display": "vtkMRMLScalarVolumeDisplayNode",
        "result.segmentationNode": "vtkMRMLSegmentationNode",
        "result.uncertaintyNode": "vtkMRMLScalarVolumeNode",
        "segmentation": "vtkSegmentation",
    },
    "cases.py": {
        "first": "vtkMRMLScalarVolumeNode",
        "node": "vtkMRMLNode",
        "reference": "vtkMRMLScalarVolumeNode",
        "scene": "vtkMRMLScene",
        "v": "vtkMRMLScalarVolumeNode",
        "volume": "vtkMRMLScalarVolumeNode",
    },
    "charts.py": {
        "column": "vtk.vtkDoubleArray",
        "scene": "vtkMRMLScene",
        "self.chart": "vtkMRMLPlotChartNode",
        "self.scene": "vtkMRMLScene",
        "self.table": "vtkMRMLTableNode",
        "self.table.GetTable()": "vtk.vtkTable",
        "series": "vtkMRMLPlotSeriesNode",
        "table": "vtk.vtkTable",
    },
    "logic.py": {
        "inputVolume": "vtkMRMLScalarVolumeNode",
        "inputs[0]": "vtkMRMLScalarVolumeNode",
        "mapVolume": "vtkMRMLScalarVolumeNode",
        "maskNode": "vtkMRMLLabelMapVolumeNode",
        "node": "vtkMRMLNode",
        "reference": "vtkMRMLScalarVolumeNode",
        "scene": "vtkMRMLScene",
        "segment": "vtkSegment",
        "segmentation": "vtkSegmentation",
        "segmentationNode": "vtkMRMLSegmentationNode",
        "segmentationNode.GetDisplayNode()": "vtkMRMLSegmentationDisplayNode",
        "shNode": "vtkMRMLSubjectHierarchyNode",
        "uncertainty": "vtkMRMLScalarVolumeNode",
    },
    "overlay.py": {
        "background": "vtkMRMLVolumeNode",
        "background or foreground": "vtkMRMLVolumeNode",
        "colorNode": "vtkMRMLColorNode",
        "composite": "vtkMRMLSliceCompositeNode",
        "display": "vtkMRMLScalarVolumeDisplayNode",
        "foreground": "vtkMRMLVolumeNode",
        "legend": "vtkMRMLColorLegendDisplayNode",
        "node": "vtkMRMLColorTableNode",
        "other": "vtkMRMLNode",
        "scene": "vtkMRMLScene",
        "volumeNode": "vtkMRMLScalarVolumeNode",
    },
    "panel.py": {
        "composite": "vtkMRMLSliceCompositeNode",
        "node": "vtkMRMLNode",
        "scene": "vtkMRMLScene",
        "volume": "vtkMRMLScalarVolumeNode",
    },
    "sampledata.py": {"scene": "vtkMRMLScene"},
    "segmentations.py": {
        "display": "vtkMRMLSegmentationDisplayNode",
        "ids": "vtk.vtkStringArray",
        "labelmapNode": "vtkMRMLLabelMapVolumeNode",
        "labelmapNode.GetDisplayNode()": "vtkMRMLLabelMapVolumeDisplayNode",
        "referenceVolume": "vtkMRMLScalarVolumeNode",
        "scene": "vtkMRMLScene",
        "scene.GetNthNodeByClass(n, 'vtkMRMLColorTableNode')": "vtkMRMLColorTableNode",
        "segment": "vtkSegment",
        "segmentation": "vtkSegmentation",
        "segmentation.GetNthSegment(n)": "vtkSegment",
        "segmentation.GetSegment(segmentId)": "vtkSegment",
        "segmentationNode": "vtkMRMLSegmentationNode",
        "table": "vtkMRMLColorTableNode",
    },
    "terminology.py": {"terminologiesLogic": "vtkSlicerTerminologiesModuleLogic"},
    "widget.py": {
        "node": "vtkMRMLScalarVolumeNode",
        "self._parameterNode.parameterNode": "vtkMRMLScriptedModuleNode",
    },
    "volumes.py": {
        "a": "vtkMRMLScalarVolumeNode",
        "a.GetImageData()": "vtk.vtkImageData",
        "b": "vtkMRMLScalarVolumeNode",
        "b.GetImageData()": "vtk.vtkImageData",
        "first": "vtkMRMLScalarVolumeNode",
        "matrix": "vtk.vtkMatrix4x4",
        "node": "vtkMRMLScalarVolumeNode",
        "node.GetImageData()": "vtk.vtkImageData",
        "reference": "vtkMRMLScalarVolumeNode",
        "reference.GetImageData()": "vtk.vtkImageData",
        "scene": "vtkMRMLScene",
        "storage": "vtkMRMLVolumeArchetypeStorageNode",
        "target": "vtkMRMLScalarVolumeNode",
        "transform": "vtkMRMLTransformNode",
        "volumeNode": "vtkMRMLScalarVolumeNode",
    },
}
#: Python modules (not MRML) that CamelCase calls are made on; qt and PyTorchUtils are checked below.
NOT_MRML = {"argparse", "enum", "psutil", "qt", "queue", "sitk", "subprocess", "threading", "unittest", "PyTorchUtils"}
#: Methods the modules call only behind ``hasattr`` (newer Slicer): class -> methods.
GUARDED = {"vtkSegment": {"SetTerminology"}}


def _wheelClass(name: str):
    import vtk

    return getattr(vtk, name[4:]) if name.startswith("vtk.") else getattr(slicer, name)


def _camelCaseCalls() -> list[tuple[str, str, str]]:
    """``(file name, receiver source, method)`` of every ``receiver.Method(...)`` call in the module code."""
    calls = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr[:1].isupper():
                calls.append((path.name, ast.unparse(node.func.value), node.func.attr))
    return calls


def _receiverClass(file: str, receiver: str) -> str | None:
    if receiver == "slicer.mrmlScene":
        return "vtkMRMLScene"
    if receiver.startswith("slicer.modules.") and receiver.endswith(".logic()"):
        return MANIFEST["modules"][receiver.split(".")[2]]["logic_class"]
    return RECEIVERS.get(file, {}).get(receiver)


def test_every_mrml_call_has_a_known_receiver() -> None:
    """Fails when code calls a CamelCase method on a receiver that the table does not map (add it there)."""
    calls = _camelCaseCalls()
    assert len(calls) > 150, "the scan found too few calls"
    unknown = {
        (f, r)
        for f, r, _ in calls
        if r not in NOT_MRML and not r.startswith("slicer.vtk") and _receiverClass(f, r) is None
    }
    assert not unknown, f"add these receivers to RECEIVERS: {sorted(unknown)}"
    stale = {(f, r) for f, table in RECEIVERS.items() for r in table} - {(f, r) for f, r, _ in calls}
    assert not stale, f"receivers no longer in the code: {sorted(stale)}"


def test_mrml_methods_exist_on_the_real_classes() -> None:
    missing = []
    for file, receiver, method in _camelCaseCalls():
        cls = _receiverClass(file, receiver)
        if cls is None or method in GUARDED.get(cls, ()):
            continue
        if not hasattr(_wheelClass(cls), method):
            missing.append(f"{file}: {receiver}.{method} ({cls})")
    assert not missing


def test_the_receiver_check_can_fail() -> None:
    assert not hasattr(slicer.vtkMRMLScalarVolumeNode, "SetThresholdd")
    assert _receiverClass("volumes.py", "someNewNode") is None


def test_guarded_methods_are_guarded_in_the_code() -> None:
    text = (ROOT / "CLDLSegmentation" / "CLDLSegmentationLib" / "segmentations.py").read_text()
    for methods in GUARDED.values():
        for method in methods:
            assert f'hasattr(segment, "{method}")' in text


# -- parameterNodeWrapper GUI connectors ---------------------------------------------------------------------------


def _parameterFields() -> dict[str, tuple[str, str]]:
    """``{parameter name: (module file, Python type)}`` of every @parameterNodeWrapper class."""
    fields = {}
    for path, tree in _trees():
        for cls in ast.walk(tree):
            if isinstance(cls, ast.ClassDef) and any(_chain(d) == "parameterNodeWrapper" for d in cls.decorator_list):
                enums = {c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef)}
                for item in cls.body:
                    if isinstance(item, ast.AnnAssign):
                        annotation = item.annotation
                        if isinstance(annotation, ast.Subscript) and _chain(annotation.value) == "Annotated":
                            annotation = annotation.slice.elts[0]
                        name = ast.unparse(annotation)
                        if name.startswith("vtkMRML"):
                            name = "vtkMRMLNode"
                        elif name in enums or name.endswith("Choice"):
                            name = "enum.Enum"
                        fields[f"{cls.name.removesuffix('ParameterNode')}.{item.target.id}"] = (path.name, name)
    return fields


def test_gui_connectors_exist_for_every_bound_widget_at_every_tag() -> None:
    """Each widget with a SlicerParameterName has a connector accepting its class and the parameter's type."""
    fields = _parameterFields()
    assert fields
    bound = []
    for path in UI_FILES:
        module = path.stem
        for element in ET.parse(path).iter("widget"):
            for prop in element.findall("property"):
                if prop.get("name") == "SlicerParameterName":
                    bound.append((module, element.get("class"), prop.find("string").text))
    assert len(bound) >= 15
    missing = []
    for tag in TAGS:
        connectors = MANIFEST["gui_connectors"]["tags"][tag]
        for module, cls, parameter in bound:
            _, datatype = fields[f"{module}.{parameter}"]
            if not any(
                any(w.split(".")[-1] == cls for w in c["widgets"]) and datatype in c["datatypes"]
                for c in connectors.values()
            ):
                missing.append(f"{tag}: {module}.{parameter} ({cls}, {datatype})")
    assert not missing


# -- PythonQt, slicer.app, slicer.modules, SampleData, PyTorchUtils --------------------------------------------------


def _pythonQt(name: str) -> dict[str, list[str]]:
    return MANIFEST["pythonqt"]["members"].get(name) or MANIFEST["pythonqt"]["decorators"].get(name, {})


def test_pythonqt_members_used_are_wrapped_at_every_pinned_commit() -> None:
    used = set()
    for _, tree in _trees():
        for node in ast.walk(tree):
            chain = _chain(node)
            if chain and chain.startswith("qt.Q") and chain.count(".") == 2:
                used.add(chain[3:])
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = ast.unparse(node.func.value)
                if receiver == "qt.QSettings()":
                    used.add(f"QSettings.{node.func.attr}")
                if receiver == "layout" and node.func.attr in ("addRow", "removeRow"):
                    used.add(f"QFormLayout.{node.func.attr}")
    assert {"QFormLayout.removeRow", "QFormLayout.addRow", "QTimer.singleShot"} <= used
    for name in used:
        for tag in TAGS:
            assert _pythonQt(name).get(tag), f"{name} not wrapped by the PythonQt of {tag}"
    widget = next(w for w in ET.parse(UI_FILES[0]).iter("widget") if w.get("name") == "inputVolumesWidget")
    assert widget.find("layout").get("class") == "QFormLayout", "removeRow/addRow are QFormLayout's"
    for tag in TAGS:
        assert any("QWidget* widget" in s for s in _pythonQt("QFormLayout.removeRow")[tag])
        singleShot = MANIFEST["pythonqt"]["decorators"]["static_QTimer_singleShot"][tag]
        assert "int msec, PyObject* callable" in singleShot, "qt.QTimer.singleShot(ms, callable)"
        pin = MANIFEST["pythonqt"]["pins"][tag]
        assert pin["ctk_commit"] == MANIFEST["ctk_commits"][tag] and pin["read_from"]


#: Qt widget classes of the .ui files whose members the module code calls (PythonQt's generated wrappers).
WRAPPED_WIDGETS = {"QTableWidget"}


def _wrappedCalls() -> set[str]:
    """``Class.member`` of calls on those widgets (``self.ui.x`` or a name bound to it) and on table items."""
    widgets = _ui_widgets()
    used = set()
    for _, tree in _trees():
        bound = {}  # local name -> Qt class (assigned, or a parameter annotated with it)
        for node in ast.walk(tree):
            if isinstance(node, ast.arg) and node.annotation is not None:
                annotation = _chain(node.annotation) or ""
                if annotation.startswith("qt.") and annotation[3:] in WRAPPED_WIDGETS:
                    bound[node.arg] = annotation[3:]
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                value = node.value
                chain = _chain(value.func) if isinstance(value, ast.Call) else _chain(value)
                if chain == "qt.QTableWidgetItem":
                    bound[node.targets[0].id] = "QTableWidgetItem"
                elif chain and chain.startswith("self.ui.") and widgets.get(chain.split(".")[2]) in WRAPPED_WIDGETS:
                    bound[node.targets[0].id] = widgets[chain.split(".")[2]]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            if _chain(node.func) == "qt.QTableWidgetItem":
                used.add("QTableWidgetItem.new_QTableWidgetItem")
            if not isinstance(node.func, ast.Attribute) or node.func.attr == "connect":
                continue
            receiver = ast.unparse(node.func.value)
            name = receiver.split(".")[2] if receiver.startswith("self.ui.") and receiver.count(".") == 2 else None
            cls = bound.get(receiver) or (widgets.get(name) if name else None)
            if cls in WRAPPED_WIDGETS | {"QTableWidgetItem"}:
                used.add(f"{cls}.{node.func.attr}")
    return used


def test_table_widget_members_used_are_wrapped_at_every_pinned_commit() -> None:
    """The confidence table: every QTableWidget / QTableWidgetItem member called is in PythonQt's wrappers."""
    used = _wrappedCalls()
    assert {"QTableWidget.setItem", "QTableWidget.setRowCount", "QTableWidgetItem.setToolTip"} <= used
    for name in used:
        for tag in TAGS:
            assert _pythonQt(name).get(tag), f"{name} not wrapped by the PythonQt of {tag}"
    for tag in TAGS:  # qt.QTableWidgetItem(text)
        constructors = _pythonQt("QTableWidgetItem.new_QTableWidgetItem")[tag]
        assert any(s.startswith("new_QTableWidgetItem(const QString& text") for s in constructors)
    assert not _pythonQt("QTableWidget.setItemText"), "the check can fail"


def test_string_signature_connect_calls_match_the_pythonqt_decorator() -> None:
    """Every ``x.connect(...)`` is ``connect("signal(args)", callable)``: PythonQt's (sender, signal, callable)."""
    calls = [
        n
        for _, tree in _trees()
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "connect"
    ]
    assert len(calls) > 5
    for call in calls:
        assert len(call.args) == 2 and isinstance(call.args[0], ast.Constant), ast.unparse(call)
        assert re.fullmatch(r"\w+\([\w*, ]*\)", call.args[0].value), call.args[0].value
    for tag in TAGS:
        assert any(
            "QObject* sender, const QByteArray& signal, PyObject* callable" in s for s in _pythonQt("connect")[tag]
        )


def test_slicer_app_members_exist() -> None:
    used = {
        c.split(".")[2] for _, t in _trees() for n in ast.walk(t) if (c := _chain(n)) and c.startswith("slicer.app.")
    }
    connected = {
        n.args[0].value
        for _, t in _trees()
        for n in ast.walk(t)
        if isinstance(n, ast.Call) and _chain(n.func) == "slicer.app.connect"
    }
    assert "startupCompleted()" in connected and used
    facts = [MANIFEST["widgets"][c] for c in _lineage("qSlicerApplication") if c in MANIFEST["widgets"]]
    assert all(set(TAGS) <= set(f["tags"]) for f in facts)
    known = {m for f in facts for m in f["properties"] + f["methods_and_signals"]} | {"connect", "processEvents"}
    assert used <= known, used - known
    assert {s.split("(")[0] for s in connected} <= known


def test_slicer_modules_used_exist_with_their_logic() -> None:
    used = {
        c.split(".")[2]
        for _, t in _trees()
        for n in ast.walk(t)
        if (c := _chain(n)) and c.startswith("slicer.modules.")
    }
    imported = {a.name for _, t in _trees() for n in ast.walk(t) if isinstance(n, ast.Import) for a in n.names}
    assert {"terminologies", "plots", "segmentations"} <= used and "SampleData" in imported
    for name in used | {"sampledata"}:
        facts = MANIFEST["modules"][name]
        assert set(TAGS) <= set(facts["tags"]), name
        assert facts["logic_class"] is None or hasattr(slicer, facts["logic_class"])


def test_sample_data_names_exist_and_call_the_downloader_with_the_source() -> None:
    used = {c for _, t in _trees() for n in ast.walk(t) if (c := _chain(n)) and c.startswith("SampleData.")}
    assert used == {"SampleData.SampleDataLogic", "SampleData.SampleDataLogic.registerCustomSampleDataSource"}
    for name in used:
        short = name.split(".", 1)[1]
        assert set(TAGS) <= set(MANIFEST["python"]["SampleData"][short]["tags"]), name
    for tag in TAGS:
        assert [c["arguments"] for c in MANIFEST["sample_data_downloader_calls"][tag]] == [1]


def test_pytorchutils_names_and_arguments_exist() -> None:
    facts = MANIFEST["pytorchutils"]["classes"]
    tree = ast.parse((ROOT / "CLDLSegmentation" / "CLDLSegmentationLib" / "dependencies.py").read_text())
    used = {c.split(".")[1] for n in ast.walk(tree) if (c := _chain(n)) and c.startswith("PyTorchUtils.")}
    assert used == {"PyTorchUtilsLogic"} and set(used) <= set(facts)
    logic = facts["PyTorchUtilsLogic"]
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and ast.unparse(n.func.value) in ("logic", "_pyTorchUtilsLogic()")
    ]
    assert {c.func.attr for c in calls} == {"installTorch", "uninstallTorch"}
    for call in calls:
        member = logic[call.func.attr]
        assert {k.arg for k in call.keywords} <= set(member["arguments"]), call.func.attr
        assert not member["decorators"], "called as a method"


def test_qt_signals_connected_to_exist_in_qt_5_15() -> None:
    """Every ``self.ui.<widget>.connect("signal(...)")`` on a plain Qt widget names a signal its class (or a base)
    declares in Qt 5.15's headers (the manifest's ``qt_signals``, read by Testing/tools/make_slicer_api_manifest.py)."""
    classes = MANIFEST["qt_signals"]["classes"]
    widgets = _ui_widgets()
    checked = 0
    for _, tree in _trees():
        for call in ast.walk(tree):
            if not (
                isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "connect"
            ):
                continue
            receiver = _chain(call.func.value) or ""
            cls = widgets.get(receiver.split(".")[-1]) if receiver.startswith("self.ui.") else None
            if cls is None or not cls.startswith("Q"):
                continue
            assert cls in classes, f"{receiver} is a {cls}: add it to QT_CLASSES in the manifest tool"
            lineage, known = cls, set()
            while lineage:
                known |= set(classes[lineage]["signals"])
                lineage = classes[lineage]["base"]
            assert call.args[0].value in known, f"{receiver}: {cls} has no signal {call.args[0].value}"
            checked += 1
    assert checked >= 10
    assert "cellClicked(int,int)" in classes["QTableWidget"]["signals"]
    assert "clicked()" not in classes["QAbstractButton"]["signals"]  # the check can fail: only clicked(bool)


def test_scene_events_observed_exist() -> None:
    """``slicer.mrmlScene.<Name>Event`` (StartClose, EndClose, NodeAdded, ...) are vtkMRMLScene's events."""
    used = {
        c.split(".")[2]
        for _, t in _trees()
        for n in ast.walk(t)
        if (c := _chain(n)) and c.startswith("slicer.mrmlScene.") and c.endswith("Event")
    }
    assert {"StartCloseEvent", "EndCloseEvent", "NodeAddedEvent"} <= used
    assert not [name for name in used if not isinstance(getattr(slicer.vtkMRMLScene, name, None), int)]
    assert not hasattr(slicer.vtkMRMLScene, "NodeLoadedEvent"), "the check can fail"


def test_pip_calls_use_arguments_slicer_has() -> None:
    """``pip_ensure`` keywords (``constraints``, ``requester``) exist at 5.12; 5.10's ``pip_install`` takes one
    argument (a string or a list of pip arguments, hence ``[..., "-c", file]``)."""
    calls = [
        (ast.unparse(n.func), n)
        for _, t in _trees()
        for n in ast.walk(t)
        if isinstance(n, ast.Call) and ast.unparse(n.func) in ("packaging.pip_ensure", "slicer.util.pip_install")
    ]
    assert {name for name, _ in calls} == {"packaging.pip_ensure", "slicer.util.pip_install"}
    facts = MANIFEST["python"]
    for name, call in calls:
        if name == "packaging.pip_ensure":
            arguments = facts["slicer.packaging"]["pip_ensure"]["arguments"][TAGS[-1]]
            assert {k.arg for k in call.keywords} <= set(arguments) and "constraints" in arguments
        else:
            for tag in TAGS:
                assert facts["slicer.util"]["pip_install"]["arguments"][tag][0] == "requirements"
            assert len(call.args) == 1 and not call.keywords
