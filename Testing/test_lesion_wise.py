"""Lesion-wise Dice/HD95 (``cldl evaluate --lesion-wise``) against the official BraTS evaluation's numbers.

The fixture holds what ``brats-evaluation`` (PyPI, config ``gli``) computed on the synthetic cases of
``Testing/tools/make_brats_lesionwise_fixture.py`` (its header says how it was made); the package itself is not
installed here.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cldl.evaluation.lesions import LESION_HD95_PENALTY, _min_cost_assignment, lesion_wise_metrics
from cldl.evaluation.reports import evaluate_folders_or_files
from cldl.tasks import get_task

HERE = Path(__file__).resolve().parent
FIXTURE = json.loads((HERE / "fixtures" / "brats_lesionwise_reference.json").read_text())
spec = importlib.util.spec_from_file_location("make_fixture", HERE / "tools" / "make_brats_lesionwise_fixture.py")
make_fixture = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_fixture)


def _expected(value: float | str | None) -> float:
    """A fixture number; the package's infinite HD95 is reported as the penalty."""
    if value is None or value == "nan":
        return math.nan
    return LESION_HD95_PENALTY if value == "inf" else float(value)


def test_equals_official_package_on_fixture_cases(tmp_path: Path) -> None:
    """Every lesion-wise number of every region and case equals the official package's, through the file path."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    made = make_fixture.cases()
    assert sorted(made) == sorted(FIXTURE["cases"])
    for name, (pred, ref) in made.items():  # BraTS 2023 labels -> the 2018 numbers of task brats (ET 3 -> 4)
        make_fixture.write_case(np.where(pred == 3, 4, pred), pred_dir / f"{name}.nii.gz")
        make_fixture.write_case(np.where(ref == 3, 4, ref), ref_dir / f"{name}.nii.gz")
    results = evaluate_folders_or_files(pred_dir, ref_dir, get_task("brats"), lesion_wise=True)
    assert [r["case"] for r in results] == sorted(made)
    kinds = set()
    for result in results:
        for region, expected in FIXTURE["cases"][result["case"]].items():
            ours = result["regions"][region.upper()]
            for key, value in expected.items():
                where = (result["case"], region, key)
                assert ours[key] == pytest.approx(_expected(value), rel=1e-9, nan_ok=True), where
            kinds.add((expected["lesions_fp"] > 0, expected["lesions_fn"] > 0, expected["lw_dice"] == "nan"))
    assert len(kinds) >= 4  # the cases cover matches, false positives, false negatives and empty regions


def test_connectivity_is_26_and_matching_one_to_one() -> None:
    """Cubes touching at a corner are one lesion; two predicted halves of a lesion: one match, one false positive."""
    ref = np.zeros((12, 12, 12), bool)
    ref[1:4, 1:4, 1:4] = ref[4:7, 4:7, 4:7] = True
    values = lesion_wise_metrics(ref, ref)
    assert (values["lesions_tp"], values["lesions_fp"], values["lw_dice"]) == (1.0, 0.0, 1.0)
    big = np.zeros((12, 12, 12), bool)
    big[2:10, 2:10, 2:10] = True
    halves = big.copy()
    halves[:, :, 5] = False
    values = lesion_wise_metrics(halves, big)
    assert (values["lesions_tp"], values["lesions_fp"], values["lesions_fn"]) == (1.0, 1.0, 0.0)
    assert values["lw_dice"] == pytest.approx(2 * 256 / (256 + 512))  # the larger half (4 of 8 slices) is matched
    empty = lesion_wise_metrics(np.zeros((5, 5, 5)), np.zeros((5, 5, 5)))
    assert math.isnan(empty["lw_dice"]) and math.isnan(empty["lw_hd95"]) and empty["lesions_fp"] == 0.0
    missed = lesion_wise_metrics(np.zeros((12, 12, 12)), big)
    assert (missed["lw_dice"], missed["lw_hd95"], missed["lesions_fn"]) == (0.0, LESION_HD95_PENALTY, 1.0)


def test_assignment_is_optimal() -> None:
    """The Hungarian assignment has the brute-force minimum cost on random matrices."""
    import itertools

    rng = np.random.default_rng(0)
    for n, m in ((3, 3), (2, 5), (4, 6)):
        cost = rng.random((n, m))
        pairs = _min_cost_assignment(cost)
        best = min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
        assert sorted(r for r, _ in pairs) == list(range(n))
        assert sum(cost[r, c] for r, c in pairs) == pytest.approx(best)


def test_cli_reports_lesion_wise_in_summary(tmp_path: Path, capsys) -> None:
    """``cldl evaluate --lesion-wise`` adds the lesion-wise metrics to the cases, the summary and the conventions."""
    from cldl.commands.main import main

    pred, ref = make_fixture.cases()["BraTS-GLI-00002-000"]
    make_fixture.write_case(np.where(pred == 3, 4, pred), tmp_path / "pred.nii.gz")
    make_fixture.write_case(np.where(ref == 3, 4, ref), tmp_path / "ref.nii.gz")
    args = ["evaluate", "--pred", str(tmp_path / "pred.nii.gz"), "--ref", str(tmp_path / "ref.nii.gz")]
    assert main([*args, "--task", "brats", "--json", "--lesion-wise"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = FIXTURE["cases"]["BraTS-GLI-00002-000"]["wt"]
    assert data["summary"]["WT"]["lw_dice"]["mean"] == pytest.approx(expected["lw_dice"])
    assert data["cases"][0]["regions"]["ET"]["lesions_fp"] == expected["lesions_fp"] == 1.0
    assert "lesion_wise" in data["conventions"]
    assert main([*args, "--task", "brats", "--json"]) == 0
    assert "lw_dice" not in json.loads(capsys.readouterr().out)["summary"]["WT"]
