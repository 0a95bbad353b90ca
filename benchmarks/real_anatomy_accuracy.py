"""Accuracy and uncertainty of a BraTS model on anatomy-based test cases: generator cases and Colin27 cases.

Two test sets, neither trained nor tuned on:
- generator: :func:`cldl.data.anatomy.anatomy_case` with seeds 50000.. (training uses seeds below 10000);
- Colin27: the single-subject brain of Debian's ``mricron-data`` (``ch2bet.nii.gz``), its real T1 in healthy
  tissue, the three other contrasts derived from its tissues, our tumours, on the BraTS grid (seeds 900000..).

Per region (WT, TC, ET): Dice and HD95; per case: the volume predicted as tumour farther than 5 mm from the true
tumour; calibration (ECE, Brier) inside the brain; and the error rate per uncertainty bin (a figure).

Run: .venv/bin/python benchmarks/real_anatomy_accuracy.py [--model NAME_OR_PATH] [--generator-cases 20]
     [--colin-cases 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import command_line, machine_summary
from scipy import ndimage

from cldl.data.anatomy import REALISTIC, AnatomyConfig, anatomy_case, load_t1_anatomy
from cldl.infer import Predictor
from cldl.metrics import calibration, region_metrics, summarize
from cldl.zoo import DEFAULT_MODEL, resolve_model

COLIN27 = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
# Colin27 is a real, already skull-stripped brain: no deformation beyond a mild one, no random contrasts.
COLIN_CONFIG = REALISTIC
UNCERTAINTY_BINS = np.linspace(0.0, 1.0, 11)
FAR_MM = 5.0


def far_false_positive_ml(pred_tumour: np.ndarray, true_tumour: np.ndarray, spacing_zyx: tuple[float, ...]) -> float:
    """Volume (ml) predicted as tumour farther than ``FAR_MM`` from the true tumour."""
    if not true_tumour.any():
        return float(pred_tumour.sum() * np.prod(spacing_zyx) / 1000)
    distance = ndimage.distance_transform_edt(~true_tumour, sampling=spacing_zyx)
    return float((pred_tumour & (distance > FAR_MM)).sum() * np.prod(spacing_zyx) / 1000)


def evaluate(predictor: Predictor, cases: list, name: str) -> dict:
    """Metrics per case and their summary; also the error counts per uncertainty bin."""
    task = predictor.task
    rows, errors, totals = [], np.zeros(len(UNCERTAINTY_BINS) - 1), np.zeros(len(UNCERTAINTY_BINS) - 1)
    for make in cases:
        case = make()
        prediction = predictor.predict(case.images, keep_probabilities=True, geometry=case.geometry)
        reference = task.labels_to_classes(case.labels)
        spacing = case.geometry.spacing_zyx
        brain = case.images.max(axis=0) > 0
        metrics = region_metrics(prediction.classes, reference, task, spacing, ("dice", "hd95"))
        far = far_false_positive_ml(prediction.classes > 0, reference > 0, spacing)
        calib = calibration(prediction.probabilities.astype(np.float32), reference, brain)
        index = np.clip(np.digitize(prediction.uncertainty[brain].astype(np.float32), UNCERTAINTY_BINS) - 1, 0, 9)
        wrong = (prediction.classes != reference)[brain]
        errors += np.bincount(index, weights=wrong, minlength=10)
        totals += np.bincount(index, minlength=10)
        rows.append({"case": case.case_id, "regions": metrics, "far_fp_ml": far, **calib})
        print(
            f"  {name} {case.case_id}: "
            + ", ".join(f"{r} {m['dice']:.3f}" for r, m in metrics.items())
            + f", far FP {far:.1f} ml, ECE {calib['ece']:.4f}",
            flush=True,
        )
    return {
        "cases": rows,
        "summary": summarize(rows),
        "far_fp_ml": {
            "mean": float(np.mean([r["far_fp_ml"] for r in rows])),
            "max": float(np.max([r["far_fp_ml"] for r in rows])),
        },
        "ece": float(np.mean([r["ece"] for r in rows])),
        "brier": float(np.mean([r["brier"] for r in rows])),
        "error_rate_by_uncertainty": {
            "bins": UNCERTAINTY_BINS.tolist(),
            "voxels": totals.tolist(),
            "error_rate": (errors / np.maximum(totals, 1)).tolist(),
        },
    }


def figure(results: dict, path: Path) -> None:
    """Error rate per uncertainty bin, one line per test set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, result in results.items():
        table = result["error_rate_by_uncertainty"]
        centres = (np.array(table["bins"][:-1]) + np.array(table["bins"][1:])) / 2
        keep = np.array(table["voxels"]) > 0
        ax.plot(centres[keep], np.array(table["error_rate"])[keep], marker="o", label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("uncertainty (normalised entropy), bin centre")
    ax.set_ylabel("voxel error rate inside the brain")
    ax.set_title("Is the model unsure where it is wrong?")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    """Print the tables; write results.json and the figure into --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--generator-cases", type=int, default=20)
    parser.add_argument("--colin-cases", type=int, default=10)
    parser.add_argument("--colin", type=Path, default=COLIN27, help="Colin27 ch2bet.nii.gz (apt install mricron-data)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/real_anatomy"))
    parser.add_argument("--quick", action="store_true", help="one half-resolution generator case, no Colin27 (CI)")
    args = parser.parse_args()
    print(f"command: {command_line()}")
    print(f"machine: {machine_summary()}")
    generator_config = AnatomyConfig(shape=(78, 120, 120), spacing=2.0) if args.quick else AnatomyConfig()
    if args.quick:
        args.generator_cases, args.colin_cases = 1, 0
    if args.colin_cases and not args.colin.is_file():
        parser.error(f"{args.colin} not found: install Debian's mricron-data, give --colin PATH, or --colin-cases 0")
    started = time.perf_counter()
    predictor = Predictor(resolve_model(args.model), device="cpu")
    results = {}
    if args.generator_cases:
        seeds = range(50_000, 50_000 + args.generator_cases)
        cases = [lambda s=s: anatomy_case(s, generator_config) for s in seeds]
        results["generator"] = evaluate(predictor, cases, "generator")
    if args.colin_cases:
        colin = load_t1_anatomy(args.colin, "colin27")

        def colin_case(seed: int):
            case = anatomy_case(seed, COLIN_CONFIG, colin)
            case.case_id = f"colin27_{seed}"
            return case

        seeds = range(900_000, 900_000 + args.colin_cases)
        results["colin27"] = evaluate(predictor, [lambda s=s: colin_case(s) for s in seeds], "colin27")
    print(f"model: {predictor.checkpoint.path}")
    for name, result in results.items():
        print(f"{name}: {len(result['cases'])} cases")
        for region, values in result["summary"].items():
            dice, hd = values["dice"], values["hd95"]
            print(
                f"  {region}: Dice {dice['mean']:.3f} +- {dice['std']:.3f}   "
                f"HD95 {hd['mean']:.1f} +- {hd['std']:.1f} mm"
            )
        far = result["far_fp_ml"]
        print(
            f"  tumour predicted > {FAR_MM:.0f} mm from the true tumour: "
            f"mean {far['mean']:.2f} ml, max {far['max']:.2f} ml"
        )
        print(f"  ECE {result['ece']:.4f}, Brier {result['brier']:.4f} (inside the brain)")
        print(
            "  error rate per uncertainty bin: "
            + ", ".join(f"{r:.3f}" for r in result["error_rate_by_uncertainty"]["error_rate"])
        )
    print(f"({time.perf_counter() - started:.0f} s on CPU)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    try:
        figure(results, args.out / "uncertainty_vs_error.png")
    except ImportError:
        print("matplotlib is not installed: no figure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
