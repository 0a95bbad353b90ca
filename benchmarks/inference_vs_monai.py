"""Inference on CPU: the CLDL predictor against MONAI's sliding_window_inference, same network/window/overlap.

The full-size network (21.7 M parameters, base width 30, random weights, seed 0) segments one BraTS-sized phantom
(4 x 155 x 240 x 240). Ours: ``Predictor.predict`` (per-volume z-score, crop to the head, Gaussian-weighted
windows, memory-capped window batches). MONAI: ``NormalizeIntensity(nonzero, channel_wise)`` and
``sliding_window_inference`` (Gaussian mode, sigma 1/8 like ours, sw_batch_size 1) on the whole volume. Each run is
a separate child process, so its peak RSS is its own; ours and MONAI's runs alternate (``--repeats``) so a busy
machine slows both alike, and the fastest run of each is compared. The label maps are compared inside the head.

Random weights make the labels arbitrary: the agreement figure shows how much window placement alone changes an
untrained network's argmax. ``--demo-cases`` adds the same comparison with the trained phantom model (64^3 window) on
96^3 phantoms, with both pipelines' Dice against the phantom's ground truth.

Run: .venv/bin/python benchmarks/inference_vs_monai.py [--overlap 0.25] [--repeats 2] [--demo-cases 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import command_line, emit_result, machine_summary, peak_rss_mb, run_child

from cldl.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cldl.data.phantoms import brats_phantom
from cldl.data.preprocess import PreprocessConfig
from cldl.inference.predictor import DEFAULT_OVERLAP, Predictor
from cldl.method.network import ModelConfig, UNetLDL, count_parameters
from cldl.tasks import BRATS

FULL = {"shape": (155, 240, 240), "width": 30, "window": 128}
QUICK = {"shape": (40, 64, 56), "width": 4, "window": 32}


def monai_labels(model: torch.nn.Module, images: np.ndarray, window: int, overlap: float) -> tuple[np.ndarray, int]:
    """MONAI's whole-volume pipeline; returns the class map and the number of windows run."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import NormalizeIntensity

    normalized = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(images))
    calls = [0]

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls[0] += x.shape[0]
        return model(x).logits

    with torch.inference_mode():
        logits = sliding_window_inference(
            torch.as_tensor(normalized)[None],
            roi_size=(window,) * 3,
            sw_batch_size=1,
            predictor=forward,
            overlap=overlap,
            mode="gaussian",
            sigma_scale=0.125,
        )
        classes = torch.as_tensor(logits)[0].argmax(0).to(torch.uint8).numpy()
    return classes, calls[0]


def child(kind: str, checkpoint: str, images_path: str, out: str, overlap: float) -> None:
    """One timed prediction in this (fresh) process; writes the class map and prints the figures."""
    images = np.load(images_path)
    started = time.perf_counter()
    if kind == "ours":
        predictor = Predictor(checkpoint, device="cpu", overlap=overlap, precision="fp32")  # MONAI's arithmetic
        calls: list[int] = []
        loaded, cpu = time.perf_counter(), time.process_time()
        prediction = predictor.predict(images, progress=lambda done, total: calls.append(total))
        classes, windows, batch = prediction.classes, calls[-1], predictor.window_batch
    else:
        model = load_checkpoint(checkpoint).build_model("cpu")
        window = load_checkpoint(checkpoint).patch_size[0]
        loaded, cpu = time.perf_counter(), time.process_time()
        classes, windows = monai_labels(model, images, window, overlap)
        batch = 1
    seconds, cpu_seconds = time.perf_counter() - loaded, time.process_time() - cpu
    np.save(out, classes)
    emit_result(
        {
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "load_seconds": loaded - started,
            "windows": windows,
            "window_batch": batch,
            "peak_rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads(),
        }
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (1 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def demo_comparison(cases: int, overlap: float) -> list[dict]:
    """Trained demo model: ours vs MONAI on fresh 96^3 phantoms (labels and Dice against the truth)."""
    from cldl.registry import PHANTOM_MODEL, resolve_model

    predictor = Predictor(resolve_model(PHANTOM_MODEL), device="cpu", overlap=overlap, precision="fp32")
    rows = []
    for seed in range(20_000, 20_000 + cases):
        case = brats_phantom(seed, shape=(96, 96, 96))
        truth = BRATS.labels_to_classes(case.labels)
        ours = predictor.predict(case.images).classes
        theirs, _ = monai_labels(predictor.model, case.images, predictor.window[0], overlap)
        head = (case.images != 0).any(0)
        row = {"seed": seed, "agreement": float((ours[head] == theirs[head]).mean())}
        for region in BRATS.regions:
            truth_mask = np.isin(truth, region.classes)
            row[f"ours_{region.name}"] = dice(np.isin(ours, region.classes), truth_mask)
            row[f"monai_{region.name}"] = dice(np.isin(theirs, region.classes), truth_mask)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Prepare the case and network, run the children alternately, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each pipeline, alternating (default 1)")
    parser.add_argument("--seed", type=int, default=5, help="phantom seed")
    parser.add_argument("--demo-cases", type=int, default=3, help="trained demo model comparison cases (0: skip)")
    parser.add_argument("--quick", action="store_true", help="tiny network and phantom (seconds; for CI)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument(
        "--child", nargs=5, metavar=("KIND", "CKPT", "IMAGES", "OUT", "OVERLAP"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        kind, checkpoint, images, out, overlap = args.child
        child(kind, checkpoint, images, out, float(overlap))
        return 0
    setting = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="cldl-bench-") as folder:
        work = Path(folder)
        case = brats_phantom(args.seed, shape=setting["shape"])
        np.save(work / "images.npy", case.images)
        head = (case.images != 0).any(0)
        torch.manual_seed(0)
        model = UNetLDL(ModelConfig(base_width=setting["width"]))
        checkpoint = Checkpoint(
            model_config=model.config,
            task=BRATS,
            preprocess=PreprocessConfig(image_kind="mr"),
            patch_size=(setting["window"],) * 3,
            state_dict={k: v.clone() for k, v in model.state_dict().items()},
            provenance={"note": "random weights (seed 0) for benchmarks"},
        )
        save_checkpoint(checkpoint, work / "random.pt")
        del case
        runs: dict[str, list[dict]] = {"ours": [], "monai": []}
        for repeat in range(args.repeats):
            for kind in ("ours", "monai") if repeat % 2 == 0 else ("monai", "ours"):
                child_args = [kind, str(work / "random.pt"), str(work / "images.npy"), str(work / f"{kind}.npy")]
                result = run_child([__file__, "--child", *child_args, str(args.overlap)], timeout=3000)
                runs[kind].append(result)
        ours, theirs = np.load(work / "ours.npy"), np.load(work / "monai.npy")
    agreement = float((ours[head] == theirs[head]).mean())
    best = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
    best_cpu = {k: min(r["cpu_seconds"] for r in v) for k, v in runs.items()}
    figures = {
        "command": command_line(),
        "machine": machine_summary(),
        "date": time.strftime("%Y-%m-%d"),
        "shape": list(setting["shape"]),
        "parameters": count_parameters(model),
        "window": setting["window"],
        "overlap": args.overlap,
        "runs": runs,
        "best_seconds": best,
        "speedup": best["monai"] / best["ours"],
        "best_cpu_seconds": best_cpu,
        "speedup_cpu_time": best_cpu["monai"] / best_cpu["ours"],
        "label_agreement_in_head": agreement,
    }
    print(f"command: {figures['command']}")
    print(f"machine: {figures['machine']}")
    print(
        f"case: BraTS-like phantom seed {args.seed}, 4 x {' x '.join(map(str, setting['shape']))}; network "
        f"{figures['parameters']:,} parameters (random weights); window {setting['window']}^3, overlap {args.overlap}"
    )
    for kind, label in (("ours", "CLDL Predictor (crop to head)"), ("monai", "MONAI sliding_window_inference")):
        times = ", ".join(f"{r['seconds']:.1f}" for r in runs[kind])
        cpu_times = ", ".join(f"{r['cpu_seconds']:.0f}" for r in runs[kind])
        last = runs[kind][-1]
        peak = max(r["peak_rss_mb"] for r in runs[kind])
        print(
            f"  {label:32} {best[kind]:7.1f} s (runs: {times}; CPU s: {cpu_times}); {last['windows']} windows, "
            f"batch {last['window_batch']}; peak RSS {peak / 1024:.2f} GiB"
        )
    print(
        f"  speed-up (MONAI / ours, fastest runs): {figures['speedup']:.2f}x wall time, "
        f"{figures['speedup_cpu_time']:.2f}x CPU time"
    )
    print(f"  label agreement inside the head (random weights): {agreement * 100:.2f} %")
    if args.demo_cases and not args.quick:
        rows = demo_comparison(args.demo_cases, args.overlap)
        figures["demo"] = rows
        print(f"trained demo model (64^3 window), {len(rows)} phantoms 96^3, overlap {args.overlap}:")
        print(f"  label agreement inside the head: {np.mean([r['agreement'] for r in rows]) * 100:.2f} %")
        for region in BRATS.regions:
            o = np.mean([r[f"ours_{region.name}"] for r in rows])
            m = np.mean([r[f"monai_{region.name}"] for r in rows])
            print(f"  Dice {region.name}: ours {o:.4f}, MONAI {m:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
