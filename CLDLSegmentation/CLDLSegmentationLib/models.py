"""Which models exist and what they expect: registry names and local checkpoint files.

Registry models are described without loading torch (their task is known by name); checkpoint files, torch and
the device are described by ``cldl info --json`` in a subprocess, so that torch (and CUDA) never load inside
Slicer's own process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cldl.defaults import TORCH_REQUIREMENT

from .process import JsonLinesProcess, ProcessError, engineCommand, engineEnvironment, schedulePolling


@dataclass(frozen=True)
class ModelInfo:
    """A model the user can pick: registry name or checkpoint path, its task, and a description."""

    key: str  # registry name or absolute checkpoint path (what `cldl segment --model` takes)
    title: str
    task: Any  # cldl.tasks.Task
    description: str = ""
    available: bool = True
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Input names, one volume each, in the model's order (none for a model that cannot be used)."""
        return tuple(self.task.modalities) if self.task is not None else ()

    @property
    def usable(self) -> bool:
        """Whether the model can run: its task is known (a checkpoint being read or unreadable has none)."""
        return self.task is not None


def registryModels() -> list[ModelInfo]:
    """The engine's registered models (bundled or downloadable), no torch needed."""
    from cldl.registry import list_models
    from cldl.tasks import get_task

    models = []
    for row in list_models():
        models.append(
            ModelInfo(
                key=str(row["name"]),
                title=str(row["name"]) + ("" if row["available"] else " (downloads on first use)"),
                task=get_task(str(row["task"])),
                description=str(row["description"]),
                available=bool(row["available"]),
            )
        )
    return models


def storedPaths(value: Any) -> list[str]:
    """A path-list setting as a list: Slicer's INI settings give a one-item list back as a plain string, and an
    empty list as None or an empty string."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, Path)):
        return [str(value)]
    return [str(v) for v in value if v]


def engineInfoProcess(checkpoints: Sequence[str | Path] = (), python: str | None = None) -> JsonLinesProcess:
    """A (not yet started) ``cldl info --json`` run describing torch, the device and ``checkpoints``."""
    arguments = ["info", "--json"]
    for path in checkpoints:
        arguments += ["--checkpoint", str(path)]
    return JsonLinesProcess(engineCommand(arguments, python), env=engineEnvironment())


def readEngineInfo(process: JsonLinesProcess) -> dict[str, Any]:
    """The facts of a finished ``cldl info`` run; raises :class:`ProcessError` if it failed."""
    process.raiseForStatus()
    for event in process.events:
        if event.get("event") == "info":
            return event
    raise ProcessError("the engine printed no information (cldl info)")


def engineInfo(checkpoints: Sequence[str | Path] = (), python: str | None = None, timeout: float = 300) -> dict:
    """``cldl info`` in a subprocess, blocking: torch never loads in the calling process."""
    process = engineInfoProcess(checkpoints, python).start()
    process.wait(timeout)
    return readEngineInfo(process)


def startEngineInfo(
    checkpoints: Sequence[str | Path],
    onDone: Callable[[dict[str, Any] | None, str | None], None],
    singleShot: Callable[[int, Callable[[], None]], None],
    python: str | None = None,
) -> JsonLinesProcess:
    """``cldl info`` without blocking: ``onDone(info, None)`` or ``onDone(None, error)`` once it has finished
    (nothing once cancelled)."""
    process = engineInfoProcess(checkpoints, python).start()

    def poll() -> bool:
        process.poll()
        if process.running:
            return True
        if process.cancelled:
            return False
        try:
            info = readEngineInfo(process)
        except ProcessError as exc:
            onDone(None, str(exc))
        else:
            onDone(info, None)
        return False

    schedulePolling(poll, singleShot, ms=100)
    return process


def checkpointModels(info: dict[str, Any]) -> tuple[list[ModelInfo], list[str]]:
    """The checkpoints ``cldl info`` described, as models, and one message per checkpoint it could not read."""
    from cldl.tasks import Task

    models, errors = [], []
    for entry in info.get("checkpoints") or []:
        path = Path(entry["path"])
        if entry.get("error"):
            errors.append(f"{path}: {entry['error']}")
            continue
        task = Task.from_dict(entry["task"])
        details = [f"task {task.name}", f"patch {'x'.join(str(p) for p in entry.get('patch_size') or [])}"]
        if entry.get("epoch") is not None:
            details.append(f"epoch {entry['epoch']}")
        models.append(ModelInfo(str(path), f"{path.name} ({path.parent.name})", task, ", ".join(details)))
    return models, errors


def modelList(registry: Sequence[ModelInfo], checkpoints: Sequence[ModelInfo]) -> list[ModelInfo]:
    """What the model combo box lists: registry models, then each checkpoint once (in the given order)."""
    models = list(registry)
    keys = {m.key for m in models}
    for info in checkpoints:
        if info.key not in keys:
            models.append(info)
            keys.add(info.key)
    return models


def checkpointProblems(info: dict[str, Any]) -> dict[str, str]:
    """``{path: reason}`` of the checkpoints ``cldl info`` could not read."""
    return {str(e["path"]): str(e["error"]) for e in info.get("checkpoints") or [] if e.get("error")}


def unavailableModel(key: str, problem: str | None = None) -> ModelInfo:
    """The entry of a chosen model that is not (yet) in the list: a checkpoint being read, one that cannot be read
    (``problem``), or a name that is neither a registered model nor a file. It cannot run (no task) and says why."""
    path = Path(key)
    name = path.name or key
    if problem:
        return ModelInfo(key, f"{name} (cannot be used)", None, problem, available=False)
    if path.is_file():
        return ModelInfo(key, f"{name} (reading...)", None, "Reading the checkpoint (cldl info)...", available=False)
    reason = f"{key}: not a registered model and no such checkpoint file: load a checkpoint or choose another model"
    return ModelInfo(key, f"{name} (missing)", None, reason, available=False)


def modelChoices(
    registry: Sequence[ModelInfo],
    checkpoints: Sequence[ModelInfo],
    chosen: str | None,
    problems: dict[str, str] | None = None,
) -> list[ModelInfo]:
    """What the model combo box lists: :func:`modelList`, plus the chosen model (the parameter node's) when it is
    not there, as an :func:`unavailableModel` entry, so that the combo box and the parameter node always agree."""
    models = modelList(registry, checkpoints)
    if chosen and chosen not in {m.key for m in models}:
        models.append(unavailableModel(chosen, (problems or {}).get(chosen)))
    return models


def queriedCheckpoints(stored: Any, chosen: str | None, registry: Sequence[ModelInfo]) -> list[str]:
    """The checkpoint files to ask ``cldl info`` about: the remembered ones and the chosen model (a scene saved
    with a checkpoint that was never loaded here), each once, existing files only."""
    names = {m.key for m in registry}
    paths = storedPaths(stored) + ([chosen] if chosen and chosen not in names else [])
    return [p for p in dict.fromkeys(paths) if Path(p).is_file()]


def rememberCheckpoint(stored: Any, path: str | Path) -> list[str]:
    """The new value of the remembered-checkpoints setting after loading ``path`` (moved to the end)."""
    key = str(Path(path).resolve())
    return [p for p in storedPaths(stored) if p != key] + [key]


def defaultModel() -> str:
    """The engine registry's default model (never hard-coded in the modules)."""
    from cldl.registry import DEFAULT_MODEL

    return DEFAULT_MODEL


def describeModel(key: str, python: str | None = None) -> ModelInfo:
    """A registry name or a checkpoint path as :class:`ModelInfo` (a checkpoint is read by ``cldl info``)."""
    for info in registryModels():
        if info.key == key:
            return info
    if Path(key).is_file():
        models, errors = checkpointModels(engineInfo([key], python))
        if errors or not models:
            raise ValueError("; ".join(errors) or f"{key}: not a CLDL checkpoint (is torch installed?)")
        return models[0]
    raise ValueError(f"unknown model {key!r}: not a registered model name and not a checkpoint file")


def describeTorch(info: dict[str, Any]) -> str:
    """One line for the GUI: ``torch 2.13.0 (CUDA 12.8): NVIDIA ...`` or guidance when torch is missing or old."""
    if not info.get("installed"):
        return (
            "PyTorch is not installed yet: the first Apply installs it after asking (roughly 0.2 GB for the CPU "
            "build, 2.5-3.5 GB for a GPU build)."
        )
    if info.get("supported") is False:
        return f"torch {info['version']} is too old (CLDL needs torch {TORCH_REQUIREMENT}): use Upgrade PyTorch."
    cuda = f" (CUDA {info['cudaVersion']})" if info.get("cudaVersion") else " (CPU build)"
    where = f"GPU: {info['deviceName']}" if info.get("cuda") else "no usable GPU, runs on the CPU"
    return f"torch {info['version']}{cuda}; {where}"
