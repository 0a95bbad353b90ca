"""Tests of the evidence study: statistics, distribution errors, boundary band, and the whole harness in miniature."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from cldl.commands.main import main
from cldl.data.phantoms import brats_phantom, write_case
from cldl.method.network import ModelConfig, ModelOutput
from cldl.study.runner import EvalCase, Study, band_dice, boundary_band, distribution_error, run_study, stage_errors
from cldl.study.statistics import paired_comparison, rank_biserial, seed_summary

# ------------------------------------------------------------------------------------------------- statistics


def test_paired_comparison_all_positive_differences() -> None:
    """Five positive differences: exact two-sided Wilcoxon p = 2 / 2^5, rank-biserial +1, mean difference 3."""
    result = paired_comparison([2, 3, 4, 5, 6], [1, 1, 1, 1, 1])
    assert result == {"n_pairs": 5, "mean_diff": 3.0, "rank_biserial": 1.0, "p_value": pytest.approx(0.0625)}
    assert paired_comparison([0, 0, 0], [1, 2, 3])["rank_biserial"] == -1.0


def test_rank_biserial_mixed_signs_ties_and_nan_pairs() -> None:
    """Ranks 1..5 of |d|: R+ = 1 + 3 + 4, R- = 2 + 5 -> (8 - 7) / 15; zeros and NaN pairs are dropped."""
    assert rank_biserial([1, -2, 3, 4, -5, 0]) == pytest.approx(1 / 15)
    assert rank_biserial([1, -1]) == 0.0  # tied ranks 1.5 each
    result = paired_comparison([1.0, math.nan, 5.0, 2.0], [0.0, 1.0, 1.0, 1.0])
    assert result["n_pairs"] == 3 and result["mean_diff"] == pytest.approx(2.0)


def test_paired_comparison_without_differences_and_seed_summary() -> None:
    """Identical samples have no p-value or rank effect; mean +- sample sd over seeds ignores NaN."""
    same = paired_comparison([1, 2, 3], [1, 2, 3])
    assert same["mean_diff"] == 0.0 and math.isnan(same["p_value"]) and math.isnan(same["rank_biserial"])
    with pytest.raises(ValueError, match="length"):
        paired_comparison([1, 2], [1])
    assert seed_summary([1.0, 2.0, 3.0, math.nan]) == {"mean": 2.0, "std": 1.0, "n_seeds": 3}
    assert seed_summary([0.5]) == {"mean": 0.5, "std": 0.0, "n_seeds": 1}


# ------------------------------------------------------------------------------- distribution error, band


class Oracle(nn.Module):
    """Returns the true fractions as the final softmax and their region averages as the stage distributions."""

    def __init__(self, fractions: torch.Tensor, stages: int, shift: float = 0.0) -> None:
        super().__init__()
        self.config = ModelConfig(num_classes=fractions.shape[0], base_width=2, ldl_stages=stages)
        noisy = (fractions + shift * torch.rand(fractions.shape, generator=torch.Generator().manual_seed(0))) / (
            1 + shift * 0.5
        )
        self.fractions = noisy / noisy.sum(0, keepdim=True)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Ignore ``x``; the stored distributions as the network's outputs."""
        stages = tuple(torch.log(F.avg_pool3d(self.fractions[None], r)) for r in (8, 4, 2)[: self.config.ldl_stages])
        return ModelOutput(torch.log(self.fractions[None]), stages, ())


def _case(fractions: np.ndarray | None, labels: np.ndarray) -> EvalCase:
    """A test case with images of ones."""
    return EvalCase("c", np.ones((4, *labels.shape), np.float32), labels, fractions, (1.0, 1.0, 1.0))


def test_stage_distribution_error_is_zero_for_a_perfect_prediction() -> None:
    """Stage and final distributions equal to the (pooled) true fractions score 0; a perturbed prediction does not,
    and a model without LDL stages gets NaN stage errors."""
    rng = np.random.default_rng(0)
    fractions = rng.dirichlet([0.3] * 4, size=(16, 16, 32)).transpose(3, 0, 1, 2).astype(np.float32)
    labels = fractions.argmax(0).astype(np.uint8)
    case = _case(fractions, labels)
    errors = stage_errors(Oracle(torch.from_numpy(fractions), 3), case, (16, 16, 32), torch.device("cpu"))
    assert set(errors) == {f"stage_mae_r{r}" for r in (8, 4, 2)} | {f"final_mae_r{r}" for r in (1, 2, 4, 8)}
    assert max(errors.values()) < 1e-6
    worse = stage_errors(Oracle(torch.from_numpy(fractions), 3, 0.5), case, (16, 16, 32), torch.device("cpu"))
    assert min(worse.values()) > 1e-3
    plain = stage_errors(Oracle(torch.from_numpy(fractions), 0), case, (16, 16, 32), torch.device("cpu"))
    assert math.isnan(plain["stage_mae_r8"]) and plain["final_mae_r1"] < 1e-6


def test_real_data_uses_the_one_hot_reference_and_small_volumes_are_padded() -> None:
    """Without fractions the one-hot labels are the truth; a volume smaller than the window is padded as
    background, which a prediction of the padded one-hot matches exactly."""
    labels = np.zeros((16, 16, 24), np.uint8)
    labels[4:10, 5:12, 6:20] = 2
    hot = torch.from_numpy(np.moveaxis(np.eye(4, dtype=np.float32)[labels], -1, 0))
    padded = torch.cat([F.pad(hot[:1], (0, 8), value=1.0), F.pad(hot[1:], (0, 8))])
    errors = stage_errors(Oracle(padded, 3), _case(None, labels), (16, 16, 32), torch.device("cpu"))
    assert max(errors.values()) < 1e-6
    assert distribution_error(torch.full((4, 2, 2, 4), 0.25), padded, 8) > 0.1


def test_boundary_band_of_a_cube() -> None:
    """1 mm band of a 4^3 cube: the 56 surface voxels inside plus the 96 face neighbours outside."""
    ref = np.zeros((10, 10, 10), bool)
    ref[3:7, 3:7, 3:7] = True
    band = boundary_band(ref, (1.0, 1.0, 1.0), 1.0)
    assert band[ref].sum() == 56 and band[~ref].sum() == 96
    assert band_dice(ref, ref, (1.0, 1.0, 1.0), 1.0) == 1.0
    shifted = np.roll(ref, 1, axis=0)
    assert 0 < band_dice(shifted, ref, (1.0, 1.0, 1.0), 1.0) < 1
    assert math.isnan(band_dice(ref, np.zeros_like(ref), (1.0, 1.0, 1.0), 1.0))


# ----------------------------------------------------------------------------------------- the harness


def _mini_study(path: Path, seeds: list[int]) -> Path:
    """Two variants, one seed, two iterations, 32^3 patches, width 4."""
    study = {
        "seeds": seeds,
        "baseline": "unet",
        "variants": {"unet": {"model": {"ldl_stages": 0}}, "cldl": {}},
        "train": {
            "task": "brats",
            "val_fraction": 0.5,
            "model": {"base_width": 4},
            "patch_size": [32, 32, 32],
            "epochs": 1,
            "iters_per_epoch": 2,
            "max_val_cases": 1,
            "device": "cpu",
            "prefetch": 0,
        },
        "synthetic": {"train_seeds": [0, 2], "test_seeds": [50_000, 50_002]},
        "evaluation": {"band_mm": 2.0},
    }
    path.write_text(yaml.safe_dump(study))
    return path


def _write_tiny_cases(data: Path) -> None:
    """Small procedural phantoms in place of the (slow) anatomy cases, under the names the study expects."""
    for folder, seeds in (("train", (0, 1)), ("test", (50_000, 50_001))):
        for seed in seeds:
            case = dataclasses.replace(brats_phantom(seed, shape=(40, 40, 48)), case_id=f"anatomy_{seed:05d}")
            write_case(case, data / folder)
            if folder == "test":
                (data / "test_fractions").mkdir(parents=True, exist_ok=True)
                np.save(data / "test_fractions" / f"{case.case_id}.npy", case.fractions.astype(np.float16))


def test_the_harness_end_to_end_then_resumes_without_retraining(tmp_path: Path) -> None:
    """`cldl ablate` trains and evaluates both variants and writes tables and figures; a second call skips the
    finished runs; a run without its result resumes from last.pt and is only re-evaluated; another study is refused."""
    torch.set_num_threads(1)
    out = tmp_path / "study"
    _write_tiny_cases(out / "data")
    config = _mini_study(tmp_path / "study.yaml", [0])
    assert main(["ablate", "--config", str(config), "--out", str(out), "--progress", "none"]) == 0
    for name in ("results.csv", "results.json", "cases.csv", "figures/metrics.png", "figures/reliability.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "figures" / "qualitative.png").read_bytes()[:4] == b"\x89PNG"
    table = json.loads((out / "results.json").read_text())["table"]
    rows = {(r["variant"], r["metric"]): r for r in table}
    assert rows[("cldl", "stage_mae_r8")]["mean"] >= 0 and rows[("unet", "stage_mae_r8")]["mean"] is None
    assert rows[("cldl", "dice_WT")]["n_pairs"] == 2 and "p_value" in rows[("cldl", "dice_WT")]
    assert {"hd95_ET", "assd_TC", "band_dice_WT", "ece", "brier", "qu_score_ET", "final_mae_r1"} <= {m for _, m in rows}
    cases = (out / "cases.csv").read_text().splitlines()
    assert len(cases) == 1 + 2 * 2 and cases[1].startswith("cldl,0,anatomy_50000")

    runs = {v: out / "runs" / v / "seed0" for v in ("unet", "cldl")}
    stamps = {v: ((d / "result.json").stat().st_mtime_ns, (d / "last.pt").stat().st_mtime_ns) for v, d in runs.items()}
    (runs["cldl"] / "result.json").unlink()  # as if interrupted after training, before the result was written
    summary = run_study(Study.from_file(config), out)
    assert summary["runs_done_now"] == 1 and not summary["stopped"]
    assert (runs["unet"] / "result.json").stat().st_mtime_ns == stamps["unet"][0]  # skipped
    assert (runs["cldl"] / "last.pt").stat().st_mtime_ns == stamps["cldl"][1]  # resumed: nothing left to train
    assert (runs["cldl"] / "result.json").is_file()
    assert run_study(Study.from_file(config), out, only=["unet"])["runs_done_now"] == 0
    with pytest.raises(ValueError, match="another study"):
        run_study(Study.from_file(_mini_study(tmp_path / "other.yaml", [0, 1])), out)


def test_study_config_checks() -> None:
    """The shipped study parses, every variant shares width, patch and iterations; bad studies are refused."""
    study = Study.from_file(Path(__file__).parents[1] / "cldl" / "configs" / "ablation_brats.yaml")
    configs = {v: study.run_config(v, 0, "data") for v in study.variants}
    assert set(configs) == {"unet", "rldl_no_ppm", "cldl", "cldl_pacing", "svls"}
    assert (
        len(
            {
                (c.model.get("base_width"), tuple(c.patch_size), c.epochs, c.iters_per_epoch, c.lr)
                for c in configs.values()
            }
        )
        == 1
    )
    assert configs["svls"].final_targets == "gaussian" and configs["cldl_pacing"].curriculum == "pacing"
    assert configs["rldl_no_ppm"].model["use_ppm"] is False and configs["unet"].model["ldl_stages"] == 0
    with pytest.raises(ValueError, match="baseline"):
        Study(train={}, variants={"cldl": {}})
    with pytest.raises(ValueError, match="must not set"):
        Study(train={"seed": 3}, variants={"unet": {}})
    with pytest.raises(ValueError, match="test from 50000"):
        Study(train={}, variants={"unet": {}}, synthetic={"test_seeds": [100, 110]})
    with pytest.raises(ValueError, match="unknown config keys"):
        Study(train={}, variants={"unet": {"epochz": 3}})


def test_with_data_the_test_cases_are_the_trainers_validation_split(tmp_path: Path) -> None:
    """`--data`: no synthetic cases are written; the test cases are the validation cases the trainer recorded."""
    torch.set_num_threads(1)
    _write_tiny_cases(tmp_path / "dataset")
    study = Study.from_file(_mini_study(tmp_path / "study.yaml", [0]))
    out = tmp_path / "study"
    run_study(study, out, data=tmp_path / "dataset" / "train", only=["unet"])
    assert not (out / "data").exists()
    saved = json.loads((out / "runs" / "unet" / "seed0" / "config.json").read_text())
    tested = [
        row["case_id"] for row in json.loads((out / "runs" / "unet" / "seed0" / "result.json").read_text())["cases"]
    ]
    checkpoint = torch.load(out / "runs" / "unet" / "seed0" / "last.pt", weights_only=True)
    assert saved["data"] == str(tmp_path / "dataset" / "train")
    assert tested == checkpoint["provenance"]["val_cases"] and len(tested) == 1
