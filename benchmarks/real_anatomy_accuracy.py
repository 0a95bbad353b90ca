"""Accuracy and uncertainty of a BraTS model on anatomy-based test cases: generator cases and Colin27 cases.

Test sets, none trained or tuned on (training uses seeds below 10000, the model comparison seeds 60000..):
- generator (the target set): :func:`cldl.data.anatomy.anatomy_case` drawn as the demo case is (``REALISTIC``:
  realistic contrasts, a clean skull strip), seeds 50000..;
- generator, training distribution: the same seeds drawn with the training defaults (wider deformation, fully random
  contrasts in some cases, skull-stripping errors), tumours only;
- the demo case (seed 90000, as ``cldl demo`` makes it);
- Colin27: the single-subject brain of Debian's ``mricron-data`` (``ch2bet.nii.gz``), its real T1 in healthy
  tissue, the three other contrasts derived from its tissues, our tumours, on the BraTS grid (seeds 900000..);
- healthy brains: generator brains and Colin27 with no tumour (volume marked as tumour).

Per region (WT, TC, ET): Dice and HD95, and the Dice a perfect segmentation on the model's grid would reach (the
reference averaged onto that grid, mapped back by linear interpolation and argmax as the predictions are: the ceiling
the model's voxel size sets), and the ET Dice after the authors' post-processing (a predicted enhancing tumour of fewer
than 50 voxels relabelled as necrosis, as `cldl evaluate --et-min-voxels 50`; the segmentation itself keeps it).
Per case: the volume predicted as tumour farther than 5 mm from the true tumour; calibration (ECE, Brier) inside the
brain; the error rate per uncertainty bin (a figure); the inference time per case, also of ``--compare MODEL`` on the
same cases in the same run.

Run: .venv/bin/python benchmarks/real_anatomy_accuracy.py [--model NAME_OR_PATH] [--generator-cases 20]
     [--training-cases 8] [--colin-cases 10] [--healthy-cases 3] [--compare NAME_OR_PATH] [--out DIR]
     With --generator-seed 60000 --healthy-seed 71000 --colin-cases 0 --no-demo: the model-comparison set, used to
     choose the default model's recipe (docs/default_model.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import command_line, machine_summary
from scipy import ndimage

from cldl.data.anatomy import REALISTIC, AnatomyConfig, anatomy_case, load_t1_anatomy
from cldl.evaluation.calibration import calibration
from cldl.evaluation.regions import region_metrics, summarize
from cldl.evaluation.reports import relabel_small_et
from cldl.inference.predictor import Predictor
from cldl.registry import DEFAULT_MODEL, resolve_model
from cldl.tasks import Task

COLIN27 = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
# Colin27 is a real, already skull-stripped brain: no deformation beyond a mild one, no random contrasts.
COLIN_CONFIG = REALISTIC
UNCERTAINTY_BINS = np.linspace(0.0, 1.0, 11)
FAR_MM = 5.0
AUTHORS_ET_MIN_VOXELS = 50  # their postprocess_main


def far_false_positive_ml(pred_tumour: np.ndarray, true_tumour: np.ndarray, spacing_zyx: tuple[float, ...]) -> float:
    """Volume (ml) predicted as tumour farther than ``FAR_MM`` from the true tumour."""
    if not true_tumour.any():
        return float(pred_tumour.sum() * np.prod(spacing_zyx) / 1000)
    distance = ndimage.distance_transform_edt(~true_tumour, sampling=spacing_zyx)
    return float((pred_tumour & (distance > FAR_MM)).sum() * np.prod(spacing_zyx) / 1000)


def grid_ceiling(
    reference: np.ndarray, task: Task, spacing_zyx: tuple[float, ...], target_spacing_xyz: tuple[float, ...] | None
) -> dict[str, float]:
    """Dice per region of the reference averaged onto the model's grid and mapped back (linear, then argmax)."""
    if target_spacing_xyz is None:
        return {region.name: 1.0 for region in task.regions}
    size = [max(1, round(n * s / t)) for n, s, t in zip(reference.shape, spacing_zyx, target_spacing_xyz[::-1])]
    onehot = torch.from_numpy(np.eye(task.num_classes, dtype=np.float32)[reference]).permute(3, 0, 1, 2)[None]
    coarse = F.interpolate(onehot, size=size, mode="area")
    back = F.interpolate(coarse, size=reference.shape, mode="trilinear", align_corners=False)[0].argmax(0).numpy()
    return {region: m["dice"] for region, m in region_metrics(back, reference, task, spacing_zyx, ("dice",)).items()}


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
        ceiling = grid_ceiling(reference, task, spacing, predictor.checkpoint.preprocess.target_spacing)
        relabelled = relabel_small_et(prediction.classes, task, AUTHORS_ET_MIN_VOXELS)
        et_postprocessed = region_metrics(relabelled, reference, task, spacing, ("dice",))["ET"]["dice"]
        calib = calibration(prediction.probabilities.astype(np.float32), reference, brain)
        index = np.clip(np.digitize(prediction.uncertainty[brain].astype(np.float32), UNCERTAINTY_BINS) - 1, 0, 9)
        wrong = (prediction.classes != reference)[brain]
        errors += np.bincount(index, weights=wrong, minlength=10)
        totals += np.bincount(index, minlength=10)
        voxel_ml = float(np.prod(spacing)) / 1000
        true_ml, pred_ml = float((reference > 0).sum() * voxel_ml), float((prediction.classes > 0).sum() * voxel_ml)
        centre = np.argwhere(reference > 0).mean(0).round().astype(int).tolist() if true_ml else None
        rows.append(
            {
                "case": case.case_id,
                "regions": metrics,
                "grid_ceiling_dice": ceiling,
                "et_dice_postprocessed": et_postprocessed,
                "far_fp_ml": far,
                "true_wt_ml": true_ml,
                "pred_wt_ml": pred_ml,
                "tumour_centre_zyx": centre,
                **calib,
            }
        )
        print(
            f"  {name} {case.case_id}: "
            + ", ".join(f"{r} {m['dice']:.3f}" for r, m in metrics.items())
            + f" (grid ceiling {', '.join(f'{v:.2f}' for v in ceiling.values())})"
            + f", WT {true_ml:.1f} ml true / {pred_ml:.1f} ml predicted, far FP {far:.1f} ml, ECE {calib['ece']:.4f}",
            flush=True,
        )
    return {
        "cases": rows,
        "summary": summarize(rows),
        "grid_ceiling_dice": {
            region.name: float(np.nanmean([r["grid_ceiling_dice"][region.name] for r in rows]))
            for region in task.regions
        },
        "et_dice_postprocessed": float(np.mean([r["et_dice_postprocessed"] for r in rows])),
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


def tumour_ml_on_healthy(predictor: Predictor, cases: list) -> dict:
    """Volume marked as tumour (ml) per healthy brain."""
    rows = []
    for make in cases:
        case = make()
        prediction = predictor.predict(case.images, geometry=case.geometry)
        marked = float((prediction.classes > 0).sum() * np.prod(case.geometry.spacing_zyx) / 1000)
        rows.append({"case": case.case_id, "tumour_ml": marked})
        print(f"  healthy {case.case_id}: {marked:.2f} ml marked as tumour", flush=True)
    return {
        "cases": rows,
        "mean_ml": float(np.mean([r["tumour_ml"] for r in rows])),
        "max_ml": max(r["tumour_ml"] for r in rows),
    }


def inference_seconds(model: str, make_case, repeats: int = 3) -> float:
    """Median wall time of one case's inference (CPU), after a warm-up."""
    predictor = Predictor(resolve_model(model), device="cpu")
    case = make_case()
    predictor.predict(case.images, geometry=case.geometry)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict(case.images, geometry=case.geometry)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def print_summary(name: str, result: dict) -> None:
    """One test set's table lines."""
    print(f"{name}: {len(result['cases'])} cases")
    if "mean_ml" in result:
        print(f"  tumour marked on healthy brains: mean {result['mean_ml']:.2f} ml, max {result['max_ml']:.2f} ml")
        return
    for region, values in result["summary"].items():
        dice, hd = values["dice"], values["hd95"]
        low = sum(r["regions"][region]["dice"] < 0.5 for r in result["cases"])
        print(
            f"  {region}: Dice {dice['mean']:.3f} +- {dice['std']:.3f}   HD95 {hd['mean']:.1f} +- {hd['std']:.1f} mm"
            f"   ({low} below 0.5; perfect on the model's grid: {result['grid_ceiling_dice'][region]:.3f})"
        )
    print(
        f"  ET Dice after the authors' post-processing (ET under {AUTHORS_ET_MIN_VOXELS} voxels relabelled necrosis):"
        f" {result['et_dice_postprocessed']:.3f}"
    )
    far = result["far_fp_ml"]
    print(
        f"  tumour predicted > {FAR_MM:.0f} mm from the true tumour: mean {far['mean']:.2f} ml, max {far['max']:.2f} ml"
    )
    print(f"  ECE {result['ece']:.4f}, Brier {result['brier']:.4f} (inside the brain)")
    print(
        "  error rate per uncertainty bin: "
        + ", ".join(f"{r:.3f}" for r in result["error_rate_by_uncertainty"]["error_rate"])
    )


def main() -> int:
    """Print the tables; write results.json and the figure into --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--generator-cases", type=int, default=20, help="realistic generator cases (the target set)")
    parser.add_argument("--generator-seed", type=int, default=50_000, help="first seed of the generator test sets")
    parser.add_argument("--training-cases", type=int, default=8, help="cases drawn from the training distribution")
    parser.add_argument("--colin-cases", type=int, default=10)
    parser.add_argument("--healthy-cases", type=int, default=3, help="tumour-free generator brains (+1 Colin27)")
    parser.add_argument("--healthy-seed", type=int, default=70_000, help="first seed of the healthy brains")
    parser.add_argument("--no-demo", action="store_true", help="leave out the demo case")
    parser.add_argument("--compare", metavar="MODEL", help="also time this model's inference on the same case")
    parser.add_argument("--colin", type=Path, default=COLIN27, help="Colin27 ch2bet.nii.gz (apt install mricron-data)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/real_anatomy"))
    parser.add_argument("--quick", action="store_true", help="one half-resolution case per generator set (CI)")
    args = parser.parse_args()
    print(f"command: {command_line()}")
    print(f"machine: {machine_summary()}")
    realistic, training = REALISTIC, replace(AnatomyConfig(), p_healthy=0.0)
    if args.quick:
        small = {"shape": (78, 120, 120), "spacing": 2.0}
        realistic, training = replace(realistic, **small), replace(training, **small)
        args.generator_cases, args.training_cases, args.colin_cases, args.healthy_cases = 1, 1, 0, 1
        args.no_demo = True
    if args.colin_cases and not args.colin.is_file():
        parser.error(f"{args.colin} not found: install Debian's mricron-data, give --colin PATH, or --colin-cases 0")
    started = time.perf_counter()
    predictor = Predictor(resolve_model(args.model), device="cpu")
    first = args.generator_seed
    results = {}
    sets = {
        "generator": (realistic, range(first, first + args.generator_cases)),
        "generator_training_distribution": (training, range(first, first + args.training_cases)),
        "demo": (REALISTIC, range(90_000, 90_000 + (not args.no_demo))),
    }
    for name, (config, seeds) in sets.items():
        if len(seeds):
            results[name] = evaluate(predictor, [lambda s=s, c=config: anatomy_case(s, c) for s in seeds], name)
    colin = load_t1_anatomy(args.colin, "colin27") if args.colin_cases else None
    if colin is not None:

        def colin_case(seed: int, config: AnatomyConfig = COLIN_CONFIG):
            case = anatomy_case(seed, config, colin)
            case.case_id = f"colin27_{seed}"
            return case

        seeds = range(900_000, 900_000 + args.colin_cases)
        results["colin27"] = evaluate(predictor, [lambda s=s: colin_case(s) for s in seeds], "colin27")
    if args.healthy_cases:
        healthy = replace(realistic, p_healthy=1.0)
        makers = [
            lambda s=s: anatomy_case(s, healthy)
            for s in range(args.healthy_seed, args.healthy_seed + args.healthy_cases)
        ]
        if colin is not None:
            makers.append(lambda: colin_case(900_100, replace(COLIN_CONFIG, p_healthy=1.0)))
        results["healthy"] = tumour_ml_on_healthy(predictor, makers)
    print(f"model: {predictor.checkpoint.path}")
    for name, result in results.items():
        print_summary(name, result)
    timing_case = lambda: anatomy_case(first, realistic)  # noqa: E731
    repeats = 1 if args.quick else 3
    timings = {args.model: inference_seconds(args.model, timing_case, repeats)}
    if args.compare:
        timings[args.compare] = inference_seconds(args.compare, timing_case, repeats)
    results["inference_seconds"] = timings
    print(f"inference per case (CPU, median of {repeats}): " + ", ".join(f"{m} {t:.1f} s" for m, t in timings.items()))
    print(f"({time.perf_counter() - started:.0f} s on CPU)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    try:
        figure(
            {k: v for k, v in results.items() if "error_rate_by_uncertainty" in v},
            args.out / "uncertainty_vs_error.png",
        )
    except ImportError:
        print("matplotlib is not installed: no figure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
