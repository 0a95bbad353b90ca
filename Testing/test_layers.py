"""Layering: the ``cldl`` engine never imports Slicer, Qt or VTK at import time (the Slicer extension wraps it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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
        "cldl.inference.predictor",
        "cldl.train",
        "cldl.render",
        "cldl.demo",
        "cldl.data.phantoms",
    ):
        assert name in result["modules"], name
    assert "cldl.__main__" in result["modules"]
    assert result["forbidden"] == []
    assert "vtkmodules" in result["after_vtk"]
