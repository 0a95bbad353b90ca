"""benchmarks/stage_maps.py in its quick mode, and its figures on known inputs (issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from stage_maps import auc, calibration_error  # noqa: E402


def test_quick_run_prints_the_figures_per_stage(tmp_path: Path) -> None:
    json_path = tmp_path / "s.json"
    args = [sys.executable, str(ROOT / "benchmarks" / "stage_maps.py"), "--quick", "--json", str(json_path)]
    process = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.startswith("command: ") and "machine: " in process.stdout
    stages = json.loads(json_path.read_text())["stages"]
    assert [s["region"] for s in stages] == [8, 4, 2]
    for stage in stages:
        assert 0 <= stage["mae"] < 0.5 and 0 <= stage["calibration_error"] < 0.5
        assert stage["mixed_cells"] > 0 and 0 <= stage["ambiguity_auc"] <= 1


def test_auc_and_calibration_error_on_known_inputs() -> None:
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True])) == 1.0
    assert auc(np.array([0.9, 0.2, 0.8, 0.1]), np.array([False, True, True, False])) == 0.5
    assert calibration_error(np.array([0.25, 0.25, 0.95]), np.array([0.25, 0.25, 0.95])) < 1e-9
    assert abs(calibration_error(np.array([0.25, 0.25]), np.array([0.0, 0.1])) - 0.2) < 1e-9
