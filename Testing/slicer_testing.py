"""Helpers for the Slicer-extension tests: a real MRML scene from the ``slicer-core`` wheel (no Qt, no app).

``slicer.mrmlScene`` and ``slicer.app`` do not exist there: :func:`new_scene` builds a scene with what the Slicer
application would set up for our code (segmentation converter rules, procedural colour tables, three slice
views' composite nodes) and the fixture in each test module assigns it to ``slicer.mrmlScene``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIRS = (ROOT / "CLDLSegmentation", ROOT / "CLDLTraining")
for _folder in MODULE_DIRS:  # Slicer puts the module folders on sys.path; so do the tests
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import slicer  # noqa: E402  (after the path set-up, like the modules in Slicer)
import vtk  # noqa: E402

SLICE_VIEWS = ("Red", "Yellow", "Green")

# The confidence part of an engine result event (cldl.inference.confidence), as the widget and the Lib receive it.
CONFIDENCE_SUMMARY = {
    "confidence": {
        "uncertain_threshold": 0.5,
        "near_tie_margin": 0.2,
        "segments": [
            {"name": "NCR", "label": 1, "volume_ml": 0.0, "mean_uncertainty": None, "uncertain_ml": 0.0,
             "near_tie_ml": 0.0, "focus_lps": None},
            {"name": "ET", "label": 4, "volume_ml": 5.94, "mean_uncertainty": 0.213, "uncertain_ml": 1.2,
             "near_tie_ml": 0.41, "focus_lps": [10.0, -20.0, 30.0]},
        ],
    }
}  # fmt: skip


def new_scene():
    """A scene with converter rules, the procedural colour tables and one composite node per slice view."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = {rule.GetName() for rule in factory.GetConverterRules()}
    if "Binary labelmap to closed surface" not in rules:
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLScene(scene)  # procedural tables (Grey, Labels, ...); file-based Inferno/Viridis are absent
    scene._cldl_color_logic = colors  # keep it alive with the scene
    for name in SLICE_VIEWS:
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
    return scene


def oblique_matrix(angle_deg: float = 20.0, spacing=(0.8, 1.2, 2.5), origin=(10.0, -20.0, 30.0)) -> vtk.vtkMatrix4x4:
    """An IJK-to-RAS matrix with a rotation about two axes and anisotropic spacing."""
    a, b = math.radians(angle_deg), math.radians(angle_deg / 2)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    direction = rz @ rx @ np.diag(spacing)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, direction[r, c])
        matrix.SetElement(r, 3, origin[r])
    return matrix


def add_volume(scene, array: np.ndarray, name: str = "volume", matrix=None, labelmap: bool = False):
    """A volume node holding ``array`` (z, y, x) with the given IJK-to-RAS matrix."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    if matrix is not None:
        node.SetIJKToRASMatrix(matrix)
    return node
