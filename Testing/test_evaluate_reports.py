"""``cldl evaluate``: agreement with medpy and DeepMind's surface-distance on a real anisotropic image, the report
files (per-case CSV, summary JSON, Markdown), uncertainty maps found next to the predictions, masks from a dataset
folder, Slicer .seg.nrrd predictions, and bad input that leaves every file untouched."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import medpy.metric.binary as medpy_binary
from nibabel.testing import data_path

from cldl.commands.main import main
from cldl.files.geometry import Geometry
from cldl.files.images import read_image, write_image, write_unit_interval
from cldl.files.label_maps import write_labels
from cldl.tasks import BRATS, MMWHS_CT

SPACING_XYZ = (0.9, 1.2, 3.0)


def _real_labels() -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Reference and prediction BraTS label maps from thresholds of a real T1 (nibabel's anatomical.nii), on an
    oblique, anisotropic grid."""
    image, geometry = read_image(Path(data_path) / "anatomical.nii", np.float32)
    levels = np.percentile(image[image > 0], [55, 80, 93])

    def labels(shift: float) -> np.ndarray:
        out = np.zeros(image.shape, np.uint8)
        out[image > levels[0] + shift] = 2
        out[image > levels[1] + shift] = 1
        out[image > levels[2] + shift] = 4
        return out

    c, s = np.cos(0.3), np.sin(0.3)
    oblique = Geometry(geometry.size, SPACING_XYZ, (10.0, -20.0, 5.0), (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return labels(0.0), labels(0.04 * float(np.ptp(image))), oblique


def test_evaluate_agrees_with_medpy_and_surface_distance_on_a_real_anisotropic_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import surface_distance

    ref, pred, geometry = _real_labels()
    write_image(ref, geometry, tmp_path / "ref" / "subject1_seg.nii.gz")
    write_image(pred, geometry, tmp_path / "pred" / "subject1.nii.gz")
    out = tmp_path / "report"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(out)]) == 0
    rows = {r["region"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    spacing_zyx = SPACING_XYZ[::-1]
    for region in BRATS.regions:
        values = [BRATS.label_values[c] for c in region.classes]
        p, r = np.isin(pred, values), np.isin(ref, values)
        row = rows[region.name]
        assert float(row["dice"]) == pytest.approx(medpy_binary.dc(p, r), rel=1e-5)
        assert float(row["hd95"]) == pytest.approx(medpy_binary.hd95(p, r, spacing_zyx), rel=1e-5)
        assert float(row["assd"]) == pytest.approx(medpy_binary.assd(p, r, spacing_zyx), rel=1e-5)
        assert float(row["sensitivity"]) == pytest.approx(medpy_binary.sensitivity(p, r), rel=1e-5)
        assert float(row["specificity"]) == pytest.approx(medpy_binary.specificity(p, r), rel=1e-5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            distances = surface_distance.compute_surface_distances(r, p, spacing_zyx)
            theirs_hd95 = surface_distance.compute_robust_hausdorff(distances, 95)
            theirs_dice = surface_distance.compute_dice_coefficient(r, p)
        assert float(row["dice"]) == pytest.approx(theirs_dice, rel=1e-5)
        # surface-distance measures between surfel faces, medpy between voxel centres: within one voxel diagonal
        assert abs(float(row["hd95"]) - theirs_hd95) <= float(np.linalg.norm(SPACING_XYZ))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 1 and summary["summary"]["WT"]["dice"]["mean"] == pytest.approx(
        float(rows["WT"]["dice"])
    )
    table = (out / "summary.md").read_text(encoding="utf-8")
    assert "| WT |" in table and "| region | Dice | HD95 (mm) | ASSD (mm) | Sensitivity | Specificity |" in table
    assert table in capsys.readouterr().out


def _prediction_folder(tmp_path: Path, task=BRATS) -> tuple[Path, Path, np.ndarray]:
    """Two cases with predictions, uncertainty and probability maps as `cldl segment` names them."""
    rng = np.random.default_rng(0)
    shape = (10, 12, 14)
    geometry = Geometry.identity(shape, (2.0, 1.0, 1.0))
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    values = np.asarray(task.label_values)
    for case in ("c1", "c2"):
        classes = np.zeros(shape, np.int64)
        classes[2:8, 3:9, 4:11] = 1 + rng.integers(0, task.num_classes - 1, size=(6, 6, 7))
        logits = rng.normal(size=(task.num_classes, *shape)) + 3 * np.eye(task.num_classes)[classes].transpose(
            3, 0, 1, 2
        )
        probabilities = np.exp(logits) / np.exp(logits).sum(0)
        predicted = probabilities.argmax(0)
        write_image(values[classes].astype(np.int16), geometry, ref_dir / f"{case}_label.nii.gz")
        write_image(values[predicted].astype(np.int16), geometry, pred_dir / f"{case}.nii.gz")
        entropy = -(probabilities * np.log(probabilities)).sum(0) / np.log(task.num_classes)
        write_unit_interval(entropy.astype(np.float32), geometry, pred_dir / f"{case}_uncertainty.nii.gz")
        write_unit_interval(probabilities.astype(np.float32), geometry, pred_dir / f"{case}_probabilities.nii.gz")
    return pred_dir, ref_dir, geometry


@pytest.mark.parametrize("task", [BRATS, MMWHS_CT], ids=["brats", "mmwhs"])
def test_uncertainty_report_from_maps_next_to_the_predictions(tmp_path: Path, task) -> None:
    pred_dir, ref_dir, _ = _prediction_folder(tmp_path, task)
    out = tmp_path / "report"
    argv = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--task", task.name, "--out", str(out)]
    assert main([*argv, "--uncertainty", "--progress", "none"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["case"] for r in rows} == {"c1", "c2"}  # the map files are not cases
    regions = [r.name for r in task.regions] + ["all"]
    assert [r["region"] for r in rows if r["case"] == "c1"] == regions
    for row in rows:
        if row["region"] == "all":
            assert row["dice"] == "" and 0 <= float(row["ece"]) <= 1 and 0 <= float(row["brier"]) <= 2
        else:
            assert 0 <= float(row["unc_score"]) <= 1 and 0 <= float(row["ece"]) <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_case"][0]["uncertainty_source"] == "map"
    assert "QU-BraTS score" in (out / "summary.md").read_text(encoding="utf-8")
    # a folder of maps given explicitly, and probabilities alone (per-region entropy as the uncertainty)
    argv2 = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--task", task.name, "--json"]
    assert main([*argv2, "--probabilities", str(pred_dir), "--progress", "none"]) == 0


def test_uncertainty_without_maps_or_with_wrong_maps_is_a_clear_error(tmp_path: Path, capfd) -> None:
    pred_dir, ref_dir, geometry = _prediction_folder(tmp_path)
    for path in pred_dir.glob("*_probabilities.nii.gz"):
        path.unlink()
    (pred_dir / "c2_uncertainty.nii.gz").unlink()
    argv = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--uncertainty"]
    assert main(argv) == 1
    assert "no uncertainty map for the case(s) ['c2']" in capfd.readouterr().err
    for path in pred_dir.glob("*_uncertainty.nii.gz"):
        path.unlink()
    assert main(argv) == 1
    assert "no <case>_uncertainty or <case>_probabilities maps" in capfd.readouterr().err
    write_unit_interval(np.zeros((3, *geometry.shape), np.float32), geometry, tmp_path / "p.nii.gz")
    one = ["evaluate", "--pred", str(pred_dir / "c1.nii.gz"), "--ref", str(ref_dir / "c1_label.nii.gz")]
    assert main([*one, "--probabilities", str(tmp_path / "p.nii.gz")]) == 1
    assert "3 probability maps; task brats has 4 classes" in capfd.readouterr().err


def test_report_files_are_never_clobbered(tmp_path: Path, capfd) -> None:
    pred_dir, ref_dir, _ = _prediction_folder(tmp_path)
    out = tmp_path / "report"
    out.mkdir()
    (out / "summary.md").write_text("previous report")
    argv = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)]
    assert main(argv) == 1
    assert "summary.md exists; pass --overwrite" in capfd.readouterr().err
    assert (out / "summary.md").read_text() == "previous report" and not (out / "metrics.csv").exists()
    # an input named like a report file is protected even with --overwrite
    protected = out / "metrics.csv"
    protected.write_text("an input")
    assert main([*argv, "--overwrite", "--mask", str(protected)]) == 1
    assert "would overwrite an input" in capfd.readouterr().err
    assert protected.read_text() == "an input"
    protected.unlink()
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "summary.md").read_text(encoding="utf-8") != "previous report"


def test_unwritable_report_folder(tmp_path: Path, capfd) -> None:
    """A report folder that cannot be created (its parent is a file, which stops root too) is one clear error."""
    pred_dir, ref_dir, _ = _prediction_folder(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(blocker / "reports")]) == 1
    assert "cldl: error:" in capfd.readouterr().err
    assert blocker.read_text() == "x"


def test_mask_from_a_dataset_folder_and_seg_nrrd_predictions(tmp_path: Path) -> None:
    """The QU-BraTS brain mask can be the dataset itself (first modality > 0); .seg.nrrd predictions work."""
    from test_datasets_layouts import build_brats2021

    from cldl.data.discovery import detect_dataset

    data = tmp_path / "data"
    build_brats2021(data, n=2)
    pred = tmp_path / "pred"
    rng = np.random.default_rng(3)
    for case in detect_dataset(data).cases:
        labels, geometry = read_image(case.label)
        write_labels(labels, geometry, pred / f"{case.case_id}.seg.nrrd", BRATS)
        write_unit_interval(
            rng.uniform(size=labels.shape).astype(np.float32), geometry, pred / f"{case.case_id}_uncertainty.nrrd"
        )
    out = tmp_path / "report"
    argv = [
        "evaluate",
        "--pred",
        str(pred),
        "--ref",
        str(data),
        "--out",
        str(out),
        "--uncertainty",
        "--mask",
        str(data),
    ]
    assert main([*argv, "--progress", "none"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 6 and all(float(r["dice"]) == 1.0 for r in rows)
    # perfect segmentation: FTP/FTN only lose what random uncertainty removes; Dice stays 1
    assert all(float(r["unc_auc_dice"]) == pytest.approx(1.0) for r in rows)
