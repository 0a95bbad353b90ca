"""The extension tree is complete and consistent (static checks, no CMake or Slicer needed).

- every Python file, .ui, icon and requirements file a module uses is listed in its CMakeLists.txt, and every
  listed file exists;
- every file of the ``cldl`` engine (Python, configs, bundled models) is listed for installation with the
  extension;
- ``CLDL.s4ext``, ``CLDL.json`` (catalog entry, schema v1.0.1) and the top-level CMake metadata agree, and the
  ExtensionsIndex rules hold (names, LICENSE, icon and screenshot files, dependency lists);
- the modules' own metadata (category, contributors, dependencies) matches.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import struct
from pathlib import Path

import pytest
import slicer_testing  # noqa: F401  (puts the module folders on sys.path)

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("CLDLSegmentation", "CLDLTraining")
ENGINE = ROOT / "cldl"
RAW_PREFIX = "https://raw.githubusercontent.com/"
CATALOG_KEYS = {
    "$schema",
    "category",
    "scm_url",
    "scm_revision",
    "scm_type",
    "build_dependencies",
    "build_subdirectory",
    "enabled",
    "tier",
}


def _cmake(path: Path) -> str:
    """CMake text without comments (a ``#`` outside double quotes starts one)."""
    lines = []
    for line in path.read_text().splitlines():
        quoted = False
        for index, char in enumerate(line):
            if char == '"':
                quoted = not quoted
            elif char == "#" and not quoted:
                line = line[:index]
                break
        lines.append(line)
    return "\n".join(lines)


def _cmake_sets(path: Path) -> dict[str, list[str]]:
    """``set(NAME values...)`` blocks as lists, with ``${MODULE_NAME}`` substituted."""
    text = _cmake(path)
    sets = {name: body.split() for name, body in re.findall(r"set\(\s*(\w+)\s+([^)]*)\)", text)}
    module = sets.get("MODULE_NAME", [""])[0]
    return {k: [v.replace("${MODULE_NAME}", module) for v in values] for k, values in sets.items()}


def _cmake_strings(path: Path) -> dict[str, str]:
    """``set(NAME "string")`` values of the top-level CMakeLists."""
    return dict(re.findall(r'set\(\s*(\w+)\s+"([^"]*)"\s*\)', _cmake(path)))


def _s4ext() -> dict[str, str]:
    values = {}
    for line in (ROOT / "CLDL.s4ext").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            values[key] = value.strip()
    return values


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _module_python_files(module: str) -> set[str]:
    folder = ROOT / module
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("module", MODULES)
def test_module_files_are_listed_and_exist(module: str) -> None:
    folder = ROOT / module
    sets = _cmake_sets(folder / "CMakeLists.txt")
    scripts, resources = set(sets["MODULE_PYTHON_SCRIPTS"]), set(sets["MODULE_PYTHON_RESOURCES"])
    assert sets["MODULE_NAME"] == [module]
    assert not _module_python_files(module) - scripts, "Python files missing from MODULE_PYTHON_SCRIPTS"
    assert not [s for s in scripts if not (folder / s).is_file()], "listed scripts that do not exist"
    on_disk = {p.relative_to(folder).as_posix() for p in (folder / "Resources").rglob("*") if p.is_file()}
    assert on_disk == resources, f"Resources/ and MODULE_PYTHON_RESOURCES differ: {sorted(on_disk ^ resources)}"
    for required in (f"Resources/UI/{module}.ui", f"Resources/Icons/{module}.png"):
        assert required in resources
    for source in (folder / f"{module}.py", folder / f"{module}Lib" / "widget.py"):
        for used in re.findall(r'resourcePath\(\s*"([^"]+)"\s*\)', source.read_text()):
            assert f"Resources/{used}" in resources, f"{source.name} uses Resources/{used}, which is not installed"
    text = _cmake(folder / "CMakeLists.txt")
    assert re.search(r"slicerMacroBuildScriptedModule\([^)]*WITH_GENERIC_TESTS", text)
    assert re.search(r"if\(BUILD_TESTING\)\s*add_subdirectory\(Testing\)\s*endif\(\)", text)
    assert re.fullmatch(r"\s*add_subdirectory\(Python\)\s*", _cmake(folder / "Testing" / "CMakeLists.txt"))
    selfTest = f"{module}SelfTest.py"
    assert re.fullmatch(
        rf"\s*slicer_add_python_unittest\(SCRIPT {selfTest}\)\s*",
        _cmake(folder / "Testing" / "Python" / "CMakeLists.txt"),
    )
    assert f"Testing/Python/{selfTest}" in scripts, "the self-test ships (the Reload & Test button runs it)"
    assert f'"Testing" / "Python", "{module}SelfTest"' in (folder / f"{module}.py").read_text()
    assert _png_size(folder / "Resources" / "Icons" / f"{module}.png") == (128, 128)


def test_engine_ships_with_the_extension() -> None:
    """Every engine file is installed (as qt-scripted-modules/cldl) by CLDLSegmentation's CMakeLists."""
    sets = _cmake_sets(ROOT / "CLDLSegmentation" / "CMakeLists.txt")
    scripts = set(sets["CLDL_ENGINE_PYTHON_SCRIPTS"])
    resources = set(sets["CLDL_ENGINE_RESOURCES"])
    engine_py = {p.relative_to(ENGINE).as_posix() for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts}
    assert engine_py - scripts == set(), f"engine files not installed with the extension: {sorted(engine_py - scripts)}"
    assert scripts - engine_py == set(), f"listed engine files that do not exist: {sorted(scripts - engine_py)}"
    data = {p.relative_to(ENGINE).as_posix() for p in (ENGINE / "configs").glob("*") if p.is_file()}
    data |= {p.relative_to(ENGINE).as_posix() for p in (ENGINE / "models").glob("*.pt")}
    assert data <= resources, f"engine data files not installed: {sorted(data - resources)}"
    from cldl.registry import REGISTRY

    bundled = {f"models/{e.filename}" for e in REGISTRY.values() if e.bundled}
    assert bundled <= resources, "bundled models must ship with the extension"
    for listed in resources - bundled:  # bundled models may still be in training; everything else must exist
        assert (ENGINE / listed).is_file(), f"listed engine resource {listed} does not exist"
    text = _cmake(ROOT / "CLDLSegmentation" / "CMakeLists.txt")
    assert re.search(r"SOURCE_DIR\s+\$\{CLDL_ENGINE_DIR\}", text)
    assert re.search(r"INSTALL_DIR\s+\$\{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR\}/cldl", text)
    top = _cmake(ROOT / "CMakeLists.txt")
    assert re.search(r"set\(CLDL_ENGINE_DIR \$\{CMAKE_CURRENT_SOURCE_DIR\}/cldl\)", top)


def test_top_level_cmake_follows_the_template() -> None:
    text = _cmake(ROOT / "CMakeLists.txt")
    order = [
        r"cmake_minimum_required\(",
        r"project\(CLDL\)",
        r"set\(EXTENSION_HOMEPAGE",
        r"find_package\(Slicer REQUIRED\)",
        r"include\(\$\{Slicer_USE_FILE\}\)",
        r"add_subdirectory\(CLDLSegmentation\)",
        r"add_subdirectory\(CLDLTraining\)",
        r"include\(\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\)",
        r"include\(\$\{Slicer_EXTENSION_CPACK\}\)",
    ]
    positions = [re.search(pattern, text).start() for pattern in order]
    assert positions == sorted(positions), "top-level CMakeLists.txt is out of the template's order"
    assert set(re.findall(r"add_subdirectory\((\w+)\)", text)) == set(MODULES)


def test_s4ext_json_and_cmake_metadata_agree() -> None:
    cmake = _cmake_strings(ROOT / "CMakeLists.txt")
    s4ext = _s4ext()
    catalog = json.loads((ROOT / "CLDL.json").read_text())
    project = re.search(r"project\((\w+)\)", _cmake(ROOT / "CMakeLists.txt")).group(1)

    # catalog entry: schema v1.0.1 keys and types, file named after the project
    assert (ROOT / f"{project}.json").is_file() and (ROOT / f"{project}.s4ext").is_file()
    assert set(catalog) <= CATALOG_KEYS and {"$schema", "category", "scm_url"} <= set(catalog)
    assert catalog["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert isinstance(catalog["build_dependencies"], list) and isinstance(catalog["tier"], int)
    assert 1 <= catalog["tier"] <= 5 and catalog["category"] == "Segmentation"

    # the three agree
    depends = cmake["EXTENSION_DEPENDS"].split()
    assert depends == catalog["build_dependencies"] == s4ext["depends"].split() == ["PyTorch"]
    assert cmake["EXTENSION_CATEGORY"] == catalog["category"] == s4ext["category"]
    assert s4ext["scmurl"].removesuffix(".git") == catalog["scm_url"]
    assert s4ext["scmrevision"] == catalog["scm_revision"]
    assert s4ext["build_subdirectory"] == catalog["build_subdirectory"]
    for key, s4 in (
        ("EXTENSION_HOMEPAGE", "homepage"),
        ("EXTENSION_CONTRIBUTORS", "contributors"),
        ("EXTENSION_DESCRIPTION", "description"),
        ("EXTENSION_ICONURL", "iconurl"),
        ("EXTENSION_SCREENSHOTURLS", "screenshoturls"),
        ("EXTENSION_STATUS", "status"),
    ):
        assert cmake[key] == s4ext[s4], f"{key} differs from the s4ext's {s4}"

    # ExtensionsIndex rules: names, homepage, LICENSE, raw image URLs of files in this repository
    repo = catalog["scm_url"].rstrip("/").rsplit("/", 1)[1]
    assert repo.startswith("Slicer") and not project.startswith("Slicer")
    assert cmake["EXTENSION_HOMEPAGE"].startswith(catalog["scm_url"])
    assert (ROOT / "LICENSE").is_file()
    owner_repo = catalog["scm_url"].removeprefix("https://github.com/")
    for url in [cmake["EXTENSION_ICONURL"], *cmake["EXTENSION_SCREENSHOTURLS"].split()]:
        prefix = f"{RAW_PREFIX}{owner_repo}/{catalog['scm_revision']}/"
        assert url.startswith(prefix), f"{url} is not a raw URL of {owner_repo}"
        assert (ROOT / url.removeprefix(prefix)).is_file(), f"{url} points at a file this repository lacks"
    assert _png_size(ROOT / cmake["EXTENSION_ICONURL"].rsplit("/main/", 1)[1]) == (128, 128)


def _module_metadata(module: str) -> dict[str, object]:
    """title, categories, dependencies, contributors as written in the module's __init__."""
    tree = ast.parse((ROOT / module / f"{module}.py").read_text())
    found: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            target = ast.unparse(node.targets[0])
            if target.startswith("self.parent."):
                found[target.removeprefix("self.parent.")] = node.value
    return found


@pytest.mark.parametrize("module", MODULES)
def test_module_metadata_matches_the_extension(module: str) -> None:
    cmake = _cmake_strings(ROOT / "CMakeLists.txt")
    meta = _module_metadata(module)
    from CLDLSegmentationLib.extension import CONTRIBUTORS, HOMEPAGE

    assert ast.unparse(meta["contributors"]) == "[CONTRIBUTORS]" and CONTRIBUTORS == cmake["EXTENSION_CONTRIBUTORS"]
    assert cmake["EXTENSION_CATEGORY"] in ast.unparse(meta["categories"])
    dependencies = set(ast.literal_eval(meta["dependencies"]))
    source = (ROOT / module / f"{module}.py").read_text() + "".join(
        p.read_text() for p in (ROOT / module).glob(f"{module}Lib/*.py")
    )
    for other in MODULES:
        if other != module and re.search(rf"^\s*(from|import) {other}(Lib)?\b", source, re.MULTILINE):
            assert other in dependencies, f"{module} imports {other}'s code but does not declare the dependency"
    assert re.search(r"^from CLDLSegmentationLib.extension import CONTRIBUTORS, HOMEPAGE$", source, re.MULTILINE)
    assert cmake["EXTENSION_HOMEPAGE"].startswith(HOMEPAGE)


def test_no_two_modules_install_the_same_resource() -> None:
    """slicerMacroBuildScriptedModule copies every module's Resources/ into one qt-scripted-modules/Resources/
    folder: two modules listing the same file give two build rules for one output (Ninja: "multiple rules
    generate"). Both modules therefore share one requirements.txt, installed by CLDLSegmentation."""
    seen: dict[str, str] = {}
    for module in MODULES:
        for resource in _cmake_sets(ROOT / module / "CMakeLists.txt")["MODULE_PYTHON_RESOURCES"]:
            assert resource not in seen, f"{resource} is installed by both {seen[resource]} and {module}"
            seen[resource] = module
    from CLDLSegmentationLib.dependencies import requirementsPath

    assert requirementsPath() == ROOT / "CLDLSegmentation" / "Resources" / "requirements.txt"


def test_requirements_are_engine_dependencies_slicer_does_not_ship() -> None:
    """What the modules pip-install on first use is a subset of the engine's dependencies, never torch, numpy,
    SimpleITK or VTK (the PyTorch extension and Slicer own those)."""
    import tomllib
    from CLDLSegmentationLib.dependencies import SKIPPED_PACKAGES, loadRequirements, requirementName, requirementsPath

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    engine = {requirementName(r).lower() for r in pyproject["project"]["dependencies"]}
    names = {requirementName(r).lower() for r in loadRequirements(requirementsPath())}
    assert names <= engine
    assert not names & {s.lower() for s in SKIPPED_PACKAGES}
    tests = {requirementName(r).lower() for r in pyproject["project"]["optional-dependencies"]["test"]}
    assert {"slicer-core", "slicerio"} <= tests


def _metadataScript():
    spec = importlib.util.spec_from_file_location("extension_metadata", ROOT / "scripts" / "extension_metadata.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_every_file_agrees_with_the_extension_metadata() -> None:
    """``scripts/extension_metadata.py --check``: CMakeLists, CLDL.json, CLDL.s4ext and extension.py hold the
    URLs and contributors derived from one repository, branch and contributor line."""
    assert _metadataScript().main(["--check"]) == 0


def test_one_repository_value_moves_every_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Publishing under another name: one ``--repository`` (and ``--branch``, ``--contributors``) rewrites every
    URL; nothing of the placeholder repository is left, and the packaging checks above still hold."""
    script = _metadataScript()
    for name in ("CMAKE", "CATALOG", "S4EXT", "PYTHON"):
        path = getattr(script, name)
        copy = tmp_path / path.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
        monkeypatch.setattr(script, name, copy)
    monkeypatch.setattr(script, "ROOT", tmp_path)
    old = script.current()[0]
    assert script.main(["--repository", "jroe/SlicerCLDL", "--branch", "v1.0", "--contributors", "Jane Roe (Lab)"]) == 0
    assert script.main(["--check"]) == 0 and script.current() == ("jroe/SlicerCLDL", "v1.0", "Jane Roe (Lab)")
    texts = {p.name: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    assert not [name for name, text in texts.items() if old in text], f"{old} left behind"
    assert (
        'set(EXTENSION_ICONURL "https://raw.githubusercontent.com/jroe/SlicerCLDL/v1.0/CLDL.png")'
        in texts["CMakeLists.txt"]
    )  # a literal string, as the ExtensionsIndex checker reads it
    assert json.loads(texts["CLDL.json"])["scm_url"] == "https://github.com/jroe/SlicerCLDL"
    assert "contributors Jane Roe (Lab)" in texts["CLDL.s4ext"]
    with pytest.raises(SystemExit, match="OWNER/NAME"):
        script.main(["--repository", "https://github.com/jroe/SlicerCLDL"])
