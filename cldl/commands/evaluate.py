"""``cldl evaluate``: Dice, HD95, ... of predictions against references, with report files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..evaluation.distances import HD95_RULES
from ..events import Reporter
from ..files.atomic_writes import FileState
from .common import add_image_limit, add_progress, clean_json, error_line, json_float, non_negative_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``cldl evaluate`` command and its flags."""
    ev = subparsers.add_parser(
        "evaluate",
        help="compare predictions with references",
        description="Dice, HD95, ASSD, sensitivity and specificity per region (BraTS WT/TC/ET, MM-WHS "
        "structures), on two files or two folders (cases matched by id; the reference may be a dataset folder "
        "in any layout `cldl datasets check` recognises). With --out: metrics.csv (per case), summary.json and "
        "summary.md. With --uncertainty: calibration (ECE, 15 bins; Brier) and the QU-BraTS uncertainty score.",
    )
    ev.add_argument("--pred", required=True, type=Path, help="predicted label map or folder")
    ev.add_argument("--ref", required=True, type=Path, help="reference label map, folder or dataset folder")
    ev.add_argument("--task", default="brats", help="brats, mmwhs (mmwhs_ct/mmwhs_mr), binary or a dataset.json")
    ev.add_argument("--json", action="store_true", help="print per-case metrics as JSON on stdout")
    ev.add_argument("--out", type=Path, metavar="DIR", help="write metrics.csv, summary.json and summary.md here")
    ev.add_argument(
        "--uncertainty",
        nargs="?",
        const="auto",
        metavar="PATH",
        help="also evaluate uncertainty: maps (0..1 or 0..100) as a file or folder, or, without PATH, the "
        "<case>_uncertainty / <case>_probabilities files next to the predictions",
    )
    ev.add_argument(
        "--probabilities",
        metavar="PATH",
        help="per-class probability maps (file or folder; default with --uncertainty: <case>_probabilities next "
        "to the predictions), for calibration",
    )
    ev.add_argument(
        "--mask",
        metavar="PATH",
        help="brain mask for calibration and QU-BraTS (file, folder, or the dataset folder: its first modality's "
        "non-zero voxels); default: every voxel",
    )
    ev.add_argument(
        "--empty",
        choices=("brats", "authors"),
        default="brats",
        help="a region empty in both prediction and reference: Dice 1, HD95 0 (brats, default) or Dice 0 (authors)",
    )
    ev.add_argument(
        "--hd95",
        choices=HD95_RULES,
        default="pooled",
        help="HD95 of a region: the 95th percentile of both directions' surface distances pooled (pooled, default; "
        "medpy) or the larger of the two directed 95th percentiles (directed-max: the robust Hausdorff of "
        "surface-distance, in the authors' metrics file); see docs/method.md",
    )
    ev.add_argument(
        "--et-min-voxels",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="BraTS post-processing: predicted enhancing tumour below N voxels becomes necrosis (default 0: off)",
    )
    ev.add_argument(
        "--lesion-wise",
        action="store_true",
        help="also lesion-wise Dice and HD95 per region, with lesion counts, as the official BraTS evaluation "
        "(brats-evaluation, glioma config) scores them; see docs/reproduce.md",
    )
    ev.add_argument("--overwrite", action="store_true", help="replace existing report files in --out")
    add_image_limit(ev)
    add_progress(ev)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl evaluate``."""
    from ..evaluation.regions import summarize
    from ..evaluation.reports import conventions, evaluate_folders_or_files, markdown_table, write_csv
    from ..files.atomic_writes import atomic_outputs
    from ..files.images import check_input_path, set_max_image_gb
    from ..tasks import get_task

    set_max_image_gb(args.max_image_gb)
    for path in (args.pred, args.ref):
        check_input_path(path)
    task = get_task(args.task)
    reports, expected = {}, {}
    if args.out is not None:
        reports = {name: args.out / name for name in ("metrics.csv", "summary.json", "summary.md")}
        inputs = [p for p in (args.pred, args.ref, args.uncertainty, args.probabilities, args.mask) if p]
        expected = _check_report_paths(list(reports.values()), [Path(p) for p in inputs if p != "auto"], args.overwrite)
    uncertainty = args.uncertainty
    probabilities = args.probabilities or ("auto" if uncertainty is not None else None)
    results = evaluate_folders_or_files(
        args.pred,
        args.ref,
        task,
        probabilities=probabilities,
        uncertainty=uncertainty,
        mask=args.mask,
        progress=lambda done, total: reporter.progress("evaluate", done, total),
        empty=args.empty,
        et_min_voxels=args.et_min_voxels,
        lesion_wise=args.lesion_wise,
        hd95_rule=args.hd95,
    )
    failed = [r for r in results if "error" in r]
    results = [r for r in results if "error" not in r]
    if failed:
        reporter.close()  # the progress bar's line ends before the error lines
    for failure in failed:  # each on its own line; the other cases are evaluated and reported
        error_line(reporter, f"case {failure['case']}: {failure['error']}")
    summary = summarize(results)
    rules = conventions(args.empty, args.et_min_voxels, args.lesion_wise, args.hd95)
    table = markdown_table(summary, len(results), task.name)
    table += "\n" + "; ".join(v for k, v in rules.items() if k != "empty_regions") + "\n"
    if failed:
        table += f"\nnot evaluated ({len(failed)}): " + ", ".join(f["case"] for f in failed) + "\n"
    if reports:
        document = {
            "task": task.name,
            "pred": str(args.pred),
            "ref": str(args.ref),
            "cases": len(results),
            "summary": summary,
            "per_case": results,
            "errors": failed,
            "conventions": {
                **rules,
                "ece_bins": 15,
                "qu_brats_thresholds": 41,
            },
        }
        with atomic_outputs(expected) as staged:
            write_csv(results, staged.path(reports["metrics.csv"]))
            text = json.dumps(clean_json(document), indent=2, default=json_float)
            staged.path(reports["summary.json"]).write_text(text, encoding="utf-8")
            staged.path(reports["summary.md"]).write_text(table, encoding="utf-8")
        if not failed:
            reporter.emit("result", **{k.replace(".", "_"): str(v) for k, v in reports.items()}, cases=len(results))
    if args.json:
        document = {"task": task.name, "cases": results, "summary": summary, "errors": failed, "conventions": rules}
        print(json.dumps(document, indent=2, default=json_float))
    elif reporter.mode != "jsonl":
        print(table, end="")
        if reports:
            print(f"wrote {', '.join(str(p) for p in reports.values())}")
    if failed:
        raise ValueError(f"{len(failed)} of {len(failed) + len(results)} case(s) could not be evaluated (see above)")
    return 0


def _check_report_paths(outputs: list[Path], inputs: list[Path], overwrite: bool) -> dict[Path, FileState]:
    """Refuse report files that would replace an input or an existing file (without --overwrite); returns their
    state now, which the final move checks."""
    from ..files.atomic_writes import file_states
    from ..files.images import ensure_writable

    protected = {p.resolve() for p in inputs}
    for path in outputs:
        resolved = path.resolve()
        if resolved in protected:
            raise ValueError(f"report file {path} would overwrite an input; choose another --out")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        ensure_writable(path)
    return file_states(outputs)
