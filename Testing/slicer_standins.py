"""Minimal stand-ins for what the slicer-core wheel lacks (Qt, CTK, ScriptedLoadableModule, parameterNodeWrapper,
i18n): just enough to run the widgets' ``setup()`` on a real MRML scene. Every Qt widget records the properties set
on it and its ``connect()`` calls; slicer.util, MRML and the Lib stay real, so a missing name still fails."""

from __future__ import annotations

import importlib
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import slicer


class FakeWidget:
    """A Qt widget: records properties, ``connect(signature, slot)`` and other calls."""

    def __init__(self, name: str = "", cls: str = "QWidget") -> None:
        self.__dict__.update(objectName=name, cls=cls, connections=[], calls=[], props={})

    def __setattr__(self, name: str, value: Any) -> None:
        self.props[name] = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self.props:
            return self.props[name]
        return lambda *args, **kwargs: self.calls.append((name, args))

    def connect(self, signal: str, slot) -> None:
        """PythonQt's string-signature connect."""
        assert isinstance(signal, str) and signal.endswith(")") and callable(slot), signal
        self.connections.append((signal, slot))

    def layout(self) -> FakeFormLayout:
        if "_layout" not in self.__dict__:
            self.__dict__["_layout"] = FakeFormLayout()
        return self.__dict__["_layout"]


class FakeFormLayout:
    """A QFormLayout: rows of (label, widget)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, Any]] = []

    def addRow(self, label: str, widget) -> None:
        self.rows.append((label, widget))

    def removeRow(self, widget) -> None:
        self.rows = [r for r in self.rows if r[1] is not widget]

    def addWidget(self, widget) -> None:
        self.rows.append(("", widget))


class FakeComboBox(FakeWidget):
    """A QComboBox with items and data."""

    def __init__(self, name: str = "", cls: str = "QComboBox") -> None:
        super().__init__(name, cls)
        self.__dict__["items"] = []
        self.props["currentIndex"] = -1

    def addItem(self, text: str, data: Any = None) -> None:
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.props["currentIndex"] = 0

    def addItems(self, texts) -> None:
        for text in texts:
            self.addItem(text)

    def clear(self) -> None:
        self.items.clear()
        self.props["currentIndex"] = -1

    def findData(self, data: Any) -> int:
        return next((i for i, item in enumerate(self.items) if item[1] == data), -1)


class FakeNodeComboBox(FakeWidget):
    """A qMRMLNodeComboBox on a real scene."""

    def __init__(self, name: str = "", cls: str = "qMRMLNodeComboBox") -> None:
        super().__init__(name, cls)
        self.__dict__["node"] = None

    def setCurrentNode(self, node) -> None:
        self.__dict__["node"] = node

    def currentNode(self):
        return self.node


class FakePathLineEdit(FakeWidget):
    """A ctkPathLineEdit."""

    Dirs, Files = 1, 2

    def __init__(self, name: str = "", cls: str = "ctkPathLineEdit") -> None:
        super().__init__(name, cls)
        self.props["currentPath"] = ""


class FakeTableItem:
    """A QTableWidgetItem: text and tool tip."""

    def __init__(self, text: str = "") -> None:
        self.text, self.toolTip = text, ""

    def setToolTip(self, toolTip: str) -> None:
        self.toolTip = toolTip


class FakeTableWidget(FakeWidget):
    """A QTableWidget: header items and a grid of items (only the members PythonQt wraps at every checked tag)."""

    def __init__(self, name: str = "", cls: str = "QTableWidget") -> None:
        super().__init__(name, cls)
        self.__dict__.update(headers={}, cells={}, rowCount=0, columnCount=0)

    def setColumnCount(self, columns: int) -> None:
        self.__dict__["columnCount"] = columns

    def setRowCount(self, rows: int) -> None:
        self.__dict__["rowCount"] = rows
        self.__dict__["cells"] = {k: v for k, v in self.cells.items() if k[0] < rows}

    def setHorizontalHeaderItem(self, column: int, item: FakeTableItem) -> None:
        assert 0 <= column < self.columnCount and isinstance(item, FakeTableItem)
        self.headers[column] = item

    def setItem(self, row: int, column: int, item: FakeTableItem) -> None:
        assert 0 <= row < self.rowCount and 0 <= column < self.columnCount and isinstance(item, FakeTableItem)
        self.cells[(row, column)] = item

    def texts(self) -> list[tuple[str, ...]]:
        """The rows' texts."""
        return [tuple(self.cells[(r, c)].text for c in range(self.columnCount)) for r in range(self.rowCount)]

    def click(self, row: int, column: int = 0) -> None:
        """Emit ``cellClicked(int,int)``."""
        for signal, slot in self.connections:
            if signal == "cellClicked(int,int)":
                slot(row, column)


CLASSES = {
    "QComboBox": FakeComboBox,
    "qMRMLNodeComboBox": FakeNodeComboBox,
    "ctkPathLineEdit": FakePathLineEdit,
    "QTableWidget": FakeTableWidget,
}


def widgetsOf(uiFile: str | Path) -> types.SimpleNamespace:
    """``slicer.util.childWidgetVariables`` of a .ui file: one stand-in per named widget, of its class."""
    widgets = {}
    for element in ET.parse(uiFile).iter("widget"):
        cls = element.get("class")
        widgets[element.get("name")] = CLASSES.get(cls, FakeWidget)(element.get("name"), cls)
    return types.SimpleNamespace(**widgets)


class Timers:
    """``qt.QTimer.singleShot`` that queues callbacks for the test to run."""

    queue: list = []

    @staticmethod
    def singleShot(ms: int, callback) -> None:
        Timers.queue.append((ms, callback))


class FileDialog:
    """``qt.QFileDialog``: ``getOpenFileName`` answers ``FileDialog.answer`` (what the user picked; "" = Cancel)."""

    answer = ""

    @staticmethod
    def getOpenFileName(parent, caption: str, directory: str, fileFilter: str) -> str:
        return FileDialog.answer


def fakeQt(settings: dict[str, Any]) -> types.ModuleType:
    """A ``qt`` module: QTimer, QSettings (over ``settings``), QWidget, QTableWidgetItem."""

    class QSettings:
        def contains(self, key: str) -> bool:
            return key in settings

        def value(self, key: str, default: Any = None) -> Any:
            return settings.get(key, default)

        def setValue(self, key: str, value: Any) -> None:
            settings[key] = value

    qt = types.ModuleType("qt")
    qt.QTimer = types.SimpleNamespace(singleShot=Timers.singleShot)
    qt.QFileDialog = FileDialog
    qt.QSettings = QSettings
    qt.QWidget = FakeWidget
    qt.QTableWidgetItem = FakeTableItem
    return qt


def fakeCtk() -> types.ModuleType:
    ctk = types.ModuleType("ctk")
    ctk.ctkPathLineEdit = FakePathLineEdit
    return ctk


# -- slicer.* Python packages the wheel lacks --------------------------------------------------------------------


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__

    def resourcePath(self, filename: str) -> str:
        """As Slicer's: ``Resources/`` next to the module file of ``moduleName`` (``slicer.util.modulePath``)."""
        return str(Path(importlib.import_module(self.moduleName).__file__).parent / "Resources" / filename)


class ScriptedLoadableModuleWidget(ScriptedLoadableModule):
    def __init__(self, parent=None) -> None:
        self.parent = parent or types.SimpleNamespace(isEntered=True)
        self.layout = FakeFormLayout()
        self.moduleName = type(self).__name__.removesuffix("Widget")  # as Slicer's: the class name, not its file

    def setup(self) -> None:
        pass

    def cleanup(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        scene = slicer.mrmlScene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLScriptedModuleNode")
            if node.GetAttribute("ModuleName") == self.moduleName:
                return node
        node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
        node.SetAttribute("ModuleName", self.moduleName)
        return node


class ScriptedLoadableModuleTest:
    pass


class WithinRange:
    def __init__(self, low, high) -> None:
        self.low, self.high = low, high


class Choice:
    def __init__(self, choices) -> None:
        self.choices = list(choices)


#: Parameter values per scripted-module node (its ``STORE_ATTRIBUTE``), shared by every wrapper of that node.
PARAMETER_STORE: dict[str, dict] = {}
STORE_ATTRIBUTE = "StandinParameters"


def parameterNodeWrapper(cls):
    """Fields with the class's defaults (nodes: None) on a real scripted-module node; connectGui returns a tag."""
    defaults = {name: getattr(cls, name, None) for name in cls.__annotations__}

    def __init__(self, parameterNode) -> None:
        key = parameterNode.GetAttribute(STORE_ATTRIBUTE)
        if key is None:  # the values live with the node (as the real wrapper's do), not with one wrapper
            key = str(len(PARAMETER_STORE))
            parameterNode.SetAttribute(STORE_ATTRIBUTE, key)
            PARAMETER_STORE[key] = dict(defaults)
        object.__setattr__(self, "parameterNode", parameterNode)
        object.__setattr__(self, "values", PARAMETER_STORE[key])
        object.__setattr__(self, "guis", [])

    def __getattr__(self, name):
        values = object.__getattribute__(self, "values")
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name not in defaults:
            raise AttributeError(f"{cls.__name__} has no parameter {name}")
        self.values[name] = value

    def connectGui(self, gui) -> int:
        self.guis.append(gui)
        return len(self.guis)

    def disconnectGui(self, tag: int) -> None:
        pass

    def AddObserver(self, event, callback, priority=0.0):
        return self.parameterNode.AddObserver(event, callback, priority)

    def RemoveObserver(self, tag) -> None:
        self.parameterNode.RemoveObserver(tag)

    members = dict(
        __init__=__init__,
        __getattr__=__getattr__,
        __setattr__=__setattr__,
        connectGui=connectGui,
        disconnectGui=disconnectGui,
        AddObserver=AddObserver,
        RemoveObserver=RemoveObserver,
    )
    return type(cls.__name__, (), members)


def slicerPackages() -> dict[str, types.ModuleType]:
    """``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` and ``slicer.i18n`` stand-ins."""
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for c in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic):
        setattr(slm, c.__name__, c)
    slm.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper, pnw.WithinRange, pnw.Choice = parameterNodeWrapper, WithinRange, Choice
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    return {"slicer.ScriptedLoadableModule": slm, "slicer.parameterNodeWrapper": pnw, "slicer.i18n": i18n}


# -- the application, Sample Data ----------------------------------------------------------------------------------


class FakeApplication:
    """``slicer.app``: records ``connect(signature, slot)``."""

    def __init__(self) -> None:
        self.connections: list = []

    def connect(self, signal: str, slot) -> None:
        assert isinstance(signal, str) and signal.endswith(")") and callable(slot), signal
        self.connections.append((signal, slot))


def fakeSampleData(manifest: dict) -> types.ModuleType:
    """A ``SampleData`` module whose ``registerCustomSampleDataSource`` takes only the keyword arguments it has at
    every checked tag (per the manifest) and checks list lengths as ``SampleDataSource.__init__`` does."""
    facts = manifest["python"]["SampleData"]["SampleDataLogic.registerCustomSampleDataSource"]["arguments"]
    module = types.ModuleType("SampleData")
    module.registered = []

    def registerCustomSampleDataSource(**kwargs) -> None:
        for tag, names in facts.items():
            assert set(kwargs) <= set(names), (tag, set(kwargs) - set(names))
        assert len(kwargs["uris"]) == len(kwargs["fileNames"]) == len(kwargs["nodeNames"])
        module.registered.append(kwargs)

    module.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=registerCustomSampleDataSource)
    return module


class noErrorDisplay:
    """``slicer.util.tryWithErrorDisplay`` without Qt: lets exceptions through."""

    def __init__(self, message: str = "", waitCursor: bool = False) -> None:
        self.message = message

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> bool:
        return False
