"""A disk cache of preprocessed cases, read back as memory-mapped arrays.

Each entry is a folder named by the SHA-256 of everything that determines the result: the cache format, the
preprocessing parameters, the task's modalities and label values, how the case's files are read (channels, label
map) and each file's resolved path, size and modification time. Changing any of them gives a new entry, so an entry
is never stale; old entries are simply no longer used (delete the folder to reclaim the space).

Entries are written to a temporary folder and renamed into place (:mod:`cldl.files.atomic_writes`), so concurrent
writers (several training processes) and interrupted runs never leave a half-written entry. The arrays are opened with
``np.load(mmap_mode="c")``: the operating system keeps them in its page cache, so after the first epoch (and in
later runs) reading a case costs what reading memory costs, and training sets larger than memory still work.

Location: ``$CLDL_DATA_CACHE`` or ``~/.cache/cldl/preprocessed``; the training config's ``cache`` key overrides it
(``null`` disables the cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..files.atomic_writes import atomic_path
from ..files.geometry import Geometry
from ..tasks import Task
from .cases import load_case
from .layouts import CaseFiles
from .preprocess import Orientation, PreprocessConfig, Preprocessed

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$CLDL_DATA_CACHE`` or ``~/.cache/cldl/preprocessed``."""
    return Path(os.environ.get("CLDL_DATA_CACHE") or Path.home() / ".cache" / "cldl" / "preprocessed")


def _file_stats(path: Path) -> list[Any]:
    """Resolved path, size and modification time of a file, or of every file of a (DICOM) folder."""
    path = Path(path)
    if path.is_dir():
        return [_file_stats(p) for p in sorted(path.iterdir()) if p.is_file()]
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def case_key(case: CaseFiles, task: Task, config: PreprocessConfig) -> str:
    """The cache key of one case (hex SHA-256)."""
    description = {
        "version": CACHE_VERSION,
        "preprocess": config.to_dict(),
        "modalities": list(task.modalities),
        "label_values": list(task.label_values),
        "channels": None if case.channels is None else list(case.channels),
        "label_map": [list(pair) for pair in case.label_map],
        "unknown_labels": case.unknown_labels,
        "images": [_file_stats(p) for p in case.images],
        "label": None if case.label is None else _file_stats(case.label),
    }
    text = json.dumps(description, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class PreprocessCache:
    """Preprocessed cases on disk, keyed by :func:`case_key`."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def load(self, case: CaseFiles, task: Task, config: PreprocessConfig) -> Preprocessed:
        """The preprocessed case: memory-mapped from the cache, or computed, stored and then memory-mapped."""
        key = case_key(case, task, config)
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        self.put(key, load_case(case, task, config))
        cached = self.get(key)
        if cached is None:  # pragma: no cover - the folder vanished under us
            raise OSError(f"{self.folder}: the cache entry {key} could not be read back")
        return cached

    def entry(self, key: str) -> Path:
        """The folder of an entry."""
        return self.folder / key[:2] / key

    def get(self, key: str) -> Preprocessed | None:
        """A cached case (arrays memory-mapped copy-on-write), or None; a damaged entry is removed."""
        folder = self.entry(key)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            images = np.load(folder / "images.npy", mmap_mode="c")
            labels = np.load(folder / "labels.npy", mmap_mode="c") if meta["has_labels"] else None
            return Preprocessed(
                images=images,
                bbox=tuple(tuple(int(v) for v in pair) for pair in meta["bbox"]),
                input_shape=tuple(meta["input_shape"]),
                labels=labels,
                grid_shape=tuple(meta["grid_shape"]),
                grid=None if meta["grid"] is None else Geometry.from_dict(meta["grid"]),
                input_geometry=None if meta["input_geometry"] is None else Geometry.from_dict(meta["input_geometry"]),
                orientation=Orientation(tuple(meta["orientation"]["axes"]), tuple(meta["orientation"]["flips"])),
                resampled=bool(meta["resampled"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def put(self, key: str, case: Preprocessed) -> None:
        """Store a case atomically (a concurrent writer of the same entry wins harmlessly)."""
        target = self.entry(key)
        try:
            with atomic_path(target) as tmp:
                tmp.mkdir()
                np.save(tmp / "images.npy", np.ascontiguousarray(case.images, dtype=np.float32))
                if case.labels is not None:
                    np.save(tmp / "labels.npy", np.ascontiguousarray(case.labels))
                meta = {
                    "bbox": [list(pair) for pair in case.bbox],
                    "input_shape": list(case.input_shape),
                    "grid_shape": list(case.grid_shape),
                    "grid": None if case.grid is None else case.grid.to_dict(),
                    "input_geometry": None if case.input_geometry is None else case.input_geometry.to_dict(),
                    "orientation": {"axes": list(case.orientation.axes), "flips": list(case.orientation.flips)},
                    "resampled": case.resampled,
                    "has_labels": case.labels is not None,
                }
                (tmp / "meta.json").write_text(json.dumps(meta))  # written last: an entry with meta.json is complete
        except OSError:
            if not (target / "meta.json").is_file():  # another process stored the same entry first: fine
                raise


def open_cache(setting: str | None) -> PreprocessCache | None:
    """The cache named by a training config's ``cache`` value: ``"auto"`` (default location), a folder, or None."""
    if setting is None or str(setting).lower() in ("", "none", "off", "false"):
        return None
    return PreprocessCache(None if str(setting).lower() == "auto" else setting)
