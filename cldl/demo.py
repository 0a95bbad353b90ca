"""``cldl demo``: segment a synthetic BraTS-like case with the bundled demo model and write everything."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .data.anatomy import REALISTIC, anatomy_case
from .data.phantoms import brats_phantom, write_case
from .evaluation.regions import region_metrics, summarize
from .events import Reporter
from .files.atomic_writes import atomic_outputs
from .files.images import write_image, write_unit_interval
from .inference.confidence import segment_confidence
from .inference.predictor import Predictor
from .registry import DEFAULT_MODEL, PHANTOM_MODEL, resolve_model

DEMO_SHAPE = (96, 96, 96)


def run_demo(
    out: str | Path,
    model: str | None = None,
    seed: int = 90_000,
    device: str = "auto",
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Make an anatomy-based case (a seed outside every training range), segment it, write outputs, return a summary.

    The demo owns its output folder: rerunning it replaces the files it wrote before, and nothing else.
    """
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
        try:
            from .render.snapshot import snapshot

            flair = case.images[task.modalities.index("flair")]
            snapshot(
                flair,
                prediction.classes,
                prediction.uncertainty,
                geometry.spacing_zyx,
                staged.path(out / "snapshot.png"),
                task.colors,
                task.class_names,
                title=f"CLDL demo: {case.case_id}",
            )
        except RuntimeError as exc:  # VTK missing or no offscreen OpenGL: everything else is still written
            reporter.log(f"snapshot skipped: {exc}")
    reporter.emit(
        "result",
        **{k: v for k, v in summary.items() if k != "inputs"},
        out=str(out),
        wt_voxels=int(np.count_nonzero(prediction.classes)),
    )
    return summary


def evaluate_on_phantoms(
    model: str | None = None, seeds: range = range(20_000, 20_020), device: str = "auto"
) -> dict[str, Any]:
    """Dice and HD95 per region of a model (default: the phantom model) on fresh BraTS phantoms (unseen seeds)."""
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
