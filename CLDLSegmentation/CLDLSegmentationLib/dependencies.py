"""Third-party packages the engine needs, installed on first use after asking; never at import time.

torch comes from the PyTorch extension (``PyTorchUtils``, which picks the CUDA or CPU build for the machine);
the small pure-Python rest (``Resources/requirements.txt``) through ``slicer.packaging.pip_ensure`` (Slicer
>= 5.12) or ``slicer.util.pip_install`` (older Slicer). Slicer's own numpy, SimpleITK and VTK are never touched.
The checks are plain Python; the installers need the Slicer application and are only called from the widgets.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from cldl.defaults import TORCH_REQUIREMENT, torch_supported

#: Packages Slicer ships (or the PyTorch extension manages): never installed or upgraded by CLDL.
SKIPPED_PACKAGES = ("torch", "numpy", "SimpleITK", "vtk")
#: Slicer's own packages that no indirect dependency may replace: pinned to their installed versions for pip.
PROTECTED_PACKAGES = ("numpy", "SimpleITK", "vtk")


#: What installing PyTorch downloads, roughly, by build (the PyTorch extension picks the CUDA build when it finds an
#: NVIDIA driver). The CPU build installs to about 0.75 GB on disk (``du -sh site-packages/torch`` of torch 2.13).
TORCH_DOWNLOAD = {
    "cuda": "roughly 2.5-3.5 GB to download (about 5 GB on disk) for the GPU (CUDA) build, picked when an NVIDIA "
    "driver is found",
    "cpu": "roughly 0.2 GB to download (about 0.75 GB on disk) for the CPU-only build otherwise",
}


class DependencyError(RuntimeError):
    """A dependency that is missing and was not (or could not be) installed, with what to do about it."""


def requirementsPath() -> Path:
    """The one ``requirements.txt`` of both modules (``Resources/`` next to this package, in the source tree and
    in the installed ``qt-scripted-modules`` folder alike)."""
    return Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"


def noDepsRequirementsPath() -> Path:
    """Requirements installed with ``pip --no-deps`` (packages whose data only is used: deepbet's models)."""
    return requirementsPath().with_name("requirements-nodeps.txt")


def loadRequirements(path: str | Path) -> list[str]:
    """Requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def requirementName(requirement: str) -> str:
    """The distribution name of a requirement line (``nibabel>=5.0`` -> ``nibabel``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1)


def _satisfied(requirement: str) -> bool:
    """Whether an installed distribution satisfies the requirement (name only if ``packaging`` is missing)."""
    name = requirementName(requirement)
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with Slicer and pip
        return True
    return Requirement(requirement).specifier.contains(version, prereleases=True)


def missingRequirements(requirements: Sequence[str]) -> list[str]:
    """The requirements that are not satisfied, skipping packages Slicer manages itself."""
    skipped = {s.lower() for s in SKIPPED_PACKAGES}
    return [r for r in requirements if requirementName(r).lower() not in skipped and not _satisfied(r)]


def protectedVersions() -> dict[str, str]:
    """Installed versions of :data:`PROTECTED_PACKAGES` that pip knows (have distribution metadata)."""
    versions = {}
    for name in PROTECTED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def writeConstraints(versions: dict[str, str], folder: str | Path) -> Path:
    """A pip constraints file (``name==version`` per line) pinning ``versions``; returns its path."""
    path = Path(folder) / "cldl-constraints.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}=={version}\n" for name, version in sorted(versions.items())))
    return path


def changedVersions(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """``name before -> after`` for each protected package an install changed (or removed)."""
    return [f"{n} {v} -> {after.get(n, 'removed')}" for n, v in sorted(before.items()) if after.get(n) != v]


def torchInstalled() -> bool:
    """Whether torch can be imported (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def installedTorchVersion() -> str | None:
    """The installed torch version from its metadata (without importing torch), or None."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def missingDependencies() -> list[str]:
    """What must be installed before the engine can run: torch (new enough) and the requirements file."""
    version = installedTorchVersion()
    torch = [] if version is not None and torch_supported(version) else [f"torch{TORCH_REQUIREMENT}"]
    requirements = loadRequirements(requirementsPath()) + loadRequirements(noDepsRequirementsPath())
    return torch + missingRequirements(requirements)


def _pyTorchUtilsLogic():  # pragma: no cover - needs the Slicer application and the PyTorch extension
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise DependencyError(
            "CLDL needs PyTorch, which it installs through the 'PyTorch' extension. Install the PyTorch extension "
            "from the Extensions Manager (View > Extensions Manager, search 'PyTorch'), restart Slicer and try "
            "again."
        ) from None
    return PyTorchUtils.PyTorchUtilsLogic()


def installQuestion(missing: Sequence[str], requester: str = "CLDL") -> str:
    """The one question asked before installing ``missing`` (from :func:`missingDependencies`): what will be
    downloaded, roughly how big, and that it takes minutes."""
    lines = [f"{requester} needs these Python packages, which will now be downloaded and installed into Slicer:"]
    for requirement in missing:
        if requirementName(requirement) == "torch":
            lines.append(f"- PyTorch ({requirement}) through the PyTorch extension: {TORCH_DOWNLOAD['cuda']}, or "
                         f"{TORCH_DOWNLOAD['cpu']};")  # fmt: skip
        else:
            lines.append(f"- {requirement}: a few MB;")
    lines.append("This takes several minutes (Slicer may not respond meanwhile) and is done only once. Continue?")
    return "\n".join(lines)


def ensureTorch(askConfirmation: bool = True) -> None:  # pragma: no cover - needs the Slicer application
    """Install torch through the PyTorch extension (asking first unless already asked), or raise
    :class:`DependencyError`; a torch older than the engine supports is refused with the way to upgrade it."""
    version = installedTorchVersion()
    if version is not None:
        if not torch_supported(version):
            raise DependencyError(
                f"torch {version} is too old: CLDL needs torch {TORCH_REQUIREMENT}. Press 'Install / upgrade "
                "PyTorch' (or use the PyTorch Utils module), then restart Slicer."
            )
        return
    logic = _pyTorchUtilsLogic()
    torch = logic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        raise DependencyError(
            "PyTorch is required to run CLDL models. Install it from the 'PyTorch Utils' module (choose the CUDA "
            "version of your GPU, or CPU) and try again."
        )


def upgradeTorch() -> bool:  # pragma: no cover - needs the Slicer application and the PyTorch extension
    """Install, upgrade (to :data:`TORCH_REQUIREMENT`) or reinstall torch after asking; True if something was
    installed (Slicer must then be restarted if torch was loaded before)."""
    import slicer

    logic = _pyTorchUtilsLogic()
    version = installedTorchVersion()
    if version is not None and torch_supported(version):
        question = f"torch {version} is installed and supported. Reinstall it (the build that fits this computer)?"
        if not slicer.util.confirmOkCancelDisplay(question, windowTitle="CLDL"):
            return False
        logic.uninstallTorch()
    if logic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT) is None:
        return False
    if slicer.util.confirmYesNoDisplay("PyTorch was installed. Restart Slicer now to use it?", windowTitle="CLDL"):
        slicer.util.restart()
    return True


def ensureRequirements(
    requirements: Sequence[str],
    confirm: Callable[[str], bool] | None = None,
    requester: str = "CLDL",
    prompt: bool = True,
) -> None:
    """Install missing requirement lines after asking, with Slicer's numpy, SimpleITK and VTK pinned to their
    installed versions (a pip constraints file: ``pip_ensure(constraints=...)`` on Slicer >= 5.12,
    ``pip_install([..., "-c", file])`` before), then check that none of them changed."""
    import slicer

    missing = missingRequirements(requirements)
    if not missing:
        return
    before = protectedVersions()
    constraints = writeConstraints(before, slicer.util.tempDirectory("CLDLPip"))
    try:
        import slicer.packaging as packaging

        packaging.pip_ensure(missing, constraints=str(constraints), prompt_install=prompt, requester=requester)
    except (ImportError, AttributeError):
        confirm = confirm or (lambda text: slicer.util.confirmOkCancelDisplay(text, windowTitle=requester))
        if prompt and not confirm(installQuestion(missing, requester)):
            raise DependencyError(f"{requester} cannot run without {', '.join(missing)}") from None
        slicer.util.pip_install([*missing, "-c", str(constraints)])
    changed = changedVersions(before, protectedVersions())
    if changed:
        raise DependencyError(
            f"installing {', '.join(missing)} changed Slicer's own packages ({'; '.join(changed)}); restart Slicer, "
            "and if it misbehaves reinstall it"
        )
    still = missingRequirements(requirements)
    if still:
        raise DependencyError(f"installing {', '.join(still)} failed; see the Python console for pip's output")


def ensureDependencies(requester: str = "CLDL", confirm: Callable[[str], bool] | None = None) -> None:
    """After one question that says what will be downloaded and roughly how big (:func:`installQuestion`): torch
    (PyTorch extension) first, then the rest (:func:`requirementsPath`). Nothing is asked when all is there."""
    missing = missingDependencies()
    if not missing:
        return
    if confirm is None:
        import slicer

        def confirm(text: str) -> bool:
            return slicer.util.confirmOkCancelDisplay(text, windowTitle=requester)

    if not confirm(installQuestion(missing, requester)):
        raise DependencyError(f"{requester} cannot run without {', '.join(missing)}")
    ensureTorch(askConfirmation=False)
    ensureRequirements(loadRequirements(requirementsPath()), requester=requester, prompt=False)
    ensureWithoutDependencies(loadRequirements(noDepsRequirementsPath()))


def ensureWithoutDependencies(requirements: Sequence[str]) -> None:
    """Install missing requirement lines with ``pip --no-deps`` (nothing else is pulled in, so Slicer's own packages
    cannot change), or raise :class:`DependencyError`."""
    import slicer

    missing = missingRequirements(requirements)
    if not missing:
        return
    slicer.util.pip_install(["--no-deps", *missing])
    still = missingRequirements(requirements)
    if still:
        raise DependencyError(f"installing {', '.join(still)} failed; see the Python console for pip's output")
