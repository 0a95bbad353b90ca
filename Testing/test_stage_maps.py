"""The LDL stage maps: stitching on each stage's grid, mapping onto the input grid, names (issue 12)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_checkpoint

from cldl.checkpoint import Checkpoint
from cldl.data.preprocess import PreprocessConfig
from cldl.files.atomic_writes import atomic_outputs
from cldl.files.geometry import Geometry
from cldl.files.images import read_image
from cldl.inference.predictor import Predictor, sliding_window_outputs
from cldl.inference.region_maps import stage_map_files, write_stage_maps
from cldl.method.network import ModelConfig, ModelOutput, UNetLDL
from cldl.tasks import BRATS

WINDOW = (32, 32, 32)


def _model(seed: int = 0) -> UNetLDL:
    """A tiny randomly initialised network in eval mode."""
    torch.manual_seed(seed)
    return UNetLDL(ModelConfig(base_width=4)).eval()


class PooledInput(torch.nn.Module):
    """A local, translation-equivariant stand-in: the input channels are the voxel distribution, each stage
    predicts their mean over its blocks (what a perfect R-LDL head would do)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the predictor a device

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Final logits = log of the input, stage ``r`` = log of its ``r``^3 block means (r = 8, 4, 2)."""
        logs = tuple(torch.log(F.avg_pool3d(x, r)) for r in (8, 4, 2))
        return ModelOutput(torch.log(x), logs, tuple(torch.zeros_like(s[:, 0]) for s in logs))


def _ramp(shape: tuple[int, int, int]) -> np.ndarray:
    """Two channels that sum to 1 and change linearly along every axis."""
    z, y, x = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    first = 0.2 + 0.004 * z + 0.003 * y + 0.002 * x
    return np.stack([first, 1.0 - first]).astype(np.float32)


def test_a_volume_that_fits_one_window_gives_the_networks_own_stage_output() -> None:
    model = _model(3)
    volume = np.random.default_rng(0).normal(size=(4, *WINDOW)).astype(np.float32)
    probs, stages = sliding_window_outputs(model, volume, WINDOW, stages=True)
    with torch.no_grad():
        output = model(torch.from_numpy(volume)[None])
    assert [r for r, _ in stages] == [8, 4, 2]
    for (region, stitched), log_probs in zip(stages, output.stage_log_probs):
        assert stitched.shape == (4, *(w // region for w in WINDOW))
        torch.testing.assert_close(stitched, log_probs[0].exp(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, torch.softmax(output.logits, 1)[0], atol=1e-5, rtol=1e-5)
    assert sliding_window_outputs(model, volume, WINDOW)[1] == []


@pytest.mark.parametrize(
    "size, gaussian, tolerance",
    [(48, False, 1e-5), (48, True, 1e-5), (44, True, 6e-3)],
)
def test_overlapping_windows_agree_with_one_large_window(size: int, gaussian: bool, tolerance: float) -> None:
    """Windows at 0 and 16 (48 voxels) tile every stage grid: exact; at 0 and 12 (44 voxels) the 8-voxel cells of the
    second window straddle two cells of the grid: close (Gaussian weights are low at window borders)."""
    shape = (size,) * 3
    volume = _ramp(shape)
    model = PooledInput()
    _, stages = sliding_window_outputs(model, volume, WINDOW, overlap=0.5, gaussian=gaussian, stages=True)
    truth = torch.from_numpy(volume)[None]
    for region, stitched in stages:
        full = tuple(s // region for s in shape)  # cells entirely inside the volume (the last 8-cell is partial)
        expected = F.avg_pool3d(truth, region)[0]
        torch.testing.assert_close(stitched[:, : full[0], : full[1], : full[2]], expected, atol=tolerance, rtol=0)
        torch.testing.assert_close(stitched.sum(0), torch.ones(stitched.shape[1:]), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    """A tiny BraTS checkpoint with random weights."""
    return random_checkpoint(1, WINDOW)


def _case(shape: tuple[int, int, int] = (40, 44, 36)) -> np.ndarray:
    """Four positive channels with a zero border (so the foreground crop is smaller than the volume)."""
    volume = np.zeros((4, *shape), np.float32)
    volume[:, 3:-5, 4:-2, 2:-6] = np.random.default_rng(2).uniform(1, 2, size=(4, shape[0] - 8, shape[1] - 6, 28))
    return volume


def test_nearest_maps_are_the_stage_cells_on_the_input_grid(checkpoint: Checkpoint) -> None:
    volume = _case()
    prediction = Predictor(checkpoint, device="cpu").predict(volume, stage_maps="nearest")
    maps = prediction.stage_maps
    assert [s.region for s in maps.stages] == [8, 4, 2]
    start = (3, 4, 2)  # the foreground crop
    for index, stage in enumerate(maps.stages):
        proportions, ambiguity = maps.on_input(index)
        assert proportions.shape == (4, *volume.shape[1:]) and proportions.dtype == np.float16
        assert ambiguity.shape == volume.shape[1:] and 0 <= ambiguity.min() and ambiguity.max() <= 1
        np.testing.assert_allclose(proportions.astype(np.float32).sum(0), 1.0, atol=5e-3)
        voxel = (20, 25, 17)
        cell = tuple((v - s) // stage.region for v, s in zip(voxel, start))
        np.testing.assert_allclose(
            proportions[(slice(None), *voxel)], stage.proportions[(slice(None), *cell)], atol=1e-3
        )
        np.testing.assert_allclose(ambiguity[voxel], stage.ambiguity[cell], atol=1e-3)
        assert proportions[0, 0, 0, 0] == 1 and ambiguity[0, 0, 0] == 0  # outside the crop: background
        assert stage.region_mm == (stage.region,) * 3


def test_maps_follow_reorientation_and_resampling(checkpoint: Checkpoint) -> None:
    """A flipped, permuted, anisotropic input: maps come back on its exact grid, through resampling too."""
    volume = _case()
    direction = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    geometry = Geometry((36, 44, 40), (1.0, 1.0, 1.5), (10.0, -5.0, 3.0), direction)
    plain = Predictor(checkpoint, device="cpu").predict(volume, geometry=geometry, stage_maps="linear")
    resampled = replace(checkpoint, preprocess=PreprocessConfig(target_spacing=(1.2, 1.2, 1.2)))
    moved = Predictor(resampled, device="cpu").predict(volume, geometry=geometry, stage_maps="nearest")
    assert plain.stage_maps.stages[2].region_mm == (3.0, 2.0, 2.0)  # the reoriented grid's x is the input's z
    assert moved.stage_maps.stages[0].region_mm == (9.6, 9.6, 9.6)
    for prediction in (plain, moved):
        for index in range(3):
            proportions, ambiguity = prediction.stage_maps.on_input(index)
            assert proportions.shape == (4, *volume.shape[1:]) and ambiguity.shape == volume.shape[1:]
            np.testing.assert_allclose(proportions.astype(np.float32).sum(0), 1.0, atol=1e-2)
            outside = prediction.classes == 0
            assert ambiguity[0, 0, 0] == 0 and outside.any()


def test_files_have_self_explaining_names_and_are_written_together(checkpoint: Checkpoint, tmp_path: Path) -> None:
    volume = _case()
    geometry = Geometry((36, 44, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    prediction = Predictor(checkpoint, device="cpu").predict(volume, geometry=geometry, stage_maps="nearest")
    names = [f.name for stage in stage_map_files(prediction.stage_maps, BRATS) for f in stage]
    assert names[:4] == [
        "region_ambiguity_8mm.nii.gz",
        "NCR_proportion_8mm.nii.gz",
        "ED_proportion_8mm.nii.gz",
        "ET_proportion_8mm.nii.gz",
    ]
    assert "region_ambiguity_2mm.nii.gz" in names and len(names) == 12
    with atomic_outputs() as staged:
        entries = write_stage_maps(prediction.stage_maps, BRATS, geometry, tmp_path / "ldl", staged)
    assert sorted(p.name for p in (tmp_path / "ldl").iterdir()) == sorted(names)
    assert entries[0]["title"] == "Region ambiguity (mixed tissue), 8 mm regions"
    assert entries[3]["title"].endswith("fraction, 8 mm regions") and entries[3]["class_index"] == 3
    written, written_geometry = read_image(tmp_path / "ldl" / "region_ambiguity_2mm.nii.gz", np.float32)
    assert written_geometry.matches(geometry)
    np.testing.assert_allclose(written, prediction.stage_maps.on_input(2)[1].astype(np.float32), atol=1 / 255)


def test_an_unknown_interpolation_is_refused(checkpoint: Checkpoint) -> None:
    with pytest.raises(ValueError, match="interpolation"):
        Predictor(checkpoint, device="cpu").predict(_case(), stage_maps="cubic")
