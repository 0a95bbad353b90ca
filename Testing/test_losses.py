"""Tests of cldl.method.losses: symmetric KL, the two soft-Dice modes and the weighted CLDL total."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cldl.method.distributions import (
    gaussian_label_distribution,
    region_distribution,
    rldl_targets,
    smooth_distribution,
)
from cldl.method.losses import DICE_MODES, LossConfig, cldl_loss, soft_dice_loss, symmetric_kl
from cldl.method.network import ModelOutput, UNetLDL


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny convolutions run fastest on one thread (and do not fight a busy machine); restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def voxels(rows: list[list[float]]) -> torch.Tensor:
    """Distributions as ``1 x K x N x 1 x 1``."""
    return torch.tensor(rows).T.reshape(1, len(rows[0]), len(rows), 1, 1)


# --------------------------------------------------------------------------------------------- symmetric KL


@pytest.mark.parametrize("eps", [1e-3, 1e-2])
def test_symmetric_kl_hand_computed(eps: float) -> None:
    """KL(p||q) + KL(q||p) with p the smoothed target, class sum and voxel mean, computed by hand."""
    target = voxels([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]])
    q = [[0.7, 0.2, 0.1], [0.2, 0.3, 0.5]]
    p = [[1 - eps, eps / 2, eps / 2], [0.5, 0.25, 0.25]]  # n = 1: lose eps, gain eps/2 each; n = K: unchanged
    per_voxel = [sum(pk * math.log(pk / qk) + qk * math.log(qk / pk) for pk, qk in zip(pv, qv)) for pv, qv in zip(p, q)]
    expected = sum(per_voxel) / 2
    value = symmetric_kl(voxels(q).log(), target, eps)
    assert value.dtype == torch.float32 and value.shape == ()
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # Without the smoothing the reverse term would be infinite; the forward term alone is different
    forward_only = sum(pk * math.log(pk / qk) for pk, qk in zip(p[0] + p[1], q[0] + q[1])) / 2
    assert abs(value.item() - forward_only) > 0.1


def test_symmetric_kl_zero_at_smoothed_target_and_positive_elsewhere() -> None:
    """0 when q is the smoothed target, > 0 for any other q; the input target is not modified."""
    torch.manual_seed(0)
    target = region_distribution(torch.randint(0, 4, (2, 16, 16, 16)), 4, 4)
    before = target.clone()
    log_q = torch.log(smooth_distribution(target))
    assert abs(symmetric_kl(log_q, target).item()) < 1e-6
    assert torch.equal(target, before)
    for scale in (0.1, 1.0, 3.0):
        other = torch.log_softmax(log_q + scale * torch.randn_like(log_q), dim=1)
        assert symmetric_kl(other, target).item() > 1e-4
    # mean over batch and voxels: repeating the batch does not change it
    noisy = torch.log_softmax(torch.randn_like(log_q), dim=1)
    torch.testing.assert_close(
        symmetric_kl(noisy.repeat(2, 1, 1, 1, 1), target.repeat(2, 1, 1, 1, 1)), symmetric_kl(noisy, target)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_symmetric_kl_float32_for_half_inputs(dtype: torch.dtype) -> None:
    """Half-precision log-probs are promoted: the result is float32 and close to the float32 value."""
    torch.manual_seed(1)
    target = region_distribution(torch.randint(0, 3, (1, 8, 8, 8)), 3, 2)
    log_q = torch.log_softmax(torch.randn(1, 3, 4, 4, 4), dim=1)
    half = symmetric_kl(log_q.to(dtype), target)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(symmetric_kl(log_q, target).item(), rel=2e-2)


def test_cldl_loss_float32_under_bfloat16_autocast() -> None:
    """A bfloat16 autocast forward of a tiny model yields bfloat16 outputs but float32 losses."""
    torch.manual_seed(2)
    model = UNetLDL(in_channels=1, num_classes=3, base_width=2)
    labels = torch.randint(0, 3, (1, 32, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 1, 32, 32, 32))
        total, parts = cldl_loss(out, labels, rldl_targets(labels, 3, (8, 4, 2)), LossConfig())
    assert out.stage_log_probs[0].dtype == torch.bfloat16 and out.logits.dtype == torch.bfloat16
    assert total.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in parts.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.seg_head.weight.grad is not None and model.ldl_heads[0].weight.grad.abs().sum() > 0


# -------------------------------------------------------------------------------------------------- Dice


def labels_with_absent_classes() -> torch.Tensor:
    """Batch of 2, 4^3, K = 4: sample 0 holds classes {0, 1}, sample 1 holds {0, 1, 2}."""
    y = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    y[0, :2] = 1
    y[1, :1] = 1
    y[1, 3, :2] = 2
    return y


def dice_by_hand(logits: torch.Tensor, labels: torch.Tensor, mode: str) -> float:
    """Soft Dice loss in float64 numpy loops."""
    probs = torch.softmax(logits.double(), dim=1).numpy()
    y = labels.numpy()
    scores = []
    for b in range(probs.shape[0]):
        for k in range(probs.shape[1]):
            g = (y[b] == k).astype(np.float64)
            tp = float((probs[b, k] * g).sum())
            fp = float((probs[b, k] * (1 - g)).sum())
            fn = float(((1 - probs[b, k]) * g).sum())
            if mode == "paper":
                scores.append(2 * tp / (2 * tp + fp + fn + 1e-8))
            elif k > 0:
                scores.append((2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5))
    return 1 - float(np.mean(scores))


def test_paper_dice_perfect_prediction_with_absent_classes() -> None:
    """Paper mode: absent classes score 0, so a perfect prediction costs 1 - (2 + 3) / 8 = 3/8."""
    y = labels_with_absent_classes()
    perfect = 40.0 * F.one_hot(y, 4).movedim(-1, 1).float()
    assert soft_dice_loss(perfect, y, "paper").item() == pytest.approx(3 / 8, abs=1e-6)
    single = y[:1]
    assert soft_dice_loss(perfect[:1], single, "paper").item() == pytest.approx(2 / 4, abs=1e-6)  # 2 absent of 4


def test_paper_dice_absent_class_is_zero_for_any_prediction() -> None:
    """Paper mode equals 1 - sum over present (b, k) of Dice / (B K) for random predictions."""
    y = labels_with_absent_classes()
    torch.manual_seed(3)
    for _ in range(3):
        logits = 2 * torch.randn(2, 4, 4, 4, 4)
        value = soft_dice_loss(logits, y, "paper").item()
        assert value == pytest.approx(dice_by_hand(logits, y, "paper"), abs=1e-5)
        assert value > 3 / 8  # never below the perfect-prediction loss


def test_robust_dice() -> None:
    """Robust mode: ~0 for a perfect prediction despite absent classes; background excluded; smooth 1e-5."""
    y = labels_with_absent_classes()
    perfect = 40.0 * F.one_hot(y, 4).movedim(-1, 1).float()
    assert soft_dice_loss(perfect, y, "robust").item() < 1e-4
    assert soft_dice_loss(perfect, y).item() < 1e-4  # robust is the default
    torch.manual_seed(4)
    logits = 2 * torch.randn(2, 4, 4, 4, 4)
    value = soft_dice_loss(logits, y, "robust").item()
    assert value == pytest.approx(dice_by_hand(logits, y, "robust"), abs=1e-5)
    # predicting absent class 3 everywhere: only sample 0's class 2 (absent, not predicted) scores 1 of 6
    wrong = perfect.clone()
    wrong[:, 3] = 80.0
    assert soft_dice_loss(wrong, y, "robust").item() == pytest.approx(5 / 6, abs=1e-5)
    assert soft_dice_loss(wrong, y, "paper").item() == pytest.approx(1.0, abs=1e-5)  # every Dice 0


def test_unknown_dice_mode_raises() -> None:
    """Only 'robust' and 'paper' are accepted."""
    assert set(DICE_MODES) == {"robust", "paper"}
    y = labels_with_absent_classes()
    with pytest.raises(ValueError, match="dice mode"):
        soft_dice_loss(torch.zeros(2, 4, 4, 4, 4), y, "nnunet")


# ----------------------------------------------------------------------------------------------- total


def fake_output(stages: int = 3, seed: int = 5) -> tuple[ModelOutput, list[torch.Tensor], torch.Tensor]:
    """A ModelOutput with leaf tensors (K = 4, 16^3), the leaves and labels."""
    torch.manual_seed(seed)
    logits = torch.randn(2, 4, 16, 16, 16, requires_grad=True)
    stage_raw = [torch.randn(2, 4, *(2 * 2**s,) * 3, requires_grad=True) for s in range(stages)]
    out = ModelOutput(
        logits,
        tuple(torch.log_softmax(raw, dim=1) for raw in stage_raw),
        tuple(torch.zeros(2, *(2 * 2**s,) * 3) for s in range(stages)),
    )
    labels = torch.randint(0, 4, (2, 16, 16, 16))
    return out, [logits, *stage_raw], labels


def test_cldl_loss_total_matches_parts() -> None:
    """total = lambda_ldl * sum_s w_s ldl_s + seg_weight * (lambda_ce * ce + dice), parts from their own functions."""
    out, leaves, labels = fake_output()
    targets = rldl_targets(labels, 4, (8, 4, 2))
    config = LossConfig(lambda_ldl=0.7, lambda_ce=1.3, dice="paper", smooth_eps=0.01)
    weights = [0.2, 0.5, 0.0]
    total, parts = cldl_loss(out, labels, targets, config, stage_weights=weights, seg_weight=0.4)
    ldl = [symmetric_kl(lq, t, 0.01) for lq, t in zip(out.stage_log_probs, targets)]
    ce = F.cross_entropy(out.logits, labels)
    dice = soft_dice_loss(out.logits, labels, "paper")
    assert set(parts) == {"ldl1", "ldl2", "ldl3", "ce", "dice", "total"}
    for s in range(3):
        torch.testing.assert_close(parts[f"ldl{s + 1}"], ldl[s].detach())
        assert ldl[s].item() > 0
    torch.testing.assert_close(parts["ce"], ce.detach())
    torch.testing.assert_close(parts["dice"], dice.detach())
    expected = 0.7 * (0.2 * ldl[0] + 0.5 * ldl[1] + 0.0 * ldl[2]) + 0.4 * (1.3 * ce + dice)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(parts["total"], total.detach())
    assert total.requires_grad and not any(v.requires_grad for v in parts.values())
    total.backward()
    logits, raw1, raw2, raw3 = leaves
    assert raw1.grad.abs().sum() > 0 and raw2.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0
    assert torch.count_nonzero(raw3.grad) == 0  # weight 0 stage gets no gradient


def test_cldl_loss_takes_the_curriculum_weights_as_tensors() -> None:
    """What the trainer passes to a compiled loss: the same total as with Python floats."""
    out, _, labels = fake_output()
    targets = rldl_targets(labels, 4, (8, 4, 2))
    floats, _ = cldl_loss(out, labels, targets, LossConfig(), stage_weights=[0.2, 0.5, 0.0], seg_weight=0.4)
    weights, seg = torch.tensor([0.2, 0.5, 0.0]), torch.tensor(0.4)
    tensors, parts = cldl_loss(out, labels, targets, LossConfig(), stage_weights=weights, seg_weight=seg)
    torch.testing.assert_close(tensors, floats)
    assert tensors.shape == () and parts["total"].shape == ()


def test_cldl_loss_defaults_and_seg_weight_zero() -> None:
    """Defaults: all weights 1, robust Dice, eps 1e-3; seg_weight 0 removes CE and Dice and their gradient."""
    out, leaves, labels = fake_output(seed=6)
    targets = rldl_targets(labels, 4, (8, 4, 2))
    total, parts = cldl_loss(out, labels, targets, LossConfig())
    expected = sum(symmetric_kl(lq, t) for lq, t in zip(out.stage_log_probs, targets))
    expected = expected + F.cross_entropy(out.logits, labels) + soft_dice_loss(out.logits, labels, "robust")
    torch.testing.assert_close(total, expected)
    ldl_only, _ = cldl_loss(out, labels, targets, LossConfig(), seg_weight=0.0)
    torch.testing.assert_close(ldl_only, parts["ldl1"] + parts["ldl2"] + parts["ldl3"])
    ldl_only.backward()
    assert torch.count_nonzero(leaves[0].grad) == 0 and leaves[1].grad.abs().sum() > 0


def test_cldl_loss_without_stages() -> None:
    """A model without LDL stages takes no targets; the total is the segmentation loss."""
    out, _, labels = fake_output(stages=0)
    total, parts = cldl_loss(out, labels, [], LossConfig(lambda_ldl=5.0, dice="paper"))
    assert set(parts) == {"ce", "dice", "total"}
    torch.testing.assert_close(total, parts["ce"] + parts["dice"])


@pytest.mark.parametrize(("stages", "n_targets"), [(3, 2), (3, 4), (0, 1), (2, 3)])
def test_stage_count_mismatch_raises(stages: int, n_targets: int) -> None:
    """The number of targets must equal the number of LDL stage outputs."""
    out, _, labels = fake_output(stages=stages)
    targets = rldl_targets(labels, 4, (8, 4, 2, 2)[:n_targets])
    with pytest.raises(ValueError, match="LDL stages"):
        cldl_loss(out, labels, targets, LossConfig())


def test_cldl_loss_checks_target_grids() -> None:
    """A target on another grid than its stage's prediction is a ValueError, not a broadcasting error."""
    labels = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    output = ModelOutput(torch.zeros(1, 3, 16, 16, 16), (torch.log_softmax(torch.zeros(1, 3, 2, 2, 2), 1),), ())
    with pytest.raises(ValueError, match="grid"):
        cldl_loss(output, labels, [region_distribution(labels, 3, 4)], LossConfig())


def test_final_targets_replace_the_hard_labels_in_the_cross_entropy_only() -> None:
    """One-hot final targets give the default loss; Gaussian-smoothed ones change the CE to -sum p log q, not Dice."""
    out, _, labels = fake_output(seed=8)
    targets = rldl_targets(labels, 4, (8, 4, 2))
    default, parts = cldl_loss(out, labels, targets, LossConfig())
    hot, _ = cldl_loss(out, labels, targets, LossConfig(), final_targets=F.one_hot(labels, 4).movedim(-1, 1).float())
    torch.testing.assert_close(hot, default)
    soft = gaussian_label_distribution(labels, 4, sigma=1.0)
    _, soft_parts = cldl_loss(out, labels, targets, LossConfig(), final_targets=soft)
    expected_ce = -(soft * torch.log_softmax(out.logits, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(soft_parts["ce"], expected_ce.detach())
    torch.testing.assert_close(soft_parts["dice"], parts["dice"])
    assert not torch.isclose(soft_parts["ce"], parts["ce"])
