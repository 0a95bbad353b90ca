"""Region maps and the confidence table on a real MRML scene (slicer-core; issue 12)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
from slicer_testing import CONFIDENCE_SUMMARY as SUMMARY
from slicer_testing import add_volume, oblique_matrix  # also puts the module folders on sys.path

# isort: split
from CLDLSegmentationLib.confidence import confidenceHeaderToolTips, confidenceRows, focusRas, jumpToFocus
from CLDLSegmentationLib.logic import SegmentationLogic, SegmentationOptions
from CLDLSegmentationLib.models import ModelInfo
from CLDLSegmentationLib.overlay import MAP_ATTRIBUTE, OVERLAY_ATTRIBUTE
from CLDLSegmentationLib.panel import updateOverlay
from CLDLSegmentationLib.segmentations import markUncertainRegion
from CLDLSegmentationLib.volumes import exportVolume

from cldl.files.geometry import Geometry
from cldl.files.images import write_image, write_unit_interval
from cldl.tasks import BRATS


def test_confidence_rows_tooltips_and_focus() -> None:
    assert confidenceRows(SUMMARY) == [("NCR", "0.0", "-", "0.0", "0.0"), ("ET", "5.9", "0.21", "1.2", "0.4")]
    assert confidenceRows({}) == []
    tips = confidenceHeaderToolTips(SUMMARY)
    assert "above 0.5" in tips["Uncertain (ml)"] and "within 0.2" in tips["Could flip (ml)"]
    assert focusRas(SUMMARY, 1) == (-10.0, 20.0, 30.0)  # LPS -> RAS
    assert focusRas(SUMMARY, 0) is None and focusRas(SUMMARY, 5) is None


def test_clicking_a_row_centres_every_slice_view_on_the_uncertain_region(scene) -> None:
    sliceNodes = []
    for name in ("Red", "Green"):
        node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        node.SetLayoutName(name)
        sliceNodes.append(node)
    sliceNodes[0].SetOrientationToAxial()
    sliceNodes[1].SetOrientationToCoronal()
    assert jumpToFocus(SUMMARY, 1, scene) == (-10.0, 20.0, 30.0)
    for node in sliceNodes:
        matrix = node.GetSliceToRAS()
        centre = [matrix.GetElement(r, 3) for r in range(3)]
        np.testing.assert_allclose(centre, (-10.0, 20.0, 30.0), atol=1e-6)
    assert jumpToFocus(SUMMARY, 0, scene) is None


def test_region_maps_are_imported_named_selectable_and_usable_for_marking(scene, tmp_path: Path) -> None:
    node = add_volume(scene, np.ones((6, 7, 8), np.float32), "flair", oblique_matrix(25.0))
    exportVolume(node, tmp_path / "flair.nii")
    geometry = Geometry.of(sitk.ReadImage(str(tmp_path / "flair.nii")))
    labels = np.zeros((6, 7, 8), np.uint8)
    labels[1:5, 2:6, 2:7] = 4
    write_image(labels, geometry, tmp_path / "labels.nii")
    write_unit_interval(np.zeros((6, 7, 8), np.float32), geometry, tmp_path / "u.nii")
    ambiguity = np.zeros((6, 7, 8), np.float32)
    ambiguity[1:3] = 0.9
    write_unit_interval(ambiguity, geometry, tmp_path / "region_ambiguity_2mm.nii.gz")
    title = "Region ambiguity (mixed tissue), 2 mm regions"
    summary = {
        **SUMMARY,
        "ldl_maps": [
            {"path": str(tmp_path / "region_ambiguity_2mm.nii.gz"), "title": title, "kind": "ambiguity",
             "region_mm": [2, 2, 2], "class_index": None}
        ],
    }  # fmt: skip
    outputs = {"labelmap": tmp_path / "labels.nii", "uncertainty": tmp_path / "u.nii"}
    logic = SegmentationLogic(scene=scene)
    result = logic.importResults(
        [node], ModelInfo("m", "m", BRATS), outputs, SegmentationOptions(ldlMaps=True), summary=summary
    )
    (mapNode,) = result.ldlMapNodes
    assert mapNode.GetName() == f"flair CLDL {title}"
    assert mapNode.GetAttribute(MAP_ATTRIBUTE) == "ldl" and mapNode.GetAttribute(OVERLAY_ATTRIBUTE) == "1"
    assert mapNode.GetAttribute("CLDL.Input") == node.GetID()
    assert mapNode in logic.mapVolumes(node)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(mapNode), ambiguity, atol=0.5 / 255 + 1e-6)

    updateOverlay(None, mapNode, logic.overlaySettings, scene)  # the Map choice picks it: legend says what it is
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(mapNode)
    assert legend.GetTitleText() == title and legend.GetVisibility()
    segmentId = markUncertainRegion(result.segmentationNode, mapNode, 0.5)
    segment = result.segmentationNode.GetSegmentation().GetSegment(segmentId)
    assert segment is not None


def test_map_descriptions_and_marked_region_names(scene) -> None:
    """The line under the Map choice and the marked segment's name, per kind of map."""
    from CLDLSegmentationLib.panel import describeMap, markedRegionName

    kinds = {
        "u": {MAP_ATTRIBUTE: "uncertainty", "CLDL.Title": "Uncertainty (entropy)"},
        "p": {MAP_ATTRIBUTE: "probability", "CLDL.Title": "P(ET)"},
        "f": {MAP_ATTRIBUTE: "ldl", "CLDL.Kind": "proportion", "CLDL.Title": "ET fraction, 4 mm regions"},
        "plain": {},
    }
    nodes = {}
    for name, attributes in kinds.items():
        nodes[name] = add_volume(scene, np.zeros((2, 2, 2), np.float32), name)
        for key, value in attributes.items():
            nodes[name].SetAttribute(key, value)
    assert describeMap(nodes["u"]).startswith("Uncertainty (entropy): how unsure")
    assert describeMap(nodes["p"]).startswith("P(ET): the model's probability")
    fraction = "ET fraction, 4 mm regions: the fraction of each region that the network gives to this class (0..1)"
    assert describeMap(nodes["f"]) == fraction
    assert describeMap(nodes["plain"]) == describeMap(None) == ""
    assert markedRegionName(nodes["u"], 0.5) is None  # the uncertainty keeps "Uncertain region (> 0.50)"
    assert markedRegionName(nodes["p"], 0.25) == "P(ET) > 0.25"
    assert markedRegionName(nodes["f"], 0.5) == "ET fraction, 4 mm regions > 0.50"
