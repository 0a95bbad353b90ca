"""Raw scans in: `cldl prepare` and `cldl segment --prepare` on a BraTS-sized case (targets: <= 60 s and <= 2 min on
2 cores), with the accuracy of each step and, in the same run, `cldl segment` of the same case prepared perfectly
(true motions and brain) as the reference for time and Dice.

The case: a generator case the default model never saw, with a synthetic scalp and skull, its FLAIR (0.9 x 0.9 x 4
mm), T2 (0.8 x 0.8 x 3 mm, rotated 10 degrees) and T1 (1 x 1 x 1.2 mm, tilted) moved by up to ``--max-deg`` degrees
and ``--max-mm`` mm against the T1ce (1 mm) (:mod:`cldl.data.raw_scans`). Each command runs in a child process
limited to ``--threads`` threads, as a user would run it.

Run: .venv/bin/python benchmarks/prepare.py [--seeds 90002 90003] [--threads 2] [--max-deg 15] [--max-mm 20]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from _common import command_line, machine_summary

from cldl.data.anatomy import REALISTIC, anatomy_case
from cldl.data.raw_scans import raw_case
from cldl.evaluation.overlap import dice
from cldl.files.images import read_image, write_image

SEQUENCES = ("flair", "t1", "t2")


def _run(args: list[str], threads: int) -> float:
    """Seconds one `cldl` command takes in a child process with ``threads`` threads (it must succeed)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cldl", *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"cldl {args[0]} failed: {done.stderr.strip()}")
    return time.perf_counter() - started


def one_case(seed: int, threads: int, max_deg: float, max_mm: float, folder: Path) -> dict:
    """Time and score preparation and segmentation of one raw case."""
    case = anatomy_case(seed, REALISTIC)
    scans = raw_case(
        case.images, case.labels, case.geometry, case.modalities, seed=seed, max_deg=max_deg, max_mm=max_mm
    )
    raw = [folder / f"{name}.nii.gz" for name in case.modalities]
    for name, path in zip(case.modalities, raw):
        write_image(scans.images[name][0], scans.images[name][1], path)
    brain = case.images.max(axis=0) > 0
    oracle = []
    for name in case.modalities:  # the same scans prepared with the true motions and brain
        array, geometry = scans.images[name]
        motion = scans.motions[name]
        back = case.geometry.apply(sitk.GetImageFromArray(np.zeros(case.geometry.shape, np.float32)))
        inverse = sitk.Transform() if motion is None else motion.GetInverse()
        moved = sitk.Resample(geometry.apply(sitk.GetImageFromArray(array)), back, inverse, sitk.sitkLinear, 0.0)
        path = folder / f"oracle_{name}.nii.gz"
        write_image(sitk.GetArrayFromImage(moved) * brain, case.geometry, path)
        oracle.append(path)
    out = folder / "prepared"
    prepare_s = _run(["prepare", "-i", *map(str, raw), "-o", str(out), "--progress", "none", "--overwrite"], threads)
    report = json.loads((out / "prepare.json").read_text())
    points = case.geometry.index_to_physical(np.argwhere(brain)[::301][:, ::-1].astype(float))
    errors = {}
    for name in SEQUENCES:
        found = sitk.ReadTransform(str(out / f"{name}_to_t1ce.tfm"))
        motion = scans.motions[name]
        moved = [np.asarray(motion.TransformPoint(found.TransformPoint(p.tolist()))) for p in points]
        errors[name] = round(float(np.mean(np.linalg.norm(np.asarray(moved) - points, axis=1))), 3)
    mask, _ = read_image(out / "brain_mask.nii.gz")
    tumour = case.labels > 0
    seg = folder / "seg_prepare.nii.gz"
    segment_prepare_s = _run(
        ["segment", "-i", *map(str, raw), "-o", str(seg), "--prepare", "--progress", "none", "--overwrite"], threads
    )
    ref_seg = folder / "seg_oracle.nii.gz"
    segment_oracle_s = _run(
        ["segment", "-i", *map(str, oracle), "-o", str(ref_seg), "--progress", "none", "--overwrite"], threads
    )
    predicted, _ = read_image(seg)
    oracle_labels, _ = read_image(ref_seg)
    angles = {
        n: round(math.degrees(math.acos((np.trace(np.reshape(scans.motions[n].GetMatrix(), (3, 3))) - 1) / 2)), 1)
        for n in SEQUENCES
    }
    return {
        "seed": seed,
        "true_rotation_deg": angles,
        "true_translation_mm": {n: [round(v, 1) for v in scans.motions[n].GetTranslation()] for n in SEQUENCES},
        "registration_error_mm": errors,
        "head_outline_dice": {n: report["sequences"][n]["head_outline_dice"] for n in SEQUENCES},
        "brain_mask_dice": round(dice(mask > 0, brain), 4),
        "tumour_inside_mask": round(float((mask[tumour] > 0).mean()), 4),
        "prepare_s": round(prepare_s, 1),
        "prepare_internal_s": report["seconds"],
        "segment_prepare_s": round(segment_prepare_s, 1),
        "segment_prepared_case_s": round(segment_oracle_s, 1),
        "wt_dice_segment_prepare": round(dice(predicted > 0, scans.labels > 0), 4),
        "wt_dice_prepared_case": round(dice(oracle_labels > 0, case.labels > 0), 4),
    }


def main() -> None:
    """Run the benchmark and print one JSON line per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[90002])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-deg", type=float, default=15.0)
    parser.add_argument("--max-mm", type=float, default=20.0)
    args = parser.parse_args()
    print(f"# {command_line()}\n# {machine_summary()}", flush=True)
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(one_case(seed, args.threads, args.max_deg, args.max_mm, Path(folder))), flush=True)


if __name__ == "__main__":
    main()
