"""``cldl datasets check`` (layout, cases, problems) and ``cldl datasets split`` (the training split)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..events import PROGRESS_MODES, Reporter


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``cldl datasets`` command and its flags."""
    datasets = subparsers.add_parser("datasets", help="inspect datasets")
    datasets_commands = datasets.add_subparsers(dest="datasets_command", required=True, metavar="SUBCOMMAND")
    check = datasets_commands.add_parser(
        "check",
        help="check a dataset folder",
        description="Detect the layout of a dataset folder (BraTS, MSD, MM-WHS, nnU-Net raw, or a cases.csv/json "
        "list), read every file and report the case count, modalities, label values and every problem found "
        "(missing modalities, geometry mismatches, unexpected label values, unreadable files). Exit status 1 "
        "when there are problems.",
    )
    check.add_argument("dir", type=Path, metavar="DIR", help="dataset folder or case list file")
    check.add_argument("--task", help="task (default: inferred from the layout); brats, mmwhs_ct, ... or dataset.json")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--quick",
        action="store_true",
        help="find the layout and the cases by file name only (reads no image; seconds for any dataset)",
    )
    check.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default=None,
        help="bar (default on a terminal), jsonl (report lines as log events, then a result event) or none",
    )

    split = datasets_commands.add_parser(
        "split",
        help="show the training / validation split `cldl train` uses",
        description="Print the training and validation case ids that `cldl train` would use for a dataset folder "
        "(the config's val_fraction and split_seed; default 0.2 and 3). In the BraTS {HGG,LGG} layout the cases "
        "are ordered as the authors' sorted paths (HGG/<case> before LGG/<case>), so BraTS 2018 gives their 228 / "
        "57 split; elsewhere they are ordered by case id. Then Python's random.Random(seed) shuffles them.",
    )
    split.add_argument("dir", type=Path, metavar="DIR", help="dataset folder")
    split.add_argument("--config", help="training config file or preset (for task, val_fraction, split_seed)")
    split.add_argument("--json", action="store_true", help="print {rule, train, validation} as JSON")


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl datasets check``: layout, cases, modalities, label values and every problem of a dataset;
    ``cldl datasets split``: the training / validation case ids of ``cldl train``."""
    from ..data.check import CheckReport, check_dataset
    from ..data.discovery import detect_dataset
    from ..tasks import get_task

    if args.datasets_command == "split":
        return _datasets_split(args)
    mode = args.progress or ("bar" if sys.stderr.isatty() else "none")
    reporter = Reporter(mode)
    dataset = detect_dataset(args.dir, get_task(args.task) if args.task else None)
    if args.quick:
        report = CheckReport(dataset)
    else:
        report = check_dataset(dataset, progress=lambda done, total: reporter.progress("check", done, total))
    reporter.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif mode == "jsonl":
        for line in report.lines():
            reporter.log(line)
        reporter.emit("result", **report.to_dict())
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _datasets_split(args: argparse.Namespace) -> int:
    """``cldl datasets split``."""
    from ..config_files import load_config
    from ..data.discovery import discover_cases, split_cases, split_rule
    from ..tasks import get_task
    from ..training.config import TrainConfig

    settings = load_config(args.config) if args.config else {}
    defaults_ = TrainConfig.__dataclass_fields__
    task = get_task(settings.get("task", defaults_["task"].default))
    fraction = float(settings.get("val_fraction", defaults_["val_fraction"].default))
    seed = int(settings.get("split_seed", defaults_["split_seed"].default))
    cases = [c for c in discover_cases(args.dir, task) if c.label is not None]
    train, validation = split_cases(cases, fraction, seed)
    document = {
        "rule": split_rule(cases),
        "val_fraction": fraction,
        "split_seed": seed,
        "train": [c.case_id for c in train],
        "validation": [c.case_id for c in validation],
    }
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(f"{len(train)} training / {len(validation)} validation cases (rule {document['rule']}, seed {seed})")
        print("validation: " + " ".join(document["validation"]))
        print("training: " + " ".join(document["train"]))
    return 0
