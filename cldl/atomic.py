"""Outputs that are complete or absent: every file is written beside its target, then renamed into place.

Each staged file lives in a hidden temporary folder next to its target (``.<name>.<random>.part/<name>``), so it
keeps its exact name (image writers choose the format by suffix, and formats with a separate data file, such as
``.mhd``/``.nhdr``, refer to it by name) and the final rename never crosses a file system. A group of files
(:func:`atomic_outputs`) is renamed into place only after every one of them was written; when anything fails, all
temporary files are removed and existing files are left untouched. Only a process killed outright (SIGKILL, power
loss) can leave a hidden ``.part`` folder behind; it never replaces a result.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PART_SUFFIX = ".part"


class StagedOutputs:
    """Files staged for one all-or-nothing commit (see :func:`atomic_outputs`)."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary folder, target)

    def path(self, target: str | Path) -> Path:
        """A temporary path to write ``target`` to (same folder, same file name, inside a hidden folder)."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=PART_SUFFIX, dir=target.parent))
        self._staged.append((folder, target))
        return folder / target.name

    def commit(self) -> None:
        """Rename every staged file into place (companion files such as a ``.zraw`` first, the target last); a
        staged path that was never written to is dropped."""
        for folder, target in self._staged:
            staged = folder / target.name
            if not staged.exists():
                continue
            for companion in sorted(folder.iterdir()):
                if companion != staged:
                    os.replace(companion, target.parent / companion.name)
            os.replace(staged, target)
        self.discard()

    def discard(self) -> None:
        """Remove every temporary folder (and whatever was written into it)."""
        for folder, _ in self._staged:
            shutil.rmtree(folder, ignore_errors=True)
        self._staged.clear()


def final_path(path: str | Path) -> Path:
    """The target a staged path will be renamed to (the path itself when it is not staged), for messages."""
    path = Path(path)
    folder = path.parent
    if folder.name.startswith(f".{path.name}.") and folder.name.endswith(PART_SUFFIX):
        return final_path(folder.parent / path.name)
    return path


@contextmanager
def atomic_outputs() -> Iterator[StagedOutputs]:
    """Stage several files: all are renamed into place when the block succeeds, none when it fails."""
    outputs = StagedOutputs()
    try:
        yield outputs
        outputs.commit()
    finally:
        outputs.discard()


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path for ``target``, renamed onto it when the block succeeds and removed when it fails."""
    with atomic_outputs() as outputs:
        yield outputs.path(target)
