"""Training throughput: the CLDL Trainer against a plain training loop, same network, loss and step, per option.

Ours: ``Trainer.run`` on BraTS-like phantoms (seeded patch sampling with foreground oversampling and the
``--augment`` preset, R-LDL targets built on the device, curriculum loss, AMP on GPU). Plain: the same network,
optimiser, targets, loss and autocast on one fixed random batch already on the device (no data pipeline at all),
i.e. the ceiling the Trainer can reach. One run measures every option set of :func:`configurations`: augmentation
in the prefetch thread or on the training device, fused Adam or not, channels-last 3D, and with ``--compile`` the
compiled network and the compiled network + targets + loss; each prints its Trainer/plain ratio. Each run is a
separate child process (honest peak memory); Trainer and plain alternate over ``--repeats`` and the fastest run of
each is compared. Iterations/s count steps after ``--warmup``.

Run (CPU, small patch): .venv/bin/python benchmarks/training_throughput.py
Run (GPU, 128^3, AMP):  .venv/bin/python benchmarks/training_throughput.py --device cuda --patch 128 --steps 40
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from _common import command_line, emit_result, machine_summary, peak_rss_mb, run_child

from cldl.data.augment import PlannedBatch
from cldl.events import Reporter
from cldl.method.curriculum import Curriculum, region_sizes
from cldl.method.distributions import rldl_targets
from cldl.method.losses import LossConfig, cldl_loss
from cldl.method.network import ModelConfig, UNetLDL, count_parameters
from cldl.training.config import TrainConfig
from cldl.training.sampler import PatchSampler
from cldl.training.state import adam_options
from cldl.training.trainer import Trainer

OPTION_KEYS = ("augment_on", "adam", "channels_last", "compile_model", "compile_loss")
PLAIN_KEYS = OPTION_KEYS[1:]  # the plain loop has no data pipeline: where augmentation runs is moot there


class StepClock(Reporter):
    """Records when each training step finished."""

    def __init__(self) -> None:
        super().__init__("none")
        self.times: list[float] = []

    def progress(self, stage: str, done: int, total: int, **fields: Any) -> None:
        if stage == "train":
            self.times.append(time.perf_counter())


def configurations(device_type: str, compile: bool) -> list[dict[str, Any]]:
    """The option sets one benchmark run measures; each differs from the second (the GPU default) in one option."""
    unfused = "foreach" if device_type == "cuda" else "loop"  # torch's own choice without fused=True
    base = {
        "augment_on": "device",
        "adam": "fused",
        "channels_last": False,
        "compile_model": False,
        "compile_loss": False,
    }
    on_device = "augmentation on the device"
    rows = [
        {**base, "label": "augmentation in the prefetch thread", "augment_on": "prefetch"},
        {**base, "label": on_device},
        {**base, "label": f"{on_device}, Adam {unfused} (not fused)", "adam": unfused},
        {**base, "label": f"{on_device}, channels-last 3D", "channels_last": True},
    ]
    if compile:
        rows.append({**base, "label": f"{on_device}, compiled network", "compile_model": True})
        rows.append(
            {
                **base,
                "label": f"{on_device}, compiled network + targets + loss",
                "compile_model": True,
                "compile_loss": True,
            }
        )
    return rows


def _config(args: argparse.Namespace, out_steps: int) -> TrainConfig:
    """The Trainer's config for this benchmark (no validation cases: only training steps are timed)."""
    shape = [max(64, args.patch + 32)] * 3
    return TrainConfig.from_dict(
        {
            "task": "brats",
            "phantoms": {"train_seeds": [0, 4], "val_seeds": [10_000, 10_000], "shape": shape},
            "model": {"base_width": args.width},
            "patch_size": [args.patch] * 3,
            "batch_size": args.batch,
            "epochs": 1,
            "iters_per_epoch": out_steps,
            "max_val_cases": 0,
            "device": args.device,
            "amp": not args.no_amp,
            "channels_last": args.channels_last,
            "compile": args.compile_model,
            "compile_loss": args.compile_loss,
            "augment_on": args.augment_on,
            "adam_impl": args.adam,
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


def _pipeline_cost(trainer: Trainer, args: argparse.Namespace, batches: int = 10) -> dict[str, float]:
    """The data pipeline's own cost per batch: the prefetch thread's share (drawing, augmenting there, pinning on a
    GPU) and, with augmentation on the device, the device's share (copying and augmenting, synchronised after) and
    how many host synchronisations that share makes (CUDA's sync debug mode; none is the aim)."""
    from cldl.data.phantoms import brats_phantom
    from cldl.data.preprocess import PreprocessConfig, preprocess
    from cldl.tasks import BRATS

    device, deferred, cuda = trainer.device, trainer.augment_on == "device", trainer.device.type == "cuda"
    case = brats_phantom(0, shape=tuple(trainer.config.phantoms["shape"]))
    prepared = preprocess(case.images, PreprocessConfig(), BRATS.modalities, BRATS.labels_to_classes(case.labels))
    sampler = PatchSampler([prepared], trainer.patch, 0.33, 0.5, 0, augment=args.augment, deferred=deferred)
    thread = on_device = 0.0
    syncs = 0
    for _ in range(batches):
        started = time.perf_counter()
        batch = sampler.sample(args.batch)
        if cuda:
            batch = batch.pin_memory() if isinstance(batch, PlannedBatch) else tuple(t.pin_memory() for t in batch)
        drawn = time.perf_counter()
        if isinstance(batch, PlannedBatch):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    batch.apply(device)
                finally:
                    if cuda:
                        torch.cuda.set_sync_debug_mode("default")
            syncs += sum("synchroniz" in str(w.message) for w in caught)
            if cuda:
                torch.cuda.synchronize(device)
            on_device += time.perf_counter() - drawn
        thread += drawn - started
    return {
        "sampler_ms_per_batch": thread / batches * 1000,
        "device_augment_ms_per_batch": on_device / batches * 1000,
        "device_augment_syncs_per_batch": syncs / batches,
    }


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
        figures.update(_pipeline_cost(trainer, args))
    return figures


def run_plain(args: argparse.Namespace) -> dict[str, Any]:
    """Time a plain loop on one fixed batch already on the device."""
    from cldl.inference.predictor import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = UNetLDL(ModelConfig(base_width=args.width)).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    step_model = torch.compile(model) if args.compile_model else model
    targets_of, loss_of = rldl_targets, cldl_loss
    if args.compile_loss:
        targets_of, loss_of = torch.compile(rldl_targets, dynamic=False), torch.compile(cldl_loss, dynamic=False)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=1e-4, betas=(0.97, 0.999), weight_decay=1e-5, **adam_options(args.adam)
    )
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
    stage_weights, seg_weight = Curriculum(3).weights(0.0)
    if args.compile_loss:  # as the Trainer passes them to a compiled loss
        stage_weights, seg_weight = torch.tensor(stage_weights, device=device), torch.tensor(seg_weight, device=device)
    times = []
    for _ in range(args.warmup + args.steps):
        with torch.no_grad():
            targets = targets_of(y, 4, regions)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, parts = loss_of(step_model(x), y, targets, loss_config, stage_weights, seg_weight)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        last = {k: float(v) for k, v in parts.items()}  # the Trainer reads the losses every step too
        times.append(time.perf_counter())
    measured = times[args.warmup - 1 :]
    figures = {"it_per_s": (len(measured) - 1) / (measured[-1] - measured[0]), "last_loss": last["total"]}
    figures.update(_memory(device))
    return figures


def _child_flags(row: dict[str, Any]) -> list[str]:
    """A configuration as child command-line flags."""
    flags = [f"--augment-on={row['augment_on']}", f"--adam={row['adam']}"]
    return flags + [
        f"--{key.replace('_', '-')}" for key in ("channels_last", "compile_model", "compile_loss") if row[key]
    ]


def main(argv: list[str] | None = None) -> int:
    """Run Trainer and plain children for every configuration, alternately, and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--width", type=int, default=30, help="base width (30: the full 21.7 M-parameter network)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per run (at least 1)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--augment", default="nnunet", choices=("none", "paper", "nnunet"), help="the Trainer's preset")
    parser.add_argument("--compile", action="store_true", help="also measure the compiled network (and loss)")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--quick", action="store_true", help="base width 4, 32^3 patch, 3 steps (for CI)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--child", choices=("ours", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--augment-on", default="device", choices=("prefetch", "device"), help=argparse.SUPPRESS)
    parser.add_argument("--adam", default="fused", choices=("fused", "foreach", "loop"), help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compile-model", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compile-loss", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.patch, args.steps, args.warmup = 4, 32, 3, 1
    args.warmup = max(1, args.warmup)
    if args.child:
        emit_result(run_ours(args) if args.child == "ours" else run_plain(args))
        return 0
    from cldl.inference.predictor import resolve_device

    device_type = resolve_device(args.device).type
    rows = configurations(device_type, args.compile)
    common = [
        f"--{k}={v}" for k, v in vars(args).items() if k in ("device", "patch", "width", "batch", "steps", "warmup")
    ]
    common += [f"--prefetch={args.prefetch}", f"--augment={args.augment}"] + (["--no-amp"] if args.no_amp else [])
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for row in rows:
            keys = {
                "ours": json.dumps([row[k] for k in OPTION_KEYS]),
                "plain": json.dumps([row[k] for k in PLAIN_KEYS]),
            }
            kinds = ("ours", "plain") if repeat % 2 == 0 else ("plain", "ours")
            for kind in kinds:
                done = runs.setdefault(f"{kind} {keys[kind]}", [])
                if len(done) <= repeat:  # a plain loop shared by two rows runs once per repeat
                    done.append(run_child([__file__, "--child", kind, *common, *_child_flags(row)], timeout=3000))
    table = []
    for row in rows:
        ours = runs[f"ours {json.dumps([row[k] for k in OPTION_KEYS])}"]
        plain = runs[f"plain {json.dumps([row[k] for k in PLAIN_KEYS])}"]
        best_ours, best_plain = max(r["it_per_s"] for r in ours), max(r["it_per_s"] for r in plain)
        table.append(
            {
                **row,
                "trainer_it_per_s": best_ours,
                "plain_it_per_s": best_plain,
                "ratio": best_ours / best_plain,
                "trainer_runs": ours,
                "plain_runs": plain,
            }
        )
    parameters = count_parameters(UNetLDL(ModelConfig(base_width=args.width)))
    figures = {
        "command": command_line(),
        "machine": machine_summary(),
        "date": time.strftime("%Y-%m-%d"),
        "device": device_type,
        "patch": args.patch,
        "batch": args.batch,
        "augment": args.augment,
        "parameters": parameters,
        "configurations": table,
    }
    print(f"command: {figures['command']}")
    print(f"machine: {figures['machine']}")
    amp = "off" if args.no_amp or device_type == "cpu" else "on"
    print(
        f"network {parameters:,} parameters, patch {args.patch}^3, batch {args.batch}, device {device_type}, "
        f"AMP {amp}, augment {args.augment}; {args.steps} timed steps after {args.warmup}, best of {args.repeats}"
    )
    for row in table:
        peak = max(r["peak_rss_mb"] for r in row["trainer_runs"] + row["plain_runs"])
        gpu = max((r.get("peak_gpu_allocated_mb", 0.0) for r in row["trainer_runs"]), default=0.0)
        gpu_text = f", Trainer peak GPU memory {gpu / 1024:.2f} GiB" if gpu else ""
        last = row["trainer_runs"][-1]
        print(
            f"  {row['label']}: Trainer {row['trainer_it_per_s']:.3f} it/s, plain {row['plain_it_per_s']:.3f} it/s, "
            f"Trainer / plain {row['ratio']:.3f}; prefetch thread {last['sampler_ms_per_batch']:.1f} ms and device "
            f"{last['device_augment_ms_per_batch']:.1f} ms per batch ({last['device_augment_syncs_per_batch']:g} host "
            f"syncs); peak RSS {peak / 1024:.2f} GiB{gpu_text}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
