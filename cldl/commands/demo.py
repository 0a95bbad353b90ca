"""``cldl demo``: segment a synthetic BraTS-like case with the default model and write everything."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import defaults
from ..events import Reporter
from .common import add_progress

DEMO_SEED = 90_000
DEMO_SHAPE = (96, 96, 96)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``cldl demo`` command and its flags."""
    demo = subparsers.add_parser(
        "demo",
        help="segment a synthetic brain-tumour case with the default model",
        description="Make a synthetic brain-tumour case on real anatomy (MNI152; needs the 'anatomy' extra) that "
        "the model never saw, segment it and write inputs, segmentation, uncertainty, probabilities, a snapshot "
        "and metrics.",
    )
    demo.add_argument("--out", type=Path, default=Path("cldl-demo"), help="output folder (default: ./cldl-demo)")
    demo.add_argument("--model", default=None, help="model name or checkpoint (default: the default model)")
    demo.add_argument("--seed", type=int, default=DEMO_SEED, help=f"seed of the synthetic case (default {DEMO_SEED})")
    demo.add_argument("--device", default="auto", choices=defaults.DEVICES)
    add_progress(demo)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl demo``: anatomy-based case -> segmentation, uncertainty, probabilities, snapshot, metrics."""
    summary = run_demo(args.out, model=args.model, seed=args.seed, device=args.device, reporter=reporter)
    if reporter.mode == "jsonl":
        return 0
    print(f"CLDL demo: case {summary['case']} ({summary['seconds']:.1f} s on {summary['device']})")
    for region, values in summary["metrics"].items():
        print(f"  {region}: Dice {values['dice']:.3f}  HD95 {values['hd95']:.2f} mm")
    print(f"outputs in {args.out}/ (open snapshot.png, or load the .nii.gz files in 3D Slicer)")
    print("a synthetic tumour on real anatomy and a model trained on synthetic data: not for clinical use")
    return 0


def run_demo(
    out: str | Path,
    model: str | None = None,
    seed: int = DEMO_SEED,
    device: str = "auto",
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Make an anatomy-based case (a seed outside every training range), segment it, write outputs, return a summary.

    The demo owns its output folder: rerunning it replaces the files it wrote before, and nothing else.
    """
    from ..data.anatomy import REALISTIC, anatomy_case
    from ..data.phantoms import write_case
    from ..evaluation.regions import region_metrics
    from ..files.atomic_writes import atomic_outputs
    from ..files.images import write_image, write_unit_interval
    from ..inference.confidence import segment_confidence
    from ..inference.predictor import Predictor
    from ..registry import DEFAULT_MODEL, resolve_model

    reporter = reporter or Reporter("none")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    started = time.perf_counter()
    predictor = Predictor(resolve_model(model or DEFAULT_MODEL), device=device)
    task = predictor.task
    if task.name != "brats":
        raise ValueError(f"the demo needs a BraTS model, {model} segments {task.name!r}")
    reporter.log("making a synthetic brain-tumour case on real anatomy (MNI152)")
    case = anatomy_case(seed, REALISTIC)
    inputs = write_case(case, out / "inputs", layout="brats")
    prediction = predictor.predict(
        case.images,
        keep_probabilities=True,
        progress=lambda d, t: reporter.progress("inference", d, t),
        geometry=case.geometry,
    )
    geometry = case.geometry
    with atomic_outputs() as staged:  # the results are written together or not at all
        write_image(prediction.labels, geometry, staged.path(out / "segmentation.nii.gz"))
        write_unit_interval(prediction.uncertainty, geometry, staged.path(out / "uncertainty.nii.gz"))
        write_unit_interval(prediction.probabilities, geometry, staged.path(out / "probabilities.nii.gz"))
        reference = task.labels_to_classes(case.labels)
        metrics = region_metrics(
            prediction.classes, reference, task, geometry.spacing_zyx, metrics=("dice", "hd95", "assd", "sensitivity")
        )
        seconds = time.perf_counter() - started
        summary = {
            "case": case.case_id,
            "model": str(predictor.checkpoint.path),
            "device": str(predictor.device),
            "seconds": round(seconds, 2),
            "metrics": metrics,
            "confidence": segment_confidence(prediction, task, geometry),
            "inputs": {k: str(v) for k, v in inputs.items()},
            "note": "a synthetic tumour on real anatomy and a model trained on synthetic cases: not for clinical use",
        }
        staged.path(out / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        _snapshot(case, prediction, task, staged.path(out / "snapshot.png"), reporter)
    reporter.emit(
        "result",
        **{k: v for k, v in summary.items() if k != "inputs"},
        out=str(out),
        wt_voxels=int(np.count_nonzero(prediction.classes)),
    )
    return summary


def _snapshot(case: Any, prediction: Any, task: Any, path: Path, reporter: Reporter) -> None:
    """The demo's picture (FLAIR, segmentation, uncertainty); skipped with a log line when VTK cannot render."""
    try:
        from ..render.snapshot import snapshot

        flair = case.images[task.modalities.index("flair")]
        snapshot(
            flair,
            prediction.classes,
            prediction.uncertainty,
            case.geometry.spacing_zyx,
            path,
            task.colors,
            task.class_names,
            title=f"CLDL demo: {case.case_id}",
        )
    except RuntimeError as exc:  # VTK missing or no offscreen OpenGL: everything else is still written
        reporter.log(f"snapshot skipped: {exc}")


def evaluate_on_phantoms(
    model: str | None = None, seeds: range = range(20_000, 20_020), device: str = "auto"
) -> dict[str, Any]:
    """Dice and HD95 per region of a model (default: the phantom model) on fresh BraTS phantoms (unseen seeds)."""
    from ..data.phantoms import brats_phantom
    from ..evaluation.regions import region_metrics, summarize
    from ..inference.predictor import Predictor
    from ..registry import PHANTOM_MODEL, resolve_model

    predictor = Predictor(resolve_model(model or PHANTOM_MODEL), device=device)
    task = predictor.task
    cases = []
    for seed in seeds:
        case = brats_phantom(seed, shape=DEMO_SHAPE)
        prediction = predictor.predict(case.images)
        reference = task.labels_to_classes(case.labels)
        metrics = region_metrics(prediction.classes, reference, task, case.geometry.spacing_zyx, ("dice", "hd95"))
        cases.append({"case": case.case_id, "regions": metrics})
    return {
        "model": str(predictor.checkpoint.path),
        "seeds": [seeds.start, seeds.stop],
        "cases": cases,
        "summary": summarize(cases),
    }
