"""The predictor's speed options (measured on a GPU by benchmarks/gpu.sh) compute what the plain path computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_checkpoint

from cldl.checkpoint import Checkpoint
from cldl.commands.main import main
from cldl.data.phantoms import brats_phantom
from cldl.data.preprocess import PreprocessConfig, normalize, normalize_tensor
from cldl.files.images import read_image
from cldl.inference.predictor import Predictor, sliding_window_probabilities
from cldl.method.network import ModelConfig, UNetLDL

WINDOW = (32, 32, 32)


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    """A tiny BraTS checkpoint with random weights."""
    return random_checkpoint(3, WINDOW)


@pytest.mark.parametrize("kind", ["mr", "ct", "ct-without-body"])
def test_normalize_tensor_equals_normalize_bit_for_bit(kind: str) -> None:
    images = brats_phantom(4, shape=(24, 40, 36)).images.astype(np.float32)
    config = PreprocessConfig(image_kind="mr" if kind == "mr" else "ct")
    if kind == "ct":
        images = images * 300 - 1000  # air outside, "tissue" from about -600 HU
    elif kind == "ct-without-body":
        images = images - 2000  # every voxel below the body threshold: statistics over the whole volume
    expected = normalize(images, config)
    got = normalize_tensor(torch.from_numpy(images), config)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), expected)


def test_normalising_on_the_device_gives_the_same_prediction(checkpoint: Checkpoint) -> None:
    images = brats_phantom(6, shape=(40, 56, 48)).images
    host = Predictor(checkpoint, device="cpu", normalise_on_device=False).predict(images)
    device = Predictor(checkpoint, device="cpu", normalise_on_device=True).predict(images)
    np.testing.assert_array_equal(device.labels, host.labels)
    np.testing.assert_array_equal(device.uncertainty, host.uncertainty)


def test_predictor_normalises_on_the_device_only_on_a_gpu_by_default(checkpoint: Checkpoint) -> None:
    assert Predictor(checkpoint, device="cpu").normalise_on_device is False


def test_channels_last_and_fixed_batches_give_the_same_probabilities() -> None:
    torch.manual_seed(0)
    model = UNetLDL(ModelConfig(base_width=4)).eval()
    volume = np.random.default_rng(1).normal(size=(4, 48, 48, 40)).astype(np.float32)  # 2 x 2 x 2 = 8 windows
    seen: list[tuple[int, bool]] = []
    model.register_forward_pre_hook(
        lambda _m, args: seen.append((args[0].shape[0], args[0].is_contiguous(memory_format=torch.channels_last_3d)))
    )
    plain = sliding_window_probabilities(model, volume, WINDOW, overlap=0.5, window_batch=3)
    assert [n for n, _ in seen] == [3, 3, 2]
    seen.clear()
    fast = sliding_window_probabilities(
        model.to(memory_format=torch.channels_last_3d),
        volume,
        WINDOW,
        overlap=0.5,
        window_batch=3,
        channels_last=True,
        fixed_batch=True,
    )
    assert seen == [(3, True)] * 3  # the last batch padded to the same shape; every batch channels-last
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)


def test_predictor_with_channels_last_matches_the_plain_predictor(checkpoint: Checkpoint) -> None:
    images = brats_phantom(7, shape=(40, 56, 48)).images
    plain = Predictor(checkpoint, device="cpu", precision="fp32").predict(images, keep_probabilities=True)
    fast = Predictor(checkpoint, device="cpu", precision="fp32", channels_last=True)
    np.testing.assert_allclose(
        fast.predict(images, keep_probabilities=True).probabilities, plain.probabilities, rtol=0, atol=1e-3
    )  # float16 outputs


@pytest.mark.slow
def test_compiled_predictor_matches_the_plain_predictor(checkpoint: Checkpoint) -> None:
    """torch.compile on CPU needs a C++ compiler and takes about a minute."""
    images = brats_phantom(8, shape=(40, 56, 48)).images
    plain = Predictor(checkpoint, device="cpu", precision="fp32").predict(images, keep_probabilities=True)
    compiled = Predictor(checkpoint, device="cpu", precision="fp32", compile="default", window_batch=3)
    fast = compiled.predict(images, keep_probabilities=True)
    np.testing.assert_allclose(fast.probabilities, plain.probabilities, rtol=0, atol=1e-3)


def test_segment_command_passes_the_speed_options_on(
    tiny_checkpoint: Path, phantom_files: dict[str, Path], tmp_path: Path
) -> None:
    images = [str(phantom_files[m]) for m in ("flair", "t1", "t1ce", "t2")]
    outputs = {}
    for name, extra in (("plain", []), ("channels_last", ["--channels-last"])):
        out = tmp_path / f"{name}.nii.gz"
        argv = ["segment", "-i", *images, "-o", str(out), "--model", str(tiny_checkpoint), "--device", "cpu"]
        assert main([*argv, "--precision", "fp32", "--progress", "none", *extra]) == 0
        outputs[name] = read_image(out)[0]
    np.testing.assert_array_equal(outputs["channels_last"], outputs["plain"])
