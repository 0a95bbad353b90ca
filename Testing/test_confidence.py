"""The per-segment confidence summary (issue 12)."""

from __future__ import annotations

import numpy as np
import torch

from cldl.files.geometry import Geometry
from cldl.inference.confidence import confidence_lines, segment_confidence
from cldl.inference.predictor import Prediction, near_tie
from cldl.tasks import BRATS


def test_summary_counts_volumes_uncertain_and_near_tie_voxels_in_millilitres() -> None:
    classes = np.zeros((10, 10, 10), np.uint8)
    classes[2:6, 2:6, 2:6] = 3  # 64 voxels of ET
    classes[7:9, 7:9, 7:9] = 2  # 8 voxels of ED
    uncertainty = np.zeros(classes.shape, np.float16)
    uncertainty[2:4, 2:6, 2:6] = 0.8  # 32 ET voxels uncertain
    uncertainty[5, 5, 5] = 0.4  # below the threshold
    ties = np.zeros(classes.shape, bool)
    ties[2, 2, 2:6] = True  # 4 ET voxels could flip
    ties[0, 0, 0] = True  # background: not counted
    prediction = Prediction(BRATS.classes_to_labels(classes), classes, uncertainty, ties)
    geometry = Geometry((10, 10, 10), (2.0, 2.0, 2.5), (100.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    summary = segment_confidence(prediction, BRATS, geometry)
    assert summary["uncertain_threshold"] == 0.5 and summary["near_tie_margin"] == 0.2
    rows = {row["name"]: row for row in summary["segments"]}
    assert list(rows) == ["NCR", "ED", "ET"]
    voxel_ml = 10.0 / 1000
    assert rows["ET"]["label"] == 4 and rows["ET"]["volume_ml"] == round(64 * voxel_ml, 3)
    assert rows["ET"]["uncertain_ml"] == round(32 * voxel_ml, 3)
    assert rows["ET"]["near_tie_ml"] == round(4 * voxel_ml, 3)
    assert abs(rows["ET"]["mean_uncertainty"] - (32 * 0.8 + 0.4) / 64) < 1e-3
    assert rows["ED"]["volume_ml"] == round(8 * voxel_ml, 3) and rows["ED"]["uncertain_ml"] == 0
    assert (
        rows["NCR"]["volume_ml"] == 0 and rows["NCR"]["mean_uncertainty"] is None and rows["NCR"]["focus_lps"] is None
    )
    x, y, z = rows["ET"]["focus_lps"]  # inside the uncertain half of ET (z index 2..3 -> 5..7.5 mm)
    assert 100 + 2 * 2 <= x <= 100 + 2 * 5 and 4 <= y <= 10 and 5.0 <= z <= 7.5
    assert confidence_lines(summary)[2] == "ET 0.6 ml, 0.3 ml uncertain, 0.0 ml could flip"


def test_near_tie_marks_voxels_whose_two_best_classes_are_close() -> None:
    probs = torch.tensor([[0.5, 0.9, 0.4], [0.35, 0.05, 0.39], [0.15, 0.05, 0.21]])
    assert near_tie(probs).tolist() == [True, False, True]
