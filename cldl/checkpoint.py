"""Checkpoint files: one ``.pt`` that ``torch.load(weights_only=True)`` reads, holding everything inference needs.

Layout (format 1)::

    {"format": "cldl-checkpoint", "format_version": 1,
     "model_config": {...}, "task": {...}, "preprocess": {...}, "patch_size": [D, H, W],
     "provenance": {"seed", "epoch", "metrics", "code_version", "created", "command", ...},
     "state_dict": {...}, "training_state": {...} | None}
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint_header import FORMAT, FORMAT_VERSION, MAX_PATCH, MIN_PATCH
from .data.preprocess import PreprocessConfig
from .files.atomic_writes import atomic_path
from .method.network import ModelConfig, UNetLDL
from .tasks import Task

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_PATCH",
    "MIN_PATCH",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason."""


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    model_config: ModelConfig
    task: Task
    preprocess: PreprocessConfig
    patch_size: tuple[int, int, int]
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any] = field(default_factory=dict)
    training_state: dict[str, Any] | None = None
    path: Path | None = None

    def build_model(self, device: str | torch.device = "cpu") -> UNetLDL:
        """The network with these weights, in eval mode on ``device``; a CheckpointError when they do not fit."""
        model = UNetLDL(self.model_config)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:  # "Error(s) in loading state_dict ...", the first mismatch on the next line
            details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
            first = details[0][:200] if details else str(exc).strip()[:200]
            raise CheckpointError(
                f"{self.path or 'checkpoint'}: its weights do not fit the network its model_config describes ({first})"
            ) from None
        return model.to(device).eval()

    def to_dict(self) -> dict[str, Any]:
        """The serialisable form."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_config": self.model_config.to_dict(),
            "task": self.task.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "patch_size": list(self.patch_size),
            "provenance": self.provenance,
            "state_dict": self.state_dict,
            "training_state": self.training_state,
        }


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write atomically (temporary file, then rename) so a crash never leaves a half-written checkpoint."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(checkpoint.to_dict(), tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load safely (``weights_only=True``) and validate; a clear CheckpointError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the error below says what matters
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: {_load_problem(exc)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a CLDL checkpoint (no '{FORMAT}' marker)")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this cldl supports ({FORMAT_VERSION}); upgrade cldl"
        )
    try:
        checkpoint = Checkpoint(
            model_config=ModelConfig.from_dict(data["model_config"]),
            task=Task.from_dict(data["task"]),
            preprocess=PreprocessConfig.from_dict(data["preprocess"]),
            patch_size=tuple(int(s) for s in data["patch_size"]),
            state_dict=data["state_dict"],
            provenance=dict(data.get("provenance") or {}),
            training_state=data.get("training_state"),
            path=path,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged CLDL checkpoint ({exc})") from None
    _check_weights(path, checkpoint.state_dict)
    sides = checkpoint.patch_size
    if len(sides) != 3 or not all(MIN_PATCH <= side <= MAX_PATCH and side % 16 == 0 for side in sides):
        raise CheckpointError(
            f"{path}: damaged CLDL checkpoint (patch size {list(checkpoint.patch_size)}; each side must be a multiple "
            f"of 16 from {MIN_PATCH} to {MAX_PATCH})"
        )
    if checkpoint.model_config.in_channels != checkpoint.task.num_modalities:
        raise CheckpointError(f"{path}: model inputs do not match the task's modalities")
    if checkpoint.model_config.num_classes != checkpoint.task.num_classes:
        raise CheckpointError(f"{path}: model classes do not match the task's labels")
    return checkpoint


def _load_problem(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, without torch's advice to load unsafely."""
    text = str(exc)
    if "GLOBAL" in text:  # the safe unpickler met a Python object (a class, a function such as os.system)
        return (
            "refused: it holds Python objects other than weights, which could run code when loaded (a CLDL "
            "checkpoint holds only tensors and plain values)"
        )
    if "Weights only load failed" in text:  # anything else the safe unpickler could not read
        details = (
            text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines() if "WeightsUnpickler" in text else []
        )
        detail = details[0].strip()[:120] if details and "Weights only" not in details[0] else "unreadable data"
        return f"not a loadable CLDL checkpoint (not a safe torch checkpoint: {detail})"
    reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"not a loadable CLDL checkpoint ({reason[:200]})"


def _check_weights(path: Path, state_dict: object) -> None:
    """Refuse weights that are not a mapping of names to tensors, or that hold NaN/Inf (a diverged training run)."""
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise CheckpointError(f"{path}: damaged CLDL checkpoint (its weights are not a mapping of names to tensors)")
    broken = [
        name
        for name, tensor in state_dict.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if broken:
        raise CheckpointError(
            f"{path}: {len(broken)} of {len(state_dict)} weight tensors hold NaN or Inf values (first: {broken[0]}); "
            "the training run that saved it diverged, so its results would be meaningless"
        )


def check_task(checkpoint: Checkpoint, task: Task) -> None:
    """Refuse a checkpoint trained for another task (different modalities or label values)."""
    if not checkpoint.task.same_labels_as(task):
        raise CheckpointError(
            f"checkpoint is for task {checkpoint.task.name!r} (inputs {list(checkpoint.task.modalities)}, labels "
            f"{list(checkpoint.task.label_values)}), not {task.name!r} (inputs {list(task.modalities)}, labels "
            f"{list(task.label_values)})"
        )
