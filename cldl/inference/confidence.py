"""Per-segment confidence summary: how much of each segment the model is unsure about, in millilitres.

For every class but background: its volume, the mean voxel uncertainty inside it, the volume of its voxels above
``UNCERTAIN_THRESHOLD``, the volume of its voxels whose two most likely classes are within ``NEAR_TIE`` of each
other (labels that could flip), and the physical point (LPS, mm) at the centre of its most uncertain 5-voxel box,
for a viewer to jump to.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..files.geometry import Geometry
from ..tasks import Task
from .predictor import NEAR_TIE, Prediction

UNCERTAIN_THRESHOLD = 0.5
"""A voxel whose uncertainty map value (normalised entropy or 1 - max probability) exceeds this is uncertain."""
FOCUS_BOX = 5
"""Edge (voxels) of the box averaged to find a segment's most uncertain region."""


def segment_confidence(
    prediction: Prediction, task: Task, geometry: Geometry, threshold: float = UNCERTAIN_THRESHOLD
) -> dict[str, Any]:
    """The summary of every non-background segment (``segments``) and the thresholds it used."""
    from scipy.ndimage import uniform_filter

    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    uncertainty = prediction.uncertainty.astype(np.float32)
    smoothed = uniform_filter(uncertainty, size=FOCUS_BOX, mode="constant")
    names = task.abbreviations or task.class_names
    segments = []
    for index in range(1, task.num_classes):
        inside = prediction.classes == index
        count = int(np.count_nonzero(inside))
        row: dict[str, Any] = {
            "name": names[index],
            "label": int(task.label_values[index]),
            "volume_ml": round(count * voxel_ml, 3),
            "mean_uncertainty": round(float(uncertainty[inside].mean()), 4) if count else None,
            "uncertain_ml": round(int(np.count_nonzero(inside & (uncertainty > threshold))) * voxel_ml, 3),
            "near_tie_ml": round(int(np.count_nonzero(inside & prediction.near_tie)) * voxel_ml, 3),
            "focus_lps": None,
        }
        if count:
            masked = np.where(inside, smoothed, -1.0)
            zyx = np.unravel_index(int(np.argmax(masked)), masked.shape)
            row["focus_lps"] = [round(float(v), 3) for v in geometry.index_to_physical(np.array(zyx[::-1], float))]
        segments.append(row)
    return {"uncertain_threshold": threshold, "near_tie_margin": NEAR_TIE, "segments": segments}


def confidence_lines(summary: dict[str, Any]) -> list[str]:
    """One line per segment for people: ``ET 5.9 ml, 1.2 ml uncertain, 0.4 ml could flip``."""
    return [
        f"{s['name']} {s['volume_ml']:.1f} ml, {s['uncertain_ml']:.1f} ml uncertain, "
        f"{s['near_tie_ml']:.1f} ml could flip"
        for s in summary["segments"]
    ]
