"""R-LDL targets (region label distributions), target smoothing and uncertainty maps of distributions.

All functions are batched torch code that runs on whatever device their inputs live on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SMOOTH_EPS = 1e-3


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``B x D x H x W`` class indices -> ``B x K x D x H x W`` float one-hot."""
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


def region_distribution(labels: torch.Tensor, num_classes: int, region: int) -> torch.Tensor:
    """Class proportions in each non-overlapping ``region``^3 block (R-LDL target), ``B x K x D/r x H/r x W/r``.

    Sizes that do not divide by ``region`` are padded at the far side by edge replication first.
    """
    hot = one_hot(labels, num_classes)
    if region == 1:
        return hot
    pad = [(-s) % region for s in hot.shape[2:]]
    if any(pad):
        hot = F.pad(hot, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
    return F.avg_pool3d(hot, kernel_size=region, stride=region)


def rldl_targets(labels: torch.Tensor, num_classes: int, regions: tuple[int, ...]) -> list[torch.Tensor]:
    """R-LDL targets for each region size (coarsest first, e.g. 8, 4, 2), built from one one-hot encoding."""
    return [region_distribution(labels, num_classes, r) for r in regions]


def smooth_distribution(target: torch.Tensor, eps: float = SMOOTH_EPS) -> torch.Tensor:
    """Move ``eps`` of mass from the n non-zero classes to the zero classes where any class is zero (pure).

    Non-zero entries lose eps/n^2 each, zero entries gain eps/(n (K - n)) each: sums stay 1, entries become > 0
    (the authors' rule; a voxel where it would make an entry negative is floored and renormalised instead).
    """
    num_classes = target.shape[1]
    positive = target > 0
    count = positive.sum(dim=1, keepdim=True).to(target.dtype)
    needs = count < num_classes
    loss_each = torch.where(needs, eps / count.clamp(min=1) ** 2, torch.zeros_like(count))
    gain_each = torch.where(
        needs, eps / (count.clamp(min=1) * (num_classes - count).clamp(min=1)), torch.zeros_like(count)
    )
    smoothed = torch.where(positive, target - loss_each, target + gain_each)
    # an entry below eps/n^2 (regions over 8^3, blurred targets; never at r <= 8) would go negative: floor, renormalise
    floor = eps / (1000 * num_classes)
    repaired = smoothed.clamp(min=floor)
    repaired = repaired / repaired.sum(dim=1, keepdim=True)
    return torch.where((smoothed < floor).any(dim=1, keepdim=True), repaired, smoothed)


def gaussian_label_distribution(labels: torch.Tensor, num_classes: int, sigma: float = 1.0) -> torch.Tensor:
    """Voxel-wise LDL baseline (SVLS-style): one-hot labels blurred by a normalised 3D Gaussian, sums stay 1."""
    radius = max(1, int(math.ceil(2 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=labels.device)
    kernel_1d = torch.exp(-(x**2) / (2 * sigma**2))
    kernel_1d = kernel_1d / kernel_1d.sum()
    out = one_hot(labels, num_classes)
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel_1d.numel()
        weight = kernel_1d.view(shape).repeat(num_classes, 1, 1, 1, 1)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), weight, groups=num_classes)
    return out


def entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy (nats) along ``dim``, with 0 log 0 = 0; rounding below 0 (e.g. -1e-9 after linear
    resampling of probabilities) counts as 0 instead of giving NaN."""
    probs = probs.clamp_min(0.0)
    return -torch.special.xlogy(probs, probs).sum(dim=dim)


def normalized_entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy divided by log K: 0 for a certain voxel, 1 for a uniform distribution."""
    return (entropy(probs, dim) / math.log(probs.shape[dim])).clamp_(0.0, 1.0)


def max_prob_uncertainty(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """One minus the largest class probability (0 certain, 1 - 1/K uniform)."""
    return 1.0 - probs.amax(dim=dim)


UNCERTAINTY_MAPS = {"entropy": normalized_entropy, "max_prob": max_prob_uncertainty}
