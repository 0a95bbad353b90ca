"""The "CLDL demo brain tumour" case of Slicer's Sample Data module: shipped with the extension, loaded in seconds.

The case is ``Resources/SampleData/anatomy_00000/`` (four BraTS-like MRI sequences and the reference labels, under
5 MB), written by the engine with ``cldl sample --out CLDLSegmentation/Resources/SampleData --compact``: one
realistic anatomy-based synthetic case on 1.2 mm voxels, cropped to the head, int16. A click loads the files: no
download, no package to install, no engine run. The downloader Slicer calls (``customDownloader(source)``) is
:func:`onSampleClicked`, registered at startup by :func:`registerSample` (both need the Slicer application; the
rest is plain Python, tested on slicer-core).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .volumes import importVolume

SAMPLE_NAME = "CLDL demo brain tumour"
SAMPLE_CATEGORY = "CLDL"
#: The BraTS modalities of the case, in the demo model's order, then the reference label map.
SAMPLE_MODALITIES = ("flair", "t1", "t1ce", "t2")
NODE_NAMES = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}


def sampleFolder() -> Path:
    """The folder of the shipped case (``Resources/SampleData`` next to this package, in the source tree and in
    the installed ``qt-scripted-modules`` folder alike)."""
    return Path(__file__).resolve().parent.parent / "Resources" / "SampleData"


def findSampleFiles(folder: str | Path) -> dict[str, Path] | None:
    """``{modality: path, "seg": path}`` of the one complete case under ``folder``, or None."""
    folder = Path(folder)
    cases = sorted(p for p in folder.glob("*/") if p.is_dir()) if folder.is_dir() else []
    for case in cases:
        files = {name: case / f"{case.name}_{name}.nii.gz" for name in (*SAMPLE_MODALITIES, "seg")}
        if all(path.is_file() for path in files.values()):
            return files
    return None


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


def downloadSample(source, scene, folder: str | Path | None = None) -> list:
    """Sample Data's ``customDownloader``: load the shipped case (the source is not used)."""
    folder = Path(folder) if folder is not None else sampleFolder()
    files = findSampleFiles(folder)
    if files is None:
        raise FileNotFoundError(f"the CLDL sample case is missing from {folder}: reinstall the CLDL extension")
    return loadSampleNodes(files, scene)


def sampleSourceArguments(thumbnail: str, downloader: Callable) -> dict:
    """Keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` for the case.

    ``SampleDataSource`` needs ``uris``, ``fileNames`` and ``nodeNames`` of equal length (``len(uris)`` fails on
    None): empty lists, since ``downloader`` loads the files itself; the button shows ``sampleName``.
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
    """Sample Data's downloader: load the shipped case (seconds; nothing is downloaded or installed)."""
    import slicer
    from slicer.i18n import tr as _

    with slicer.util.tryWithErrorDisplay(_("Cannot load the CLDL demo case."), waitCursor=True):
        return downloadSample(source, slicer.mrmlScene)
    return []
