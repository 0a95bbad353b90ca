"""CPU inference in bf16 against fp32: speed of the full network on a BraTS-sized case, and agreement of the outputs.

Speed: the full-size network (21.7 M parameters, base width 30, random weights, 128^3 windows) segments one
4 x 155 x 240 x 240 phantom with ``--precision fp32``, ``bf16`` and bf16 with channels-last 3D windows; each run is
a separate child process (its own peak RSS), the variants alternate (``--repeats``) and the fastest of each is
compared. bf16 is only fast on CPUs with
native bf16 (AVX512-BF16 or AMX); ``auto`` picks it only there (the machine line says what this CPU has).

Safety: a trained model (default: the bundled default model) segments held-out anatomy-based cases (seeds 50000..)
in both precisions: label agreement inside the brain, Dice difference per region, mean absolute difference of the
uncertainty map.

Run: .venv/bin/python benchmarks/cpu_precision.py [--repeats 2] [--cases 5] [--model NAME] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import command_line, emit_result, machine_summary, peak_rss_mb, run_child

from cldl.checkpoint import Checkpoint, save_checkpoint
from cldl.data.phantoms import brats_phantom
from cldl.data.preprocess import PreprocessConfig
from cldl.evaluation.overlap import dice
from cldl.inference.precision import cpu_has_native_bf16
from cldl.inference.predictor import Predictor
from cldl.method.network import ModelConfig, UNetLDL, count_parameters
from cldl.registry import DEFAULT_MODEL, resolve_model
from cldl.tasks import BRATS

FULL = {"shape": (155, 240, 240), "width": 30, "window": 128}
QUICK = {"shape": (40, 64, 56), "width": 4, "window": 32}


VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16-channels-last": ("bf16", True)}
"""Speed variants: name -> (precision, channels-last windows)."""


def child(variant: str, checkpoint: str, images_path: str) -> None:
    """One timed prediction in this (fresh) process."""
    import time

    images = np.load(images_path)
    precision, channels_last = VARIANTS[variant]
    predictor = Predictor(checkpoint, device="cpu", precision=precision, channels_last=channels_last)
    started = time.perf_counter()
    predictor.predict(images)
    emit_result({"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()})


def speed(setup: dict, repeats: int, folder: Path) -> dict:
    """Fastest run of each variant of the full pipeline on one case."""
    torch.manual_seed(0)
    config = ModelConfig(in_channels=4, num_classes=4, base_width=setup["width"])
    model = UNetLDL(config)
    checkpoint = folder / "net.pt"
    save_checkpoint(
        Checkpoint(config, BRATS, PreprocessConfig(), (setup["window"],) * 3, model.state_dict(), {}, None), checkpoint
    )
    images = folder / "images.npy"
    np.save(images, brats_phantom(5, shape=setup["shape"]).images)
    runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for _ in range(repeats):
        for variant in runs:
            runs[variant].append(run_child([__file__, "--child", variant, str(checkpoint), str(images)]))
    best = {p: min(r, key=lambda x: x["seconds"]) for p, r in runs.items()}
    return {"parameters": count_parameters(model), "runs": runs, "best": best}


def agreement(model: str, cases: int, quick: bool) -> list[dict]:
    """fp32 vs bf16 outputs of a trained model on held-out anatomy-based cases."""
    from cldl.data.anatomy import AnatomyConfig, anatomy_case

    config = AnatomyConfig(shape=(78, 120, 120), spacing=2.0) if quick else AnatomyConfig()
    path = resolve_model(model)
    fp32, bf16 = Predictor(path, device="cpu", precision="fp32"), Predictor(path, device="cpu", precision="bf16")
    rows = []
    for seed in range(50_000, 50_000 + cases):
        case = anatomy_case(seed, config)
        a = fp32.predict(case.images, geometry=case.geometry)
        b = bf16.predict(case.images, geometry=case.geometry)
        truth = BRATS.labels_to_classes(case.labels)
        brain = case.images.max(axis=0) > 0
        row = {
            "case": case.case_id,
            "label_agreement": float((a.classes == b.classes)[brain].mean()),
            "uncertainty_mad": float(
                np.abs(a.uncertainty.astype(np.float32) - b.uncertainty.astype(np.float32))[brain].mean()
            ),
        }
        for region in BRATS.regions:
            ref = np.isin(truth, region.classes)
            row[f"dice_diff_{region.name}"] = abs(
                dice(np.isin(a.classes, region.classes), ref) - dice(np.isin(b.classes, region.classes), ref)
            )
        rows.append(row)
    return rows


def main() -> int:
    """Print the speed comparison and the agreement table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--quick", action="store_true", help="tiny network and case (seconds; for CI)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "CKPT", "IMAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    print(f"command: {command_line()}")
    print(f"machine: {machine_summary()}; native bf16: {'yes' if cpu_has_native_bf16() else 'no'}")
    setup = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory() as folder:
        figures = speed(setup, 1 if args.quick else args.repeats, Path(folder))
    best = figures["best"]
    print(f"network: {figures['parameters']:,} parameters, window {setup['window']}^3, case {setup['shape']}")
    for variant, run in best.items():
        speedup, peak_gb = best["fp32"]["seconds"] / run["seconds"], run["peak_rss_mb"] / 1024
        print(f"  {variant}: {run['seconds']:.1f} s ({speedup:.2f}x fp32), peak RSS {peak_gb:.2f} GiB")
    rows = agreement(args.model, 1 if args.quick else args.cases, args.quick)
    figures["agreement"] = rows
    print(f"agreement on {len(rows)} held-out anatomy-based case(s), model {args.model}:")
    print(f"  labels equal inside the brain: min {min(r['label_agreement'] for r in rows):.4%}")
    for region in BRATS.regions:
        print(f"  |Dice fp32 - Dice bf16| {region.name}: max {max(r[f'dice_diff_{region.name}'] for r in rows):.4f}")
    print(f"  uncertainty mean absolute difference: max {max(r['uncertainty_mad'] for r in rows):.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
