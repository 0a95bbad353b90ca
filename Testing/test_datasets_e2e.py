"""Done-means of issue 3: small datasets in each real layout go through ``cldl datasets check``, ``cldl train`` (a
few steps, through the preprocessed-case cache), ``cldl segment`` and ``cldl evaluate``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_datasets_layouts import build_brats2018, build_case_list, build_mmwhs, build_msd, build_nnunet

from cldl.commands.main import main
from cldl.data.discovery import detect_dataset
from cldl.files.images import read_image, write_image

SHAPE = (32, 32, 32)
LAYOUTS = {
    # name: (builder, task, files of the case to segment)
    "brats2018": (build_brats2018, "brats"),
    "msd": (build_msd, "brats"),
    "mmwhs": (build_mmwhs, "mmwhs_ct"),
    "nnunet": (build_nnunet, "brats"),
    "csv": (build_case_list, "brats"),
}


def _config(tmp_path: Path, task: str) -> Path:
    config = {
        "task": task,
        "phantoms": {"train_seeds": [0, 1]},  # replaced by --data
        "model": {"base_width": 4},
        "patch_size": [32, 32, 32],
        "epochs": 1,
        "iters_per_epoch": 1,
        "val_fraction": 0.34,
        "device": "cpu",
        "cache": str(tmp_path / "cache"),
        "seed": 1,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.filterwarnings("ignore:case ct_train_1001. label value 421")  # MM-WHS stray value, documented
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_check_train_segment_evaluate(layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    builder, task = LAYOUTS[layout]
    data = tmp_path / "data"
    builder(data, shape=SHAPE)
    # 1. check
    assert main(["datasets", "check", str(data), "--task", task]) == 0
    assert "OK: no problems found" in capsys.readouterr().out
    # 2. train a few steps (the cache is filled)
    run = tmp_path / "run"
    argv = ["train", "--config", str(_config(tmp_path, task)), "--data", str(data), "--out", str(run)]
    assert main([*argv, "--progress", "none"]) == 0
    assert (run / "best.pt").is_file() and any((tmp_path / "cache").rglob("images.npy"))
    # 3. segment one case from its files as distributed (MSD: the 4D file alone)
    dataset = detect_dataset(data, task)
    case = dataset.labelled[0]
    pred = tmp_path / "pred"
    outputs = [pred / f"{case.case_id}.nii.gz", pred / f"{case.case_id}_uncertainty.nii.gz"]
    outputs.append(pred / f"{case.case_id}_probabilities.nii.gz")
    argv = ["segment", "--model", str(run / "best.pt"), "-i", *map(str, case.images), "-o", str(outputs[0])]
    argv += ["--uncertainty", str(outputs[1]), "--probabilities", str(outputs[2]), "--device", "cpu"]
    assert main([*argv, "--progress", "none"]) == 0
    labels, geometry = read_image(outputs[0])
    assert labels.shape == SHAPE and set(np.unique(labels).tolist()) <= set(dataset.task.label_values)
    first_image = read_image(case.images[0])[1] if case.channels is None else None
    if first_image is not None:
        assert geometry.same_as(first_image) or geometry.matches(first_image, tol=1e-9)
    # 4. evaluate against the dataset folder itself (its label mapping applied), only the segmented case
    for other in dataset.labelled[1:]:
        truth = read_image(other.label)[0]
        write_image(_as_task_labels(truth, other), geometry, pred / f"{other.case_id}.nii.gz")
        for suffix in ("uncertainty", "probabilities"):
            (pred / f"{other.case_id}_{suffix}.nii.gz").write_bytes(
                outputs[1 if suffix == "uncertainty" else 2].read_bytes()
            )
    report = tmp_path / "report"
    argv = ["evaluate", "--pred", str(pred), "--ref", str(data), "--task", task, "--out", str(report), "--uncertainty"]
    assert main([*argv, "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert "| region | Dice | HD95 (mm)" in out and "QU-BraTS score" in out
    rows = list(csv.DictReader((report / "metrics.csv").open()))
    regions = {r["region"] for r in rows}
    expected_regions = (
        {"WT", "TC", "ET", "all"} if task == "brats" else {"Myo", "LA", "LV", "RA", "RV", "AA", "PA", "all"}
    )
    assert regions == expected_regions
    assert {r["case"] for r in rows} == {c.case_id for c in dataset.labelled}
    # the other cases were "predicted" with their own ground truth: Dice 1 proves the label mapping is applied
    for row in rows:
        if row["case"] != case.case_id and row["region"] != "all":
            assert float(row["dice"]) == 1.0, row
    summary = json.loads((report / "summary.json").read_text())
    assert summary["cases"] == len(dataset.labelled) and summary["task"] == dataset.task.name
    assert (report / "summary.md").read_text(encoding="utf-8").startswith(f"{len(dataset.labelled)} case(s)")


def _as_task_labels(truth: np.ndarray, case) -> np.ndarray:
    """A label file's values in the task's values (the dataset's mapping; MM-WHS stray values as documented)."""
    from cldl.data.cases import map_label_values

    return map_label_values(truth, case.label_map)
