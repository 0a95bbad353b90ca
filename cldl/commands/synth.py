"""``cldl synth``: write anatomy-based synthetic brain-tumour cases."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..events import Reporter
from .common import add_progress


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``cldl synth`` command and its flags."""
    synth = subparsers.add_parser(
        "synth",
        help="write synthetic brain-tumour cases built from real anatomy",
        description="Write domain-randomised BraTS-like cases (FLAIR, T1, T1ce, T2, labels 0/1/2/4; int16 NIfTI on "
        "the 240x240x155 1 mm grid) built from the MNI152 atlas (needs the nilearn package: pip install "
        "'cldl[anatomy]') into DIR/<id>/<id>_<modality>.nii.gz, the BraTS 2018-2020 layout. Complete cases are "
        "skipped, so an interrupted run continues.",
    )
    synth.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset folder to write into")
    synth.add_argument("--seeds", required=True, metavar="A:B", help="half-open seed range, e.g. 0:60")
    synth.add_argument("--config", type=Path, help="JSON/YAML file of generator settings (cldl.data.anatomy)")
    synth.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    add_progress(synth)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl synth``: write anatomy-based synthetic cases."""
    from ..config_files import read_config_file
    from ..data.anatomy import AnatomyConfig
    from ..data.synth import write_dataset

    try:
        first, last = (int(v) for v in args.seeds.split(":"))
    except ValueError:
        raise ValueError(f"--seeds must look like A:B (a half-open range of integers), got {args.seeds!r}") from None
    if not 0 <= first < last:
        raise ValueError(f"--seeds {args.seeds}: need 0 <= A < B")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    config = AnatomyConfig.from_dict(read_config_file(args.config)) if args.config else AnatomyConfig()
    written = write_dataset(args.out, range(first, last), config, args.workers, reporter)
    reporter.emit("result", out=str(args.out), written=written)
    if reporter.mode != "jsonl":
        print(f"wrote {len(written)} case(s) into {args.out}")
    return 0
