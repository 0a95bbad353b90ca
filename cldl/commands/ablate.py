"""``cldl ablate``: the evidence study (variants x seeds), its tables and figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..events import Reporter
from .common import add_progress


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``cldl ablate`` command and its flags."""
    ablate = subparsers.add_parser(
        "ablate",
        help="run the evidence study (variants x seeds) and write its tables and figures",
        description="Train and evaluate every variant and seed of a study config (see docs/ablation.md); finished "
        "runs are skipped and interrupted ones resumed, so the study can run in parts.",
    )
    ablate.add_argument("--config", type=Path, required=True, help="study config (e.g. configs/ablation_brats.yaml)")
    ablate.add_argument("--out", type=Path, required=True, metavar="DIR", help="study folder (runs, tables, figures)")
    ablate.add_argument("--data", help="a labelled dataset folder instead of the synthetic cases")
    ablate.add_argument("--only", help="comma-separated variants to run (default: all)")
    ablate.add_argument("--seeds", help="comma-separated seeds to run (default: the study's)")
    add_progress(ablate)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl ablate``: the evidence study."""
    from ..study.runner import Study, run_study
    from ..training.distributed import StopSignals

    if not args.config.is_file():
        raise FileNotFoundError(f"{args.config}: no such study config")
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    only = args.only.split(",") if args.only else None
    with StopSignals() as stop:
        summary = run_study(Study.from_file(args.config), args.out, args.data, only, seeds, reporter, stop)
    reporter.emit("result", **summary)
    reporter.close()
    if reporter.mode != "jsonl":
        print(f"{'stopped' if summary['stopped'] else 'wrote'} the study in {args.out}")
    return 0
