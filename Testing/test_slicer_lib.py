"""CLDLSegmentationLib and CLDLTrainingLib against a real MRML scene (slicer-core, no Qt, no engine subprocess)."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicerio
import vtk
from slicer_testing import add_volume, oblique_matrix  # also puts the module folders on sys.path

# isort: split
from CLDLSegmentationLib.logic import SegmentationLogic, SegmentationOptions
from CLDLSegmentationLib.models import ModelInfo
from CLDLSegmentationLib.overlay import (
    FALLBACK_ATTRIBUTE,
    OverlaySettings,
    configureMapDisplay,
    setOverlayOpacity,
    showMap,
    uncertaintyColorNode,
)
from CLDLSegmentationLib.segmentations import (
    CLASS_TAG,
    UNCERTAIN_TAG,
    labelmapToSegmentation,
    markUncertainRegion,
    segmentVoxelCounts,
)
from CLDLSegmentationLib.terminology import terminologyFor, typeMeaning
from CLDLSegmentationLib.volumes import checkInputs, exportVolume, ijkToRas, importProbabilities, importVolume
from CLDLTrainingLib import TrainingCurves, buildConfig, trainCommand

from cldl.files.geometry import Geometry
from cldl.files.images import write_image, write_unit_interval
from cldl.tasks import BRATS, MMWHS_CT


def _brats_labels(shape=(12, 14, 16)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[2:8, 3:10, 4:12] = 2  # edema
    labels[3:7, 5:9, 6:10] = 4  # enhancing
    labels[4:6, 6:8, 7:9] = 1  # necrotic core
    return labels


# -- volumes ------------------------------------------------------------------------------------------------------


def test_volume_round_trip_keeps_oblique_geometry(scene, tmp_path: Path) -> None:
    """A volume with an oblique, anisotropic grid goes to NIfTI (ITK/LPS on disk) and back unchanged."""
    rng = np.random.default_rng(0)
    array = rng.normal(size=(7, 9, 11)).astype(np.float32)
    node = add_volume(scene, array, "flair", oblique_matrix())
    path = exportVolume(node, tmp_path / "flair.nii")

    image = sitk.ReadImage(str(path))  # what the engine reads
    assert image.GetSize() == (11, 9, 7)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 1.2, 2.5), rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), (-10.0, 20.0, 30.0), atol=1e-5)  # RAS -> LPS
    direction = np.array(image.GetDirection()).reshape(3, 3)
    expected = np.diag([-1, -1, 1]) @ ijkToRas(node)[:3, :3] / np.array([0.8, 1.2, 2.5])
    np.testing.assert_allclose(direction, expected, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)

    back = importVolume(path, scene, "back")
    np.testing.assert_allclose(ijkToRas(back), ijkToRas(node), atol=1e-5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), array)


def test_engine_outputs_import_on_the_input_grid(scene, tmp_path: Path) -> None:
    """Files written by the engine's own writers (label map, uint8 0..1 maps, 4D probabilities) come back as
    nodes on the input's grid with the right values."""
    node = add_volume(scene, np.zeros((6, 7, 8), np.float32), "t1", oblique_matrix(35.0))
    exportVolume(node, tmp_path / "t1.nii")
    geometry = Geometry.of(sitk.ReadImage(str(tmp_path / "t1.nii")))
    labels = np.zeros((6, 7, 8), np.uint8)
    labels[1:4, 2:5, 3:6] = 4
    write_image(labels, geometry, tmp_path / "labels.nii")
    ramp = np.linspace(0, 1, 6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    write_unit_interval(ramp, geometry, tmp_path / "u.nii")
    probabilities = np.stack([1 - ramp, ramp * 0.5, ramp * 0.25, ramp * 0.25])
    write_unit_interval(probabilities, geometry, tmp_path / "p.nii")
    assert nib.load(str(tmp_path / "u.nii")).get_data_dtype() == np.uint8

    labelmap = importVolume(tmp_path / "labels.nii", scene, "labels", labelmap=True)
    assert labelmap.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap), labels)
    np.testing.assert_allclose(ijkToRas(labelmap), ijkToRas(node), atol=1e-5)
    uncertainty = importVolume(tmp_path / "u.nii", scene, "u")
    np.testing.assert_allclose(slicer.util.arrayFromVolume(uncertainty), ramp, atol=0.5 / 255 + 1e-6)
    nodes = importProbabilities(tmp_path / "p.nii", uncertainty, scene, ["BG", "P1", "P2", "P3"])
    assert [n.GetName() for n in nodes] == ["P1", "P2", "P3"]
    np.testing.assert_allclose(slicer.util.arrayFromVolume(nodes[0]), ramp * 0.5, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(ijkToRas(nodes[2]), ijkToRas(node), atol=1e-5)


def test_check_inputs_explains_what_is_wrong(scene) -> None:
    """Wrong count, missing volume and a different grid give messages that name the problem."""
    a = add_volume(scene, np.zeros((4, 5, 6), np.float32), "a")
    b = add_volume(scene, np.zeros((4, 5, 6), np.float32), "b", oblique_matrix())
    with pytest.raises(ValueError, match="expects 2 input volumes"):
        checkInputs([a], ("flair", "t1"))
    with pytest.raises(ValueError, match="select an input volume for t1"):
        checkInputs([a, None], ("flair", "t1"))
    with pytest.raises(ValueError, match="not on the grid of a"):
        checkInputs([a, b], ("flair", "t1"))
    checkInputs([a, a], ("flair", "t1"))


# -- segmentations ------------------------------------------------------------------------------------------------


def test_labelmap_becomes_segmentation_with_names_colours_terminology(scene, tmp_path: Path) -> None:
    """BraTS values 1/2/4 become three segments with the task's names, colours, terminology and class tags,
    the input as reference geometry; a .seg.nrrd written by Slicer carries them (read back with slicerio)."""
    labels = _brats_labels()
    reference = add_volume(scene, np.zeros(labels.shape, np.float32), "flair", oblique_matrix())
    labelmap = add_volume(scene, labels, "labels", oblique_matrix(), labelmap=True)
    tables_before = scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")
    node, ids = labelmapToSegmentation(labelmap, BRATS, referenceVolume=reference, scene=scene)

    segmentation = node.GetSegmentation()
    assert set(ids) == {"NCR", "ED", "ET"}
    expected = {
        "NCR": ("Necrotic and non-enhancing tumour core (NCR)", BRATS.colors[1], "Necrosis"),
        "ED": ("Peritumoral edema (ED)", BRATS.colors[2], "Edema"),
        "ET": ("GD-enhancing tumour (ET)", BRATS.colors[3], "Mass"),
    }
    for key, (name, color, meaning) in expected.items():
        segment = segmentation.GetSegment(ids[key])
        assert segment.GetName() == name
        np.testing.assert_allclose(segment.GetColor(), color, atol=1e-6)
        assert segment_tag(segment, CLASS_TAG) == key
        entry = segment.GetTerminology()
        assert entry == terminologyFor("brats", key) and typeMeaning(entry) == meaning
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == tables_before  # the temporary table is gone
    counts = segmentVoxelCounts(node, reference)
    assert counts["Peritumoral edema (ED)"] == np.count_nonzero(labels == 2)
    assert counts["GD-enhancing tumour (ET)"] == np.count_nonzero(labels == 4)
    assert counts["Necrotic and non-enhancing tumour core (NCR)"] == np.count_nonzero(labels == 1)
    assert node.GetNodeReference("referenceImageGeometryRef") is reference

    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp_path / "tumour.seg.nrrd"))
    assert storage.WriteData(node)
    written = slicerio.read_segmentation(str(tmp_path / "tumour.seg.nrrd"), skip_voxels=True)
    by_name = {s["name"]: s for s in written["segments"]}
    assert set(by_name) == {v[0] for v in expected.values()}
    edema = by_name["Peritumoral edema (ED)"]
    np.testing.assert_allclose(edema["color"], BRATS.colors[2], atol=1e-3)
    assert edema["terminology"]["type"] == ["SCT", "79654002", "Edema"]
    assert edema["terminology"]["anatomicRegion"] == ["SCT", "12738006", "Brain"]


def segment_tag(segment, name: str) -> str:
    """A segment's tag value (VTK returns it through a reference argument)."""
    value = vtk.reference("")
    assert segment.GetTag(name, value), f"no tag {name}"
    return str(value)


def test_existing_segmentation_is_refilled_and_empty_classes_are_skipped(scene) -> None:
    """Importing into an existing node replaces its segments; a task class absent from the label map is absent."""
    labels = np.zeros((5, 6, 7), np.uint16)
    labels[1:3, 1:3, 1:3] = 500  # MM-WHS left ventricle only
    reference = add_volume(scene, np.zeros(labels.shape, np.float32), "ct")
    labelmap = add_volume(scene, labels, "labels", labelmap=True)
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    target.GetSegmentation().AddEmptySegment("old", "old")
    node, ids = labelmapToSegmentation(labelmap, MMWHS_CT, target, reference, scene)
    assert node is target
    assert list(ids) == ["LV"]
    segment = node.GetSegmentation().GetSegment(ids["LV"])
    assert segment.GetName() == "Left ventricle blood cavity (LV)"
    assert typeMeaning(segment.GetTerminology()) == "Left ventricle"
    assert node.GetSegmentation().GetNumberOfSegments() == 1


def test_mark_uncertain_region_adds_and_replaces_one_segment(scene) -> None:
    """The uncertain-region segment holds exactly the voxels above the threshold and is replaced on re-run."""
    labels = _brats_labels()
    reference = add_volume(scene, np.zeros(labels.shape, np.float32), "flair", oblique_matrix())
    node, _ = labelmapToSegmentation(
        add_volume(scene, labels, "l", oblique_matrix(), labelmap=True), BRATS, referenceVolume=reference, scene=scene
    )
    ramp = np.linspace(0, 1, labels.size, dtype=np.float32).reshape(labels.shape)
    uncertainty = add_volume(scene, ramp, "u", oblique_matrix())
    first = markUncertainRegion(node, uncertainty, 0.5)
    assert node.GetSegmentation().GetNumberOfSegments() == 4
    counts = segmentVoxelCounts(node, reference)
    assert counts["Uncertain region (> 0.50)"] == np.count_nonzero(ramp > 0.5)
    second = markUncertainRegion(node, uncertainty, 0.9)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 4 and segmentation.GetSegment(first) is None
    assert segmentation.GetSegment(second).HasTag(UNCERTAIN_TAG)
    assert segmentVoxelCounts(node, reference)["Uncertain region (> 0.90)"] == np.count_nonzero(ramp > 0.9)
    markUncertainRegion(node, uncertainty, 1.0)  # nothing above: an empty segment, no error
    with pytest.raises(ValueError, match="0..1"):
        markUncertainRegion(node, uncertainty, 1.5)


# -- overlay ------------------------------------------------------------------------------------------------------


def test_overlay_display_colour_map_range_threshold_opacity_legend(scene) -> None:
    """The map gets the (fallback) inferno table, a fixed 0..1 window, a lower threshold (transparent below),
    is the foreground of every slice view over the input at the chosen opacity, with a titled legend."""
    background = add_volume(scene, np.ones((4, 5, 6), np.float32), "flair")
    uncertainty = add_volume(scene, np.linspace(0, 1, 120, dtype=np.float32).reshape(4, 5, 6), "u")
    uncertainty.SetAttribute("CLDL.Map", "uncertainty")
    assert scene.GetNodeByID("vtkMRMLColorTableNodeFileInferno.txt") is None  # slicer-core: no file tables
    showMap(uncertainty, background, OverlaySettings(opacity=0.45, transparentBelow=0.1), title="Uncertainty")

    display = uncertainty.GetDisplayNode()
    color = display.GetColorNode()
    assert color.GetAttribute(FALLBACK_ATTRIBUTE) == "inferno" and color.GetNumberOfColors() == 256
    np.testing.assert_allclose(color.GetLookupTable().GetTableValue(255)[:3], (0.988, 0.998, 0.645), atol=0.01)
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    assert display.GetApplyThreshold() and not display.GetAutoThreshold()
    assert display.GetLowerThreshold() == pytest.approx(0.1) and display.GetUpperThreshold() >= 1.0
    for composite in _composites(scene):
        assert composite.GetBackgroundVolumeID() == background.GetID()
        assert composite.GetForegroundVolumeID() == uncertainty.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.45)
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(uncertainty)
    assert legend is not None and legend.GetVisibility() and legend.GetTitleText() == "Uncertainty"

    setOverlayOpacity(0.8, scene)
    assert all(c.GetForegroundOpacity() == pytest.approx(0.8) for c in _composites(scene))
    assert uncertaintyColorNode(scene) is color  # created once
    other = add_volume(scene, np.zeros((4, 5, 6), np.float32), "p")
    other.SetAttribute("CLDL.Map", "probability")
    showMap(other, background, OverlaySettings(showLegend=False))
    assert not legend.GetVisibility()  # only the shown map has a visible legend
    assert not slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(other).GetVisibility()


def _composites(scene) -> list:
    return [
        scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]


def test_overlay_prefers_slicer_colour_tables(scene) -> None:
    """When a preferred table (Slicer's Inferno) exists, it is used instead of the fallback."""
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "Inferno")
    assert uncertaintyColorNode(scene, preferred=("nothing", table.GetID())) is table
    volume = add_volume(scene, np.zeros((2, 2, 2), np.float32), "u")
    configureMapDisplay(volume, colorNode=table)
    assert volume.GetDisplayNode().GetColorNodeID() == table.GetID()
    with pytest.raises(ValueError):
        OverlaySettings(opacity=1.5)


# -- options, models, training glue --------------------------------------------------------------------------------


def test_segmentation_options_become_engine_arguments() -> None:
    """Options map onto `cldl segment` flags and are validated."""
    args = SegmentationOptions(device="cpu", tta=True, overlap=0.25, uncertaintyMap="max_prob").arguments()
    assert args == [
        "--device", "cpu", "--precision", "auto", "--overlap", "0.25", "--uncertainty-map", "max_prob", "--tta"
    ]  # fmt: skip
    assert SegmentationOptions(precision="fp32").arguments()[2:4] == ["--precision", "fp32"]
    for bad in ({"device": "gpu"}, {"overlap": 1.0}, {"uncertaintyMap": "variance"}, {"precision": "fp16"}):
        with pytest.raises(ValueError):
            SegmentationOptions(**bad)


def test_segment_refuses_missing_modalities(scene) -> None:
    """A dict of inputs must name every modality of the model; the message lists what is missing."""
    info = ModelInfo(key="x", title="x", task=BRATS)
    volume = add_volume(scene, np.zeros((4, 4, 4), np.float32), "flair")
    with pytest.raises(ValueError, match="no input volume for t1, t1ce, t2"):
        SegmentationLogic(scene).segment({"flair": volume}, model=info)


def test_training_curves_plot_nodes_follow_metrics_events(scene, tmp_path: Path) -> None:
    """Metrics events create a table, one plot series per metric and two charts, and append a row per epoch;
    validation rows only when the epoch had validation; a metrics.jsonl log can be loaded first (resume)."""
    curves = TrainingCurves(scene, "run")
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 2
    curves.addRecord({"event": "metrics", "stage": "epoch", "epoch": 1, "lr": 1e-3, "loss_total": 3.0, "loss_ce": 1.0})
    curves.addRecord({"epoch": 2, "loss_total": 2.0, "loss_ce": 0.8, "dice_WT": 0.5, "dice_mean": 0.4})
    assert curves.losses.rows == 2 and curves.validation.rows == 1
    assert set(curves.losses.series) == {"loss_total", "loss_ce"}
    assert set(curves.validation.series) == {"dice_WT", "dice_mean"}
    table = curves.losses.table.GetTable()
    assert [table.GetColumnByName("loss_total").GetValue(i) for i in range(2)] == [3.0, 2.0]
    series = curves.validation.series["dice_WT"]
    assert series.GetTableNode() is curves.validation.table and series.GetXColumnName() == "epoch"
    chart = curves.validation.chart
    assert chart.GetNumberOfPlotSeriesNodes() == 2 and chart.GetYAxisRange() == (0.0, 1.0)
    assert curves.losses.chart.GetYAxisLogScale()

    curves.addRecord({"epoch": 3, "loss_total": 1.5, "loss_ce": 0.7, "loss_dice": 0.3})  # a new metric appears
    column = table.GetColumnByName("loss_dice")
    assert math.isnan(column.GetValue(0)) and column.GetValue(2) == 0.3
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 5

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1, "loss_total": 4.0}\n{"epoch": 2, "loss_total": 3.5, "dice_mean": 0.2}\n')
    resumed = TrainingCurves(scene, "resumed")
    assert resumed.loadLog(log) == 2 and resumed.losses.rows == 2 and resumed.validation.rows == 1
    curves.remove()
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 2


def test_training_config_and_command(tmp_path: Path) -> None:
    """GUI values override a base config; dataDir replaces phantoms; torchrun for several GPUs; resume flags."""
    base = tmp_path / "base.json"
    base.write_text('{"task": "brats", "phantoms": {"train_seeds": [0, 2]}, "epochs": 5, "lr": 0.1}')
    values = buildConfig(tmp_path, "brats", base, {"epochs": 7, "patch_size": 64, "lr": 1e-4, "curriculum": "pacing"})
    assert values["data"] == str(tmp_path.resolve()) and values["phantoms"] is None
    assert (values["epochs"], values["patch_size"], values["lr"], values["curriculum"]) == (7, [64] * 3, 1e-4, "pacing")
    assert buildConfig(None, None, base)["phantoms"] == {"train_seeds": [0, 2]}
    with pytest.raises(ValueError, match="dataset folder"):
        buildConfig(None, "brats")
    with pytest.raises(ValueError, match="multiples of 16"):
        buildConfig(tmp_path, "brats", overrides={"patch_size": 40})
    with pytest.raises(ValueError, match="curriculum"):
        buildConfig(tmp_path, "brats", overrides={"curriculum": "random"})

    single = trainCommand(base, tmp_path / "run", python="py")
    assert single == ["py", "-m", "cldl", "train", "--out", str(tmp_path / "run"), "--config", str(base)] + [
        "--progress",
        "jsonl",
    ]
    multi = trainCommand(base, tmp_path / "run", gpus=4, python="py")
    assert multi[:6] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert multi[6:8] == ["cldl", "train"]
    resume = trainCommand(None, tmp_path / "run", resume=True, epochs=9, device="cpu", python="py")
    assert "--resume" in resume and resume[resume.index("--epochs") + 1] == "9" and "--config" not in resume
