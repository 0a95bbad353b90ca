"""Slicer's raw-scan path (`prepare=True`): inputs on different grids go to `cldl segment --prepare`, and the results
come back on the reference (T1ce) volume's geometry with the brain mask as a hidden segment (slicer-core, real MRML
nodes; the engine's outputs are made with its own writers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from slicer_testing import add_volume, oblique_matrix  # also puts the module folders on sys.path

# isort: split
import CLDLSegmentationLib.logic as logic_module
from CLDLSegmentationLib.logic import BRAIN_MASK_SEGMENT, SegmentationLogic, SegmentationOptions, preparationReference
from CLDLSegmentationLib.models import ModelInfo
from CLDLSegmentationLib.volumes import checkInputs, exportVolume, ijkToRas

from cldl.files.geometry import Geometry
from cldl.files.images import write_image, write_unit_interval
from cldl.tasks import BRATS

SHAPE = (10, 12, 14)


def _raw_inputs(scene) -> list:
    """Four volumes on four different grids, as raw scans come from a scanner (model order)."""
    return [
        add_volume(scene, np.ones((5, 12, 14), np.float32), "flair", oblique_matrix(0.0, (1.0, 1.0, 4.0))),
        add_volume(scene, np.ones((8, 12, 14), np.float32), "t1", oblique_matrix(12.0, (1.0, 1.0, 1.2))),
        add_volume(scene, np.ones(SHAPE, np.float32), "t1ce", oblique_matrix(25.0, (1.0, 1.0, 1.0))),
        add_volume(scene, np.ones((6, 15, 17), np.float32), "t2", oblique_matrix(-10.0, (0.8, 0.8, 3.0))),
    ]


def test_prepare_option_accepts_raw_grids_and_asks_the_engine_to_prepare(scene, tmp_path: Path, monkeypatch) -> None:
    """With prepare=True the inputs need not share a grid; the engine gets --prepare, --skull-strip and
    --brain-mask; without it the grid check still refuses them."""
    inputs = _raw_inputs(scene)
    with pytest.raises(ValueError, match="not on the grid of flair"):
        checkInputs(inputs, BRATS.modalities)
    checkInputs(inputs, BRATS.modalities, requireSameGrid=False)
    assert preparationReference(BRATS.modalities) == 2 and preparationReference(("ct",)) == 0
    assert SegmentationOptions(prepare=True, skullStrip="no").arguments()[-3:] == ["--prepare", "--skull-strip", "no"]
    with pytest.raises(ValueError, match="skullStrip"):
        SegmentationOptions(prepare=True, skullStrip="maybe")

    started = []

    class RecordingProcess:  # the engine is not run here: only its command line is checked
        def __init__(self, command, env=None, cwd=None) -> None:
            self.command = [str(c) for c in command]

        def start(self) -> None:
            started.append(self.command)

    monkeypatch.setattr(logic_module, "JsonLinesProcess", RecordingProcess)
    info = ModelInfo(key="cldl-brats", title="x", task=BRATS)
    job = SegmentationLogic(scene, python="python", tempRoot=tmp_path).segment(inputs, model=info, prepare=True)
    command = started[0]
    assert "--prepare" in command and command[command.index("--skull-strip") + 1] == "auto"
    assert Path(command[command.index("--brain-mask") + 1]) == job.outputs["brainMask"]
    images = command[command.index("-i") + 1 : command.index("-o")]
    assert [sitk.ReadImage(p).GetSize() for p in images] == [(14, 12, 5), (14, 12, 8), (14, 12, 10), (17, 15, 6)]


def test_prepared_results_import_on_the_reference_volume_with_a_hidden_brain_mask(scene, tmp_path: Path) -> None:
    """Engine outputs on the T1ce grid become a segmentation whose reference geometry is the T1ce volume, the
    tumour where the engine put it, and the brain mask one more segment, hidden."""
    inputs = _raw_inputs(scene)
    t1ce = inputs[2]
    exportVolume(t1ce, tmp_path / "t1ce.nii")
    geometry = Geometry.of(sitk.ReadImage(str(tmp_path / "t1ce.nii")))
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:6, 4:8, 5:9] = 2
    labels[4:5, 5:7, 6:8] = 4
    brain = np.zeros(SHAPE, np.uint8)
    brain[1:9, 2:11, 2:13] = 1
    write_image(labels, geometry, tmp_path / "labelmap.nii")
    write_unit_interval(np.full(SHAPE, 0.25, np.float32), geometry, tmp_path / "uncertainty.nii")
    write_image(brain, geometry, tmp_path / "brain_mask.nii")
    outputs = {n: tmp_path / f"{n}.nii" for n in ("labelmap", "uncertainty")}
    outputs["brainMask"] = tmp_path / "brain_mask.nii"
    info = ModelInfo(key="cldl-brats", title="x", task=BRATS)
    result = SegmentationLogic(scene).importResults(inputs, info, outputs, SegmentationOptions(prepare=True))

    node = result.segmentationNode
    assert node.GetNodeReference("referenceImageGeometryRef") is t1ce
    assert node.GetName() == "flair CLDL segmentation"
    np.testing.assert_allclose(ijkToRas(result.uncertaintyNode), ijkToRas(t1ce), atol=1e-5)
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
    assert BRAIN_MASK_SEGMENT in names
    maskId = segmentation.GetSegmentIdBySegmentName(BRAIN_MASK_SEGMENT)
    assert not node.GetDisplayNode().GetSegmentVisibility(maskId)
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    for segmentId, expected in ((maskId, brain > 0), (result.segmentIds["ED"], labels == 2)):
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentId)
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, exported, t1ce)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(exported) > 0, expected)
    assert scene.GetNodesByName("flair brain mask").GetNumberOfItems() == 0  # the temporary label map is gone
