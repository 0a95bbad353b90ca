"""Tests of cldl.method.distributions: R-LDL targets, target smoothing, Gaussian LDL and uncertainty maps."""

from __future__ import annotations

import math

import pytest
import torch

from cldl.method.distributions import (
    SMOOTH_EPS,
    UNCERTAINTY_MAPS,
    entropy,
    gaussian_label_distribution,
    max_prob_uncertainty,
    normalized_entropy,
    one_hot,
    region_distribution,
    rldl_targets,
    smooth_distribution,
)

# ------------------------------------------------------------------------------------------------ R-LDL


def labelled_cube() -> torch.Tensor:
    """An 8^3 volume (batch 1, K = 3) with hand-placed labels; the counts per block are listed in the tests."""
    y = torch.zeros(8, 8, 8, dtype=torch.long)
    y[0, 0, 0] = 1  # 1 voxel of class 1 in 2-block (0,0,0) and 4-block (0,0,0)
    y[0:2, 0:2, 2:4] = 2  # the full 2-block (0,0,1): 8 voxels of class 2 in 4-block (0,0,0)
    y[4:8, 4:8, 4:8] = 1  # the full 4-block (1,1,1): 64 voxels of class 1
    y[6, 0, 0] = 1  # 2-block (3,0,0) and 4-block (1,0,0) hold one voxel of class 1 ...
    y[7, 0, 0] = 2  # ... and one of class 2
    return y[None]


def test_one_hot_layout() -> None:
    """one_hot puts the class axis second and returns float32."""
    y = torch.tensor([[[[0, 2], [1, 1]]]])  # 1 x 1 x 2 x 2
    hot = one_hot(y, 3)
    assert hot.shape == (1, 3, 1, 2, 2) and hot.dtype == torch.float32
    assert hot[0, :, 0, 0, 1].tolist() == [0.0, 0.0, 1.0]
    assert hot[0, :, 0, 1, 0].tolist() == [0.0, 1.0, 0.0]


def test_region_2_hand_counts() -> None:
    """r = 2: class proportions inside chosen 2x2x2 blocks."""
    p = region_distribution(labelled_cube(), 3, 2)
    assert p.shape == (1, 3, 4, 4, 4)
    expected = {
        (0, 0, 0): [7 / 8, 1 / 8, 0.0],
        (0, 0, 1): [0.0, 0.0, 1.0],
        (3, 0, 0): [6 / 8, 1 / 8, 1 / 8],
        (2, 2, 2): [0.0, 1.0, 0.0],
        (3, 3, 3): [0.0, 1.0, 0.0],
        (1, 1, 1): [1.0, 0.0, 0.0],
        (1, 0, 0): [1.0, 0.0, 0.0],
    }
    for (d, h, w), values in expected.items():
        assert p[0, :, d, h, w].tolist() == values, (d, h, w)


def test_region_4_and_8_hand_counts() -> None:
    """r = 4 and r = 8: class proportions of the 4^3 blocks and of the whole cube."""
    p4 = region_distribution(labelled_cube(), 3, 4)
    assert p4.shape == (1, 3, 2, 2, 2)
    assert p4[0, :, 0, 0, 0].tolist() == [55 / 64, 1 / 64, 8 / 64]
    assert p4[0, :, 1, 0, 0].tolist() == [62 / 64, 1 / 64, 1 / 64]
    assert p4[0, :, 1, 1, 1].tolist() == [0.0, 1.0, 0.0]
    for block in [(0, 1, 0), (0, 0, 1), (0, 1, 1), (1, 1, 0), (1, 0, 1)]:
        assert p4[0, :, block[0], block[1], block[2]].tolist() == [1.0, 0.0, 0.0]
    p8 = region_distribution(labelled_cube(), 3, 8)
    assert p8.shape == (1, 3, 1, 1, 1)
    assert p8.flatten().tolist() == [437 / 512, 66 / 512, 9 / 512]


def test_region_1_is_one_hot() -> None:
    """r = 1 returns the one-hot labels themselves."""
    y = labelled_cube()
    assert torch.equal(region_distribution(y, 3, 1), one_hot(y, 3))


def test_rldl_targets_batched_shapes_and_sums() -> None:
    """Regions (8, 4, 2) on a 2 x 32^3 batch give 4^3, 8^3, 16^3 grids of float32 distributions, per sample."""
    torch.manual_seed(0)
    y = torch.randint(0, 4, (2, 32, 32, 32))
    y[1] = 3
    targets = rldl_targets(y, 4, (8, 4, 2))
    assert [t.shape for t in targets] == [(2, 4, 4, 4, 4), (2, 4, 8, 8, 8), (2, 4, 16, 16, 16)]
    for r, t in zip((8, 4, 2), targets):
        assert t.dtype == torch.float32 and t.device == y.device
        torch.testing.assert_close(t.sum(1), torch.ones_like(t[:, 0]), atol=1e-6, rtol=0)
        assert (t[1, 3] == 1).all() and (t[1, :3] == 0).all()  # samples are not mixed
        assert torch.equal(t, region_distribution(y, 4, r))
    # the coarse grid is the average of the finer one (blocks nest)
    torch.testing.assert_close(targets[0], torch.nn.functional.avg_pool3d(targets[1], 2), atol=1e-6, rtol=0)
    # check one block by counting
    block = y[0, 8:16, 0:8, 24:32]
    counts = torch.bincount(block.flatten(), minlength=4).float() / 512
    torch.testing.assert_close(targets[0][0, :, 1, 0, 3], counts, atol=0, rtol=0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_padding_replicates_the_far_edge(axis: int) -> None:
    """Size 6 with r = 4 pads 2 voxels by edge replication: one class-1 voxel on the edge counts 3 times."""
    shape = [4, 4, 4]
    shape[axis] = 6
    y = torch.zeros(1, *shape, dtype=torch.long)
    index = [0, 0, 0]
    index[axis] = 5  # the last voxel along ``axis``
    y[(0, *index)] = 1
    p = region_distribution(y, 2, 4)
    grid = [1, 1, 1]
    grid[axis] = 2
    assert p.shape == (1, 2, *grid)
    last = [0, 0, 0]
    last[axis] = 1
    assert p[(0, slice(None), *last)].tolist() == [61 / 64, 3 / 64]
    assert p[0, :, 0, 0, 0].tolist() == [1.0, 0.0]


def test_padding_corner_and_sums() -> None:
    """A class-1 corner voxel of a 5^3 volume fills the whole padded far 4^3 block; every cell sums to 1."""
    y = torch.zeros(2, 5, 5, 5, dtype=torch.long)
    y[0, 4, 4, 4] = 1
    y[1, 0:3, :, :] = 2
    p = region_distribution(y, 3, 4)
    assert p.shape == (2, 3, 2, 2, 2)
    assert p[0, :, 1, 1, 1].tolist() == [0.0, 1.0, 0.0]
    assert p[0, :, 1, 1, 0].tolist() == [1.0, 0.0, 0.0]
    assert p[0, :, 0, 1, 1].tolist() == [1.0, 0.0, 0.0]
    assert p[1, :, 0, 0, 0].tolist() == [16 / 64, 0.0, 48 / 64]  # depth 0..2 is class 2, depth 3 background
    assert p[1, :, 1, 1, 1].tolist() == [1.0, 0.0, 0.0]  # depth 4 replicated, background
    torch.testing.assert_close(p.sum(1), torch.ones(2, 2, 2, 2), atol=1e-6, rtol=0)
    odd = region_distribution(torch.randint(0, 3, (1, 5, 6, 7)), 3, 4)
    assert odd.shape == (1, 3, 2, 2, 2)
    torch.testing.assert_close(odd.sum(1), torch.ones(1, 2, 2, 2), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- smoothing


def test_smooth_hand_example() -> None:
    """n = 1 and n = 2 voxels follow the formula; a voxel with all classes non-zero is unchanged (K = 5)."""
    eps = 0.01
    voxels = [
        [1.0, 0.0, 0.0, 0.0, 0.0],  # n = 1
        [0.25, 0.75, 0.0, 0.0, 0.0],  # n = 2
        [0.0, 0.0, 0.5, 0.0, 0.5],  # n = 2, other positions
        [0.1, 0.2, 0.3, 0.15, 0.25],  # n = K
    ]
    target = torch.tensor(voxels).T.reshape(1, 5, 4, 1, 1)
    before = target.clone()
    out = smooth_distribution(target, eps)
    assert torch.equal(target, before)  # pure
    expected = [
        [1 - eps, eps / 4, eps / 4, eps / 4, eps / 4],  # lose eps/1, gain eps/(1*4)
        [0.25 - eps / 4, 0.75 - eps / 4, eps / 6, eps / 6, eps / 6],  # lose eps/4, gain eps/(2*3)
        [eps / 6, eps / 6, 0.5 - eps / 4, eps / 6, 0.5 - eps / 4],
        [0.1, 0.2, 0.3, 0.15, 0.25],
    ]
    for v, values in enumerate(expected):
        torch.testing.assert_close(out[0, :, v, 0, 0], torch.tensor(values), atol=1e-7, rtol=0)
    assert torch.equal(out[0, :, 3], target[0, :, 3])


def test_smooth_default_eps_properties() -> None:
    """Default eps is 1e-3; on real R-LDL targets the result is positive, sums to 1 and keeps full rows."""
    assert SMOOTH_EPS == 1e-3
    torch.manual_seed(1)
    y = torch.randint(0, 4, (2, 16, 16, 16))
    y[:, :8] = 0  # plenty of pure voxels
    target = region_distribution(y, 4, 2)
    before = target.clone()
    out = smooth_distribution(target)
    assert torch.equal(target, before)
    assert out.shape == target.shape and out.dtype == torch.float32
    assert (out > 0).all()
    torch.testing.assert_close(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-6, rtol=0)
    full = (target > 0).all(dim=1, keepdim=True).expand_as(target)
    assert full.any() and not full.all()
    assert torch.equal(out[full], target[full])
    pure = (target == 1).any(dim=1, keepdim=True).expand_as(target)
    torch.testing.assert_close(out[pure & (target == 1)], torch.full_like(out[pure & (target == 1)], 1 - 1e-3))
    torch.testing.assert_close(out[pure & (target == 0)], torch.full_like(out[pure & (target == 0)], 1e-3 / 3))


# ------------------------------------------------------------------------------------------- Gaussian LDL


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_gaussian_distribution_half_space(axis: int) -> None:
    """Two half-spaces: one-hot far from the interface, Gaussian-weighted mixtures next to it (sigma 1)."""
    shape = [10, 12, 14]
    size = shape[axis]
    coords = torch.arange(size).view([-1 if a == axis else 1 for a in range(3)]).expand(*shape)
    cut = size // 2
    y = (coords >= cut).long()[None].repeat(2, 1, 1, 1)
    y[1] = 1 - y[1]
    p = gaussian_label_distribution(y, 2, sigma=1.0)
    assert p.shape == (2, 2, *shape) and p.dtype == torch.float32
    torch.testing.assert_close(p.sum(1), torch.ones(2, *shape), atol=1e-6, rtol=0)

    def along(sample: int, cls: int, position: int) -> torch.Tensor:
        return p[sample, cls].select(axis, position)

    g1, g2 = math.exp(-0.5), math.exp(-2.0)
    z = 1 + 2 * g1 + 2 * g2
    for pos, other in [(cut - 1, (g1 + g2) / z), (cut - 2, g2 / z), (cut, (g1 + g2) / z), (cut + 1, g2 / z)]:
        own = y[0].select(axis, pos).flatten()[0].item()
        torch.testing.assert_close(along(0, 1 - own, pos), torch.full_like(along(0, 0, pos), other), atol=1e-6, rtol=0)
    for pos in list(range(0, cut - 2)) + list(range(cut + 2, size)):  # radius 2: untouched
        own = int(pos >= cut)
        assert torch.all(along(0, own, pos) > 1 - 1e-6) and torch.all(along(1, 1 - own, pos) > 1 - 1e-6)
    assert torch.allclose(p[1], p[0].flip(0))  # sample 1 has the classes swapped


def test_gaussian_constant_volume_stays_one_hot() -> None:
    """No interface, no mixing: replicate padding keeps volume borders pure."""
    y = torch.full((1, 6, 7, 8), 2)
    p = gaussian_label_distribution(y, 3, sigma=1.5)
    torch.testing.assert_close(p, one_hot(y, 3), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ uncertainty


def voxels(rows: list[list[float]]) -> torch.Tensor:
    """Distributions as ``1 x K x N x 1 x 1``."""
    return torch.tensor(rows).T.reshape(1, len(rows[0]), len(rows), 1, 1)


def test_entropy_values() -> None:
    """Entropy: 0 for one-hot, log K for uniform, log 2 for a two-class half split, hand value otherwise."""
    probs = voxels([[0, 0, 1, 0], [0.25] * 4, [0.5, 0.5, 0, 0], [0.7, 0.1, 0.1, 0.1]])
    h = entropy(probs)
    assert h.shape == (1, 4, 1, 1) and h.dtype == torch.float32
    expected = [0.0, math.log(4), math.log(2), -(0.7 * math.log(0.7) + 0.3 * math.log(0.1))]
    torch.testing.assert_close(h.flatten(), torch.tensor(expected), atol=1e-6, rtol=0)
    assert torch.isfinite(h).all()


def test_normalized_entropy_and_max_prob() -> None:
    """normalized_entropy lies in [0, 1] (1 uniform, 0.5 half split of K=4); max_prob = 1 - max q."""
    probs = voxels([[0, 0, 1, 0], [0.25] * 4, [0.5, 0.5, 0, 0], [0.7, 0.1, 0.1, 0.1]])
    ne = normalized_entropy(probs)
    torch.testing.assert_close(ne.flatten()[:3], torch.tensor([0.0, 1.0, 0.5]), atol=1e-6, rtol=0)
    mp = max_prob_uncertainty(probs)
    torch.testing.assert_close(mp.flatten(), torch.tensor([0.0, 0.75, 0.5, 0.3]), atol=1e-6, rtol=0)
    assert UNCERTAINTY_MAPS == {"entropy": normalized_entropy, "max_prob": max_prob_uncertainty}


def test_uncertainty_batched_random() -> None:
    """On batched random distributions: ranges, shapes, dtype, device and agreement with direct formulas."""
    torch.manual_seed(2)
    probs = torch.softmax(3 * torch.randn(3, 5, 4, 6, 7), dim=1)
    ne = normalized_entropy(probs)
    mp = max_prob_uncertainty(probs)
    for out in (entropy(probs), ne, mp):
        assert out.shape == (3, 4, 6, 7) and out.dtype == torch.float32 and out.device == probs.device
    assert (ne >= 0).all() and (ne <= 1).all() and ne.max() > 0.5
    assert (mp >= 0).all() and (mp <= 1 - 1 / 5 + 1e-6).all()
    torch.testing.assert_close(ne, -(probs * probs.log()).sum(1) / math.log(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(mp, 1 - probs.max(1).values)
    # the class axis can be chosen
    torch.testing.assert_close(entropy(probs.movedim(1, -1), dim=-1), entropy(probs), atol=1e-6, rtol=0)


def test_smoothing_stays_positive_and_normalised_for_tiny_entries() -> None:
    """Entries below eps/n^2 (a 16^3 region, a blurred target) are floored instead of going negative."""
    labels = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    labels[0, 0, 0, 0] = 1  # proportion 1/4096 in one 16^3 region
    smoothed = smooth_distribution(region_distribution(labels, 3, 16))
    assert (smoothed > 0).all()
    torch.testing.assert_close(smoothed.sum(1), torch.ones(1, 1, 1, 1))
    labels = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    labels[0, 4, 4, 4] = 1
    assert (smooth_distribution(gaussian_label_distribution(labels, 3)) > 0).all()


def test_entropy_is_finite_for_rounding_below_zero() -> None:
    """Linearly resampled probabilities can dip a hair below 0: the uncertainty map must stay finite (no NaN)."""
    from cldl.method.distributions import UNCERTAINTY_MAPS

    probs = torch.tensor([[[1.0 + 2e-9]], [[-1e-9]], [[-1e-9]], [[0.0]]]).unsqueeze(0)  # 1 x K x 1 x 1
    for name, uncertainty in UNCERTAINTY_MAPS.items():
        value = uncertainty(probs)
        assert torch.isfinite(value).all() and float(value.max()) < 1e-6, name
