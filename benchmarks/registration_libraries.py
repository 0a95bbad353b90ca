"""Rigid co-registration libraries on one task: ours (SimpleITK, cldl.prepare.registration) against ANTsPy and
itk-elastix, each with its own rigid defaults plus a centre-of-mass start, on the same moved scans.

The task: Colin27 with its skull (Debian mricron-data, test data only) as the fixed T1, and a copy in another
contrast (dark and bright swapped) moved by a known rigid motion (``--max-deg`` degrees, ``--max-mm`` mm, random axes
and directions) and acquired on a thick-slice grid (0.9 x 0.9 x 4 mm axial, or 0.8 x 0.8 x 3 mm rotated 10 degrees,
alternately). Error: mean displacement left over the brain (ch2bet) between the found and the true transform.
Time: wall seconds of the registration call alone, inputs already in memory or on disk, ``--threads`` threads.

A library that is not installed is reported as such; ANTsPy and itk-elastix are not project dependencies, so run it
in an environment that has them, e.g.
    python -m venv /tmp/regvenv && /tmp/regvenv/bin/pip install antspyx itk-elastix SimpleITK numpy
    PYTHONPATH=. /tmp/regvenv/bin/python benchmarks/registration_libraries.py --cases 4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

COLIN = Path("/usr/share/mricron/templates")


def _cases(count: int, max_deg: float, max_mm: float):
    """The fixed image, brain points and ``count`` (moved image, true motion) pairs."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from cldl.data.raw_scans import Acquisition, acquire, head_motion, scanner_grid
    from cldl.files.images import read_image

    head, geometry = read_image(COLIN / "ch2.nii.gz", np.float32)
    brain, _ = read_image(COLIN / "ch2bet.nii.gz", np.float32)
    points = geometry.index_to_physical(np.argwhere(brain > 0)[::97][:, ::-1].astype(float))
    fixed = geometry.apply(sitk.GetImageFromArray(head))
    other = np.where(head > 0, np.abs(130.0 - head) + 5.0, 0.0).astype(np.float32)
    rng = np.random.default_rng(2026)
    centre = geometry.index_to_physical((np.asarray(geometry.size) - 1) / 2)
    grids = (Acquisition((0.9, 0.9, 4.0)), Acquisition((0.8, 0.8, 3.0), 10.0, 2))
    cases = []
    for index in range(count):
        motion = head_motion(rng, centre, max_deg, max_mm)
        grid = scanner_grid(geometry, grids[index % 2])
        moved = grid.apply(sitk.GetImageFromArray(acquire(other, geometry, grid, motion)))
        cases.append((moved, motion))
    return fixed, points, cases


def ours(fixed: sitk.Image, moving: sitk.Image, folder: Path) -> sitk.Transform:
    """cldl.prepare.registration: N4 on a 2 mm copy, Mattes MI, shrink 4/2/1, moments start."""
    from cldl.prepare.registration import metric_image, register_rigid

    return register_rigid(metric_image(fixed), metric_image(moving), "moving").transform


def antspy(fixed: sitk.Image, moving: sitk.Image, folder: Path) -> sitk.Transform:
    """ANTsPy ``registration(type_of_transform="Rigid")`` (Mattes MI; its default centre-of-mass start)."""
    import ants

    sitk.WriteImage(fixed, str(folder / "fixed.nii.gz"))
    sitk.WriteImage(moving, str(folder / "moving.nii.gz"))
    f, m = ants.image_read(str(folder / "fixed.nii.gz")), ants.image_read(str(folder / "moving.nii.gz"))
    result = ants.registration(f, m, type_of_transform="Rigid", outprefix=str(folder / "ants_"))
    return sitk.ReadTransform(result["fwdtransforms"][0])  # fixed point -> moving point, as ITK


def elastix(fixed: sitk.Image, moving: sitk.Image, folder: Path) -> sitk.Transform:
    """itk-elastix with its default rigid parameter map (Mattes MI, 4 levels), centre-of-gravity start."""
    import itk

    sitk.WriteImage(sitk.Cast(fixed, sitk.sitkFloat32), str(folder / "fixed.nii.gz"))
    sitk.WriteImage(sitk.Cast(moving, sitk.sitkFloat32), str(folder / "moving.nii.gz"))
    f = itk.imread(str(folder / "fixed.nii.gz"), itk.F)
    m = itk.imread(str(folder / "moving.nii.gz"), itk.F)
    parameters = itk.ParameterObject.New()
    rigid = parameters.GetDefaultParameterMap("rigid")
    rigid["AutomaticTransformInitializationMethod"] = ["CenterOfGravity"]
    parameters.AddParameterMap(rigid)
    _, found = itk.elastix_registration_method(f, m, parameter_object=parameters, log_to_console=False)
    values = [float(v) for v in found.GetParameter(0, "TransformParameters")]
    centre = [float(v) for v in found.GetParameter(0, "CenterOfRotationPoint")]
    euler = sitk.Euler3DTransform()
    euler.SetCenter(centre)
    euler.SetRotation(*values[:3])
    euler.SetTranslation(values[3:])
    return euler


LIBRARIES = {"ours (SimpleITK)": (ours, "SimpleITK"), "ANTsPy": (antspy, "ants"), "itk-elastix": (elastix, "itk")}


def main() -> None:
    """Run every installed library on the same cases; print one JSON line per library."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--max-deg", type=float, default=15.0)
    parser.add_argument("--max-mm", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    print(f"# {' '.join(sys.argv)}; {os.cpu_count()} CPUs, {args.threads} threads", flush=True)
    fixed, points, cases = _cases(args.cases, args.max_deg, args.max_mm)
    for name, (register, module) in LIBRARIES.items():
        if importlib.util.find_spec(module) is None:
            print(json.dumps({"library": name, "installed": False}), flush=True)
            continue
        errors, seconds = [], []
        for moving, motion in cases:
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                found = register(fixed, moving, Path(folder))
                seconds.append(time.perf_counter() - started)
            left = [np.asarray(motion.TransformPoint(found.TransformPoint(p.tolist()))) for p in points]
            errors.append(float(np.mean(np.linalg.norm(np.asarray(left) - points, axis=1))))
        print(
            json.dumps(
                {
                    "library": name,
                    "mean_error_mm": [round(e, 3) for e in errors],
                    "seconds": [round(s, 1) for s in seconds],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
