"""The bundled demo model: `cldl demo` end to end, and its accuracy on 20 fresh phantoms."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cldl.checkpoint import load_checkpoint
from cldl.cli import main
from cldl.demo import evaluate_on_phantoms
from cldl.io import read_image
from cldl.zoo import BUNDLED_DIR, DEFAULT_MODEL, REGISTRY, resolve_model, sha256_of


def test_bundled_model_is_registered_small_and_verified() -> None:
    """The demo model ships in the package, is under 10 MB, matches its sha256 and carries provenance."""
    path = resolve_model(DEFAULT_MODEL)
    assert path.parent == BUNDLED_DIR
    assert path.stat().st_size < 10 * 1024 * 1024
    assert sha256_of(path) == REGISTRY[DEFAULT_MODEL].sha256
    checkpoint = load_checkpoint(path)
    assert checkpoint.task.name == "brats"
    assert checkpoint.training_state is None
    for key in ("seed", "epoch", "metrics", "config", "train_cases", "code_version", "torch_version"):
        assert key in checkpoint.provenance
    train_seeds = checkpoint.provenance["config"]["phantoms"]["train_seeds"]
    val_seeds = checkpoint.provenance["config"]["phantoms"]["val_seeds"]
    assert train_seeds[1] <= 20_000 and val_seeds[1] <= 20_000  # the evaluation seeds below are fresh


def test_demo_end_to_end(tmp_path: Path, capsys) -> None:
    """`cldl demo` writes every promised file with consistent geometry and prints the Dice per region."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu", "--progress", "none"]) == 0
    printed = capsys.readouterr().out
    for region in ("WT", "TC", "ET"):
        assert f"{region}: Dice" in printed
    for name in ("segmentation.nii.gz", "uncertainty.nii.gz", "probabilities.nii.gz", "snapshot.png", "metrics.json"):
        assert (out / name).is_file(), name
    labels, geometry = read_image(out / "segmentation.nii.gz")
    flair, flair_geometry = read_image(next((out / "inputs").rglob("*_flair.nii.gz")))
    assert geometry == flair_geometry
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
    uncertainty, _ = read_image(out / "uncertainty.nii.gz")
    assert uncertainty.dtype == np.float32 and 0 <= uncertainty.min() and uncertainty.max() <= 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["WT"]["dice"] > 0.8
    # idempotent: a second run into the same folder succeeds
    assert main(["demo", "--out", str(out), "--device", "cpu", "--progress", "none"]) == 0


def test_demo_model_accuracy_on_fresh_phantoms() -> None:
    """Whole-tumour Dice >= 0.85 on average over 20 phantoms never used in training (the README's figure)."""
    result = evaluate_on_phantoms(seeds=range(20_000, 20_020), device="cpu")
    assert len(result["cases"]) == 20
    assert result["summary"]["WT"]["dice"]["mean"] >= 0.85


def test_benchmark_script_runs(tmp_path: Path) -> None:
    """The documented accuracy command runs (on 2 cases here) and prints the regions."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_model_accuracy.py"
    result = subprocess.run(
        [sys.executable, str(script), "--cases", "2", "--json", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "WT: Dice" in result.stdout
    assert len(json.loads((tmp_path / "r.json").read_text())["cases"]) == 2
