"""Patch augmentation: presets, exact geometry of the spatial transform, label integrity, reproducibility, and the
split into drawing a plan (prefetch thread) and applying it (any device)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from cldl.data.augment import (
    AUGMENT_PRESETS,
    Augmentation,
    PlannedBatch,
    PlannedPatch,
    apply_intensity,
    draw_intensity,
    preset,
    resample,
    source_region,
    spatial_matrix,
)
from cldl.data.phantoms import brats_phantom
from cldl.data.preprocess import PreprocessConfig, preprocess
from cldl.tasks import BRATS
from cldl.training.config import TrainConfig
from cldl.training.sampler import PatchSampler


def _volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((2, 40, 44, 48)).astype(np.float32)
    labels = rng.choice(np.array([0, 1, 2, 3], dtype=np.uint8), size=(40, 44, 48))
    return images, labels


def test_presets_and_unknown_names() -> None:
    assert AUGMENT_PRESETS == ("none", "paper", "mmwhs", "nnunet")
    assert preset("mmwhs").spatial and preset("mmwhs").rotate_axes == (False, True, True)
    assert preset("none").flip_prob == 0 and not preset("none").spatial
    assert preset("paper", 0.5).flip_prob == 0.5 and not preset("paper").spatial
    assert preset("nnunet").spatial and preset("nnunet").p_gamma == 0.3
    with pytest.raises(ValueError, match="nnunet"):
        preset("heavy")
    with pytest.raises(ValueError, match="unknown augmentation"):
        TrainConfig(phantoms={}, augment="heavy")


def _transformed_patch(
    images: np.ndarray, labels: np.ndarray, centre: np.ndarray, patch: tuple[int, int, int], matrix, pad: float
) -> tuple[np.ndarray, np.ndarray]:
    """A patch sampled from the volume through ``matrix`` about ``centre`` (the sampler's source region + resample)."""
    region = source_region(labels.shape, centre, patch, matrix)
    source = torch.from_numpy(np.array(images[(slice(None),) + region], dtype=np.float32))
    offset = centre - np.array([s.start for s in region])
    x, y = resample(source, torch.from_numpy(np.array(labels[region])), offset, patch, matrix, pad)
    return x.numpy(), y.numpy()


def _intensity_augment(rng: np.random.Generator, x: np.ndarray, aug: Augmentation) -> np.ndarray:
    """nnU-Net's intensity transforms drawn from ``rng`` and applied to a copy of one ``(C, z, y, x)`` patch."""
    plan = draw_intensity(rng, aug, x.shape)
    return apply_intensity(torch.from_numpy(np.array(x, dtype=np.float32, copy=True)), plan).numpy()


def test_identity_transform_is_the_plain_crop() -> None:
    images, labels = _volume()
    start, patch = np.array([5, 6, 7]), (16, 16, 32)
    centre = start + (np.array(patch) - 1) / 2
    x, y = _transformed_patch(images, labels, centre, patch, np.eye(3), 0.0)
    window = tuple(slice(a, a + p) for a, p in zip(start, patch))
    assert np.allclose(x, images[(slice(None),) + window], atol=1e-5)
    assert np.array_equal(y, labels[window])


def test_quarter_turn_matches_numpy_rotation() -> None:
    images, labels = _volume(1)
    patch = (16, 16, 16)
    centre = np.array([20.0, 22.0, 24.0]) - 0.5  # a voxel corner: the patch's voxels land on voxels
    quarter = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)  # 90 degrees in the y-x plane
    x, y = _transformed_patch(images, labels, centre, patch, quarter, 0.0)
    window = tuple(slice(int(c - (p - 1) / 2), int(c - (p - 1) / 2) + p) for c, p in zip(centre, patch))
    plain = labels[window]
    candidates = [np.rot90(plain, k, axes=(1, 2)) for k in (1, 3)]
    assert any(np.array_equal(y, c) for c in candidates)


def test_spatial_augmentation_keeps_label_values_and_pads_outside() -> None:
    images, labels = _volume(2)
    rng = np.random.default_rng(0)
    aug = preset("nnunet")
    seen = 0
    for _ in range(60):
        matrix = spatial_matrix(rng, aug)
        if matrix is None:
            continue
        seen += 1
        x, y = _transformed_patch(images, labels, np.array([3.0, 4.0, 40.0]), (16, 16, 16), matrix, -5.0)
        assert x.shape == (2, 16, 16, 16) and y.shape == (16, 16, 16) and y.dtype == labels.dtype
        assert set(np.unique(y)) <= {0, 1, 2, 3}
        assert (x == -5.0).any()  # near a corner part of the patch lies outside: the pad value fills it
    assert 10 < seen < 40  # p 0.2 rotation, p 0.2 scaling -> about 36 % of draws


def test_intensity_augmentation_is_reproducible_and_keeps_shape() -> None:
    images, _ = _volume(3)
    patch = images[:, :16, :16, :16]
    aug = preset("nnunet")
    outs = [_intensity_augment(np.random.default_rng(s), patch, aug) for s in (1, 1, 2)]
    assert outs[0].shape == patch.shape and outs[0].dtype == np.float32
    assert np.array_equal(outs[0], outs[1])
    changed = [not np.array_equal(_intensity_augment(np.random.default_rng(s), patch, aug), patch) for s in range(20)]
    assert 5 < sum(changed) < 20
    assert np.array_equal(patch, images[:, :16, :16, :16])  # the input is left alone


def test_nnunet_sampler_stream_is_reproducible_and_resumable() -> None:
    case = brats_phantom(0, shape=(48, 48, 48))
    prepared = preprocess(case.images, PreprocessConfig(), BRATS.modalities, BRATS.labels_to_classes(case.labels))
    a = PatchSampler([prepared], (32, 32, 32), 0.5, 0.5, seed=3, augment="nnunet")
    b = PatchSampler([prepared], (32, 32, 32), 0.5, 0.5, seed=3, augment="nnunet")
    for _ in range(3):
        xa, ya = a.sample(2)
        xb, yb = b.sample(2)
        assert np.array_equal(xa.numpy(), xb.numpy()) and np.array_equal(ya.numpy(), yb.numpy())
    state = a.rng.bit_generator.state
    expected = a.sample(2)
    b.rng.bit_generator.state = state
    again = b.sample(2)
    assert np.array_equal(expected[0].numpy(), again[0].numpy())
    assert set(np.unique(again[1].numpy())) <= {0, 1, 2, 3}


def _prepared(shape: tuple[int, int, int] = (48, 48, 48)):
    case = brats_phantom(0, shape=shape)
    return preprocess(case.images, PreprocessConfig(), BRATS.modalities, BRATS.labels_to_classes(case.labels))


def test_the_nnunet_stream_is_the_one_recorded_before_the_split() -> None:
    """Figures of the stream as drawn before augmentation was split into plan and apply (commit 61aa82a): the
    numpy state after 12 batches pins every draw's order and count; the sums pin the patches (float rounding)."""
    a = PatchSampler([_prepared()], (32, 32, 32), 0.5, 0.5, seed=3, augment="nnunet")
    x_sum, y_sum = 0.0, 0
    for _ in range(12):
        x, y = a.sample(2)
        x_sum += float(x.double().abs().sum())
        y_sum += int(y.sum())
    assert a.rng.bit_generator.state["state"]["state"] == 228289708149583376211798671277960385502
    assert x_sum == pytest.approx(1804113.7164548119, rel=1e-6)
    assert abs(y_sum - 49668) <= 20  # a nearest-neighbour tie may round the other way on another platform
    b = PatchSampler([_prepared()], (32, 32, 32), 0.5, 0.5, seed=3, augment="nnunet", deferred=True)
    plans = [p for _ in range(12) for p in b.sample(2).patches]
    assert b.rng.bit_generator.state == a.rng.bit_generator.state
    drawn = [
        any(p.matrix is not None for p in plans),
        any(p.intensity.noise is not None for p in plans),
        any(p.intensity.blur for p in plans),
        any(p.intensity.brightness is not None for p in plans),
        any(p.intensity.contrast for p in plans),
        any(p.intensity.low_res for p in plans),
        any(p.intensity.gamma_inverted for p in plans),
        any(p.intensity.gamma for p in plans),
        any(p.flips for p in plans),
    ]
    assert all(drawn)  # every transform occurs in these 24 patches


@pytest.mark.parametrize("name", AUGMENT_PRESETS)
def test_a_plan_applied_later_gives_the_prefetch_patch(name: str) -> None:
    cases = [_prepared(), _prepared((40, 56, 30))]
    now = PatchSampler(cases, (32, 32, 16), 0.5, 0.5, seed=5, pad_value=-1.0, augment=name)
    later = PatchSampler(cases, (32, 32, 16), 0.5, 0.5, seed=5, pad_value=-1.0, augment=name, deferred=True)
    for _ in range(8):
        x, y = now.sample(2)
        planned = later.sample(2)
        assert isinstance(planned, PlannedBatch)
        assert later.rng.bit_generator.state == now.rng.bit_generator.state
        x_later, y_later = planned.apply("cpu")
        assert x_later.dtype == x.dtype == torch.float32 and y_later.dtype == y.dtype == torch.int64
        assert x_later.shape == x.shape == (2, 4, 32, 32, 16) and y_later.shape == y.shape
        torch.testing.assert_close(x_later, x, rtol=1e-6, atol=1e-6)
        assert torch.equal(y_later, y)


def _everything(flip_prob: float = 1.0) -> Augmentation:
    """Every intensity transform on every channel, always."""
    return Augmentation(
        flip_prob=flip_prob,
        p_noise=1.0,
        p_blur=1.0,
        p_brightness=1.0,
        p_contrast=1.0,
        p_low_res=1.0,
        p_gamma=1.0,
        p_gamma_inverted=1.0,
        p_per_channel=1.0,
    )


def test_applying_a_plan_moves_labels_and_never_changes_them() -> None:
    images, labels = _volume(4)
    crop = np.ascontiguousarray(images[:, :16, :16, :16]), np.ascontiguousarray(labels[:16, :16, :16])
    intensity = draw_intensity(np.random.default_rng(0), _everything(), crop[0].shape)
    for flips in ((), (0,), (1, 2), (0, 1, 2)):
        patch = PlannedPatch(torch.from_numpy(crop[0].copy()), torch.from_numpy(crop[1]), None, None, intensity, flips)
        x, y = PlannedBatch((patch,), (16, 16, 16)).apply("cpu")
        assert torch.equal(y[0], torch.from_numpy(np.flip(crop[1], flips).astype(np.int64)))
        assert not np.allclose(x[0].numpy(), np.flip(crop[0], [a + 1 for a in flips]))
    quarter = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)
    source = torch.from_numpy(images[:, :24, :24, :24].copy()), torch.from_numpy(labels[:24, :24, :24].copy())
    patch = PlannedPatch(*source, quarter, np.array([11.5, 11.5, 11.5]), intensity, (2,))
    _, y = PlannedBatch((patch,), (16, 16, 16)).apply("cpu")
    plain = labels[4:20, 4:20, 4:20]
    assert any(torch.equal(y[0], torch.from_numpy(np.rot90(plain, k, axes=(1, 2))[..., ::-1].copy())) for k in (1, 3))


def test_noise_is_drawn_into_the_plan_from_the_samplers_stream() -> None:
    shape = (2, 16, 16, 16)
    aug = dataclasses.replace(preset("nnunet"), p_noise=1.0)
    rng = np.random.default_rng(9)
    plan = draw_intensity(rng, aug, shape)
    again = draw_intensity(np.random.default_rng(9), aug, shape)
    assert plan.noise is not None and plan.noise.shape == shape and plan.noise.dtype == torch.float32
    assert torch.equal(plan.noise, again.noise)
    reference = np.random.default_rng(9)
    reference.random()
    sd = math.sqrt(reference.uniform(0, aug.noise_var))
    assert np.array_equal(plan.noise.numpy(), reference.standard_normal(shape).astype(np.float32) * sd)
    assert 0 < float(plan.noise.std()) <= aug.noise_var**0.5 * 1.1
    base = torch.zeros(shape)
    assert torch.equal(apply_intensity(base.clone(), plan), apply_intensity(base.clone(), again))
