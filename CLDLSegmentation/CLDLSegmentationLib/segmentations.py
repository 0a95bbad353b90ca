"""Label maps -> segmentation nodes with the task's segment names, colours and terminology.

A colour table holding the task's names and colours at the original label values (BraTS 4 stays 4) is set on
the label map, so Slicer's importer names and colours the segments; each segment then gets its terminology tag
and a ``CLDL.Class`` tag (the class abbreviation), by which scripts find it again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import slicer
import vtk

from .terminology import UNCERTAIN_REGION, entryString, terminologyFor
from .volumes import copyGeometry

CLASS_TAG = "CLDL.Class"
UNCERTAIN_TAG = "CLDL.UncertainRegion"
UNCERTAIN_COLOR = (0.0, 0.85, 1.0)


def segmentNames(task) -> list[str]:
    """Display name of every class: ``"Peritumoral edema (ED)"``; the name alone when there is no abbreviation."""
    names = []
    for index, name in enumerate(task.class_names):
        abbreviation = task.abbreviations[index] if index < len(task.abbreviations) else ""
        names.append(f"{name} ({abbreviation})" if abbreviation and abbreviation != name else name)
    return names


def classKeys(task) -> list[str]:
    """Short, stable key per class: the abbreviation, else the class name."""
    return [
        (task.abbreviations[i] if i < len(task.abbreviations) and task.abbreviations[i] else name)
        for i, name in enumerate(task.class_names)
    ]


def taskColorTable(task, scene, name: str | None = None):
    """A colour table with one entry per original label value: the task's names and colours (0 = background)."""
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(name or f"CLDL {task.name}"))
    table.SetTypeToUser()
    table.SetNumberOfColors(max(task.label_values) + 1)
    table.SetHideFromEditors(False)
    for value in range(max(task.label_values) + 1):
        table.SetColor(value, "", 0.0, 0.0, 0.0, 0.0)
        if hasattr(table, "SetColorDefined"):
            table.SetColorDefined(value, False)
    for index, (value, name_, color) in enumerate(zip(task.label_values, segmentNames(task), task.colors)):
        table.SetColor(value, name_, *color, 0.0 if index == 0 else 1.0)
        if hasattr(table, "SetColorDefined"):
            table.SetColorDefined(value, True)
    table.SetAttribute("CLDL.Task", task.name)
    return table


def tagTerminology(segment, entry: str) -> None:
    """Store a terminology entry on a segment (works on Slicer 5.10 and newer)."""
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(entry)
    else:  # pragma: no cover - older Slicer
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)


def labelmapToSegmentation(
    labelmapNode, task, segmentationNode=None, referenceVolume=None, scene=None, name: str | None = None
):
    """Import a label map (original label values) into a segmentation node; returns ``(node, {key: segmentId})``.

    An existing ``segmentationNode`` is emptied first. Segment names, colours and terminology come from ``task``
    (a :class:`cldl.tasks.Task`); ``referenceVolume`` becomes the segmentation's reference geometry (needed,
    e.g., for DICOM SEG export) and lends its parent transform.
    """
    scene = scene or labelmapNode.GetScene()
    if segmentationNode is None:
        segmentationNode = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", scene.GenerateUniqueName(name or f"{task.name} segmentation")
        )
    segmentationNode.CreateDefaultDisplayNodes()
    segmentation = segmentationNode.GetSegmentation()
    segmentation.RemoveAllSegments()
    if referenceVolume is not None:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        if hasattr(segmentationNode, "SetNodeReferenceID"):
            segmentationNode.SetNodeReferenceID("referenceImageGeometryRef", referenceVolume.GetID())
        segmentationNode.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())

    table = taskColorTable(task, scene)
    if labelmapNode.GetDisplayNode() is None:
        labelmapNode.CreateDefaultDisplayNodes()
    labelmapNode.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            labelmapNode, segmentationNode, ""
        ):
            raise RuntimeError(f"could not import {labelmapNode.GetName()} into {segmentationNode.GetName()}")
    finally:
        scene.RemoveNode(table)

    names, keys = segmentNames(task), classKeys(task)
    byName = {n: i for i, n in enumerate(names)}
    byValue = {v: i for i, v in enumerate(task.label_values)}
    segmentIds: dict[str, str] = {}
    for n in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(n)
        segment = segmentation.GetSegment(segmentId)
        index = byName.get(segment.GetName())
        if index is None:  # an importer that named segments by value ("Label_4")
            index = byValue.get(int(segment.GetLabelValue()))
        if index is None or index == 0:
            continue
        segment.SetName(names[index])
        segment.SetColor(*task.colors[index])
        segment.SetTag(CLASS_TAG, keys[index])
        entry = terminologyFor(task.name, keys[index])
        if entry:
            tagTerminology(segment, entry)
        segmentIds[keys[index]] = segmentId
    return segmentationNode, segmentIds


def showOutlines(segmentationNode, fill: bool = False, outlineThickness: int = 2) -> None:
    """Show the segmentation as outlines in the slice views (fill optional, faint), visible in 3D as well."""
    display = segmentationNode.GetDisplayNode()
    if display is None:
        segmentationNode.CreateDefaultDisplayNodes()
        display = segmentationNode.GetDisplayNode()
    display.SetVisibility(True)
    display.SetVisibility2DOutline(True)
    display.SetVisibility2DFill(fill)
    display.SetOpacity2DFill(0.2)
    display.SetSliceIntersectionThickness(outlineThickness)


def markUncertainRegion(segmentationNode, mapVolume, threshold: float, name: str | None = None) -> str:
    """Add (or replace) a segment of the voxels where ``mapVolume`` is above ``threshold``; returns its id.

    The segment has the ``CLDL.UncertainRegion`` tag; running it again with another threshold replaces it.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the threshold must be in 0..1, got {threshold}")
    scene = segmentationNode.GetScene()
    segmentation = segmentationNode.GetSegmentation()
    for n in reversed(range(segmentation.GetNumberOfSegments())):
        segmentId = segmentation.GetNthSegmentID(n)
        if segmentation.GetSegment(segmentId).HasTag(UNCERTAIN_TAG):
            segmentation.RemoveSegment(segmentId)
    values = slicer.util.arrayFromVolume(mapVolume)
    mask = (values > threshold).astype(np.uint8)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("CLDL uncertain"))
    try:
        slicer.util.updateVolumeFromArray(labelmap, mask)
        copyGeometry(labelmap, mapVolume)
        before = {segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())}
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            labelmap, segmentationNode, ""
        ):
            raise RuntimeError("could not add the uncertain region to the segmentation")
        added = [
            segmentation.GetNthSegmentID(n)
            for n in range(segmentation.GetNumberOfSegments())
            if segmentation.GetNthSegmentID(n) not in before
        ]
    finally:
        scene.RemoveNode(labelmap)
    if not added:  # nothing above the threshold: an empty segment keeps the result visible in the list
        segmentId = segmentation.AddEmptySegment("", "", UNCERTAIN_COLOR)
    else:
        segmentId = added[0]
    segment = segmentation.GetSegment(segmentId)
    segment.SetName(name or f"Uncertain region (> {threshold:.2f})")
    segment.SetColor(*UNCERTAIN_COLOR)
    segment.SetTag(UNCERTAIN_TAG, f"{threshold:.4f}")
    tagTerminology(segment, entryString(*UNCERTAIN_REGION))
    return segmentId


def segmentVoxelCounts(segmentationNode, referenceVolume) -> dict[str, int]:
    """Voxels per segment name on ``referenceVolume``'s grid (through a temporary label map export)."""
    scene = segmentationNode.GetScene()
    tablesBefore = {
        scene.GetNthNodeByClass(n, "vtkMRMLColorTableNode").GetID()
        for n in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode"))
    }
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("CLDL export"))
    try:
        segmentation = segmentationNode.GetSegmentation()
        ids = vtk.vtkStringArray()
        counts = {}
        for n in range(segmentation.GetNumberOfSegments()):
            ids.Initialize()
            segmentId = segmentation.GetNthSegmentID(n)
            ids.InsertNextValue(segmentId)
            slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, ids, labelmap, referenceVolume
            )
            counts[segmentation.GetSegment(segmentId).GetName()] = int(
                np.count_nonzero(slicer.util.arrayFromVolume(labelmap))
            )
        return counts
    finally:
        scene.RemoveNode(labelmap)
        for n in reversed(range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode"))):
            table = scene.GetNthNodeByClass(n, "vtkMRMLColorTableNode")
            if table.GetID() not in tablesBefore:  # the export's own colour table
                scene.RemoveNode(table)


def segmentNamesOf(segmentationNode) -> Sequence[str]:
    """Names of the segments, in order."""
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
