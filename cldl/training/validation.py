"""Full-volume sliding-window validation (mean Dice per region), shared across ranks."""

from __future__ import annotations

import numpy as np
import torch

from ..data.preprocess import Preprocessed
from ..evaluation.overlap import dice
from ..evaluation.reports import relabel_small_et
from ..events import Reporter
from ..inference.precision import autocast_dtype
from ..inference.predictor import sliding_window_probabilities
from ..method.network import UNetLDL
from ..tasks import Task


def validate(
    model: UNetLDL,
    cases: list[Preprocessed],
    task: Task,
    patch: tuple[int, ...],
    overlap: float,
    pad_value: str | None,
    reporter: Reporter,
    rank: int = 0,
    world_size: int = 1,
    empty: str = "brats",
    et_min_voxels: int = 0,
) -> dict[str, float]:
    """Full-volume sliding-window Dice per region (mean over cases) and their mean as ``dice_mean``.

    ``empty`` scores a region empty in prediction and reference (Dice 1 for ``brats``, 0 for ``authors``);
    ``et_min_voxels`` > 0 relabels a small predicted enhancing tumour as necrosis first.

    With ``world_size`` > 1 every rank validates its share of the cases (``cases[rank::world_size]``) and the
    per-case scores are gathered, so every rank returns the numbers one process would have computed.
    """
    model.eval()
    device = next(model.parameters()).device
    shard = range(rank, len(cases), world_size)
    rows: list[tuple[int, list[float]]] = []
    for done, index in enumerate(shard):
        case = cases[index]
        autocast = autocast_dtype("auto" if device.type == "cuda" else "fp32", device)  # as before: fp32 on CPU
        probs = sliding_window_probabilities(
            model, case.images, patch, overlap=overlap, pad_value=pad_value, autocast=autocast
        )
        pred = relabel_small_et(probs.argmax(0).cpu().numpy(), task, et_min_voxels)
        rows.append(
            (index, [dice(np.isin(pred, r.classes), np.isin(case.labels, r.classes), empty) for r in task.regions])
        )
        reporter.progress("validate", done + 1, len(shard))
    model.train()
    if world_size > 1:
        gathered: list[list[tuple[int, list[float]]] | None] = [None] * world_size
        torch.distributed.all_gather_object(gathered, rows)
        rows = sorted(row for part in gathered for row in part or [])
    scores = {r.name: [values[i] for _, values in rows] for i, r in enumerate(task.regions)}
    result = {f"dice_{name}": float(np.mean(values)) for name, values in scores.items()}
    result["dice_mean"] = float(np.mean(list(result.values())))
    return result
