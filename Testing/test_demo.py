"""The bundled models: `cldl demo` end to end, the default model on unseen anatomy cases, the phantom model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from cldl.checkpoint import load_checkpoint
from cldl.commands.demo import evaluate_on_phantoms
from cldl.commands.main import main
from cldl.data.anatomy import REALISTIC, anatomy_case
from cldl.evaluation.overlap import dice
from cldl.files.images import read_image
from cldl.inference.predictor import Predictor
from cldl.registry import ANATOMY_MODEL, BUNDLED_DIR, DEFAULT_MODEL, PHANTOM_MODEL, REGISTRY, resolve_model, sha256_of
from cldl.tasks import BRATS

MIN_GENERATOR_WT = 0.88  # the target; measured 0.948 on these three cases (docs/default_model.md), untrained about 0
MIN_DEMO_WT = 0.85  # the target for the demo case (seed 90000); measured 0.943
PREVIOUS_ANATOMY_SHA256 = "fcfc4f03de214dc0e7df0dd0cfb4b713f31c785b28a1435b97ff73103d55183e"  # the chain's start


def test_phantom_model_is_registered_small_and_verified() -> None:
    """The phantom model ships in the package, is under 10 MB, matches its sha256 and carries provenance."""
    path = resolve_model(PHANTOM_MODEL)
    assert path.parent == BUNDLED_DIR
    assert path.stat().st_size < 10 * 1024 * 1024
    assert sha256_of(path) == REGISTRY[PHANTOM_MODEL].sha256
    checkpoint = load_checkpoint(path)
    assert checkpoint.task.name == "brats"
    assert checkpoint.training_state is None
    for key in ("seed", "epoch", "metrics", "config", "train_cases", "code_version", "torch_version"):
        assert key in checkpoint.provenance
    train_seeds = checkpoint.provenance["config"]["phantoms"]["train_seeds"]
    val_seeds = checkpoint.provenance["config"]["phantoms"]["val_seeds"]
    assert train_seeds[1] <= 20_000 and val_seeds[1] <= 20_000  # the evaluation seeds below are fresh


def test_default_model_is_the_anatomy_model_with_its_provenance() -> None:
    """The default model ships in the package (under 25 MB, sha256-checked) and was trained on anatomy-based cases
    with seeds below 10000, so the generator seeds used for testing (50000.., 90000) are unseen."""
    assert DEFAULT_MODEL == ANATOMY_MODEL
    path = resolve_model(DEFAULT_MODEL)
    assert path.parent == BUNDLED_DIR and path.stat().st_size < 25 * 1024 * 1024
    assert sha256_of(path) == REGISTRY[DEFAULT_MODEL].sha256
    checkpoint = load_checkpoint(path)
    assert checkpoint.task.name == "brats" and checkpoint.training_state is None
    provenance = checkpoint.provenance
    cases = provenance["train_cases"] + provenance["val_cases"]
    assert len(cases) == 96 and all(c.startswith("anatomy_") and int(c.split("_")[1]) < 10_000 for c in cases)
    # `cldl train ...`, `python -m cldl train ...`, or (recorded before that was spelt out) cldl/__main__.py's path
    assert re.search(r"(cldl|cldl/__main__\.py) train ", provenance["command"]), provenance["command"]
    assert provenance["config"]["augment"] == "nnunet"
    # warm-started, over several sittings, from the model bundled before the 2 mm recipe: the chain records each
    # source (path, sha256, epochs) back to it
    chain, source = [], provenance["warm_start"]
    while source:
        assert source["epochs"] > 0 and len(source["sha256"]) == 64
        chain.append(source["sha256"])
        source = source.get("warm_start")
    assert chain[-1] == PREVIOUS_ANATOMY_SHA256
    # the weights are the mean of states along the run's last stretch (scripts/export_model.py A B ... OUT), each
    # recorded; the provenance above is the last one's
    averaged = provenance["averaged_from"]
    assert len(averaged) > 1 and all(len(state["sha256"]) == 64 for state in averaged)
    assert averaged[-1]["sha256"] == provenance["exported_from"]["sha256"]
    assert [state["epoch"] for state in averaged] == sorted({state["epoch"] for state in averaged})


def test_default_model_on_fixed_unseen_generator_cases() -> None:
    """Whole-tumour Dice of the default model on three fixed anatomy-based cases it never saw, drawn as the demo
    case is (realistic contrasts; CI check)."""
    predictor = Predictor(resolve_model(DEFAULT_MODEL), device="cpu")
    scores = []
    for seed in (50_000, 50_001, 50_002):
        case = anatomy_case(seed, REALISTIC)
        prediction = predictor.predict(case.images, geometry=case.geometry)
        truth = BRATS.labels_to_classes(case.labels)
        scores.append(dice(prediction.classes > 0, truth > 0))
    assert np.mean(scores) >= MIN_GENERATOR_WT


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
    assert labels.shape == (155, 240, 240) and metrics["case"] == "anatomy_90000"  # a BraTS-grid anatomy case
    assert metrics["metrics"]["WT"]["dice"] >= MIN_DEMO_WT  # the first thing a newcomer sees finds the tumour
    assert {row["name"] for row in metrics["confidence"]["segments"]} == {"NCR", "ED", "ET"}
    # idempotent: a second run into the same folder succeeds
    assert main(["demo", "--out", str(out), "--device", "cpu", "--progress", "none"]) == 0


def test_demo_model_accuracy_on_fresh_phantoms() -> None:
    """The phantom model: whole-tumour Dice >= 0.85 on average over 20 phantoms never used in training."""
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
