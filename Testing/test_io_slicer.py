"""cldl's .seg.nrrd against 3D Slicer's own segmentation reader and writer (slicer-core: a real MRML scene)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk
from slicer_testing import new_scene
from vtk.util.numpy_support import vtk_to_numpy

from cldl.evaluation.reports import evaluate_pair
from cldl.files.geometry import Geometry
from cldl.files.label_maps import read_labels, write_segmentation
from cldl.tasks import BRATS, MMWHS_CT

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
GEOMETRY = Geometry((14, 12, 10), (0.7, 1.3, 2.5), (1.0, -2.0, 3.0), (0.0, 1.0, 0.0, -0.8, 0.0, 0.6, 0.6, 0.0, 0.8))


@pytest.fixture
def scene():
    scene = new_scene()
    yield scene
    scene.Clear(1)


def _brats_labels() -> np.ndarray:
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    labels[2:7, 3:9, 4:11] = 2
    labels[3:6, 4:7, 5:9] = 4
    labels[4, 5, 6:8] = 1
    return labels


def _load(scene, path: Path):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


def _ijk_to_ras(image) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


@pytest.mark.parametrize("task", [BRATS, MMWHS_CT], ids=["brats", "mmwhs"])
def test_slicer_reads_our_segmentation_with_names_colours_values_and_geometry(scene, tmp_path: Path, task) -> None:
    labels = (
        _brats_labels()
        if task is BRATS
        else np.where(_brats_labels() == 2, 850, np.where(_brats_labels() == 4, 205, 0)).astype(np.int16)
    )
    path = write_segmentation(labels, GEOMETRY, tmp_path / "out.seg.nrrd", task)
    segmentation = _load(scene, path).GetSegmentation()
    assert segmentation.GetNumberOfSegments() == task.num_classes - 1
    expected_ijk = np.eye(4)
    expected_ijk[:3, :3] = GEOMETRY.matrix * np.asarray(GEOMETRY.spacing)
    expected_ijk[:3, 3] = GEOMETRY.origin
    expected_ijk = LPS_TO_RAS @ expected_ijk
    for index in range(1, task.num_classes):
        abbreviation = task.abbreviations[index]
        segment = segmentation.GetSegment(abbreviation)
        assert segment.GetName() == f"{task.class_names[index]} ({abbreviation})"
        np.testing.assert_allclose(segment.GetColor(), task.colors[index], atol=1e-6)
        assert segment.GetLabelValue() == task.label_values[index]
        labelmap = segment.GetRepresentation("Binary labelmap")
        np.testing.assert_allclose(_ijk_to_ras(labelmap), expected_ijk, atol=1e-9)
        scalars = vtk_to_numpy(labelmap.GetPointData().GetScalars())
        count = int(np.count_nonzero(scalars == task.label_values[index])) if scalars is not None else 0
        assert count == int(np.count_nonzero(labels == task.label_values[index]))


def test_we_read_what_slicer_writes_cropped_to_the_segments(scene, tmp_path: Path) -> None:
    """Slicer saves a segmentation cropped to its segments' extent; cldl places it back on the image grid, also
    when evaluating against a full-grid label map."""
    labels = _brats_labels()
    node = _load(scene, write_segmentation(labels, GEOMETRY, tmp_path / "ours.seg.nrrd", BRATS))
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp_path / "slicer.seg.nrrd"))
    assert storage.WriteData(node)
    cropped, geometry = read_labels(tmp_path / "slicer.seg.nrrd", BRATS)
    assert cropped.shape != labels.shape  # Slicer cropped it
    assert np.count_nonzero(cropped == 4) == np.count_nonzero(labels == 4)
    from cldl.files.images import write_image

    reference = write_image(labels, GEOMETRY, tmp_path / "case_seg.nii.gz")
    result = evaluate_pair(tmp_path / "slicer.seg.nrrd", reference, BRATS)
    assert all(values["dice"] == 1.0 and values["hd95"] == 0.0 for values in result["regions"].values())
