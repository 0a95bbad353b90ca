"""What exact resume and warm starts need: seeding, random and optimiser states, the metrics log, and
loading another model's weights."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..method.network import ModelConfig, UNetLDL
from ..tasks import Task
from .config import ADAM_IMPLS


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warm_start(model: UNetLDL, name_or_path: str, task: Task, model_config: ModelConfig) -> dict[str, Any]:
    """Load the weights of a model name or checkpoint into ``model``; returns where they came from (provenance)."""
    from ..registry import resolve_model, sha256_of

    path = resolve_model(name_or_path)
    saved = load_checkpoint(path)
    if saved.task.name != task.name or saved.model_config != model_config:
        raise ValueError(
            f"init_from {name_or_path}: its task {saved.task.name!r} and network {saved.model_config.to_dict()} "
            f"differ from this run's {task.name!r} and {model_config.to_dict()}; warm start needs the same ones"
        )
    model.load_state_dict(saved.state_dict)
    return {
        "path": str(path),
        "sha256": sha256_of(path),
        "epochs": saved.provenance.get("epoch"),
        "metrics": saved.provenance.get("metrics", {}),
        "warm_start": saved.provenance.get("warm_start"),  # the source's own warm start: the whole chain
    }


def adam_options(impl: str) -> dict[str, bool]:
    """``torch.optim.Adam`` keyword arguments of an implementation: ``fused``, ``foreach`` or ``loop``."""
    if impl not in ADAM_IMPLS[1:]:
        raise ValueError(f"Adam implementation must be one of {list(ADAM_IMPLS[1:])}, got {impl!r}")
    return {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an Adam state saved by any implementation into ``optimizer``, which keeps its own (fused or not).

    ``load_state_dict`` would take the saved groups' ``fused``/``foreach`` flags; this keeps the optimiser's, puts
    each ``step`` count where its implementation keeps it (on the parameter's device when fused, else CPU) and lays
    the moments out like their parameter (a run resumed with another ``channels_last``: CUDA's fused Adam refuses
    moments whose strides differ from the parameter's).
    """
    flags = [{key: group.get(key) for key in ("fused", "foreach")} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, flags):
        group.update(kept)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for param in group["params"]:
            values = optimizer.state.get(param, {})
            for key, value in values.items():
                if key == "step":
                    step = value.to(device=param.device, dtype=torch.float32) if on_device else value.to("cpu")
                    values[key] = step
                elif value.shape == param.shape and value.stride() != param.stride():
                    values[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def random_state_to_json(state: tuple) -> str:
    """Python ``random`` state as JSON (checkpoints hold no pickled objects)."""
    return json.dumps([state[0], list(state[1]), state[2]])


def json_to_random_state(text: str) -> tuple:
    """Inverse of :func:`random_state_to_json`."""
    version, internal, gauss = json.loads(text)
    return version, tuple(internal), gauss


def truncate_log(path: Path, epochs: int) -> None:
    """Keep only the first ``epochs`` records of a metrics log (a resumed run rewrites later ones)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(line + "\n" for line in lines[:epochs]))
