"""Outputs that are complete or absent: every file is written beside its target, then moved into place.

Each staged file lives in a hidden temporary folder next to its target (``.<name>.<pid>.<random>.part/<name>``), so
it keeps its exact name (image writers choose the format by suffix, and formats with a separate data file, such as
``.mhd``/``.nhdr``, refer to it by name) and the final move never crosses a file system. A group of files
(:func:`atomic_outputs`) is moved into place only after every one of them was written, as one set:

- a target that was absent when the run started (or when it was staged) is created exclusively (a hard link,
  which fails when the name exists), so a file that appeared meanwhile (another run, a copy) is never replaced;
- a target that existed is replaced only if it is still the same file (device, inode, size, modification time);
- when any move fails, the moves already made are undone (new files removed, replaced files restored) and the
  run fails with :class:`OutputChanged` or the OS error; SIGINT and SIGTERM are held back while the set is moved,
  so a stop signal never splits it.

Temporary folders are removed when a block fails or the process is stopped by SIGINT or SIGTERM (the command
line turns both into an exception); a process killed outright (SIGKILL, power loss) leaves its hidden ``.part``
folder behind, and the next run that writes the same output removes it once the process that made it has ended.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

PART_SUFFIX = ".part"
PREVIOUS_PREFIX = ".previous."  # a hard link to the replaced file, inside the temporary folder, until committed
STALE_AGE_S = 24 * 3600  # temporary folders of an unknown process (older cldl versions, Windows) count as stale after
FileState = tuple[int, int, int, int] | None  # (device, inode, size, mtime ns) of a file, or None when absent


class OutputChanged(FileExistsError):
    """An output path that another process created or changed while this run was going."""


def file_state(path: str | Path) -> FileState:
    """What identifies the file at ``path`` now (None when nothing is there)."""
    try:
        stat = os.lstat(path)
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def file_states(paths: Iterable[str | Path]) -> dict[Path, FileState]:
    """:func:`file_state` of several paths, keyed by absolute path (for :func:`atomic_outputs`'s ``expected``)."""
    return {_key(path): file_state(path) for path in paths}


def _key(path: str | Path) -> Path:
    """An absolute path without resolving symbolic links (the name that is replaced)."""
    return Path(os.path.abspath(path))


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs (on Windows: unknown, so assumed)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove the hidden temporary folders of ``target`` left by processes that no longer run (killed outright);
    returns the folders removed."""
    target = Path(target)
    removed = []
    prefix = f".{target.name}."
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(PART_SUFFIX)]
    except OSError:
        return removed
    for folder in candidates:
        owner = folder.name[len(prefix) :].split(".", 1)[0]
        try:
            stale = not _process_alive(int(owner)) if owner.isdigit() else False
            stale = stale or time.time() - folder.stat().st_mtime > STALE_AGE_S
        except OSError:
            continue
        if stale and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back during the block (main thread only); they take effect when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for name in ("SIGINT", "SIGTERM"):
        number = getattr(signal, name, None)
        handler = None if number is None else signal.getsignal(number)
        if handler is not None:
            previous[number] = signal.signal(number, lambda n, _frame: received.append(n))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(received):
            signal.raise_signal(number)


class StagedOutputs:
    """Files staged for one all-or-nothing commit (see :func:`atomic_outputs`).

    ``expected``: the state of targets when the run started (:func:`file_states`); a target not in it is expected
    as it is when it is staged.
    """

    def __init__(self, expected: Mapping[Path, FileState] | None = None) -> None:
        self._staged: list[tuple[Path, Path, FileState]] = []  # (temporary folder, target, expected state)
        self._expected = {_key(p): state for p, state in (expected or {}).items()}

    def path(self, target: str | Path) -> Path:
        """A temporary path to write ``target`` to (same folder, same file name, inside a hidden folder)."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        key = _key(target)
        expected = self._expected[key] if key in self._expected else file_state(target)
        folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=PART_SUFFIX, dir=target.parent))
        self._staged.append((folder, target, expected))
        return folder / target.name

    def commit(self) -> None:
        """Move every staged file into place as one set (companion files such as a ``.zraw`` first, each target
        after its companions); a staged path that was never written to is dropped. Raises :class:`OutputChanged`
        (and moves nothing) when a target is no longer as expected."""
        moves: list[tuple[Path, Path, FileState]] = []
        for folder, target, expected in self._staged:
            staged = folder / target.name
            if not staged.exists():
                continue
            for companion in sorted(folder.iterdir()):
                if companion != staged:
                    beside = target.parent / companion.name
                    moves.append((companion, beside, file_state(beside)))
            moves.append((staged, target, expected))
        with stop_signals_held():
            for _, target, expected in moves:
                _check_unchanged(target, expected)
            done: list[tuple[Path, Path | None, bool]] = []
            try:
                for source, target, expected in moves:
                    done.append(_move(source, target, expected))
            except BaseException:
                for target, previous, created in reversed(done):
                    _undo(target, previous, created)
                raise
            self.discard()

    def discard(self) -> None:
        """Remove every temporary folder (and whatever was written into it)."""
        with stop_signals_held():
            for folder, _, _ in self._staged:
                shutil.rmtree(folder, ignore_errors=True)
            self._staged.clear()


def _check_unchanged(target: Path, expected: FileState) -> None:
    """Raise OutputChanged when ``target`` is not as it was when the run started."""
    now = file_state(target)
    if now == expected:
        return
    if expected is None:
        raise OutputChanged(
            f"{target} appeared while this run was going (another run or a copy?); it was not replaced and no "
            "output was written"
        )
    raise OutputChanged(
        f"{target} was {'removed' if now is None else 'replaced or changed'} by someone else while this run was "
        "going; it was not replaced and no output was written"
    )


def _move(source: Path, target: Path, expected: FileState) -> tuple[Path, Path | None, bool]:
    """Move one staged file onto ``target``; returns what undoes it: (target, link to the replaced file, created)."""
    if source.is_dir():  # a staged folder (a cache entry): renamed as a whole, not undone
        os.replace(source, target)
        return target, None, False
    if expected is None:
        try:
            os.link(source, target)  # exclusive: fails when the name exists
        except FileExistsError:
            _check_unchanged(target, expected)
            raise
        except OSError:  # a file system without hard links: check, then rename
            _check_unchanged(target, expected)
            os.rename(source, target)
            return target, None, True
        os.unlink(source)
        return target, None, True
    previous = source.parent / (PREVIOUS_PREFIX + target.name)
    try:
        os.link(target, previous)
    except OSError:
        previous = None  # no hard links here: the replaced file cannot be restored if a later move fails
    os.replace(source, target)
    return target, previous, False


def _undo(target: Path, previous: Path | None, created: bool) -> None:
    """Put back what :func:`_move` changed (best effort: it runs while another error is raised)."""
    try:
        if previous is not None:
            os.replace(previous, target)
        elif created:
            os.unlink(target)
    except OSError:
        pass


def final_path(path: str | Path) -> Path:
    """The target a staged path will be renamed to (the path itself when it is not staged), for messages."""
    path = Path(path)
    folder = path.parent
    if folder.name.startswith(f".{path.name}.") and folder.name.endswith(PART_SUFFIX):
        return final_path(folder.parent / path.name)
    return path


@contextmanager
def atomic_outputs(expected: Mapping[Path, FileState] | None = None) -> Iterator[StagedOutputs]:
    """Stage several files: all are moved into place when the block succeeds, none when it fails; ``expected``
    (:func:`file_states` taken when the run started) protects targets from files that appear meanwhile."""
    outputs = StagedOutputs(expected)
    try:
        yield outputs
        outputs.commit()
    finally:
        outputs.discard()


@contextmanager
def atomic_path(target: str | Path, expected: Mapping[Path, FileState] | None = None) -> Iterator[Path]:
    """A temporary path for ``target``, moved onto it when the block succeeds and removed when it fails."""
    with atomic_outputs(expected) as outputs:
        yield outputs.path(target)
