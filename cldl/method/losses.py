"""CLDL losses: symmetric KL per LDL stage, cross-entropy + soft Dice on the final head, weighted total.

Two Dice variants are offered:

* ``"paper"``: the authors' loss, ``1 - mean_{b,k} 2TP / (2TP + FP + FN + 1e-8)`` per sample with background
  and no smoothing. A class absent from a patch then contributes a constant 0 (loss 1) whatever the
  prediction, so it adds no gradient and penalises nothing.
* ``"robust"`` (the default): ``(2TP + s) / (2TP + FP + FN + s)`` with ``s = 1e-5``, background excluded. An
  absent class scores ~1 when none is predicted and ~0 for false positives, so every patch teaches "predict
  nothing here"; dropping the background stops the largest, always-easy class from diluting the small ones.
  This is the choice nnU-Net makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distributions import smooth_distribution
from .network import ModelOutput

DICE_MODES = ("robust", "paper")


def symmetric_kl(log_q: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Jeffreys divergence KL(p||q) + KL(q||p) with p the smoothed target; class sum, voxel mean; float32."""
    log_q = log_q.float()
    p = smooth_distribution(target.float(), eps)
    log_p = torch.log(p)
    forward = (p * (log_p - log_q)).sum(dim=1).mean()
    reverse = (log_q.exp() * (log_q - log_p)).sum(dim=1).mean()
    return forward + reverse


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, mode: str = "robust") -> torch.Tensor:
    """One minus the mean soft Dice over samples and classes of ``softmax(logits)`` (see module docstring)."""
    if mode not in DICE_MODES:
        raise ValueError(f"dice mode must be one of {DICE_MODES}, got {mode!r}")
    probs = torch.softmax(logits.float(), dim=1)
    hot = F.one_hot(labels.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    axes = tuple(range(2, probs.ndim))
    tp = (probs * hot).sum(axes)
    fp = (probs * (1 - hot)).sum(axes)
    fn = ((1 - probs) * hot).sum(axes)
    if mode == "paper":
        dice = 2 * tp / (2 * tp + fp + fn + 1e-8)
    else:
        dice = ((2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5))[:, 1:]
    return 1 - dice.mean()


@dataclass(frozen=True)
class LossConfig:
    """Weights of the total loss ``lambda_ldl * sum_s w_s L_ldl,s + w_seg (lambda_ce L_ce + L_dice)``."""

    lambda_ldl: float = 1.0
    lambda_ce: float = 1.0
    dice: str = "robust"
    smooth_eps: float = 1e-3


def cldl_loss(
    output: ModelOutput,
    labels: torch.Tensor,
    targets: list[torch.Tensor],
    config: LossConfig,
    stage_weights: list[float] | torch.Tensor | None = None,
    seg_weight: float | torch.Tensor = 1.0,
    final_targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total CLDL loss and its detached parts (``ldl1..3``, ``ce``, ``dice``).

    The curriculum weights may be tensors (a compiled loss then serves every weight without recompiling).
    ``final_targets`` (``B x K x D x H x W`` distributions, e.g. Gaussian-smoothed one-hot labels: the voxel-level
    LDL baseline) replace the hard labels in the final head's cross-entropy; the Dice term keeps the hard labels.
    """
    if len(targets) != len(output.stage_log_probs):
        raise ValueError(f"{len(output.stage_log_probs)} LDL stages but {len(targets)} targets")
    for index, (log_q, target) in enumerate(zip(output.stage_log_probs, targets)):
        if log_q.shape != target.shape:
            raise ValueError(
                f"LDL stage {index + 1}: prediction grid {tuple(log_q.shape)} != target {tuple(target.shape)}"
            )
    weights = stage_weights if stage_weights is not None else [1.0] * len(targets)
    parts: dict[str, torch.Tensor] = {}
    ldl = output.logits.new_zeros((), dtype=torch.float32)
    for index, (log_q, target) in enumerate(zip(output.stage_log_probs, targets)):
        stage = symmetric_kl(log_q, target, config.smooth_eps)
        parts[f"ldl{index + 1}"] = stage.detach()
        ldl = ldl + weights[index] * stage
    ce = F.cross_entropy(output.logits.float(), labels.long() if final_targets is None else final_targets.float())
    dice = soft_dice_loss(output.logits, labels, config.dice)
    parts["ce"], parts["dice"] = ce.detach(), dice.detach()
    total = config.lambda_ldl * ldl + seg_weight * (config.lambda_ce * ce + dice)
    parts["total"] = total.detach()
    return total, parts
