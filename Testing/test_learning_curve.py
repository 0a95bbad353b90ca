"""scripts/plot_learning_curve.py: a chain of warm-started runs on one step axis, comparison-set points on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "plot_learning_curve.py"


def _run_folder(folder: Path, iters: int, losses: list[float], lr: float) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"iters_per_epoch": iters}))
    rows = [{"epoch": e + 1, "lr": lr, "loss_total": loss} for e, loss in enumerate(losses)]
    rows.append(rows[-1] | {"loss_total": 0.1})  # a resumed epoch written twice: its last line counts
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def _results(path: Path, wt: float, tc: float, et: float) -> Path:
    summary = {r: {"dice": {"mean": v}} for r, v in (("WT", wt), ("TC", tc), ("ET", et))}
    ceiling = {"WT": 0.99, "TC": 0.95, "ET": 0.88}
    path.write_text(
        json.dumps({"generator": {"summary": summary, "grid_ceiling_dice": ceiling}, "healthy": {"mean_ml": 0.5}})
    )
    return path


def test_runs_are_chained_and_points_placed_at_their_step(tmp_path: Path) -> None:
    first = _run_folder(tmp_path / "first", 10, [0.9, 0.8, 0.7, 0.6], 5e-4)
    second = _run_folder(tmp_path / "second", 20, [0.5, 0.4, 0.3], 5e-5)
    a, b = _results(tmp_path / "a.json", 0.9, 0.7, 0.6), _results(tmp_path / "b.json", 0.92, 0.75, 0.65)
    out = tmp_path / "curve.png"
    args = [sys.executable, str(SCRIPT), str(out), "--run", f"base={first}:3+4", "--run", str(second)]
    args += ["--point", f"state 2=2:2={a}", "--averaged", f"mean 1-3=2:3={b}"]
    process = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert process.returncode == 0, process.stderr[-2000:]
    lines = process.stdout.splitlines()
    # the first run's epochs 1-3 and 4 iterations of epoch 4 (34 steps); the second starts there, 20 steps an epoch
    assert "base: steps 0-30, lr 0.0005-0.0005, loss 0.900 -> 0.700" in lines
    assert "second: steps 34-94, lr 5e-05-5e-05, loss 0.500 -> 0.100" in lines
    assert "    74 steps  state 2: WT / TC / ET 0.900 / 0.700 / 0.600, healthy brains 0.50 ml" in lines
    assert "    94 steps  mean 1-3: WT / TC / ET 0.920 / 0.750 / 0.650, healthy brains 0.50 ml" in lines
    assert "perfect on the model's grid: WT / TC / ET 0.990 / 0.950 / 0.880" in lines
    assert out.is_file() and out.stat().st_size > 10_000


def test_a_folder_that_is_not_a_run_is_one_error_line(tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "c.png"), "--run", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode != 0 and "metrics.jsonl not found" in process.stderr
    assert not (tmp_path / "c.png").exists()
    run = _run_folder(tmp_path / "run", 10, [0.9], 5e-4)
    for spec, message in ((f"{run}:x", "expected [NAME=]RUN_DIR"), (f"{run}:1+y", "expected [NAME=]RUN_DIR")):
        process = subprocess.run(
            [sys.executable, str(SCRIPT), str(tmp_path / "c.png"), "--run", spec], capture_output=True, text=True
        )
        assert process.returncode != 0 and message in process.stderr and "Traceback" not in process.stderr
    (run / "metrics.jsonl").write_text("")  # a run that has not finished an epoch
    process = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "c.png"), "--run", str(run)], capture_output=True, text=True
    )
    assert process.returncode != 0 and "no finished epoch" in process.stderr
    assert not (tmp_path / "c.png").exists()


def test_a_missing_or_foreign_results_file_is_one_error_line(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run", 10, [0.9, 0.8], 5e-4)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"something": "else"}))
    for results in (tmp_path / "missing.json", foreign):
        process = subprocess.run(
            [sys.executable, str(SCRIPT), str(tmp_path / "c.png"), "--run", str(run), "--point", f"a=1:1={results}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert process.returncode != 0 and "not a results.json" in process.stderr
        assert "Traceback" not in process.stderr and not (tmp_path / "c.png").exists()
