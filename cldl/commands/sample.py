"""``cldl sample``: write the demo case of Slicer's Sample Data module."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..events import Reporter
from .common import add_progress

SAMPLE_SEED = 0  # the case of Slicer's Sample Data module


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``cldl sample`` command and its flags."""
    sample = subparsers.add_parser(
        "sample",
        help="write the demo brain-tumour case of Slicer's Sample Data module",
        description="Write one anatomy-based BraTS-like case (FLAIR, T1, T1ce, T2 and the reference labels 0/1/2/4) "
        "into DIR/<id>/<id>_<modality>.nii.gz (BraTS 2018-2020 layout); nothing is written when the case is "
        "already complete. Needs the nilearn package (pip install 'cldl[anatomy]').",
    )
    sample.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the case into")
    sample.add_argument("--seed", type=int, default=SAMPLE_SEED, help=f"case seed (default {SAMPLE_SEED})")
    sample.add_argument(
        "--compact",
        action="store_true",
        help="a realistic draw on 1.2 mm voxels, cropped to the head, MRI as int16 0..255: under 5 MB instead of 11 "
        "(how the case shipped with the Slicer extension is made)",
    )
    add_progress(sample)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl sample``: write the anatomy-based demo case once (Slicer's Sample Data module runs this)."""
    import importlib.util

    from ..tasks import BRATS

    case_id = f"anatomy_{args.seed:05d}"  # cldl.data.anatomy.anatomy_case's id
    base = args.out / case_id
    files = {name: base / f"{case_id}_{name}.nii.gz" for name in (*BRATS.modalities, "seg")}
    if all(path.is_file() for path in files.values()):  # written atomically: present means complete
        reporter.log(f"{case_id} is already complete in {args.out}")
    else:
        if importlib.util.find_spec("nilearn") is None:
            raise RuntimeError(
                "cldl sample builds the case from the MNI152 atlas of the nilearn package, which is not installed: "
                "pip install 'cldl[anatomy]' (or pip install nilearn)"
            )
        from ..data.anatomy import COMPACT_GRID, REALISTIC, anatomy_case
        from ..data.phantoms import compact_case, write_case

        case = anatomy_case(args.seed, dataclasses.replace(REALISTIC, **COMPACT_GRID) if args.compact else None)
        if case.case_id != case_id:
            raise RuntimeError(f"anatomy_case({args.seed}) made {case.case_id}, expected {case_id}")
        files = write_case(compact_case(case) if args.compact else case, args.out)
    reporter.emit("result", out=str(args.out), case=case_id, files={k: str(v) for k, v in files.items()})
    if reporter.mode != "jsonl":
        print(f"{case_id}: {base}")
    return 0
