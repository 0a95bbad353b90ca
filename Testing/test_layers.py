"""Layering: the ``cldl`` engine never imports Slicer, Qt or VTK at import time (the Slicer extension wraps it), its
modules import only their own layer or the layers below (docs/architecture.md), with no import cycles, and no file is
longer than about 500 lines."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

FORBIDDEN = ("slicer", "qt", "vtk", "vtkmodules")

SCRIPT = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    import cldl

    forbidden = set(sys.argv[1].split(","))

    def loaded():
        return sorted(name for name in sys.modules if name.split(".")[0] in forbidden)

    modules = []
    for info in pkgutil.walk_packages(cldl.__path__, "cldl."):
        if info.name == "cldl.__main__":  # runs the CLI on import: give it a harmless command
            sys.argv = ["cldl", "--version"]
            try:
                importlib.import_module(info.name)
            except SystemExit:
                pass
        else:
            importlib.import_module(info.name)
        modules.append(info.name)
    found = loaded()
    import vtkmodules.vtkCommonCore  # the check itself works: now VTK is seen
    print(json.dumps({"modules": modules, "forbidden": found, "after_vtk": loaded()}))
    """
)


def test_importing_every_cldl_module_loads_no_slicer_qt_or_vtk() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(FORBIDDEN)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name in (
        "cldl.cli",
        "cldl.infer",
        "cldl.model",
        "cldl.inference.predictor",
        "cldl.method.network",
        "cldl.train",
        "cldl.render.snapshot",
        "cldl.commands.demo",
        "cldl.data.phantoms",
    ):
        assert name in result["modules"], name
    assert "cldl.__main__" in result["modules"]
    assert result["forbidden"] == []
    assert "vtkmodules" in result["after_vtk"]


ENGINE = Path(__file__).resolve().parents[1] / "cldl"

# The engine's layers, lowest first (docs/architecture.md): a module may import its own layer and the layers below,
# never one above. A name is a module or a package (every module under it).
LAYERS = (
    (
        "shared",
        (
            "cldl",
            "cldl.tasks",
            "cldl.defaults",
            "cldl.events",
            "cldl.checkpoint_header",
            "cldl.registry",
            "cldl.config_files",
        ),
    ),
    ("files", ("cldl.files",)),
    ("method and data", ("cldl.method", "cldl.data", "cldl.render.palette")),
    ("checkpoint", ("cldl.checkpoint",)),
    ("inference", ("cldl.inference", "cldl.evaluation")),
    ("prepare", ("cldl.prepare",)),
    ("folder inference", ("cldl.inference.folder",)),
    ("training", ("cldl.training", "cldl.train")),
    ("study", ("cldl.study",)),
    (
        "commands",
        (
            "cldl.commands",
            "cldl.cli",
            "cldl.__main__",
            "cldl.render.snapshot",
            "cldl.render.vtk_primitives",
            "cldl.infer",
            "cldl.model",
        ),
    ),
)
# Imports that break the layering, each with its reason (none).
KNOWN_UPWARD_IMPORTS: dict[tuple[str, str], str] = {}
# Files allowed over MAX_LINES: the data generators.
MAX_LINES = 500
LONG_FILES = {"data/anatomy.py", "data/phantoms.py"}


def _module_name(path: Path) -> str:
    parts = ("cldl", *path.relative_to(ENGINE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts}


def _layer(module: str) -> int:
    """The index of a module's layer: the longest layer name that is the module or a package above it."""
    best, rank = -1, None
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), index
    assert rank is not None, f"{module} is in no layer of Testing/test_layers.py (and docs/architecture.md)"
    return rank


def _imports(module: str) -> set[str]:
    """The engine modules ``module`` imports anywhere (at the top or inside functions; not for type checking)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # what only the type checker reads is no dependency
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {name for name in found if name in MODULES and name != module}


def _graph() -> dict[str, set[str]]:
    """Every engine module's imports of other engine modules, less the known upward imports."""
    return {m: {t for t in _imports(m) if (m, t) not in KNOWN_UPWARD_IMPORTS} for m in MODULES}


def test_the_import_reader_sees_imports() -> None:
    graph = _graph()
    stale = [pair for pair in KNOWN_UPWARD_IMPORTS if pair[0] not in MODULES or pair[1] not in _imports(pair[0])]
    assert stale == [], "known upward imports that no longer exist: drop them from KNOWN_UPWARD_IMPORTS"
    assert "cldl.checkpoint" in graph["cldl.inference.predictor"]  # relative, at the top
    assert "cldl.prepare.pipeline" in graph["cldl.inference.folder"]  # inside a function
    assert "cldl.tasks" not in _imports("cldl.files.label_maps")  # only for type checking


def test_modules_import_only_their_own_layer_or_lower() -> None:
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_engine_has_no_import_cycles() -> None:
    graph = _graph()
    done: set[str] = set()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(" -> ".join(path[path.index(module) :] + [module]))
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


def test_no_engine_file_is_longer_than_about_500_lines() -> None:
    lengths = {p.relative_to(ENGINE).as_posix(): len(p.read_text().splitlines()) for p in MODULES.values()}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES and name not in LONG_FILES} == {}
    assert LONG_FILES <= set(lengths), "an exempt file no longer exists: drop it from LONG_FILES"


def test_old_import_paths_still_work() -> None:
    from cldl.infer import Prediction, Predictor, sliding_window_probabilities
    from cldl.inference import predictor
    from cldl.method import network
    from cldl.model import ModelConfig, UNetLDL, count_parameters

    assert (Predictor, Prediction, sliding_window_probabilities) == (
        predictor.Predictor,
        predictor.Prediction,
        predictor.sliding_window_probabilities,
    )
    assert (ModelConfig, UNetLDL, count_parameters) == (network.ModelConfig, network.UNetLDL, network.count_parameters)
