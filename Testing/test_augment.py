"""Patch augmentation: presets, exact geometry of the spatial transform, label integrity, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from cldl.data.augment import AUGMENT_PRESETS, intensity_augment, preset, spatial_matrix, transformed_patch
from cldl.data.phantoms import brats_phantom
from cldl.data.preprocess import PreprocessConfig, preprocess
from cldl.tasks import BRATS
from cldl.train import PatchSampler, TrainConfig


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


def test_identity_transform_is_the_plain_crop() -> None:
    images, labels = _volume()
    start, patch = np.array([5, 6, 7]), (16, 16, 32)
    centre = start + (np.array(patch) - 1) / 2
    x, y = transformed_patch(images, labels, centre, patch, np.eye(3), 0.0)
    window = tuple(slice(a, a + p) for a, p in zip(start, patch))
    assert np.allclose(x, images[(slice(None),) + window], atol=1e-5)
    assert np.array_equal(y, labels[window])


def test_quarter_turn_matches_numpy_rotation() -> None:
    images, labels = _volume(1)
    patch = (16, 16, 16)
    centre = np.array([20.0, 22.0, 24.0]) - 0.5  # a voxel corner: the patch's voxels land on voxels
    quarter = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)  # 90 degrees in the y-x plane
    x, y = transformed_patch(images, labels, centre, patch, quarter, 0.0)
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
        x, y = transformed_patch(images, labels, np.array([3.0, 4.0, 40.0]), (16, 16, 16), matrix, -5.0)
        assert x.shape == (2, 16, 16, 16) and y.shape == (16, 16, 16) and y.dtype == labels.dtype
        assert set(np.unique(y)) <= {0, 1, 2, 3}
        assert (x == -5.0).any()  # near a corner part of the patch lies outside: the pad value fills it
    assert 10 < seen < 40  # p 0.2 rotation, p 0.2 scaling -> about 36 % of draws


def test_intensity_augmentation_is_reproducible_and_keeps_shape() -> None:
    images, _ = _volume(3)
    patch = images[:, :16, :16, :16]
    aug = preset("nnunet")
    outs = [intensity_augment(np.random.default_rng(s), patch, aug) for s in (1, 1, 2)]
    assert outs[0].shape == patch.shape and outs[0].dtype == np.float32
    assert np.array_equal(outs[0], outs[1])
    changed = [not np.array_equal(intensity_augment(np.random.default_rng(s), patch, aug), patch) for s in range(20)]
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
