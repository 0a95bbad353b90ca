"""Model registry: the bundled demo model, downloadable models (URL + sha256) and local checkpoints.

Downloads go to a cache outside the installation (``$CLDL_CACHE`` or ``~/.cache/cldl/models``) and are kept
only if their sha256 matches the registry; checkpoints are always loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BUNDLED_DIR = Path(__file__).parent / "models"
ANATOMY_MODEL = "brats-anatomy"
"""Trained on anatomy-based synthetic cases (cldl.data.anatomy): the default, the one for real brains."""
PHANTOM_MODEL = "brats-phantom-demo"
"""Trained on the procedural phantoms only: kept for the fast phantom-based tests and benchmarks."""
DEFAULT_MODEL = ANATOMY_MODEL


@dataclass(frozen=True)
class ModelEntry:
    """One registered model."""

    name: str
    description: str
    task: str
    filename: str
    sha256: str
    url: str | None = None  # None: bundled with the package

    @property
    def bundled(self) -> bool:
        """Whether the file ships inside the package."""
        return self.url is None


REGISTRY: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry(
            name=ANATOMY_MODEL,
            description="Small CLDL network (base width 8, 2 mm, whole-brain context) trained on synthetic tumours in "
            "real anatomy (MNI152, realistic and domain-randomised contrasts); research use, not for clinical use",
            task="brats",
            filename="cldl_brats_anatomy.pt",
            sha256="22e8047dde86b98c3e755524cd150bb1baf301d5a144596dc6120b04f42199bf",
        ),
        ModelEntry(
            name=PHANTOM_MODEL,
            description="Small CLDL network (base width 8) trained on synthetic BraTS-like phantoms; demo only, "
            "not for clinical use",
            task="brats",
            filename="cldl_brats_phantom_demo.pt",
            sha256="ee6f704471b152a7db308c96e2104de2f8243d12ffdcde65f68802fc309a7903",
        ),
    )
}


def cache_dir() -> Path:
    """Folder for downloaded models."""
    return Path(os.environ.get("CLDL_CACHE", Path.home() / ".cache" / "cldl" / "models"))


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, sha256: str, target: Path) -> Path:
    """Download to ``target`` through a temporary file, keeping it only if the sha256 matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(handle)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        actual = sha256_of(tmp)
        if actual != sha256:
            raise ValueError(f"download of {url} has sha256 {actual}, expected {sha256}: refusing to use it")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def resolve_model(name_or_path: str | Path) -> Path:
    """The checkpoint file for a registry name or a path; downloads (and verifies) registry models on demand."""
    candidate = Path(name_or_path)
    if str(name_or_path) not in REGISTRY:
        if candidate.is_file():
            return candidate
        raise ValueError(
            f"unknown model {str(name_or_path)!r}: not a file and not one of {sorted(REGISTRY)} "
            "(see `cldl models list`)"
        )
    entry = REGISTRY[str(name_or_path)]
    if entry.bundled:
        path = BUNDLED_DIR / entry.filename
        if not path.is_file():
            raise FileNotFoundError(f"bundled model file {path} is missing; reinstall cldl")
        if sha256_of(path) != entry.sha256:
            raise ValueError(f"bundled model file {path} does not match its sha256 (damaged?); reinstall cldl")
        return path
    path = cache_dir() / entry.filename
    if path.is_file() and sha256_of(path) == entry.sha256:
        return path
    return download(entry.url, entry.sha256, path)


def list_models() -> list[dict[str, str | bool]]:
    """Registry entries with whether each file is available locally and which one is the default."""
    rows = []
    for entry in REGISTRY.values():
        local = (BUNDLED_DIR if entry.bundled else cache_dir()) / entry.filename
        rows.append(
            {
                "name": entry.name,
                "task": entry.task,
                "description": entry.description,
                "source": "bundled" if entry.bundled else entry.url,
                "available": local.is_file(),
                "default": entry.name == DEFAULT_MODEL,
                "path": str(local),
            }
        )
    return rows
