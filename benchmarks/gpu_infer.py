"""The inference part of ``benchmarks/gpu.sh``: seconds per BraTS-sized volume for each Predictor speed option.

Every variant segments the same 4 x 155 x 240 x 240 phantom with the full network (random weights, 128^3 window,
overlap 0.25 unless the variant says otherwise): the fastest of ``repeats`` runs after one warm-up volume (cuDNN
autotuning, the allocator and, for compiled variants, the compilation). Options, one change at a time against the
``baseline`` (the Predictor's defaults with the images normalised on the host): normalising on the device, larger
window batches, channels-last 3D, and with ``--compile`` the ``torch.compile`` modes. The host part of the
baseline (checks, crop, normalisation: ``preprocess``) is timed alone, so the table shows what moving it saves.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from _common import peak_rss_mb

from cldl.checkpoint import Checkpoint
from cldl.data.preprocess import PreprocessConfig, preprocess
from cldl.inference.predictor import Predictor
from cldl.method.network import ModelConfig, UNetLDL
from cldl.tasks import BRATS

BASELINE: dict[str, Any] = {"normalise_on_device": False}
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline (host normalisation)": {},
    "normalise on the device (default)": {"normalise_on_device": True},
    "device + window batch 4": {"normalise_on_device": True, "window_batch": 4},
    "device + channels-last": {"normalise_on_device": True, "channels_last": True},
    "device + overlap 0.5": {"normalise_on_device": True, "overlap": 0.5},
}
COMPILED: dict[str, dict[str, Any]] = {
    "device + compile (default mode)": {"normalise_on_device": True, "compile": "default"},
    "device + compile (CUDA graphs)": {"normalise_on_device": True, "compile": "reduce-overhead"},
}


def random_checkpoint(width: int, window: int) -> Checkpoint:
    """A BraTS checkpoint of the given width with seeded random weights."""
    torch.manual_seed(0)
    model = UNetLDL(ModelConfig(base_width=width))
    return Checkpoint(
        model_config=model.config,
        task=BRATS,
        preprocess=PreprocessConfig(image_kind="mr"),
        patch_size=(window,) * 3,
        state_dict={k: v.clone() for k, v in model.state_dict().items()},
    )


def _synchronise(device: torch.device) -> None:
    """Wait for the GPU (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(
    checkpoint: Checkpoint, images: np.ndarray, device: torch.device, options: dict[str, Any], repeats: int
) -> dict[str, Any]:
    """Fastest of ``repeats`` predictions after a warm-up, with the number of windows and the peak memory."""
    predictor = Predictor(checkpoint, device=str(device), **{**BASELINE, **options})
    started = time.perf_counter()
    predictor.predict(images)
    _synchronise(device)
    warm_up = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    calls: list[int] = []
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict(images, progress=lambda done, total, seen=calls: seen.append(total))
        _synchronise(device)
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else peak_rss_mb() / 1024
    return {"seconds": min(times), "runs": times, "warm_up_s": warm_up, "windows": calls[-1], "peak_gb": peak}


def host_preprocess_seconds(images: np.ndarray, repeats: int) -> float:
    """Fastest host ``preprocess`` (checks, crop, normalisation) of the volume."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        preprocess(images, PreprocessConfig(image_kind="mr"), BRATS.modalities)
        times.append(time.perf_counter() - started)
    return min(times)


def infer_options(
    images: np.ndarray, device: torch.device, width: int, window: int, repeats: int, compile: bool
) -> dict[str, Any]:
    """Every variant's figures (printed as they come) and the host preprocessing time."""
    checkpoint = random_checkpoint(width, window)
    rows = []
    variants = {**VARIANTS, **(COMPILED if compile else {})}
    for name, options in variants.items():
        row = {"variant": name, "options": options, **time_variant(checkpoint, images, device, options, repeats)}
        rows.append(row)
        print(
            f"  inference {name:36}: {row['seconds']:.3f} s/volume (runs {', '.join(f'{t:.3f}' for t in row['runs'])}; "
            f"warm-up {row['warm_up_s']:.1f} s), {row['windows']} windows, "
            f"peak {'GPU' if device.type == 'cuda' else 'RSS'} {row['peak_gb']:.2f} GiB",
            flush=True,
        )
    host = host_preprocess_seconds(images, repeats)
    print(f"  host preprocessing alone (checks, crop, normalisation): {host:.3f} s", flush=True)
    return {"variants": rows, "host_preprocess_s": host}
