"""Preprocessing with geometry: exact reorientation of any direction matrix, resampling to a target spacing,
inclusive crops, per-channel z-scores, CT windowing, parameters in the checkpoint, modalities on other grids, and
probabilities mapped back to the input grid before the argmax."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from cldl.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cldl.data.phantoms import brats_phantom
from cldl.data.preprocess import (
    InputError,
    PreprocessConfig,
    Preprocessed,
    bounding_box,
    input_grid_probabilities,
    nearest_orientation,
    preprocess,
    resampled_grid,
    stack_channels,
)
from cldl.files.geometry import Geometry, GeometryWarning
from cldl.files.images import read_image, write_image
from cldl.inference.predictor import Predictor
from cldl.method.network import ModelConfig, UNetLDL
from cldl.tasks import BRATS


def _rotation(seed: int, scale: float = 1.0) -> np.ndarray:
    """A random rotation (scale < 1: close to the identity)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=3) * scale
    theta = np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]]) / max(theta, 1e-12)
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k


def _signed_permutations() -> list[np.ndarray]:
    """All 48 axis permutations with flips."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            out.append(np.eye(3)[list(perm)] * np.asarray(signs)[:, None])
    return out


@pytest.mark.parametrize("index", range(0, 48, 5))
def test_reorientation_keeps_every_voxel_in_place_and_is_exactly_invertible(index: int) -> None:
    matrix = _signed_permutations()[index] @ _rotation(index, 0.3)
    geometry = Geometry((5, 6, 7), (0.7, 1.1, 2.9), (10.0, -3.0, 7.5), tuple(matrix.ravel()))
    array = np.random.default_rng(index).normal(size=geometry.shape)
    orientation = nearest_orientation(geometry)
    moved, moved_geometry = orientation.apply(array), orientation.apply_geometry(geometry)
    assert moved.shape == moved_geometry.shape
    np.testing.assert_array_equal(orientation.invert(moved), array)
    # each voxel keeps its physical position
    for index_zyx in itertools.product(*(range(0, n, 2) for n in moved.shape)):
        point = moved_geometry.index_to_physical(np.array(index_zyx[::-1], float))
        source = np.round(geometry.physical_to_index(point)).astype(int)[::-1]
        assert moved[index_zyx] == array[tuple(source)]
    # the new axes point (nearly) along L, P, S
    assert np.all(np.argmax(np.abs(moved_geometry.matrix), axis=0) == [0, 1, 2])
    assert np.all(np.diag(moved_geometry.matrix) > 0)


def test_resampled_grid_keeps_the_physical_extent() -> None:
    geometry = Geometry((10, 20, 5), (1.0, 0.5, 3.0), (0.0, 0.0, 0.0), tuple(_rotation(3).ravel()))
    grid = resampled_grid(geometry, (2.0, 1.0, 1.0))
    assert grid.size == (5, 10, 15)
    corner = geometry.index_to_physical(np.array([-0.5, -0.5, -0.5]))
    np.testing.assert_allclose(grid.index_to_physical(np.array([-0.5, -0.5, -0.5])), corner, atol=1e-9)


def test_crop_has_inclusive_bounds_and_zscore_is_per_channel() -> None:
    images = np.zeros((2, 10, 12, 14), np.float32)
    images[0, 2:9, 3:11, 4:13] = np.random.default_rng(0).uniform(100, 200, size=(7, 8, 9))
    images[1, 2, 3, 4] = 5.0  # the first voxel of the box
    images[1, 8, 10, 12] = 9.0  # the last voxel of the box: kept (inclusive bounds)
    assert bounding_box((images != 0).any(0)) == ((2, 9), (3, 11), (4, 13))
    case = preprocess(images, PreprocessConfig(), ("a", "b"))
    assert case.images.shape == (2, 7, 8, 9)
    inside = case.images[0] != 0
    assert abs(float(case.images[0][inside].mean())) < 1e-5 and abs(float(case.images[0][inside].std()) - 1) < 1e-4
    assert case.images[1][-1, -1, -1] == pytest.approx(1.0) and case.images[1][0, 0, 0] == pytest.approx(-1.0)
    assert np.count_nonzero(case.images[1]) == 2  # zeros stay zero


def test_ct_window_and_body_crop() -> None:
    ct = np.full((1, 12, 12, 12), -1024.0, np.float32)
    ct[0, 2:10, 3:9, 1:11] = np.linspace(-300, 1500, 8 * 6 * 10).reshape(8, 6, 10)
    case = preprocess(ct, PreprocessConfig(image_kind="ct"), ("ct",))
    assert case.bbox == ((2, 10), (3, 9), (1, 11))
    body = ct[0, 2:10, 3:9, 1:11]
    windowed = np.clip(body, -100, 700)
    expected = (windowed - windowed.mean()) / windowed.std()
    np.testing.assert_allclose(case.images[0], expected, atol=1e-4)


def test_config_round_trip_and_validation() -> None:
    config = PreprocessConfig(image_kind="ct", ct_window=(-50.0, 500.0), target_spacing=(0.8, 0.8, 2.0), reorient=False)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    assert PreprocessConfig.from_dict({"target_spacing": 1.5}).target_spacing == (1.5, 1.5, 1.5)
    assert PreprocessConfig.from_dict({"image_kind": "mr", "future_key": 1}) == PreprocessConfig()
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        PreprocessConfig.from_dict({"spacing": 1}, strict=True)
    for bad in ({"image_kind": "pet"}, {"ct_window": [700, -100]}, {"target_spacing": [1, 0, 1]}):
        with pytest.raises(ValueError):
            PreprocessConfig.from_dict(bad)


def test_preprocess_resamples_images_linearly_and_labels_nearest() -> None:
    case = brats_phantom(3, shape=(16, 32, 32), spacing=(2.0, 1.0, 1.0))
    geometry = case.geometry
    labels = BRATS.labels_to_classes(case.labels)
    out = preprocess(case.images, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0)), BRATS.modalities, labels, geometry)
    assert out.resampled and out.grid.spacing == (2.0, 2.0, 2.0) and out.grid_shape == (16, 16, 16)
    assert set(np.unique(out.labels).tolist()) <= {0, 1, 2, 3}
    assert out.labels.dtype == labels.dtype
    # the same spacing means no resampling at all
    same = preprocess(case.images, PreprocessConfig(target_spacing=(1.0, 1.0, 2.0)), BRATS.modalities, labels, geometry)
    assert not same.resampled
    with pytest.raises(InputError, match="geometry is needed"):
        preprocess(case.images, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0)), BRATS.modalities)


def test_probabilities_go_back_to_the_input_grid_summing_to_one() -> None:
    geometry = Geometry((12, 10, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(_rotation(1, 0.2).ravel()))
    images = np.zeros((1, *geometry.shape), np.float32)
    images[0, 2:6, 2:8, 3:10] = 1.0 + np.random.default_rng(0).uniform(size=(4, 6, 7))
    config = PreprocessConfig(target_spacing=(1.0, 1.0, 1.0))
    case = preprocess(images, config, ("x",), geometry=geometry)
    assert case.resampled
    rng = np.random.default_rng(1)
    probs = rng.uniform(size=(3, *case.images.shape[1:])).astype(np.float32)
    probs /= probs.sum(0)
    slabs = list(input_grid_probabilities(case, probs, max_bytes=3 * 12 * 10 * 4 * 2 * 3))
    assert len(slabs) > 1  # several slabs
    full = np.concatenate([s for _, s in slabs], axis=1)
    assert full.shape == (3, *geometry.shape)
    np.testing.assert_allclose(full.sum(0), 1.0, atol=1e-5)
    assert np.all(full[0][images[0] == 0][:10] >= 0)
    # far outside the foreground box: certainly background
    assert full[0, 7, 9, 11] == pytest.approx(1.0)


def test_input_grid_probabilities_are_exact_on_the_same_grid() -> None:
    geometry = Geometry((6, 5, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    probs = np.random.default_rng(2).dirichlet(np.ones(3), size=(2, 3, 4)).transpose(3, 0, 1, 2).astype(np.float32)
    case = Preprocessed(
        images=np.zeros((1, 2, 3, 4), np.float32),
        bbox=((1, 3), (1, 4), (1, 5)),
        input_shape=geometry.shape,
        grid=geometry,
        input_geometry=geometry,
        resampled=True,
    )
    (_, slab), *rest = list(input_grid_probabilities(case, probs))
    assert not rest
    expected = case.paste(probs)
    expected[0] = case.paste(probs[0], fill=1.0)
    np.testing.assert_allclose(slab, expected, atol=1e-6)


def test_stack_channels_resamples_with_a_warning_or_refuses() -> None:
    geometry = Geometry((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a = np.random.default_rng(0).uniform(1, 2, size=geometry.shape).astype(np.float32)
    finer = Geometry((16, 16, 16), (0.5, 0.5, 0.5), (-0.25, -0.25, -0.25), geometry.direction)
    b = np.repeat(np.repeat(np.repeat(a, 2, 0), 2, 1), 2, 2)
    with pytest.warns(GeometryWarning, match="resampled onto it"):
        stacked, reference = stack_channels([a, b], [geometry, finer], ["t1", "t2"])
    assert reference == geometry and stacked.shape == (2, 8, 8, 8)
    np.testing.assert_allclose(stacked[1][2:-2, 2:-2, 2:-2], a[2:-2, 2:-2, 2:-2], atol=1e-5)
    far = Geometry(geometry.size, geometry.spacing, (500.0, 0.0, 0.0), geometry.direction)
    with pytest.raises(InputError, match="t2 .* does not overlap t1"):
        stack_channels([a, a], [geometry, far], ["t1", "t2"])


# -- the predictor with geometry ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    model = UNetLDL(ModelConfig(base_width=4)).eval()
    return Checkpoint(
        model_config=model.config,
        task=BRATS,
        preprocess=PreprocessConfig(),
        patch_size=(32, 32, 32),
        state_dict={k: v.clone() for k, v in model.state_dict().items()},
    )


def test_any_direction_matrix_gives_the_same_physical_segmentation(checkpoint: Checkpoint) -> None:
    """The same physical image stored with permuted/flipped axes is segmented identically (voxel for voxel)."""
    case = brats_phantom(5, shape=(24, 28, 32))
    predictor = Predictor(checkpoint, device="cpu")
    base = predictor.predict(case.images, geometry=case.geometry, keep_probabilities=True)
    signed = _signed_permutations()[13]
    geometry = case.geometry
    # store the array with axes permuted and flipped, and the geometry that keeps every voxel in place
    perm = [int(np.argmax(np.abs(signed[:, c]))) for c in range(3)]
    flips = [signed[perm[c], c] < 0 for c in range(3)]
    moved_images = case.images.transpose(0, *[3 - p for p in perm[::-1]])
    for c, f in enumerate(flips):
        if f:
            moved_images = np.flip(moved_images, axis=3 - c)
    columns = [geometry.matrix[:, perm[c]] * (-1 if flips[c] else 1) for c in range(3)]
    corner = np.array([geometry.size[perm[c]] - 1 if flips[c] else 0 for c in range(3)], float)
    origin_index = np.zeros(3)
    for c in range(3):
        origin_index[perm[c]] = corner[c]
    moved = Geometry(
        size=tuple(geometry.size[p] for p in perm),
        spacing=tuple(geometry.spacing[p] for p in perm),
        origin=tuple(geometry.index_to_physical(origin_index)),
        direction=tuple(np.stack(columns, axis=1).ravel()),
    )
    other = predictor.predict(np.ascontiguousarray(moved_images), geometry=moved, keep_probabilities=True)
    # compare voxel by voxel through physical space
    zyx = np.stack(np.meshgrid(*(np.arange(n) for n in moved.shape), indexing="ij"), -1).reshape(-1, 3)
    points = moved.index_to_physical(zyx[:, ::-1].astype(float))
    source = np.round(geometry.physical_to_index(points)).astype(int)[:, ::-1]
    np.testing.assert_array_equal(other.labels.reshape(-1), base.labels[tuple(source.T)])
    np.testing.assert_array_equal(other.uncertainty.reshape(-1), base.uncertainty[tuple(source.T)])
    # without reorientation the network would see other arrays (a sanity check that the test has teeth)
    plain = Predictor(dataclasses.replace(checkpoint, preprocess=PreprocessConfig(reorient=False)), device="cpu")
    raw = plain.predict(np.ascontiguousarray(moved_images), geometry=moved)
    assert not np.array_equal(raw.uncertainty.reshape(-1), base.uncertainty[tuple(source.T)])


def test_resampling_predictor_returns_input_grid_outputs(checkpoint: Checkpoint, tmp_path: Path) -> None:
    resampling = dataclasses.replace(checkpoint, preprocess=PreprocessConfig(target_spacing=(1.5, 1.5, 1.5)))
    path = save_checkpoint(resampling, tmp_path / "resampling.pt")
    assert load_checkpoint(path).preprocess.target_spacing == (1.5, 1.5, 1.5)  # stored in the checkpoint
    case = brats_phantom(6, shape=(20, 40, 36), spacing=(2.5, 0.9, 1.1))
    oblique = Geometry(case.geometry.size, case.geometry.spacing, (3.0, -4.0, 5.0), tuple(_rotation(7, 0.25).ravel()))
    prediction = Predictor(path, device="cpu").predict(case.images, geometry=oblique, keep_probabilities=True)
    assert prediction.labels.shape == case.images.shape[1:]
    probabilities = prediction.probabilities.astype(np.float32)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=5e-3)
    agree = np.mean(np.argmax(probabilities, 0) == prediction.classes)
    assert agree > 0.99  # argmax taken on the input grid (float16 ties aside)
    assert prediction.classes[case.images[0] == 0].max(initial=0) <= 3
    assert prediction.uncertainty.dtype == np.float16


def test_segment_cli_returns_identical_geometry_for_oblique_anisotropic_inputs(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Done-means: a segmented oblique, anisotropic input comes back on exactly its grid, in every format."""
    from cldl.commands.main import main

    case = brats_phantom(8, shape=(20, 36, 32), spacing=(3.0, 0.9, 1.2))
    geometry = Geometry(
        case.geometry.size, case.geometry.spacing, (12.5, -7.25, 30.0), tuple(_rotation(4, 0.4).ravel())
    )
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        paths = []
        for name, image in zip(BRATS.modalities, case.images):
            dtype = np.int16 if name != "t2" else np.float32
            paths.append(str(write_image(np.round(image).astype(dtype), geometry, tmp_path / f"{name}{suffix}")))
        _, input_geometry = read_image(paths[0])
        outputs = [tmp_path / f"seg{suffix}", tmp_path / f"unc{suffix}", tmp_path / "seg.seg.nrrd"]
        argv = ["segment", "--model", str(tiny_checkpoint), "-i", *paths, "--device", "cpu", "--progress", "none"]
        assert main([*argv, "-o", str(outputs[0]), "--uncertainty", str(outputs[1]), "--overwrite"]) == 0
        assert main([*argv, "-o", str(outputs[2]), "--overwrite"]) == 0
        for output in outputs:
            _, out_geometry = read_image(output)
            if output.suffix == Path(paths[0]).suffix:  # same format: bit-identical
                assert out_geometry.same_as(input_geometry), (suffix, output)
            else:  # NIfTI/MHA -> NRRD: identical to double precision (NRRD stores spacing x direction)
                assert out_geometry.size == input_geometry.size
                np.testing.assert_allclose(out_geometry.spacing, input_geometry.spacing, rtol=1e-14)
                np.testing.assert_allclose(out_geometry.origin, input_geometry.origin, atol=1e-12)
                np.testing.assert_allclose(out_geometry.direction, input_geometry.direction, atol=1e-14)


def test_segment_refuses_images_in_the_wrong_order(
    tiny_checkpoint: Path, phantom_files: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from cldl.commands.main import main

    images = [str(phantom_files[m]) for m in ("t1", "flair", "t1ce", "t2")]
    output = tmp_path / "out.nii.gz"
    assert main(["segment", "--model", str(tiny_checkpoint), "-i", *images, "-o", str(output), "--device", "cpu"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wrong order" in err[0] and "give them as flair, t1, t1ce, t2" in err[0]
    assert not output.exists()
