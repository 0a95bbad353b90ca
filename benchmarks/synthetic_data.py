"""Cost of the anatomy-based generator (seconds per BraTS-sized case) and of each augmentation preset (per patch).

Each preset is timed both ways the Trainer can run it, patch by patch on the same patches (two samplers with one
seed): in the prefetch thread (``augment_on: prefetch``, drawing and augmenting there) and split (``augment_on:
device``: drawing the plan, then applying it on the device, here the CPU), so the split is shown not to cost more.

Run: .venv/bin/python benchmarks/synthetic_data.py [--cases 3] [--patches 40] [--patch 128] [--threads 1]
     [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from _common import command_line, machine_summary

from cldl.data.anatomy import AnatomyConfig, anatomy_case, mni152_anatomy
from cldl.data.augment import AUGMENT_PRESETS
from cldl.data.preprocess import PreprocessConfig, preprocess
from cldl.tasks import BRATS
from cldl.training.sampler import PatchSampler


def main() -> int:
    """Print seconds per generated case and milliseconds per augmented patch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--patches", type=int, default=40)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the generator's workers use 1)")
    parser.add_argument("--quick", action="store_true", help="half-resolution cases, 32^3 patches, a few of each")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = AnatomyConfig(shape=(78, 120, 120), spacing=2.0) if args.quick else AnatomyConfig()
    cases, patches, patch = (1, 4, 32) if args.quick else (args.cases, args.patches, args.patch)
    print(f"command: {command_line()}")
    print(f"machine: {machine_summary()}; {args.threads} torch thread(s)")
    mni152_anatomy()  # read the atlas once (about a second), as a long-running writer does
    seconds = []
    for seed in range(cases):
        started = time.perf_counter()
        case = anatomy_case(seed, config)
        seconds.append(time.perf_counter() - started)
    print(f"generator: {np.mean(seconds):.2f} s per case ({'x'.join(map(str, config.shape))} voxels, {cases} cases)")
    prepared = preprocess(case.images, PreprocessConfig(), BRATS.modalities, BRATS.labels_to_classes(case.labels))
    per_patch, split = {}, {}
    for name in AUGMENT_PRESETS:
        now = PatchSampler([prepared], (patch,) * 3, 0.5, 0.5, seed=0, augment=name)
        later = PatchSampler([prepared], (patch,) * 3, 0.5, 0.5, seed=0, augment=name, deferred=True)
        prefetch, draw, apply = 0.0, 0.0, 0.0
        for _ in range(patches):  # alternating, so a busy machine slows both ways alike
            t0 = time.perf_counter()
            now.sample(1)
            t1 = time.perf_counter()
            planned = later.sample(1)
            t2 = time.perf_counter()
            planned.apply("cpu")
            t3 = time.perf_counter()
            prefetch, draw, apply = prefetch + t1 - t0, draw + t2 - t1, apply + t3 - t2
        per_patch[name] = prefetch / patches * 1000
        split[name] = {"draw": draw / patches * 1000, "apply": apply / patches * 1000}
        print(
            f"augment {name}: {per_patch[name]:.1f} ms per {patch}^3 patch of 4 channels in the prefetch thread; "
            f"split: plan {split[name]['draw']:.1f} ms + apply on the device (CPU) {split[name]['apply']:.1f} ms "
            f"= {split[name]['draw'] + split[name]['apply']:.1f} ms ({patches} patches)"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "generator_s_per_case": seconds,
                    "augment_ms_per_patch": per_patch,
                    "augment_split_ms_per_patch": split,
                    "patch": patch,
                    "threads": args.threads,
                },
                handle,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
