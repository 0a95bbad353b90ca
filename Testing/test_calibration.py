"""Calibration (ECE with 15 bins, Brier) and the QU-BraTS uncertainty score, against straightforward reference
implementations (the QU-BraTS one transcribed from the challenge's evaluation script)."""

from __future__ import annotations

import numpy as np
import pytest

from cldl.evaluation.calibration import (
    ECE_BINS,
    binary_calibration,
    binary_entropy_uncertainty,
    calibration,
    expected_calibration_error,
    qu_brats_score,
    qu_brats_thresholds,
    uncertainty_percent,
)
from cldl.evaluation.overlap import dice

# ------------------------------------------------------------------------------------------- references


def reference_ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Guo et al. 2017: bins (lower, upper] of equal width, |acc - conf| weighted by the bin's share."""
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lower, upper in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lower) & (confidence <= upper)
        if in_bin.any():
            ece += abs(correct[in_bin].mean() - confidence[in_bin].mean()) * in_bin.mean()
    return float(ece)


EPS = float(np.finfo(np.float32).eps)  # a Python float: with numpy < 2 (2020) ``100.0 + EPS`` was float64, so the
# reference's thresholds reach 100 (41 of them); a numpy-2 float32 scalar would round the stop to 100 and drop it


def reference_qu_brats(gt, pred, unc, brain, num_points=40):
    """The QU-BraTS 2020 evaluation (``make`` and the AUCs of BraTS_Seg_Uncertainty.py), in float32 as there."""
    thresholds = np.arange(0.0, 100.0 + EPS, 100.0 / num_points).tolist()
    thresholds.reverse()
    gt, pred, brain = gt.astype("float32"), pred.astype("float32"), brain.astype("float32")
    dice, ftp, ftn = [], [], []
    for th in thresholds:
        keep = np.ones_like(unc, dtype="float32")
        keep[unc > th] = 0.0
        g, p = gt * keep, pred * keep
        inter, union = np.sum(p * g), np.sum(p) + np.sum(g)
        dice.append(1.0 if inter == 0.0 and union == 0.0 else (2.0 * inter) / union)
        tp = (pred * gt) * brain
        ftp.append((tp.sum() - (tp * keep).sum()) / (tp.sum() + EPS))
        tn = ((1 - pred) * (1 - gt)) * brain
        ftn.append((tn.sum() - (tn * keep).sum()) / (tn.sum() + EPS))
    x = np.array(thresholds)[::-1]

    def auc(y):  # sklearn.metrics.auc on decreasing x: the trapezoid area
        y = np.array(y, dtype=np.float64)[::-1]
        return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0) / 100.0

    a_dice, a_ftp, a_ftn = auc(dice), auc(ftp), auc(ftn)
    return {
        "unc_auc_dice": a_dice,
        "unc_auc_ftp": a_ftp,
        "unc_auc_ftn": a_ftn,
        "unc_score": (a_dice + (1 - a_ftp) + (1 - a_ftn)) / 3,
    }


# ------------------------------------------------------------------------------------------- ECE and Brier


@pytest.mark.parametrize("seed", range(4))
def test_ece_matches_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0, 1, 5000)
    confidence[:15] = np.arange(1, 16) / 15  # values on bin edges go to the lower bin
    correct = rng.uniform(size=5000) < confidence**1.5
    assert expected_calibration_error(confidence, correct, 15) == pytest.approx(
        reference_ece(confidence, correct), abs=1e-12
    )
    assert ECE_BINS == 15


def test_ece_hand_computed() -> None:
    assert expected_calibration_error(np.ones(10), np.ones(10, bool)) == 0.0
    assert expected_calibration_error(np.full(10, 0.9), np.ones(10, bool)) == pytest.approx(0.1)
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    hits = np.array([1, 1, 0, 1], bool)  # bins: |1 - 0.95| * 0.5 + |0.5 - 0.55| * 0.5
    assert expected_calibration_error(conf, hits) == pytest.approx(0.05)


def test_multiclass_calibration_and_brier() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=(6, 7, 8)).transpose(3, 0, 1, 2)
    classes = rng.integers(0, 4, size=(6, 7, 8))
    result = calibration(probabilities, classes)
    onehot = np.eye(4)[classes].transpose(3, 0, 1, 2)
    assert result["brier"] == pytest.approx(np.mean(np.sum((probabilities - onehot) ** 2, axis=0)), abs=1e-12)
    conf, pred = probabilities.max(0).ravel(), probabilities.argmax(0).ravel()
    assert result["ece"] == pytest.approx(reference_ece(conf, pred == classes.ravel()), abs=1e-12)
    mask = np.zeros(classes.shape, bool)
    mask[1:4, 2:5, 3:7] = True
    masked = calibration(probabilities, classes, mask)
    assert masked["brier"] == pytest.approx(np.mean(np.sum((probabilities - onehot) ** 2, axis=0)[mask]), abs=1e-12)


def test_binary_calibration() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(size=(5, 6, 7))
    truth = rng.uniform(size=p.shape) < p
    result = binary_calibration(p, truth)
    assert result["brier"] == pytest.approx(np.mean((p - truth) ** 2))
    conf = np.maximum(p, 1 - p).ravel()
    assert result["ece"] == pytest.approx(reference_ece(conf, ((p >= 0.5) == truth).ravel()), abs=1e-12)
    assert binary_entropy_uncertainty(np.array([0.0, 0.5, 1.0])).tolist() == [0.0, 1.0, 0.0]


# ------------------------------------------------------------------------------------------- QU-BraTS


@pytest.mark.parametrize("seed", range(3))
def test_qu_brats_score_matches_the_challenge_implementation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (14, 16, 18)
    truth = np.zeros(shape, bool)
    truth[3:10, 4:12, 5:14] = True
    pred = np.roll(truth, 2, axis=1) | (rng.uniform(size=shape) < 0.02)
    boundary = truth ^ pred
    uncertainty = np.clip(rng.normal(20, 15, shape) + 50 * boundary, 0, 100).astype(np.float32)
    uncertainty[0, 0, :5] = [0.0, 2.5, 50.0, 97.5, 100.0]  # values exactly on thresholds
    brain = np.zeros(shape, bool)
    brain[1:13, 1:15, 1:17] = True
    ours = qu_brats_score(truth, pred, uncertainty, brain)
    theirs = reference_qu_brats(truth, pred, uncertainty, brain)
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert len(qu_brats_thresholds()) == 41  # 40 steps of 2.5 from 0 to 100


def test_qu_brats_limits() -> None:
    truth = np.zeros((8, 8, 8), bool)
    truth[2:6, 2:6, 2:6] = True
    pred = np.roll(truth, 1, axis=0)
    certain = qu_brats_score(truth, pred, np.zeros(truth.shape))
    expected_dice = dice(pred, truth)
    assert certain["unc_auc_dice"] == pytest.approx(expected_dice)  # nothing is ever filtered
    assert certain["unc_auc_ftp"] == 0.0 and certain["unc_auc_ftn"] == 0.0
    assert certain["unc_score"] == pytest.approx((expected_dice + 2) / 3)
    # uncertain exactly where the prediction is wrong: filtering improves the Dice, keeps TP and TN
    wrong = (truth ^ pred).astype(np.float32) * 100
    informed = qu_brats_score(truth, pred, wrong)
    assert informed["unc_auc_dice"] > certain["unc_auc_dice"] and informed["unc_auc_ftp"] == 0.0
    assert informed["unc_score"] > certain["unc_score"]


def test_uncertainty_scale() -> None:
    np.testing.assert_allclose(uncertainty_percent(np.array([0.0, 0.25, 1.0])), [0, 25, 100])
    np.testing.assert_allclose(uncertainty_percent(np.array([0.0, 40.0, 120.0])), [0, 40, 100])
