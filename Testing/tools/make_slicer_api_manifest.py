"""Regenerate ``Testing/slicer_api_manifest.json`` from fetched git dirs (not run in CI; names and signatures only).

Usage (bare git dirs, e.g. from the ``fetch`` tool or ``git clone --bare``)::

    python Testing/tools/make_slicer_api_manifest.py \\
        --slicer /work/.mirror/Slicer+Slicer/repo --ctk /work/.mirror/commontk+CTK/repo \\
        --pythonqt /work/.mirror/MeVisLab+pythonqt/repo --pytorch /work/.mirror/fepegar+SlicerPyTorch/repo \\
        [--commontk-pythonqt /work/.mirror/commontk+PythonQt/repo] \\
        --qt-include /tmp/qt/usr/include/x86_64-linux-gnu/qt5/QtWidgets

(the Qt include folder: ``apt-get download qtbase5-dev && dpkg-deb -x qtbase5-dev_*.deb /tmp/qt``).

Reads, at Slicer v5.10.0 and v5.12.0: the Python packages the modules import (top-level names, class members,
function arguments), the headers of the qMRML/ctk widgets and application classes used (base, Q_PROPERTY names,
method/signal names, enum values), the parameterNodeWrapper GUI connectors (widget classes and Python types each
``canRepresent`` accepts), the ``slicer.modules`` the code uses and their logic classes, and Sample Data's
registration API. CTK is read at the commit Slicer's ``SuperBuild/External_CTK.cmake`` pins; PythonQt at the
commontk/PythonQt commit CTK's ``CMakeExternals/PythonQt.cmake`` pins, or, when the mirror lacks it, at the
upstream MeVisLab/pythonqt commit the pin's comment names (recorded as such). PyTorchUtils is read at the newest
commit of fepegar/SlicerPyTorch (it has no tags). The Qt signals the modules connect to are read from Qt 5.15's
headers (Slicer 5.10 and 5.12 build against Qt 5.15). Then check ``git diff Testing/slicer_api_manifest.json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
from pathlib import Path

TAGS = ("v5.10.0", "v5.12.0")
OUT = Path(__file__).resolve().parents[1] / "slicer_api_manifest.json"
PYTHON = {
    "slicer.util": ["Base/Python/slicer/util.py"],
    "slicer.ScriptedLoadableModule": ["Base/Python/slicer/ScriptedLoadableModule.py"],
    "slicer.i18n": ["Base/Python/slicer/i18n.py"],
    "slicer.packaging": ["Base/Python/slicer/packaging.py"],
    "slicer.parameterNodeWrapper": "Base/Python/slicer/parameterNodeWrapper/",
    "SampleData": ["Modules/Scripted/SampleData/SampleData.py"],
}
#: Methods whose arguments are recorded (``Class.method``), per module.
DETAILED = {"SampleData": ("SampleDataLogic.registerCustomSampleDataSource", "SampleDataSource.__init__")}
SLICER_CLASSES = {
    "qMRMLNodeComboBox": "Libs/MRML/Widgets/qMRMLNodeComboBox.h",
    "qMRMLWidget": "Libs/MRML/Widgets/qMRMLWidget.h",
    "qMRMLSegmentationShow3DButton": "Modules/Loadable/Segmentations/Widgets/qMRMLSegmentationShow3DButton.h",
    "qSlicerApplication": "Base/QTGUI/qSlicerApplication.h",
    "qSlicerCoreApplication": "Base/QTCore/qSlicerCoreApplication.h",
}
CTK_CLASSES = {
    "ctkCollapsibleButton": "Libs/Widgets/ctkCollapsibleButton.h",
    "ctkSliderWidget": "Libs/Widgets/ctkSliderWidget.h",
    "ctkPathLineEdit": "Libs/Widgets/ctkPathLineEdit.h",
    "ctkMenuButton": "Libs/Widgets/ctkMenuButton.h",
}
#: ``slicer.modules.<name>``: the module's folder and its logic class header.
MODULES = {
    "terminologies": ("Modules/Loadable/Terminologies", "Logic/vtkSlicerTerminologiesModuleLogic.h"),
    "plots": ("Modules/Loadable/Plots", "Logic/vtkSlicerPlotsLogic.h"),
    "segmentations": ("Modules/Loadable/Segmentations", "Logic/vtkSlicerSegmentationsModuleLogic.h"),
    "sampledata": ("Modules/Scripted/SampleData", None),
}
#: PythonQt: wrapped Qt members (generated_cpp_515) and decorators (src/PythonQtStdDecorators.h) the code uses.
PYTHONQT_MEMBERS = {
    "QFormLayout": ("addRow", "removeRow"),
    "QTimer": ("singleShot",),
    "QSettings": ("setValue", "value"),
    "QFileDialog": ("getOpenFileName",),
    "QTableWidget": ("setColumnCount", "setRowCount", "setHorizontalHeaderItem", "setItem"),
    "QTableWidgetItem": ("new_QTableWidgetItem", "setToolTip"),
}
PYTHONQT_DECORATORS = ("connect", "disconnect", "static_QTimer_singleShot")
CONNECTORS = "Base/Python/slicer/parameterNodeWrapper/guiConnectors.py"
PYTORCH_FILE = "PyTorchUtils/PyTorchUtils.py"
KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "defined", "Q_OBJECT", "signals", "slots"}


def git(gitDir: str, *args: str) -> str:
    """Output of a git command in a bare git dir."""
    return subprocess.run(["git", "-C", gitDir, *args], capture_output=True, text=True, check=True).stdout


def show(gitDir: str, rev: str, path: str) -> str | None:
    """A file at a revision, or None where it is absent."""
    done = subprocess.run(["git", "-C", gitDir, "show", f"{rev}:{path}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def _arguments(function: ast.FunctionDef) -> list[str]:
    a = function.args
    return [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)] + [f"*{x.arg}" for x in (a.vararg, a.kwarg) if x]


def pythonNames(source: str) -> dict[str, dict]:
    """Top-level names of a module: classes with members, functions with arguments, assignments."""
    names: dict[str, dict] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            members = [m.name for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
            names[node.name] = {"members": members}
            for m in node.body:
                if isinstance(m, ast.FunctionDef):
                    names[f"{node.name}.{m.name}"] = {"arguments": _arguments(m)}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = {"arguments": _arguments(node)}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    names[target.id] = {}
    return names


def pythonFacts(slicerDir: str) -> dict:
    """``{module: {name: {file, tags, members?: {tag: [...]}, arguments?: {tag: [...]}}}}``."""
    facts: dict[str, dict] = {}
    for module, files in PYTHON.items():
        entries: dict[str, dict] = {}
        for tag in TAGS:
            paths = files
            if isinstance(files, str):
                paths = [p for p in git(slicerDir, "ls-tree", "--name-only", tag, files).split() if p.endswith(".py")]
            for path in paths:
                source = show(slicerDir, tag, path)
                for name, fact in pythonNames(source or "").items():
                    if "." in name and name not in DETAILED.get(module, ()):
                        continue
                    entry = entries.setdefault(name, {"file": path, "tags": []})
                    entry["tags"].append(tag)
                    for key, value in fact.items():
                        entry.setdefault(key, {})[tag] = value
        facts[module] = entries
    return facts


def _stripComments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def headerFacts(text: str, name: str) -> dict:
    """Base class, Q_PROPERTY names, method/signal names and enum values of a C++ class header."""
    code = _stripComments(text)
    base = re.search(rf"class\s+(?:\w+_EXPORT\s+)?{name}\s*:\s*public\s+(\w+)", code)
    properties = re.findall(r"Q_PROPERTY\(\s*[\w:<>*&, ]+?\s+\*?(\w+)\s+(?:READ|MEMBER)", code)
    methods = {m for m in re.findall(r"\b([A-Za-z_]\w*)\s*\(", code) if m not in KEYWORDS and not m.startswith("Q_")}
    enums = set()
    for body in re.findall(r"enum\s+(?:class\s+)?\w*\s*(?::\s*\w+\s*)?\{([^}]*)\}", code):
        enums.update(re.findall(r"(?:^|,)\s*(\w+)", body))
    return {
        "base": base.group(1) if base else None,
        "properties": sorted(set(properties)),
        "methods_and_signals": sorted(methods),
        "enums": sorted(enums),
    }


def classFacts(slicerDir: str, ctkDir: str, ctkCommits: dict[str, str]) -> dict:
    """Header facts of the qMRML/ctk/application classes, read at each tag (CTK: at the pinned commit)."""
    facts = {}
    for repository, gitDir, classes in (
        ("Slicer/Slicer", slicerDir, SLICER_CLASSES),
        ("commontk/CTK", ctkDir, CTK_CLASSES),
    ):
        for name, path in classes.items():
            entry = {"file": path, "repository": repository, "tags": []}
            for tag in TAGS:
                text = show(gitDir, ctkCommits[tag] if repository == "commontk/CTK" else tag, path)
                if text is None:
                    continue
                entry["tags"].append(tag)
                for key, value in headerFacts(text, name).items():  # the newest tag's facts; both must agree below
                    if key in entry and entry[key] != value and key != "base":
                        value = sorted(set(entry[key]) & set(value))  # only what every tag has
                    entry[key] = value
            facts[name] = entry
    return facts


def _chain(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _names(node: ast.AST) -> list[str]:
    """Class names in a comparator (a name, a dotted name or a tuple of them)."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List)) else [node]
    return [c for c in (_chain(i) for i in items) if c]


def connectorFacts(source: str) -> dict:
    """Per GUI connector: the widget classes and Python types its ``canRepresent`` accepts."""
    facts = {}
    for cls in ast.parse(source).body:
        if not isinstance(cls, ast.ClassDef) or not any(
            _chain(d) == "parameterNodeGuiConnector" for d in cls.decorator_list
        ):
            continue
        can = next(m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == "canRepresent")
        widgets, datatypes = set(), set()
        for node in ast.walk(can):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Call):
                called = _chain(node.left.func)
                found = [n for c in node.comparators for n in _names(c)]
                if called == "type":
                    widgets.update(found)
                elif called == "unannotatedType":
                    datatypes.update(found)
            elif isinstance(node, ast.Call) and _chain(node.func) == "issubclass" and len(node.args) == 2:
                datatypes.update(_names(node.args[1]))
            elif isinstance(node, ast.Call) and _chain(node.func) == "isNodeOrUnionOfNodes":
                datatypes.add("vtkMRMLNode")
            elif isinstance(node, ast.Call) and _chain(node.func) == "pack.isParameterPack":
                datatypes.add("parameterPack")
        facts[cls.name] = {"widgets": sorted(widgets), "datatypes": sorted(datatypes)}
    return facts


def pythonQtFacts(ctkDir: str, ctkCommits: dict[str, str], pythonqtDir: str, commontkDir: str | None) -> dict:
    """Wrapped members and decorators the modules use, read where the pinned PythonQt could be found."""
    facts: dict = {"pins": {}, "members": {}, "decorators": {}}
    for tag in TAGS:
        cmake = show(ctkDir, ctkCommits[tag], "CMakeExternals/PythonQt.cmake") or ""
        pin = re.search(r"set\(revision_tag\s+([0-9a-f]{40})\)\s*#\s*(\S+)", cmake)
        pinned, comment = pin.group(1), pin.group(2)
        read = None
        if commontkDir and subprocess.run(["git", "-C", commontkDir, "cat-file", "-e", pinned]).returncode == 0:
            read = ("commontk/PythonQt", commontkDir, pinned)
        else:  # the pin's comment ends with the upstream commit it was patched from
            upstream = git(pythonqtDir, "rev-parse", comment.rsplit("-", 1)[-1]).strip()
            read = ("MeVisLab/pythonqt", pythonqtDir, upstream)
        facts["pins"][tag] = {
            "ctk_commit": ctkCommits[tag],
            "pinned": f"commontk/PythonQt@{pinned}",
            "pin_comment": comment,
            "read_from": f"{read[0]}@{read[2]}",
            "pinned_commit_in_mirror": read[0] == "commontk/PythonQt",
        }
        _, gitDir, rev = read
        for cls, members in PYTHONQT_MEMBERS.items():
            for member in members:
                pattern = rf"PythonQtWrapper_{cls}::(static_{cls}_)?{member}\("
                hits = subprocess.run(
                    ["git", "-C", gitDir, "grep", "-h", "-E", pattern, rev, "--", "generated_cpp_515"],
                    capture_output=True,
                    text=True,
                ).stdout
                signatures = sorted({re.sub(r"\s+", " ", h.split("::", 1)[1]).strip() for h in hits.splitlines()})
                facts["members"].setdefault(f"{cls}.{member}", {})[tag] = signatures
        header = show(gitDir, rev, "src/PythonQtStdDecorators.h") or ""
        for name in PYTHONQT_DECORATORS:
            found = re.findall(rf"\b{name}\(([^)]*)\)", _stripComments(header))
            facts["decorators"].setdefault(name, {})[tag] = sorted({re.sub(r"\s+", " ", f).strip() for f in found})
    return facts


def moduleFacts(slicerDir: str) -> dict:
    """``slicer.modules.<name>``: folder and logic class per tag."""
    facts = {}
    for name, (folder, logic) in MODULES.items():
        entry = {"folder": folder, "tags": [], "logic_class": Path(logic).stem if logic else None}
        for tag in TAGS:
            files = git(slicerDir, "ls-tree", "-r", "--name-only", tag, folder).split()
            if files and (logic is None or f"{folder}/{logic}" in files):
                entry["tags"].append(tag)
        facts[name] = entry
    return facts


def sampleDataCalls(source: str) -> list[dict]:
    """Where Sample Data calls a source's ``customDownloader`` and with how many arguments."""
    return [
        {"line": n.lineno, "arguments": len(n.args) + len(n.keywords)}
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "customDownloader"
    ]


def pytorchFacts(gitDir: str) -> dict:
    """PyTorchUtils' classes, members (with arguments and decorators) at the newest commit."""
    commit = git(gitDir, "rev-parse", "HEAD").strip()
    source = show(gitDir, commit, PYTORCH_FILE) or ""
    classes = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = {
                m.name: {"arguments": _arguments(m), "decorators": [ast.unparse(d) for d in m.decorator_list]}
                for m in node.body
                if isinstance(m, ast.FunctionDef)
            }
    date = git(gitDir, "log", "-1", "--format=%cs", commit).strip()
    return {
        "repository": "fepegar/SlicerPyTorch",
        "commit": commit,
        "date": date,
        "file": PYTORCH_FILE,
        "classes": classes,
    }


# Qt widget classes whose signals the modules connect to: header (QtWidgets/) and base class.
QT_CLASSES = {
    "QAbstractButton": ("qabstractbutton.h", None),
    "QPushButton": ("qpushbutton.h", "QAbstractButton"),
    "QComboBox": ("qcombobox.h", None),
    "QTableWidget": ("qtablewidget.h", None),
}


def _signature(name: str, params: str) -> str:
    """Qt's normalised connect signature of a declaration: parameter types only, defaults dropped."""
    types = []
    for param in filter(None, (p.split("=")[0].strip() for p in params.split(","))):
        words = [w for w in param.replace("&", " & ").replace("*", " * ").split() if w not in ("const", "&")]
        types.append("".join(words[:-1]) if len(words) > 1 else words[0])  # Qt drops const and & when normalising
    return f"{name}({','.join(types)})"


def qtSignalFacts(includeDir: str) -> dict:
    """The signals each class in QT_CLASSES declares in its Qt header (``Q_SIGNALS:`` sections)."""
    version = re.search(r'QT_VERSION_STR "([\d.]+)"', Path(includeDir, "..", "QtCore", "qconfig.h").read_text())
    classes = {}
    for cls, (header, base) in QT_CLASSES.items():
        text = Path(includeDir, header).read_text()
        body = text[text.index(f"class Q_WIDGETS_EXPORT {cls} ") :]
        signals = {}
        for section in re.findall(r"Q_SIGNALS:(.*?)(?:public|protected|private)", body, re.S)[:1]:
            for match in re.finditer(r"void (\w+)\(([^)]*)\);", section):
                line = text[: text.index(match.group(0))].count("\n") + 1
                signals[_signature(*match.groups())] = f"{header}:{line} {match.group(0)}"
        classes[cls] = {"base": base, "signals": signals}
    return {"source": f"Qt {version.group(1) if version else '?'} headers (QtWidgets/*.h)", "classes": classes}


def main() -> None:
    """Write the manifest."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slicer", required=True)
    parser.add_argument("--ctk", required=True)
    parser.add_argument("--pythonqt", required=True, help="MeVisLab/pythonqt")
    parser.add_argument("--pytorch", required=True, help="fepegar/SlicerPyTorch")
    parser.add_argument("--commontk-pythonqt", help="commontk/PythonQt (CTK's pins, if the mirror has them)")
    parser.add_argument(
        "--qt-include",
        required=True,
        help="Qt 5.15's QtWidgets include folder (e.g. from Debian's qtbase5-dev: .../include/<arch>/qt5/QtWidgets)",
    )
    args = parser.parse_args()
    ctkCommits = {}
    for tag in TAGS:
        cmake = show(args.slicer, tag, "SuperBuild/External_CTK.cmake") or ""
        ctkCommits[tag] = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s+"([0-9a-f]{40})"', cmake).group(1)
    sampleData = {tag: show(args.slicer, tag, PYTHON["SampleData"][0]) or "" for tag in TAGS}
    connectors = {tag: connectorFacts(show(args.slicer, tag, CONNECTORS) or "") for tag in TAGS}
    manifest = {
        "about": "Facts read from Slicer/Slicer and commontk/CTK sources at the tags below (names and signatures only, "
        "no code); regenerate with Testing/tools/make_slicer_api_manifest.py. CTK commits are the ones Slicer's "
        "SuperBuild/External_CTK.cmake pins at each tag.",
        "slicer_tags": list(TAGS),
        "ctk_commits": ctkCommits,
        "python": pythonFacts(args.slicer),
        "widgets": classFacts(args.slicer, args.ctk, ctkCommits),
        "gui_connectors": {"file": CONNECTORS, "tags": connectors},
        "pythonqt": pythonQtFacts(args.ctk, ctkCommits, args.pythonqt, args.commontk_pythonqt),
        "modules": moduleFacts(args.slicer),
        "sample_data_downloader_calls": {tag: sampleDataCalls(text) for tag, text in sampleData.items()},
        "pytorchutils": pytorchFacts(args.pytorch),
        "qt_signals": qtSignalFacts(args.qt_include),
    }
    OUT.write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
