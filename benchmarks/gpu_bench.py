"""The GPU benchmark behind ``benchmarks/gpu.sh``: training it/s at 128^3 with AMP, inference s/volume, peak memory.

Training: the Trainer (phantom data, ``--augment`` preset: nnunet by default) and a plain loop on a fixed batch, full
network (21.7 M parameters), patch 128^3, batch 1, AMP (bf16 where supported), for each option set: augmentation in
the prefetch thread or on the GPU, fused Adam or not, channels-last 3D, and with ``--compile`` the compiled network
and network + targets + loss; each set prints its Trainer/plain ratio. Inference (``gpu_infer.py``): the
Predictor on a BraTS-sized phantom (4 x 155 x 240 x 240, random weights, 128^3 window), seconds per volume after
one warm-up volume for each speed option (normalising on the device, window batch, channels-last, overlap 0.5, with
``--compile`` the compiled network and CUDA graphs), and the host preprocessing alone. Folders:
``folder_segmentation.py`` on 8 BraTS-sized phantoms, folder mode against one command per case and against the
pure-compute bound. Peak GPU memory is torch's peak allocation per part.
``--device cpu --quick`` runs the same code with a tiny network and phantoms (the CI test; 2 cases in the folder
part).

Run: benchmarks/gpu.sh [--device cuda] [--quick] [--compile] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import command_line, machine_summary, peak_rss_mb
from gpu_infer import infer_options
from training_throughput import OPTION_KEYS, PLAIN_KEYS, configurations, run_ours, run_plain

from cldl.data.phantoms import brats_phantom
from cldl.inference.predictor import resolve_device
from cldl.method.network import ModelConfig, UNetLDL, count_parameters


def _reset_peak(device: torch.device) -> None:
    """Start a new peak-memory measurement."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float:
    """Peak GPU allocation since the last reset (GiB), or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_mb() / 1024


def train_part(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Trainer and plain loop for each option set of ``training_throughput.configurations`` (augmentation in the
    prefetch thread or on the GPU, fused Adam or not, channels-last, compile with ``--compile``), one run each; a
    plain loop shared by two sets runs once. Prints each run and each set's Trainer/plain ratio."""
    rows: list[dict[str, Any]] = []
    plain_rows: dict[tuple, dict[str, Any]] = {}
    for config in configurations(device.type, args.compile):
        options = {key: config[key] for key in OPTION_KEYS}
        plain_key = tuple(options[key] for key in PLAIN_KEYS)
        for kind, runner in (("trainer", run_ours), ("plain", run_plain)):
            if kind == "plain" and plain_key in plain_rows:
                continue
            namespace = argparse.Namespace(
                device=str(device.type),
                patch=args.patch,
                width=args.width,
                batch=1,
                steps=args.steps,
                warmup=args.warmup,
                prefetch=2,
                augment=args.augment,
                no_amp=False,
                **options,
            )
            _reset_peak(device)
            figures = runner(namespace)
            row = {"kind": kind, "label": config["label"], **options, "it_per_s": figures["it_per_s"]}
            row["peak_gb"] = _peak_gb(device)
            if kind == "trainer":
                row["sampler_ms_per_batch"] = figures["sampler_ms_per_batch"]
                row["device_augment_ms_per_batch"] = figures["device_augment_ms_per_batch"]
                row["device_augment_syncs_per_batch"] = figures["device_augment_syncs_per_batch"]
            else:
                plain_rows[plain_key] = row
            rows.append(row)
            print(
                f"  train {kind:7} {config['label']}: {figures['it_per_s']:.3f} it/s, "
                f"peak {'GPU' if device.type == 'cuda' else 'RSS'} {row['peak_gb']:.2f} GiB",
                flush=True,
            )
        trainer = next(r for r in reversed(rows) if r["kind"] == "trainer")
        trainer["ratio_to_plain"] = trainer["it_per_s"] / plain_rows[plain_key]["it_per_s"]
        print(
            f"  Trainer / plain {trainer['ratio_to_plain']:.3f} ({config['label']}); data per batch: prefetch thread "
            f"{trainer['sampler_ms_per_batch']:.1f} ms, device {trainer['device_augment_ms_per_batch']:.1f} ms "
            f"({trainer['device_augment_syncs_per_batch']:g} host syncs)",
            flush=True,
        )
    return rows


def folder_part(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Cases per minute of folder mode, one command per case and the compute bound (``folder_segmentation.py``)."""
    bench = Path(__file__).with_name("folder_segmentation.py")
    cases = "2" if args.quick else "8"
    with tempfile.TemporaryDirectory() as folder:
        figures = Path(folder) / "folder.json"
        command = [
            sys.executable,
            str(bench),
            "--device",
            device.type,
            "--cases",
            cases,
            "--shape",
            *map(str, args.volume),
        ]
        result = subprocess.run([*command, "--json", str(figures)], capture_output=True, text=True, check=True)
        print("\n".join(f"  {line}" for line in result.stdout.splitlines()[2:]), flush=True)
        return json.loads(figures.read_text())


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu", "auto"))
    parser.add_argument("--quick", action="store_true", help="tiny network and phantoms (seconds; CI on CPU)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the training network")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--augment", default="nnunet", choices=("none", "paper", "nnunet"), help="the Trainer's augmentation preset"
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.quick:
        args.width, args.patch, args.window, args.volume = 4, 32, 32, (40, 64, 56)
        args.steps, args.warmup, args.infer_repeats = 3, 1, 1
    else:
        args.width, args.patch, args.window, args.volume = 30, 128, 128, (155, 240, 240)
        args.warmup, args.infer_repeats = 5, 3
    started = time.perf_counter()
    print(f"command: {command_line()}")
    print(f"machine: {machine_summary()}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    parameters = count_parameters(UNetLDL(ModelConfig(base_width=args.width)))
    print(f"device: {name}; network {parameters:,} parameters; patch/window {args.patch}^3", flush=True)
    figures: dict[str, Any] = {"command": command_line(), "machine": machine_summary(), "device": name}
    figures["date"] = time.strftime("%Y-%m-%d")
    figures["train"] = train_part(args, device)
    images = brats_phantom(5, shape=tuple(args.volume)).images
    figures["inference"] = infer_options(images, device, args.width, args.window, args.infer_repeats, args.compile)
    figures["folder"] = folder_part(args, device)
    best_train = max(r["it_per_s"] for r in figures["train"] if r["kind"] == "trainer")
    best_infer = min(r["seconds"] for r in figures["inference"]["variants"])
    peak = max(r["peak_gb"] for r in figures["train"] + figures["inference"]["variants"])
    figures["seconds"] = time.perf_counter() - started
    print(
        f"summary: train {best_train:.3f} it/s at {args.patch}^3 (AMP {device.type == 'cuda'}); inference "
        f"{best_infer:.2f} s/volume (4 x {' x '.join(map(str, args.volume))}); peak memory {peak:.2f} GiB; "
        f"{figures['seconds']:.0f} s in all"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=float))
    return 0 if np.isfinite(best_train) else 1


if __name__ == "__main__":
    sys.exit(main())
