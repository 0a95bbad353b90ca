"""The predictor: window placement, sliding-window probabilities, mirror TTA and the outputs on the input grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_checkpoint

from cldl.checkpoint import Checkpoint, save_checkpoint
from cldl.data.preprocess import InputError, bounding_box, foreground_mask
from cldl.files.geometry import Geometry, GeometryWarning
from cldl.files.images import read_image, write_image
from cldl.inference.predictor import (
    Cancelled,
    Predictor,
    gaussian_importance,
    sliding_window_probabilities,
    window_starts,
)
from cldl.method.network import ModelConfig, UNetLDL
from cldl.tasks import BRATS

WINDOW = (32, 32, 32)


def _model(seed: int = 0) -> UNetLDL:
    """A tiny randomly initialised network in eval mode."""
    torch.manual_seed(seed)
    return UNetLDL(ModelConfig(base_width=4)).eval()


def _reference(model: UNetLDL, volume: np.ndarray) -> torch.Tensor:
    """Softmax of one forward pass over a whole volume (K x d x h x w)."""
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(volume)[None]).logits, dim=1)[0]


def _mirror_symmetric(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A positive 4-channel volume equal to itself flipped along x (the last axis)."""
    rng = np.random.default_rng(seed)
    half = rng.uniform(0.5, 2.0, size=(4, *shape)).astype(np.float32)
    return np.ascontiguousarray(half + half[..., ::-1])


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    """A tiny BraTS checkpoint with random weights."""
    return random_checkpoint(1, WINDOW)


@pytest.fixture(scope="module")
def checkpoint_file(checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same checkpoint on disk."""
    return save_checkpoint(checkpoint, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


# ----------------------------------------------------------------------------------------------------------------
# window placement


@pytest.mark.parametrize("size, window", [(1, 32), (31, 32), (32, 32)])
def test_window_starts_single_window_when_volume_fits(size: int, window: int) -> None:
    assert window_starts(size, window, 0.5) == [0]


@pytest.mark.parametrize(
    "size, window, overlap",
    [(33, 32, 0.5), (48, 32, 0.5), (100, 32, 0.5), (64, 32, 0.0), (65, 32, 0.0), (129, 64, 0.25), (50, 16, 0.9)],
)
def test_window_starts_cover_the_range_with_the_requested_overlap(size: int, window: int, overlap: float) -> None:
    starts = window_starts(size, window, overlap)
    assert starts[0] == 0 and starts[-1] == size - window
    assert starts == sorted(set(starts))
    max_step = max(1, int(window * (1.0 - overlap)))
    assert all(0 < b - a <= max_step for a, b in zip(starts, starts[1:]))
    covered = np.zeros(size, bool)
    for start in starts:
        covered[start : start + window] = True
    assert covered.all()


def test_window_starts_are_mirror_symmetric() -> None:
    """Windows of a flipped axis are the flipped windows (needed for symmetric TTA over several windows)."""
    for size in range(33, 140):
        for overlap in (0.0, 0.25, 0.5, 0.75):
            starts = window_starts(size, 32, overlap)
            assert sorted(size - 32 - s for s in starts) == starts, (size, overlap)


def test_gaussian_importance_peaks_in_the_centre_and_is_never_zero() -> None:
    weight = gaussian_importance((16, 32, 8))
    assert weight.shape == (16, 32, 8) and weight.dtype == torch.float32
    assert float(weight.max()) == pytest.approx(1.0)
    assert float(weight.min()) >= 1e-3
    assert float(weight[8, 16, 4]) > float(weight[0, 0, 0])
    assert torch.equal(weight, weight.flip(0, 1, 2))


# ----------------------------------------------------------------------------------------------------------------
# sliding windows


def test_one_window_equals_a_single_forward_pass() -> None:
    model = _model()
    volume = np.random.default_rng(0).normal(size=(4, *WINDOW)).astype(np.float32)
    probs = sliding_window_probabilities(model, volume, WINDOW)
    assert probs.dtype == torch.float32 and probs.shape == (4, *WINDOW)
    torch.testing.assert_close(probs, _reference(model, volume), rtol=0, atol=1e-6)


@pytest.mark.parametrize("pad_value", [None, "min"])
def test_volume_smaller_than_the_window_is_padded(pad_value: str | None) -> None:
    """A 20 x 32 x 26 volume is padded to the window (centred), predicted once and cropped back."""
    model = _model()
    volume = np.random.default_rng(1).normal(size=(4, 20, 32, 26)).astype(np.float32)
    probs = sliding_window_probabilities(model, volume, WINDOW, pad_value=pad_value)
    assert probs.shape == (4, 20, 32, 26)
    fill = float(volume.min()) if pad_value == "min" else 0.0
    padded = np.pad(volume, [(0, 0), (6, 6), (0, 0), (3, 3)], constant_values=fill)
    expected = _reference(model, padded)[:, 6:26, :, 3:29]
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)


def test_several_windows_give_a_distribution_and_report_progress() -> None:
    model = _model()
    volume = np.random.default_rng(2).normal(size=(4, 32, 48, 32)).astype(np.float32)
    calls: list[tuple[int, int]] = []
    probs = sliding_window_probabilities(
        model, volume, WINDOW, overlap=0.5, window_batch=2, progress=lambda d, t: calls.append((d, t))
    )
    assert probs.shape == (4, 32, 48, 32)
    torch.testing.assert_close(probs.sum(0), torch.ones(32, 48, 32), rtol=0, atol=1e-5)
    assert calls[-1] == (2, 2)  # two windows along y, one batch
    # the first window alone decides the voxels no other window covers (batched vs single pass: ~1e-5)
    torch.testing.assert_close(probs[:, :, :16], _reference(model, volume[:, :, :32])[:, :, :16], rtol=0, atol=1e-4)
    assert float((probs[:, :, 16:32] - _reference(model, volume[:, :, :32])[:, :, 16:]).abs().max()) > 1e-3


def test_cancel_stops_the_prediction() -> None:
    volume = np.zeros((4, *WINDOW), np.float32)
    with pytest.raises(Cancelled):
        sliding_window_probabilities(_model(), volume, WINDOW, cancel=lambda: True)


# ----------------------------------------------------------------------------------------------------------------
# mirror TTA


@pytest.mark.parametrize("shape", [(32, 32, 32), (32, 32, 48), (32, 32, 22)], ids=["one", "two-windows", "padded"])
def test_mirror_tta_of_a_mirror_symmetric_case_is_symmetric(shape: tuple[int, int, int]) -> None:
    model = _model()
    volume = _mirror_symmetric(shape, 3)
    assert np.array_equal(volume, volume[..., ::-1])
    with_tta = sliding_window_probabilities(model, volume, WINDOW, tta=True)
    torch.testing.assert_close(with_tta, with_tta.flip(-1), rtol=0, atol=1e-5)
    without = sliding_window_probabilities(model, volume, WINDOW, tta=False)
    assert float((without - without.flip(-1)).abs().max()) > 1e-3  # a random network is not mirror-equivariant
    assert float((with_tta - without).abs().max()) > 1e-3


def test_predictor_tta_output_is_symmetric(checkpoint: Checkpoint) -> None:
    """Through the Predictor (per-volume normalisation, crop): float32 probabilities and float16 outputs."""
    volume = _mirror_symmetric((32, 32, 32), 4)
    predictor = Predictor(checkpoint, device="cpu", tta=True)
    prediction = predictor.predict(volume, keep_probabilities=True)
    probs = prediction.probabilities.astype(np.float32)
    np.testing.assert_allclose(probs, probs[..., ::-1], rtol=0, atol=1e-3)
    np.testing.assert_allclose(
        prediction.uncertainty.astype(np.float32), prediction.uncertainty[..., ::-1].astype(np.float32), atol=1e-3
    )
    plain = Predictor(checkpoint, device="cpu", tta=False).predict(volume, keep_probabilities=True)
    assert np.abs(plain.probabilities.astype(np.float32) - probs).max() > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# predictor outputs


def test_predictor_outputs_on_the_input_grid(checkpoint_file: Path, phantom_files: dict[str, Path]) -> None:
    predictor = Predictor(checkpoint_file, device="cpu", overlap=0.5, window_batch=4)
    calls: list[tuple[int, int]] = []
    paths = [phantom_files[m] for m in BRATS.modalities]
    prediction, geometry = predictor.predict_files(
        paths, keep_probabilities=True, progress=lambda done, total: calls.append((done, total))
    )
    _, flair_geometry = read_image(phantom_files["flair"])
    assert geometry == flair_geometry
    shape = geometry.shape
    assert calls and calls[-1][0] == calls[-1][1]

    assert prediction.labels.shape == shape and prediction.labels.dtype == np.uint8
    assert set(np.unique(prediction.labels).tolist()) <= {0, 1, 2, 4}
    assert prediction.classes.shape == shape and prediction.classes.dtype == np.uint8
    np.testing.assert_array_equal(BRATS.classes_to_labels(prediction.classes), prediction.labels)
    assert prediction.uncertainty.shape == shape and prediction.uncertainty.dtype == np.float16
    assert 0 <= prediction.uncertainty.min() and prediction.uncertainty.max() <= 1
    probs = prediction.probabilities
    assert probs.shape == (4, *shape) and probs.dtype == np.float16
    assert probs.min() >= 0 and probs.max() <= 1
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
    # the label is the most probable class (float16 rounding may tie classes that float32 separated)
    chosen = np.take_along_axis(probs, prediction.classes[None].astype(np.int64), axis=0)[0]
    np.testing.assert_array_equal(chosen, probs.max(0))
    for array in (prediction.labels, prediction.classes, prediction.uncertainty, probs):
        assert array.dtype != np.float64

    # background outside the foreground crop
    images = np.stack([read_image(p, np.float32)[0] for p in paths])
    bbox = bounding_box(foreground_mask(images, predictor.checkpoint.preprocess))
    outside = np.ones(shape, bool)
    outside[tuple(slice(a, b) for a, b in bbox)] = False
    assert outside.any()
    assert not prediction.labels[outside].any()
    assert not prediction.uncertainty[outside].any()
    assert (probs[0][outside] == 1).all() and not probs[1:, outside].any()


def test_predictor_without_probabilities_and_max_prob_uncertainty(checkpoint: Checkpoint) -> None:
    volume = np.random.default_rng(5).uniform(1, 2, size=(4, 24, 32, 40)).astype(np.float32)
    predictor = Predictor(checkpoint, device="cpu")
    prediction = predictor.predict(volume, uncertainty="max_prob")
    assert prediction.probabilities is None
    assert prediction.uncertainty.dtype == np.float16
    assert 0 <= prediction.uncertainty.min() and prediction.uncertainty.max() <= 0.75  # 1 - max of 4 classes
    entropy = predictor.predict(volume, uncertainty="entropy").uncertainty
    assert not np.array_equal(entropy, prediction.uncertainty)
    with pytest.raises(ValueError, match="uncertainty"):
        predictor.predict(volume, uncertainty="variance")


def test_predict_files_refuses_a_wrong_modality_count(checkpoint: Checkpoint, phantom_files: dict[str, Path]) -> None:
    predictor = Predictor(checkpoint, device="cpu")
    with pytest.raises(InputError, match="expects 4 images"):
        predictor.predict_files([phantom_files[m] for m in ("flair", "t1", "t1ce")])


def test_predict_files_resamples_overlapping_grids_and_refuses_disjoint_ones(
    checkpoint: Checkpoint, phantom_files: dict[str, Path], tmp_path: Path
) -> None:
    """A modality on another grid is resampled onto the first with a warning (issue 3); no overlap is refused."""
    t2, geometry = read_image(phantom_files["t2"])
    moved = Geometry(geometry.size, geometry.spacing, (5.0, 0.0, 0.0), geometry.direction)
    shifted = write_image(t2, moved, tmp_path / "t2_shifted.nii.gz")
    resampled = write_image(t2[:, :, :40], Geometry.identity((48, 48, 40)), tmp_path / "t2_small.nii.gz")
    far = write_image(
        t2, Geometry(geometry.size, geometry.spacing, (900.0, 0.0, 0.0), geometry.direction), tmp_path / "t2_far.nii.gz"
    )
    predictor = Predictor(checkpoint, device="cpu")
    for odd in (shifted, resampled):
        paths = [phantom_files["flair"], phantom_files["t1"], phantom_files["t1ce"], odd]
        with pytest.warns(GeometryWarning, match="not on the grid of flair"):
            _, out_geometry = predictor.predict_files(paths)
        assert out_geometry.matches(geometry)
    paths = [phantom_files["flair"], phantom_files["t1"], phantom_files["t1ce"], far]
    with pytest.raises(InputError, match="does not overlap"):
        predictor.predict_files(paths)


def test_predictor_refuses_non_finite_and_empty_images(checkpoint: Checkpoint) -> None:
    predictor = Predictor(checkpoint, device="cpu")
    volume = np.random.default_rng(6).uniform(1, 2, size=(4, 32, 32, 32)).astype(np.float32)
    predictor.predict(volume)
    for channel, value, message in ((1, np.nan, "'t1' has 1 NaN/Inf"), (3, np.inf, "'t2' has 1 NaN/Inf")):
        bad = volume.copy()
        bad[channel, 5, 5, 5] = value
        with pytest.raises(InputError, match=message):
            predictor.predict(bad)
    empty = volume.copy()
    empty[2] = 0
    with pytest.raises(InputError, match="'t1ce' is an empty"):
        predictor.predict(empty)


def test_predictor_refuses_bad_settings(checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="overlap"):
        Predictor(checkpoint, device="cpu", overlap=1.0)
    with pytest.raises(ValueError, match="window_batch"):
        Predictor(checkpoint, device="cpu", window_batch=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        Predictor(checkpoint, device="cuda")
    assert Predictor(checkpoint, device="auto").device == torch.device("cpu")
