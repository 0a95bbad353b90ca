"""End to end through the real engine: `python -m cldl segment` / `cldl train` subprocesses driven by the Slicer
Lib code, results imported into a real MRML scene (slicer-core)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import slicer
from slicer_testing import oblique_matrix  # also puts the module folders on sys.path

# isort: split
from CLDLSegmentationLib import SegmentationLogic
from CLDLSegmentationLib.segmentations import segmentVoxelCounts
from CLDLSegmentationLib.volumes import ijkToRas
from CLDLTrainingLib import TrainingLogic

from cldl.checkpoint import load_checkpoint
from cldl.data.phantoms import brats_phantom


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    """The shared tiny checkpoint (a real one, loadable with weights_only=True)."""
    load_checkpoint(tiny_checkpoint)
    return tiny_checkpoint


@pytest.fixture(scope="module")
def phantom():
    """A small BraTS phantom (the model's four modalities)."""
    return brats_phantom(321, shape=(40, 40, 40))


def _load_phantom(scene, phantom, tmp_path: Path, oblique: bool = True) -> list:
    """The phantom's modalities as volume nodes on an oblique, anisotropic grid (as if loaded by the user)."""
    nodes = []
    for name, image in zip(phantom.modalities, phantom.images):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"case_{name}")
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(image))
        if oblique:
            node.SetIJKToRASMatrix(oblique_matrix(15.0, spacing=(1.0, 1.1, 1.3)))
        nodes.append(node)
    return nodes


def test_segment_blocking_imports_everything_on_the_input_grid(scene, phantom, checkpoint, tmp_path) -> None:
    """segment(wait=True) runs `python -m cldl segment`, reports progress, and imports a segmentation (task
    names), an uncertainty map (0..1) and per-class probabilities, all on the oblique input grid; the overlay
    is shown and the temporary folder is removed."""
    inputs = _load_phantom(scene, phantom, tmp_path)
    progress, logs = [], []
    logic = SegmentationLogic(scene, tempRoot=tmp_path)
    result = logic.segment(
        inputs,
        model=str(checkpoint),
        device="cpu",
        keepProbabilities=True,
        uncertaintyMap="max_prob",
        wait=True,
        onProgress=lambda f, t: progress.append((f, t)),
        onLog=logs.append,
    )
    assert progress[-1][0] == 1.0 and any(t.startswith("inference") for _, t in progress)
    assert all(b[0] >= a[0] for a, b in zip(progress, progress[1:]))
    assert any("segmented in" in message for message in logs)
    assert list(tmp_path.glob("CLDL-*")) == []  # temporary files removed

    reference = inputs[0]
    segmentation = result.segmentationNode
    names = {segmentation.GetSegmentation().GetSegment(i).GetName() for i in result.segmentIds.values()}
    assert names <= {
        "Necrotic and non-enhancing tumour core (NCR)",
        "Peritumoral edema (ED)",
        "GD-enhancing tumour (ET)",
    }
    assert result.summary["task"] == "brats" and result.summary["device"] == "cpu"

    # the engine's label map, read back independently, matches the imported segments voxel for voxel
    counts = segmentVoxelCounts(segmentation, reference)
    volumes_ml = result.summary["volumes_ml"]
    for key, segment_id in result.segmentIds.items():
        name = segmentation.GetSegmentation().GetSegment(segment_id).GetName()
        voxel_ml = float(np.prod([1.0, 1.1, 1.3])) / 1000.0
        assert counts[name] * voxel_ml == pytest.approx(volumes_ml[key], rel=1e-3, abs=1e-3)

    uncertainty = result.uncertaintyNode
    values = slicer.util.arrayFromVolume(uncertainty)
    assert values.shape == phantom.labels.shape and 0.0 <= values.min() and values.max() <= 1.0
    np.testing.assert_allclose(ijkToRas(uncertainty), ijkToRas(reference), atol=1e-5)
    assert uncertainty.GetAttribute("CLDL.Map") == "uncertainty" and uncertainty.GetAttribute("CLDL.Overlay") == "1"
    assert set(result.probabilityNodes) == {"NCR", "ED", "ET"}
    total = sum(slicer.util.arrayFromVolume(n).astype(np.float64) for n in result.probabilityNodes.values())
    assert total.max() <= 1.0 + 3 * 0.5 / 255
    # max_prob uncertainty = 1 - max_k p_k, up to the uint8 quantisation of both files
    probabilities = [slicer.util.arrayFromVolume(n) for n in result.probabilityNodes.values()]
    background = np.clip(1.0 - total, 0, 1)
    expected = 1.0 - np.max(np.stack([background, *probabilities]), axis=0)
    assert np.mean(np.abs(expected - values)) < 0.01
    for node in result.probabilityNodes.values():
        np.testing.assert_allclose(ijkToRas(node), ijkToRas(reference), atol=1e-5)
    composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundVolumeID() == uncertainty.GetID()
    assert composite.GetBackgroundVolumeID() == reference.GetID()
    assert logic.mapVolumes(reference) == [uncertainty, *result.probabilityNodes.values()]


def test_segment_failure_and_cancel(scene, phantom, checkpoint, tmp_path) -> None:
    """A wrong model fails with the engine's message and exit status; a running job cancels cleanly (the whole
    process tree, no nodes added, temporary files removed)."""
    inputs = _load_phantom(scene, phantom, tmp_path, oblique=False)
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    logic = SegmentationLogic(scene, tempRoot=tmp_path)
    from CLDLSegmentationLib.models import ModelInfo

    info = ModelInfo(key=str(bogus), title="bogus", task=load_checkpoint(checkpoint).task)
    with pytest.raises(RuntimeError, match=r"checkpoint.*\(exit status 1\)"):
        logic.segment(inputs, model=info, device="cpu", wait=True)

    nodes_before = scene.GetNumberOfNodes()
    finished = []
    job = logic.segment(inputs, model=str(checkpoint), device="cpu", tta=True, onFinished=finished.append)
    assert job.status == "running" and job.poll()
    time.sleep(0.5)
    job.cancel()
    assert job.status == "cancelled" and finished == [job]
    assert job.process.returncode is not None
    assert scene.GetNumberOfNodes() == nodes_before
    assert list(tmp_path.glob("CLDL-*")) == []


def test_train_drives_handle_and_charts(scene, tmp_path) -> None:
    """train(wait=False) starts `cldl train`; polling the handle yields progress, one metrics record per epoch
    and live plot rows; the run folder holds best.pt, which the segmentation logic accepts."""
    config = {"extends": "tiny_phantoms", "phantoms": {"train_seeds": [0, 1]}}  # 1 case each, 32^3
    logic = TrainingLogic(scene)
    metrics = []
    handle = logic.train(
        None, "brats", tmp_path / "run", config=config, overrides={"epochs": 2}, onMetrics=metrics.append
    )
    while handle.poll():
        time.sleep(0.1)
    assert handle.status == "completed", handle.error
    assert [m["epoch"] for m in handle.metrics] == [1, 2] and metrics == handle.metrics
    assert "loss_total" in handle.metrics[0] and "dice_mean" in handle.metrics[-1]
    assert handle.progress == 1.0 and handle.result["epochs"] == 2
    assert handle.curves.losses.rows == 2 and handle.curves.validation.rows == 2
    saved = json.loads((tmp_path / "run" / "requested_config.json").read_text())
    assert saved["epochs"] == 2 and saved["phantoms"]["shape"] == [32, 32, 32]
    assert handle.bestCheckpoint.is_file()
    with pytest.raises(ValueError, match="already holds a run"):
        logic.train(None, "brats", tmp_path / "run", config=config)
