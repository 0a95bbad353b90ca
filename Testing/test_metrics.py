"""Tests of the cldl.evaluation metrics, cross-checked against medpy.metric.binary and DeepMind's surface_distance."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import medpy.metric.binary as medpy_binary  # noqa: E402
import numpy as np
import pytest
import scipy.ndimage as ndimage  # noqa: E402  reference EDT for the tests only (a medpy dependency)

from cldl.commands.main import main
from cldl.evaluation import reports as E
from cldl.evaluation.distances import _squared_edt, assd, hd95, surface_distances
from cldl.evaluation.overlap import METRICS, dice, sensitivity, specificity
from cldl.evaluation.regions import region_metrics, summarize
from cldl.files.geometry import Geometry
from cldl.files.images import write_image
from cldl.tasks import BINARY, BRATS, MMWHS_CT

SHAPES_SPACINGS = [
    ((20, 30, 25), (3.0, 0.7, 1.1)),
    ((24, 24, 24), (1.0, 1.0, 1.0)),
    ((12, 40, 33), (2.5, 0.9, 0.6)),
    ((9, 17, 50), (0.8, 4.0, 1.3)),
]


def blob(shape: tuple[int, ...], rng: np.random.Generator, fill: float) -> np.ndarray:
    """A random smooth (possibly multi-component) mask covering about ``fill`` of the array."""
    field = ndimage.gaussian_filter(rng.random(shape), 1.5)
    return field > np.quantile(field, 1.0 - fill)


def medpy_surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """medpy's private directed surface distances (pred border -> ref border)."""
    return getattr(medpy_binary, "__surface_distances")(pred, ref, spacing, 1)


# ------------------------------------------------------------------------------------------ distance transform


@pytest.mark.parametrize(
    "shape, spacing",
    [((15, 22, 19), (3.0, 0.7, 1.1)), ((5, 31, 8), (1.0, 1.0, 1.0)), ((17, 13), (0.5, 2.0)), ((40,), (1.3,))],
)
def test_exact_edt_matches_scipy(shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    rng = np.random.default_rng(1)
    for density in (0.001, 0.02, 0.4):
        features = rng.random(shape) < density
        features.flat[rng.integers(features.size)] = True
        ours = _squared_edt(features, spacing)
        expected = ndimage.distance_transform_edt(~features, sampling=spacing) ** 2
        assert ours.dtype == np.float64
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-9)


# ------------------------------------------------------------------------------------------ medpy cross-check


@pytest.mark.parametrize("shape, spacing", SHAPES_SPACINGS)
def test_binary_metrics_match_medpy(shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    for fills in ((0.05, 0.08), (0.2, 0.3), (0.01, 0.4)):
        pred, ref = blob(shape, rng, fills[0]), blob(shape, rng, fills[1])
        assert pred.any() and ref.any() and not np.array_equal(pred, ref)
        assert dice(pred, ref) == pytest.approx(medpy_binary.dc(pred, ref), abs=1e-6)
        assert hd95(pred, ref, spacing) == pytest.approx(medpy_binary.hd95(pred, ref, spacing), abs=1e-6)
        assert assd(pred, ref, spacing) == pytest.approx(medpy_binary.assd(pred, ref, spacing), abs=1e-6)
        assert sensitivity(pred, ref) == pytest.approx(medpy_binary.sensitivity(pred, ref), abs=1e-6)
        assert specificity(pred, ref) == pytest.approx(medpy_binary.specificity(pred, ref), abs=1e-6)
        d_pr, d_rp = surface_distances(pred, ref, spacing)
        np.testing.assert_allclose(np.sort(d_pr), np.sort(medpy_surface_distances(pred, ref, spacing)), atol=1e-9)
        np.testing.assert_allclose(np.sort(d_rp), np.sort(medpy_surface_distances(ref, pred, spacing)), atol=1e-9)


def test_masks_touching_the_image_edge_match_medpy() -> None:
    # medpy erodes with a background border: voxels on the image edge are border voxels
    spacing = (3.0, 0.7, 1.1)
    pred = np.zeros((10, 20, 15), bool)
    ref = np.zeros_like(pred)
    pred[:, :12, 3:] = True
    ref[2:, 5:, :] = True
    ref[4, 8, 7] = False  # a hole: its six neighbours are border voxels
    assert hd95(pred, ref, spacing) == pytest.approx(medpy_binary.hd95(pred, ref, spacing), abs=1e-6)
    assert assd(pred, ref, spacing) == pytest.approx(medpy_binary.assd(pred, ref, spacing), abs=1e-6)
    assert assd(pred, ref, spacing) > 0


def test_hand_computed_distances_and_pooled_assd() -> None:
    spacing = (1.0, 1.0, 2.0)
    ref = np.zeros((8, 8, 8), bool)
    pred = np.zeros_like(ref)
    ref[4, 4, 2] = True
    pred[4, 4, 5] = True  # 3 voxels away along x, spacing 2 mm
    assert hd95(pred, ref, spacing) == pytest.approx(6.0)
    assert assd(pred, ref, spacing) == pytest.approx(6.0)
    # asymmetric case: pooled ASSD (medpy >= 0.5) differs from the mean of the directed means
    pred[4, 4, 2:6] = True  # a 4-voxel bar; distances to ref: 0, 2, 4, 6 mm; ref to pred: 0
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    np.testing.assert_allclose(np.sort(d_pr), [0.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(d_rp, [0.0])
    assert assd(pred, ref, spacing) == pytest.approx(12.0 / 5.0)
    assert assd(pred, ref, spacing) != pytest.approx((3.0 + 0.0) / 2.0)
    assert hd95(pred, ref, spacing) == pytest.approx(np.percentile([0, 2, 4, 6, 0], 95))
    assert dice(pred, ref) == pytest.approx(2 * 1 / 5)


def test_hd95_rules_on_a_hand_computed_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``pooled`` (medpy) takes the 95th percentile of both directions' distances together; ``directed-max`` (the
    robust Hausdorff of surface-distance, the authors' metrics file) the larger of the two directed percentiles."""
    spacing = (1.0, 1.0, 2.0)
    ref = np.zeros((8, 8, 8), bool)
    ref[4, 4, 2] = True
    pred = ref.copy()
    pred[4, 4, 7] = True  # a stray voxel 5 voxels (10 mm) away: pred -> ref 0 and 10 mm, ref -> pred 0 mm
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    np.testing.assert_allclose(np.sort(d_pr), [0.0, 10.0])
    np.testing.assert_allclose(d_rp, [0.0])
    # pooled [0, 0, 10]: position 0.95 * 2 = 1.9, 0 + 0.9 * 10; directed: [0, 10] at 0.95 -> 9.5, [0] -> 0
    for a, b in ((pred, ref), (ref, pred)):  # both rules are symmetric
        assert hd95(a, b, spacing) == pytest.approx(9.0)
        assert hd95(a, b, spacing, rule="pooled") == pytest.approx(9.0)
        assert hd95(a, b, spacing, rule="directed-max") == pytest.approx(9.5)
    regions = region_metrics(pred.astype(np.uint8), ref.astype(np.uint8), BINARY, spacing, hd95_rule="directed-max")
    assert regions["FG"]["hd95"] == pytest.approx(9.5)
    empty = np.zeros_like(ref)  # the empty-set conventions do not depend on the rule
    assert hd95(empty, empty, spacing, rule="directed-max") == 0.0
    assert hd95(pred, empty, spacing, rule="directed-max") == pytest.approx(hd95(pred, empty, spacing))
    with pytest.raises(ValueError, match="HD95 rule must be one of"):
        hd95(pred, ref, spacing, rule="max")
    # the command line: --hd95 directed-max, stated in the report's conventions
    geometry = Geometry.identity((8, 8, 8), spacing)
    write_image(pred.astype(np.uint8), geometry, tmp_path / "case_pred.nii.gz")
    write_image(ref.astype(np.uint8), geometry, tmp_path / "case_seg.nii.gz")
    argv = ["evaluate", "--pred", str(tmp_path / "case_pred.nii.gz"), "--ref", str(tmp_path / "case_seg.nii.gz")]
    for rule, expected in (("pooled", 9.0), ("directed-max", 9.5)):
        assert main([*argv, "--task", "binary", "--hd95", rule, "--json", "--progress", "none"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert document["cases"][0]["regions"]["FG"]["hd95"] == pytest.approx(expected)
        assert ("hd95" in document["conventions"]) == (rule == "directed-max")


# ------------------------------------------------------------------------------------------ DeepMind cross-check


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # surface_distance uses deprecated scipy namespaces
@pytest.mark.parametrize("shape, spacing", SHAPES_SPACINGS)
def test_agrees_with_deepmind_surface_distance(shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    """DeepMind's library measures distances between surface elements (surfels, on voxel faces) weighted by their
    area, not between border voxel centres, so its robust HD95 is not identical to medpy's: it must agree within one
    voxel diagonal. Dice is the same formula and must be identical."""
    import surface_distance

    rng = np.random.default_rng(7)
    diagonal = math.sqrt(sum(s * s for s in spacing))
    for fills in ((0.05, 0.07), (0.15, 0.25)):
        pred, ref = blob(shape, rng, fills[0]), blob(shape, rng, fills[1])
        assert dice(pred, ref) == pytest.approx(surface_distance.compute_dice_coefficient(ref, pred), abs=1e-12)
        distances = surface_distance.compute_surface_distances(ref, pred, spacing)
        theirs = surface_distance.compute_robust_hausdorff(distances, 95)
        assert abs(hd95(pred, ref, spacing) - theirs) <= diagonal
        assert abs(hd95(pred, ref, spacing, rule="directed-max") - theirs) <= diagonal  # their definition


# ------------------------------------------------------------------------------------------ empty sets


def test_empty_conventions() -> None:
    shape, spacing = (155, 240, 240), (1.0, 1.0, 1.0)
    empty = np.zeros(shape, bool)
    some = np.zeros(shape, bool)
    some[70:80, 100:110, 120:125] = True
    assert dice(empty, empty) == 1.0
    assert hd95(empty, empty, spacing) == 0.0
    assert assd(empty, empty, spacing) == 0.0
    assert sensitivity(empty, empty) == 1.0
    assert specificity(empty, empty) == 1.0
    assert surface_distances(empty, empty, spacing)[0].size == 0
    for pred, ref in ((some, empty), (empty, some)):
        assert dice(pred, ref) == 0.0
        assert hd95(pred, ref, spacing) == pytest.approx(373.128664, abs=1e-5)  # BraTS 2021+
        assert assd(pred, ref, spacing) == pytest.approx(373.128664, abs=1e-5)
        assert sensitivity(pred, ref) == 0.0
        with pytest.raises(ValueError, match="exactly one mask is empty"):
            surface_distances(pred, ref, spacing)
    assert specificity(empty, some) == 1.0
    assert specificity(some, empty) == pytest.approx(1.0 - some.sum() / some.size)
    # the diagonal honours anisotropic spacing (array axis order)
    small = np.zeros((4, 5, 6), bool)
    small[1, 1, 1] = True
    expected = math.sqrt((4 * 3.0) ** 2 + (5 * 0.5) ** 2 + (6 * 2.0) ** 2)
    assert hd95(small, np.zeros_like(small), (3.0, 0.5, 2.0)) == pytest.approx(expected)


def test_shape_and_spacing_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3, 3), bool), np.zeros((3, 3, 4), bool))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((3, 3, 3), bool), np.ones((3, 3, 3), bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((3, 3, 3), bool), np.ones((3, 3, 3), bool), (1.0, 0.0, 1.0))


# ------------------------------------------------------------------------------------------ regions


def brats_like() -> tuple[np.ndarray, np.ndarray]:
    """Class maps (0 BG, 1 NCR, 2 ED, 3 ET) with hand-countable regions."""
    ref = np.zeros((10, 12, 14), np.uint8)
    ref[2:8, 2:10, 2:12] = 2  # 480 voxels of tumour in total
    ref[3:7, 4:8, 4:10] = 1  # core 4*4*6 = 96
    ref[4:6, 5:7, 5:9] = 3  # enhancing 2*2*4 = 16 (inside the core)
    pred = np.zeros_like(ref)
    pred[2:8, 2:10, 2:10] = 2  # whole tumour 6*8*8 = 384, all inside ref WT
    pred[3:7, 4:8, 4:8] = 3  # core 4*4*4 = 64 predicted as ET; inside ref TC
    return pred, ref


def test_region_metrics_brats_hand_computed() -> None:
    pred, ref = brats_like()
    result = region_metrics(pred, ref, BRATS, (1.0, 1.0, 1.0))
    assert list(result) == ["WT", "TC", "ET"]
    assert result["WT"]["dice"] == pytest.approx(2 * 384 / (384 + 480))
    assert result["TC"]["dice"] == pytest.approx(2 * 64 / (64 + 96))
    et_overlap = 2 * 2 * 3  # ref ET x 5:9 meets pred ET x 4:8 on 5:8
    assert result["ET"]["dice"] == pytest.approx(2 * et_overlap / (64 + 16))
    assert result["WT"]["sensitivity"] == pytest.approx(384 / 480)
    assert result["WT"]["specificity"] == pytest.approx(1.0)
    assert result["ET"]["specificity"] == pytest.approx(1.0 - (64 - et_overlap) / (ref.size - 16))
    assert set(result["ET"]) == set(METRICS)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.7, 1.1)])
def test_region_metrics_equal_binary_metrics_on_full_volume(spacing: tuple[float, float, float]) -> None:
    pred, ref = brats_like()
    big_pred = np.zeros((30, 40, 50), np.uint8)
    big_ref = np.zeros_like(big_pred)
    big_pred[5:15, 20:32, 30:44] = pred
    big_ref[6:16, 19:31, 30:44] = ref
    result = region_metrics(big_pred, big_ref, BRATS, spacing)
    for region in BRATS.regions:
        p, r = np.isin(big_pred, region.classes), np.isin(big_ref, region.classes)
        assert result[region.name]["dice"] == pytest.approx(medpy_binary.dc(p, r), abs=1e-12)
        assert result[region.name]["hd95"] == pytest.approx(medpy_binary.hd95(p, r, spacing), abs=1e-6)
        assert result[region.name]["assd"] == pytest.approx(medpy_binary.assd(p, r, spacing), abs=1e-6)
        assert result[region.name]["specificity"] == pytest.approx(medpy_binary.specificity(p, r), abs=1e-12)


def test_region_metrics_missing_region_uses_full_image_diagonal() -> None:
    pred = np.zeros((20, 30, 40), np.uint8)
    ref = np.zeros_like(pred)
    pred[5:8, 5:8, 5:8] = 2  # edema only: no TC, no ET predicted
    ref[5:8, 5:8, 5:8] = 2
    ref[6, 6, 6] = 3
    result = region_metrics(pred, ref, BRATS, (2.0, 1.0, 1.0), metrics=("dice", "hd95"))
    diagonal = math.sqrt(40**2 + 30**2 + 40**2)
    assert result["TC"] == {"dice": 0.0, "hd95": pytest.approx(diagonal)}
    assert result["ET"]["hd95"] == pytest.approx(diagonal)
    assert result["WT"] == {"dice": 1.0, "hd95": 0.0}
    nothing = region_metrics(np.zeros_like(pred), np.zeros_like(ref), BRATS, (2.0, 1.0, 1.0))
    assert nothing["WT"] == {"dice": 1.0, "hd95": 0.0, "assd": 0.0, "sensitivity": 1.0, "specificity": 1.0}


def test_region_metrics_rejects_bad_input() -> None:
    pred, ref = brats_like()
    with pytest.raises(ValueError, match="unknown metrics"):
        region_metrics(pred, ref, BRATS, (1, 1, 1), metrics=("dice", "jaccard"))
    with pytest.raises(ValueError, match="class indices"):
        region_metrics(np.where(pred == 3, 4, pred), ref, BRATS, (1, 1, 1))  # label value 4, not a class index


# ------------------------------------------------------------------------------------------ files and folders


def write_labels(path: Path, labels: np.ndarray, spacing_zyx: tuple[float, float, float] = (3.0, 1.0, 1.0)) -> Path:
    return write_image(labels, Geometry.identity(labels.shape, spacing_zyx), path)


def label_pair() -> tuple[np.ndarray, np.ndarray]:
    """BraTS label values (0, 1, 2, 4); the prediction is the reference shifted by one slice along z."""
    ref = np.zeros((12, 16, 18), np.uint8)
    ref[3:8, 4:12, 5:14] = 2
    ref[4:7, 6:10, 7:12] = 1
    ref[5, 7:9, 8:11] = 4
    pred = np.roll(ref, 1, axis=0)
    return pred, ref


def test_evaluate_pair_reads_labels_and_uses_zyx_spacing(tmp_path: Path) -> None:
    pred, ref = label_pair()
    pred_path = write_labels(tmp_path / "case7_pred.nii.gz", pred)
    ref_path = write_labels(tmp_path / "case7_seg.nii.gz", ref)
    result = E.evaluate_pair(pred_path, ref_path, BRATS)
    assert result["case"] == "case7"
    expected = region_metrics(BRATS.labels_to_classes(pred), BRATS.labels_to_classes(ref), BRATS, (3.0, 1.0, 1.0))
    assert result["regions"] == expected
    # a one-slice shift along z (3 mm slices): every distance is 0 or 3 mm, never 1 mm
    assert result["regions"]["WT"]["hd95"] == pytest.approx(3.0)
    wt_p, wt_r = pred > 0, ref > 0
    assert result["regions"]["WT"]["assd"] == pytest.approx(medpy_binary.assd(wt_p, wt_r, (3.0, 1.0, 1.0)))
    assert result["regions"]["ET"]["dice"] == pytest.approx(0.0)  # the single ET slice moved off itself


def test_evaluate_pair_geometry_mismatch(tmp_path: Path) -> None:
    pred, ref = label_pair()
    pred_path = write_labels(tmp_path / "a_pred.nii.gz", pred, spacing_zyx=(2.0, 1.0, 1.0))
    ref_path = write_labels(tmp_path / "a_seg.nii.gz", ref)
    with pytest.raises(ValueError, match="geometry") as info:
        E.evaluate_pair(pred_path, ref_path, BRATS)
    assert str(pred_path) in str(info.value) and str(ref_path) in str(info.value)
    other_size = write_labels(tmp_path / "b_pred.nii.gz", pred[:, :, :-1])
    with pytest.raises(ValueError, match="geometry"):
        E.evaluate_pair(other_size, ref_path, BRATS)


def test_evaluate_pair_unknown_labels(tmp_path: Path) -> None:
    pred, ref = label_pair()
    pred[pred == 4] = 3  # BraTS has no label 3
    pred_path = write_labels(tmp_path / "c_pred.nii.gz", pred)
    ref_path = write_labels(tmp_path / "c_seg.nii.gz", ref)
    with pytest.raises(ValueError, match=r"\[3\]") as info:
        E.evaluate_pair(pred_path, ref_path, BRATS)
    assert str(pred_path) in str(info.value)


def test_evaluate_pair_mmwhs_label_values(tmp_path: Path) -> None:
    ref = np.zeros((6, 8, 8), np.int16)
    ref[1:5, 1:7, 1:4] = 205
    ref[1:5, 1:7, 4:7] = 850
    pred = ref.copy()
    pred[1:5, 1:7, 3] = 850
    result = E.evaluate_pair(
        write_labels(tmp_path / "ct_1001_pred.nii.gz", pred), write_labels(tmp_path / "ct_1001.nii.gz", ref), MMWHS_CT
    )
    assert result["case"] == "ct_1001"
    assert result["regions"]["Myo"]["dice"] == pytest.approx(2 * 48 / (48 + 72))
    assert result["regions"]["PA"]["dice"] == pytest.approx(2 * 72 / (72 + 96))
    assert result["regions"]["LV"] == {"dice": 1.0, "hd95": 0.0, "assd": 0.0, "sensitivity": 1.0, "specificity": 1.0}


def test_case_id() -> None:
    assert E.case_id("/x/BraTS2021_00001_seg.nii.gz") == "BraTS2021_00001"
    assert E.case_id("BraTS2021_00001.nii.gz") == "BraTS2021_00001"
    assert E.case_id("ct_1001_label.nrrd") == "ct_1001"
    assert E.case_id("ct_1001_pred.mha") == "ct_1001"
    assert E.case_id("case.seg.nii") == "case.seg"
    assert E.case_id("my_segment.nii.gz") == "my_segment"


def test_folders_match_by_case_id(tmp_path: Path) -> None:
    pred, ref = label_pair()
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    for cid, shift in (("b01", 0), ("b02", 1)):
        write_labels(tmp_path / "ref" / f"{cid}_seg.nii.gz", ref)
        write_labels(tmp_path / "pred" / f"{cid}.nii.gz", np.roll(ref, shift, axis=0))
    write_labels(tmp_path / "pred" / "b99_pred.nii.gz", pred)  # no reference: ignored with a warning
    (tmp_path / "ref" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="b99"):
        results = E.evaluate_folders_or_files(tmp_path / "pred", tmp_path / "ref", BRATS)
    assert [r["case"] for r in results] == ["b01", "b02"]
    assert results[0]["regions"]["WT"]["dice"] == 1.0
    assert results[1]["regions"]["WT"]["dice"] < 1.0
    summary = summarize(results)
    wt = [r["regions"]["WT"]["dice"] for r in results]
    assert summary["WT"]["dice"]["mean"] == pytest.approx(np.mean(wt))
    assert summary["WT"]["dice"]["std"] == pytest.approx(np.std(wt))
    # a reference without prediction is an error naming the case
    write_labels(tmp_path / "ref" / "b03_label.nii.gz", ref)
    with pytest.raises(ValueError, match="b03"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        E.evaluate_folders_or_files(tmp_path / "pred", tmp_path / "ref", BRATS)
    # two files: one pair
    single = E.evaluate_folders_or_files(tmp_path / "pred" / "b02.nii.gz", tmp_path / "ref" / "b02_seg.nii.gz", BRATS)
    assert single == [results[1]]
    with pytest.raises(ValueError, match="two files or two folders"):
        E.evaluate_folders_or_files(tmp_path / "pred" / "b02.nii.gz", tmp_path / "ref", BRATS)
    with pytest.raises(ValueError, match="no such"):
        E.evaluate_folders_or_files(tmp_path / "nope", tmp_path / "ref", BRATS)


def test_duplicate_case_ids_in_a_folder(tmp_path: Path) -> None:
    labels = np.zeros((4, 4, 4), np.uint8)
    write_labels(tmp_path / "x1.nii.gz", labels)
    write_labels(tmp_path / "x1_seg.nii.gz", labels)
    with pytest.raises(ValueError, match="same case id"):
        E.evaluate_folders_or_files(tmp_path, tmp_path, BINARY)


def test_summarize_ignores_nan() -> None:
    results = [
        {"case": "a", "regions": {"FG": {"dice": 0.5, "hd95": 2.0}}},
        {"case": "b", "regions": {"FG": {"dice": 1.0, "hd95": math.nan}}},
        {"case": "c", "regions": {"FG": {"dice": 0.0, "hd95": 4.0}}},
    ]
    summary = summarize(results)
    assert summary["FG"]["dice"] == {"mean": pytest.approx(0.5), "std": pytest.approx(math.sqrt(1 / 6)), "median": 0.5}
    assert summary["FG"]["hd95"] == {"mean": 3.0, "std": 1.0, "median": 3.0}
    only_nan = summarize([{"case": "a", "regions": {"FG": {"dice": math.nan}}}])
    assert all(math.isnan(v) for v in only_nan["FG"]["dice"].values())
    assert summarize([]) == {}
