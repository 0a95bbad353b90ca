"""The "CLDL demo brain tumour" case of Slicer's Sample Data module: made once by the engine, then loaded.

The engine (``cldl sample``, a subprocess: torch and nilearn never load in Slicer's process) writes one
anatomy-based BraTS-like case into a cache folder; a later click only loads the files. The downloader Slicer calls
(``customDownloader(source)``) is :func:`onSampleClicked`, registered at startup by :func:`registerSample`
(both need the Slicer application; the rest is plain Python, tested on slicer-core).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from .process import ProcessError, engineCommand, engineEnvironment, popenOptions
from .volumes import importVolume

SAMPLE_NAME = "CLDL demo brain tumour"
SAMPLE_CATEGORY = "CLDL"
SAMPLE_SEED = 0
#: The BraTS modalities of the case, in the demo model's order, then the reference label map.
SAMPLE_MODALITIES = ("flair", "t1", "t1ce", "t2")
NODE_NAMES = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}


def sampleFolder(cacheRoot: str | Path) -> Path:
    """The folder the case is written into, under a cache root (e.g. ``slicer.app.cachePath``)."""
    return Path(cacheRoot) / "CLDL" / "SampleData"


def findSampleFiles(folder: str | Path) -> dict[str, Path] | None:
    """``{modality: path, "seg": path}`` of the one complete case under ``folder``, or None."""
    folder = Path(folder)
    cases = sorted(p for p in folder.glob("*/") if p.is_dir()) if folder.is_dir() else []
    for case in cases:
        files = {name: case / f"{case.name}_{name}.nii.gz" for name in (*SAMPLE_MODALITIES, "seg")}
        if all(path.is_file() for path in files.values()):
            return files
    return None


def sampleCommand(folder: str | Path, seed: int = SAMPLE_SEED, python: str | None = None) -> list[str]:
    """The engine command that writes the case (``cldl sample --out DIR --seed N``)."""
    return engineCommand(["sample", "--out", str(folder), "--seed", str(seed), "--progress", "none"], python)


def makeSample(
    folder: str | Path,
    seed: int = SAMPLE_SEED,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    python: str | None = None,
) -> dict[str, Path]:
    """The case's files, running the engine first unless a complete case is already there."""
    files = findSampleFiles(folder)
    if files is not None:
        return files
    command = sampleCommand(folder, seed, python)
    done = run(command, capture_output=True, text=True, env=engineEnvironment(), **popenOptions(newGroup=False))
    lines = [line for line in (done.stderr or "").splitlines() if line.strip()]
    if done.returncode != 0:
        raise ProcessError(lines[-1] if lines else f"{' '.join(command)} failed with exit status {done.returncode}")
    files = findSampleFiles(folder)
    if files is None:
        raise ProcessError(f"the engine wrote no complete case into {folder}")
    return files


def loadSampleNodes(files: dict[str, Path], scene, task=None) -> list:
    """Load the four volumes and the reference segmentation; returns the nodes (volumes first)."""
    from .segmentations import labelmapToSegmentation

    if task is None:
        from cldl.tasks import BRATS as task
    volumes = [importVolume(files[m], scene, NODE_NAMES[m]) for m in SAMPLE_MODALITIES]
    labelmap = importVolume(files["seg"], scene, "reference labels", labelmap=True)
    try:
        segmentation, _ = labelmapToSegmentation(
            labelmap, task, referenceVolume=volumes[0], scene=scene, name=f"{SAMPLE_NAME} reference"
        )
    finally:
        scene.RemoveNode(labelmap)
    return [*volumes, segmentation]


def downloadSample(source, cacheRoot: str | Path, scene, run: Callable = subprocess.run) -> list:
    """Sample Data's ``customDownloader``: make the case if needed and load it (the source is not used)."""
    return loadSampleNodes(makeSample(sampleFolder(cacheRoot), run=run), scene)


def sampleSourceArguments(thumbnail: str, downloader: Callable) -> dict:
    """Keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` for the case.

    ``SampleDataSource`` needs ``uris``, ``fileNames`` and ``nodeNames`` of equal length (``len(uris)`` fails on
    None): empty lists, since ``downloader`` makes and loads the files itself; the button shows ``sampleName``.
    """
    return {
        "category": SAMPLE_CATEGORY,
        "sampleName": SAMPLE_NAME,
        "uris": [],
        "fileNames": [],
        "nodeNames": [],
        "thumbnailFileName": thumbnail,
        "customDownloader": downloader,
    }


def registerSample(thumbnail: str) -> None:
    """Register the case in Slicer's Sample Data module (called once startup has completed)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sampleSourceArguments(thumbnail, onSampleClicked))


def onSampleClicked(source) -> list:
    """Sample Data's downloader: the engine makes the case once (about a minute), then it is loaded."""
    import slicer
    from slicer.i18n import tr as _

    from .dependencies import ensureSampleDependencies

    slicer.util.showStatusMessage(_("Preparing the CLDL demo case (the first time takes about a minute)..."))
    with slicer.util.tryWithErrorDisplay(_("Cannot prepare the CLDL demo case."), waitCursor=True):
        ensureSampleDependencies(requester="CLDL")
        return downloadSample(source, slicer.app.cachePath, slicer.mrmlScene)
    return []
