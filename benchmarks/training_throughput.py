"""Training throughput: the CLDL Trainer against a plain training loop, same network, loss and step, one run.

Ours: ``Trainer.run`` on BraTS-like phantoms (seeded patch sampling with foreground oversampling and flips in a
background prefetch thread, R-LDL targets built on the device, curriculum loss, AMP on GPU). Plain: the same
network, optimiser, targets, loss and autocast on one fixed random batch already on the device (no data pipeline at
all), i.e. the ceiling the Trainer can reach. Each run is a separate child process (honest peak memory); the two
alternate over ``--repeats`` and the fastest run of each is compared. Iterations/s count steps after ``--warmup``.

Run (CPU, small patch): .venv/bin/python benchmarks/training_throughput.py
Run (GPU, 128^3, AMP):  .venv/bin/python benchmarks/training_throughput.py --device cuda --patch 128 --steps 40
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import command_line, emit_result, machine_summary, peak_rss_mb, run_child

from cldl.curriculum import Curriculum, region_sizes
from cldl.distributions import rldl_targets
from cldl.events import Reporter
from cldl.losses import LossConfig, cldl_loss
from cldl.model import ModelConfig, UNetLDL, count_parameters
from cldl.train import PatchSampler, TrainConfig, Trainer


class StepClock(Reporter):
    """Records when each training step finished."""

    def __init__(self) -> None:
        super().__init__("none")
        self.times: list[float] = []

    def progress(self, stage: str, done: int, total: int, **fields: Any) -> None:
        if stage == "train":
            self.times.append(time.perf_counter())


def _config(args: argparse.Namespace, out_steps: int) -> TrainConfig:
    """The Trainer's config for this benchmark (no validation: only training steps are timed)."""
    shape = [max(96, args.patch + 32)] * 3
    return TrainConfig.from_dict(
        {
            "task": "brats",
            "phantoms": {"train_seeds": [0, 4], "val_seeds": [10_000, 10_001], "shape": shape},
            "model": {"base_width": args.width},
            "patch_size": [args.patch] * 3,
            "batch_size": args.batch,
            "epochs": 1,
            "iters_per_epoch": out_steps,
            "max_val_cases": 0,
            "device": args.device,
            "amp": not args.no_amp,
            "channels_last": args.channels_last,
            "compile": args.compile,
            "prefetch": args.prefetch,
            "augment": args.augment,
            "seed": 0,
            "cache": None,
        }
    )


def _memory(device: torch.device) -> dict[str, float]:
    """Peak host RSS and, on a GPU, peak allocated/reserved device memory (MiB)."""
    figures = {"peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        figures["peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        figures["peak_gpu_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    return figures


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    """Time the Trainer's steps."""
    clock = StepClock()
    steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="cldl-bench-train-") as out:
        trainer = Trainer(_config(args, steps), out, clock)
        started = time.perf_counter()
        trainer.run()
        total = time.perf_counter() - started
        measured = clock.times[args.warmup - 1 :]
        figures = {"it_per_s": (len(measured) - 1) / (measured[-1] - measured[0]), "run_seconds": total}
        figures.update(_memory(trainer.device))
        # the data pipeline's own cost per batch, for comparison with the step time
        from cldl.data.phantoms import brats_phantom
        from cldl.data.preprocess import PreprocessConfig, preprocess
        from cldl.tasks import BRATS

        shape = tuple(trainer.config.phantoms["shape"])
        case = brats_phantom(0, shape=shape)
        prepared = preprocess(case.images, PreprocessConfig(), BRATS.modalities, BRATS.labels_to_classes(case.labels))
        sampler = PatchSampler([prepared], trainer.patch, 0.33, 0.5, 0, augment=args.augment)
        t0 = time.perf_counter()
        for _ in range(10):
            sampler.sample(args.batch)
        figures["sampler_ms_per_batch"] = (time.perf_counter() - t0) / 10 * 1000
    return figures


def run_plain(args: argparse.Namespace) -> dict[str, Any]:
    """Time a plain loop on one fixed batch already on the device."""
    from cldl.infer import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = UNetLDL(ModelConfig(base_width=args.width)).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    step_model = torch.compile(model) if args.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.97, 0.999), weight_decay=1e-5)
    amp = None
    if device.type == "cuda" and not args.no_amp:
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    shape = (args.batch, args.patch, args.patch, args.patch)
    x = torch.randn(args.batch, 4, *shape[1:], device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, 4, shape, device=device)
    regions, loss_config = region_sizes(3), LossConfig()
    weights = Curriculum(3).weights(0.0)
    times = []
    for _ in range(args.warmup + args.steps):
        with torch.no_grad():
            targets = rldl_targets(y, 4, regions)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, parts = cldl_loss(step_model(x), y, targets, loss_config, *weights)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        last = {k: float(v) for k, v in parts.items()}  # the Trainer reads the losses every step too
        times.append(time.perf_counter())
    measured = times[args.warmup - 1 :]
    figures = {"it_per_s": (len(measured) - 1) / (measured[-1] - measured[0]), "last_loss": last["total"]}
    figures.update(_memory(device))
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run both children alternately and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--width", type=int, default=30, help="base width (30: the full 21.7 M-parameter network)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per run (at least 1)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--augment", default="paper", choices=("none", "paper", "nnunet"), help="the Trainer's preset")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--quick", action="store_true", help="base width 4, 32^3 patch, 3 steps (for CI)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--child", choices=("ours", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.patch, args.steps, args.warmup = 4, 32, 3, 1
    args.warmup = max(1, args.warmup)
    if args.child:
        emit_result(run_ours(args) if args.child == "ours" else run_plain(args))
        return 0
    passthrough = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k in ("device", "patch", "width", "batch", "steps", "warmup", "prefetch", "augment")
    ]
    passthrough += [
        f"--{flag}" for flag in ("channels-last", "compile", "no-amp") if vars(args)[flag.replace("-", "_")]
    ]
    runs: dict[str, list[dict]] = {"ours": [], "plain": []}
    for repeat in range(args.repeats):
        for kind in ("ours", "plain") if repeat % 2 == 0 else ("plain", "ours"):
            runs[kind].append(run_child([__file__, "--child", kind, *passthrough], timeout=3000))
    best = {k: max(r["it_per_s"] for r in v) for k, v in runs.items()}
    parameters = count_parameters(UNetLDL(ModelConfig(base_width=args.width)))
    figures = {
        "command": command_line(),
        "machine": machine_summary(),
        "date": time.strftime("%Y-%m-%d"),
        "device": args.device,
        "patch": args.patch,
        "batch": args.batch,
        "parameters": parameters,
        "runs": runs,
        "best_it_per_s": best,
        "ratio_ours_to_plain": best["ours"] / best["plain"],
    }
    print(f"command: {figures['command']}")
    print(f"machine: {figures['machine']}")
    amp = "off" if args.no_amp or args.device == "cpu" else "on"
    print(
        f"network {parameters:,} parameters, patch {args.patch}^3, batch {args.batch}, device {args.device}, "
        f"AMP {amp}, channels-last {args.channels_last}, compile {args.compile}, augment {args.augment}; "
        f"{args.steps} timed steps after {args.warmup}"
    )
    for kind, label in (("ours", "CLDL Trainer (phantom data)"), ("plain", "plain loop (fixed batch)")):
        rates = ", ".join(f"{r['it_per_s']:.3f}" for r in runs[kind])
        peak = max(r["peak_rss_mb"] for r in runs[kind])
        gpu = max((r.get("peak_gpu_allocated_mb", 0.0) for r in runs[kind]), default=0.0)
        gpu_text = f", peak GPU memory {gpu / 1024:.2f} GiB" if gpu else ""
        print(f"  {label:28} {best[kind]:8.3f} it/s (runs: {rates}); peak RSS {peak / 1024:.2f} GiB{gpu_text}")
    sampler = runs["ours"][-1]["sampler_ms_per_batch"]
    print(f"  Trainer / plain: {figures['ratio_ours_to_plain']:.3f}; patch sampler alone: {sampler:.1f} ms per batch")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
