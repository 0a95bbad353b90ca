"""Cost of the anatomy-based generator (seconds per BraTS-sized case) and of each augmentation preset (per patch).

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
from cldl.train import PatchSampler


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
    per_patch = {}
    for name in AUGMENT_PRESETS:
        sampler = PatchSampler([prepared], (patch,) * 3, 0.5, 0.5, seed=0, augment=name)
        started = time.perf_counter()
        for _ in range(patches):
            sampler.sample(1)
        per_patch[name] = (time.perf_counter() - started) / patches * 1000
        print(f"augment {name}: {per_patch[name]:.1f} ms per {patch}^3 patch of 4 channels ({patches} patches)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"generator_s_per_case": seconds, "augment_ms_per_patch": per_patch, "patch": patch}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
