"""Which models exist and what they expect: registry names and local checkpoint files.

Registry models are described without loading torch (their task is known by name); a checkpoint file is opened
with ``cldl.checkpoint.load_checkpoint`` (``weights_only=True``), which needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
        """Input names, one volume each, in the model's order."""
        return tuple(self.task.modalities)


def registryModels() -> list[ModelInfo]:
    """The engine's registered models (bundled or downloadable), no torch needed."""
    from cldl.tasks import get_task
    from cldl.zoo import list_models

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


def checkpointModel(path: str | Path) -> ModelInfo:
    """Describe a local checkpoint file (loads it safely; needs torch)."""
    from cldl.checkpoint import load_checkpoint

    path = Path(path).resolve()
    checkpoint = load_checkpoint(path)
    provenance = dict(checkpoint.provenance)
    epoch = provenance.get("epoch")
    details = [f"task {checkpoint.task.name}", f"patch {'x'.join(str(p) for p in checkpoint.patch_size)}"]
    if epoch is not None:
        details.append(f"epoch {epoch}")
    return ModelInfo(
        key=str(path),
        title=f"{path.name} ({path.parent.name})",
        task=checkpoint.task,
        description=", ".join(details),
        provenance=provenance,
    )


def describeModel(key: str) -> ModelInfo:
    """A registry name or a checkpoint path as :class:`ModelInfo`."""
    for info in registryModels():
        if info.key == key:
            return info
    if Path(key).is_file():
        return checkpointModel(key)
    raise ValueError(f"unknown model {key!r}: not a registered model name and not a checkpoint file")


def torchInfo() -> dict[str, Any]:
    """Whether torch is installed, its version, and the device ``auto`` would pick (imports torch if present)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return {"installed": False, "version": None, "cuda": False, "device": "cpu", "deviceName": "CPU"}
    import torch

    cuda = bool(torch.cuda.is_available())
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    return {
        "installed": True,
        "version": str(torch.__version__),
        "cudaVersion": torch.version.cuda,
        "cuda": cuda,
        "device": "cuda" if cuda else "cpu",
        "deviceName": name,
    }


def describeTorch(info: dict[str, Any]) -> str:
    """One line for the GUI: ``torch 2.13.0 (CUDA 12.8): NVIDIA ...`` or guidance when torch is missing."""
    if not info.get("installed"):
        return "PyTorch is not installed yet: it will be installed (after asking) on the first Apply."
    cuda = f" (CUDA {info['cudaVersion']})" if info.get("cudaVersion") else " (CPU build)"
    where = f"GPU: {info['deviceName']}" if info.get("cuda") else "no usable GPU, runs on the CPU"
    return f"torch {info['version']}{cuda}; {where}"
