"""Which brain mask keeps the tumour inside: deepbet's mask from each sequence, their unions, and the T1 mask
extended over FLAIR-bright edema (what `cldl prepare` does), on a generator case with a scalp and skull whose
sequences were moved onto clinical grids and registered back (the CI case of Testing/test_prepare.py by default).

Per mask: tumour voxels outside it, Dice against the generator's brain, volume, and (for the extension) the voxels
added outside the generator's brain.

Run: .venv/bin/python benchmarks/brain_mask_sources.py [--seeds 90002 90003] [--max-deg 15] [--max-mm 20]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _common import command_line, machine_summary

from cldl.data.anatomy import REALISTIC, anatomy_case
from cldl.data.raw_scans import raw_case
from cldl.files.images import write_image
from cldl.prepare.brain_mask import brain_mask, extend_over_edema
from cldl.prepare.pipeline import prepare_case
from cldl.tasks import BRATS

NAMES = ("flair", "t1", "t1ce", "t2")


def masks_of_case(seed: int, motion_seed: int, max_deg: float, max_mm: float) -> None:
    """Print one line per candidate mask of one case."""
    case = anatomy_case(seed, REALISTIC)
    scans = raw_case(
        case.images, case.labels, case.geometry, case.modalities, seed=motion_seed, max_deg=max_deg, max_mm=max_mm
    )
    with tempfile.TemporaryDirectory() as folder:
        for name, (array, geometry) in scans.images.items():
            write_image(array.astype(np.float32), geometry, Path(folder) / f"{name}.nii.gz")
        prepared = prepare_case([Path(folder) / f"{n}.nii.gz" for n in NAMES], NAMES, BRATS, skull_strip="no")
    tumour, brain = case.labels > 0, case.images.max(axis=0) > 0
    single = {name: brain_mask(prepared.images[i], prepared.grid) for i, name in enumerate(NAMES)}
    extended = extend_over_edema(single["t1"], prepared.images[0], prepared.grid.spacing_zyx)
    candidates = {
        **single,
        "t1 | t1ce": single["t1"] | single["t1ce"],
        "t1 | (flair & t2)": single["t1"] | (single["flair"] & single["t2"]),
        "all four": single["flair"] | single["t1"] | single["t1ce"] | single["t2"],
        "t1 extended over edema": extended,
    }
    print(f"seed {seed}: {np.count_nonzero(tumour)} tumour voxels")
    for name, mask in candidates.items():
        overlap = 2 * np.count_nonzero(mask & brain) / (np.count_nonzero(mask) + np.count_nonzero(brain))
        added = mask & ~single["t1"]
        print(
            f"  {name:24s} tumour outside {np.count_nonzero(tumour & ~mask):5d}  brain Dice {overlap:.4f}  "
            f"{np.count_nonzero(mask) / 1000:.0f} ml  (vs t1: +{np.count_nonzero(added) / 1000:.1f} ml, "
            f"{np.count_nonzero(added & ~brain)} voxels outside the brain)"
        )


def main() -> None:
    """Compare the candidate masks on each seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[90002])
    parser.add_argument("--motion-seed", type=int, default=3, help="seed of the head motions (3: the CI case's)")
    parser.add_argument("--max-deg", type=float, default=15.0)
    parser.add_argument("--max-mm", type=float, default=20.0)
    args = parser.parse_args()
    print(f"# {command_line()}\n# {machine_summary()}")
    for seed in args.seeds:
        masks_of_case(seed, args.motion_seed, args.max_deg, args.max_mm)


if __name__ == "__main__":
    main()
