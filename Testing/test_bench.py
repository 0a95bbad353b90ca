"""The benchmarks run with one command each and print their figures and command line (quick modes, no timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _run(args: list[str], timeout: int = 240) -> str:
    """Run a benchmark command from the repository root; returns its stdout."""
    env = {**os.environ, "PYTHON": sys.executable}
    process = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-4000:]
    assert process.stdout.startswith("command: ")
    assert "machine: " in process.stdout
    return process.stdout


def test_gpu_script_on_cpu_quick(tmp_path: Path) -> None:
    out = _run(["bash", str(BENCH / "gpu.sh"), "--device", "cpu", "--quick", "--json", str(tmp_path / "g.json")])
    assert "summary: train" in out and "s/volume" in out and "Trainer / plain" in out
    figures = json.loads((tmp_path / "g.json").read_text())
    assert {(r["kind"], r["channels_last"]) for r in figures["train"]} == {
        (k, c) for k in ("trainer", "plain") for c in (False, True)
    }
    trainer = [r for r in figures["train"] if r["kind"] == "trainer"]
    assert [(r["augment_on"], r["adam"]) for r in trainer if not r["channels_last"]] == [
        ("prefetch", "fused"),
        ("device", "fused"),
        ("device", "loop"),
    ]
    assert len(figures["train"]) == 7  # the two augmentation placements share one plain loop
    assert all(r["it_per_s"] > 0 for r in figures["train"]) and all(r["ratio_to_plain"] > 0 for r in trainer)
    inference = {r["variant"]: r for r in figures["inference"]["variants"]}
    assert set(inference) == {  # no compiled variants without --compile
        "baseline (host normalisation)",
        "normalise on the device (default)",
        "device + window batch 4",
        "device + channels-last",
        "device + overlap 0.5",
    }
    assert all(r["seconds"] > 0 for r in inference.values()) and figures["inference"]["host_preprocess_s"] > 0
    assert inference["device + overlap 0.5"]["windows"] >= inference["normalise on the device (default)"]["windows"]
    assert figures["folder"]["device"] == "cpu" and figures["folder"]["folder"] > 0


def test_training_throughput_quick(tmp_path: Path) -> None:
    json_path = tmp_path / "t.json"
    out = _run(
        [sys.executable, str(BENCH / "training_throughput.py"), "--quick", "--repeats", "1", "--json", str(json_path)]
    )
    assert "Trainer / plain" in out
    figures = json.loads(json_path.read_text())
    rows = figures["configurations"]
    assert [r["label"] for r in rows][:2] == ["augmentation in the prefetch thread", "augmentation on the device"]
    assert {r["adam"] for r in rows} == {"fused", "loop"} and {r["channels_last"] for r in rows} == {False, True}
    assert all(r["trainer_it_per_s"] > 0 and r["plain_it_per_s"] > 0 and r["ratio"] > 0 for r in rows)
    assert rows[0]["trainer_runs"][0]["peak_rss_mb"] > 0
    on_device = [r["trainer_runs"][0]["device_augment_ms_per_batch"] for r in rows[:2]]
    assert on_device[0] == 0 and on_device[1] > 0  # the prefetch thread augments in the first row, the device next


def test_ddp_benchmark_quick(tmp_path: Path) -> None:
    json_path = tmp_path / "d.json"
    out = _run([sys.executable, str(BENCH / "ddp_cpu.py"), "--quick", "--json", str(json_path)])
    assert "2 process(es) x 1 thread(s)" in out
    figures = json.loads(json_path.read_text())
    assert figures["runs"]["2"][0]["world_size"] == 2 and figures["runs"]["1"][0]["world_size"] == 1


def test_inference_vs_monai_quick(tmp_path: Path) -> None:
    json_path = tmp_path / "i.json"
    out = _run([sys.executable, str(BENCH / "inference_vs_monai.py"), "--quick", "--json", str(json_path)])
    assert "speed-up (MONAI / ours" in out
    figures = json.loads(json_path.read_text())
    assert figures["runs"]["ours"][0]["windows"] < figures["runs"]["monai"][0]["windows"]  # the crop skips windows
    assert 0 <= figures["label_agreement_in_head"] <= 1


def test_overlap_benchmark_quick() -> None:
    out = _run([sys.executable, str(BENCH / "overlap.py"), "--cases", "1", "--overlaps", "0.25,0.5"])
    assert "mean Dice, overlap 0.25 minus 0.5" in out


def test_synthetic_data_benchmark_quick(tmp_path: Path) -> None:
    json_path = tmp_path / "s.json"
    out = _run([sys.executable, str(BENCH / "synthetic_data.py"), "--quick", "--json", str(json_path)])
    assert "generator:" in out and "augment nnunet:" in out
    figures = json.loads(json_path.read_text())
    from cldl.data.augment import AUGMENT_PRESETS

    assert set(figures["augment_ms_per_patch"]) == set(figures["augment_split_ms_per_patch"]) == set(AUGMENT_PRESETS)
    assert all(v["draw"] > 0 and v["apply"] > 0 for v in figures["augment_split_ms_per_patch"].values())
    assert figures["generator_s_per_case"][0] > 0


def test_cpu_precision_benchmark_quick(tmp_path: Path) -> None:
    json_path = tmp_path / "p.json"
    out = _run(
        [
            sys.executable,
            str(BENCH / "cpu_precision.py"),
            "--quick",
            "--model",
            "brats-phantom-demo",
            "--json",
            str(json_path),
        ]
    )
    assert "bf16-channels-last: " in out and "x fp32)" in out and "labels equal inside the brain" in out
    figures = json.loads(json_path.read_text())
    assert set(figures["best"]) == {"fp32", "bf16", "bf16-channels-last"}
    assert figures["agreement"][0]["label_agreement"] > 0.99


def test_folder_segmentation_benchmark_quick(tmp_path: Path) -> None:
    json_path = tmp_path / "f.json"
    out = _run([sys.executable, str(BENCH / "folder_segmentation.py"), "--quick", "--json", str(json_path)])
    assert "speed-up folder / one by one" in out and "of the compute bound" in out
    figures = json.loads(json_path.read_text())
    # throughputs only (cases per minute); how they compare is the benchmark's measurement, not a unit-test check
    assert figures["folder"] > 0 and figures["one_by_one"] > 0 and figures["compute_bound"] > 0


def test_real_anatomy_benchmark_quick(tmp_path: Path) -> None:
    out = _run([sys.executable, str(BENCH / "real_anatomy_accuracy.py"), "--quick", "--out", str(tmp_path)], 480)
    assert "generator: 1 cases" in out and "error rate per uncertainty bin" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"generator", "generator_training_distribution", "healthy", "inference_seconds"}
    assert len(results["generator"]["error_rate_by_uncertainty"]["error_rate"]) == 10
    assert "tumour marked on healthy brains" in out and results["healthy"]["cases"][0]["tumour_ml"] >= 0
    assert results["inference_seconds"]["brats-anatomy"] > 0
    assert (tmp_path / "uncertainty_vs_error.png").is_file()
    # the quick case lies on the model's own 2 mm grid: a perfect segmentation there loses nothing
    assert set(results["generator"]["grid_ceiling_dice"]) == {"WT", "TC", "ET"}
    assert all(v == 1.0 for v in results["generator"]["cases"][0]["grid_ceiling_dice"].values())
    assert "perfect on the model's grid" in out and "after the authors' post-processing" in out
    case = results["generator"]["cases"][0]
    assert 0 <= case["et_dice_postprocessed"] <= 1 and results["generator"]["et_dice_postprocessed"] >= 0


def test_grid_ceiling_keeps_what_the_coarse_grid_can_hold_and_loses_the_rest() -> None:
    sys.path.insert(0, str(BENCH))
    from real_anatomy_accuracy import grid_ceiling

    from cldl.tasks import BRATS

    reference = np.zeros((16, 16, 16), np.int64)
    reference[4:8, 4:8, 4:8] = 2  # a 4 mm edema cube aligned with the 2 mm grid survives exactly
    reference[10, 10, 10] = 3  # a single 1 mm voxel of enhancing tumour is an eighth of a 2 mm voxel: lost
    ceiling = grid_ceiling(reference, BRATS, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert ceiling["ET"] == 0.0 and 0.9 < ceiling["WT"] < 1.0
    assert grid_ceiling(reference, BRATS, (1.0, 1.0, 1.0), None) == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
