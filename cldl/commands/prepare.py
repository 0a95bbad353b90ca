"""``cldl prepare`` (co-register, resample, skull-strip one case) and the prepared path of
``cldl segment --prepare``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..defaults import SKULL_STRIP_CHOICES
from ..events import Reporter
from .common import add_progress


def add_prepare_options(parser: argparse.ArgumentParser) -> None:
    """``--reference`` and ``--skull-strip`` (shared by ``cldl prepare`` and ``cldl segment --prepare``)."""
    parser.add_argument(
        "--reference",
        metavar="NAME",
        help="sequence the others are registered to and whose frame (prepare) or grid (segment --prepare) the "
        "outputs use (default: t1ce for BraTS, as the BraTS pipeline; else the first input)",
    )
    parser.add_argument(
        "--skull-strip",
        choices=SKULL_STRIP_CHOICES,
        default="auto",
        help="auto (default): brain MRI is skull-stripped unless it already is; yes; no",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``cldl prepare`` command and its flags."""
    prep = subparsers.add_parser(
        "prepare",
        help="co-register, resample and skull-strip raw scans of one case",
        description="Prepare raw scans as they come from a scanner: register every sequence rigidly to the "
        "reference (mutual information), resample all onto one 1 mm grid in the reference's frame, and "
        "skull-strip brain MRI (deepbet's networks, offline). Writes OUT/<sequence>.nii.gz, brain_mask.nii.gz, "
        "<sequence>_to_<reference>.tfm (ITK/Slicer), prepare.json (what was found) and qc.png (a picture to check "
        "the alignment). See docs/prepare.md.",
    )
    prep.add_argument(
        "-i",
        "--images",
        nargs="+",
        required=True,
        type=Path,
        metavar="IMAGE",
        help="one image per sequence, in the model's order (NIfTI, NRRD, MetaImage or a DICOM series folder)",
    )
    prep.add_argument("-o", "--out", required=True, type=Path, metavar="OUTDIR", help="output folder")
    prep.add_argument("--model", default=None, help="model whose inputs these are (default: the default model)")
    add_prepare_options(prep)
    prep.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_progress(prep)


def _task(model: str | None) -> Any:
    """The task of a model name or checkpoint (default: the default model's)."""
    from ..checkpoint import load_checkpoint
    from ..registry import DEFAULT_MODEL, resolve_model

    return load_checkpoint(resolve_model(model or DEFAULT_MODEL)).task


def _progress(reporter: Reporter) -> Any:
    """A preparation progress callback that reports through ``reporter``."""
    return lambda stage, done, total: reporter.progress(stage, done, total)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl prepare``: co-register, resample onto one 1 mm grid and skull-strip one case's sequences."""
    from ..data.cases import check_modality_order
    from ..prepare.pipeline import PrepareError, output_files, prepare_case, reference_index, write_prepared

    task = _task(args.model)
    if len(args.images) != task.num_modalities:
        raise PrepareError(
            f"model {task.name!r} expects {task.num_modalities} images ({', '.join(task.modalities)}), "
            f"got {len(args.images)}"
        )
    check_modality_order(list(args.images), task)
    names = list(task.modalities)
    reference = names[reference_index(names, args.reference, task)]
    targets = output_files(names, reference, args.out)
    if args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(f"{args.out} exists and is not a folder")
    resolved_inputs = {Path(p).resolve() for p in args.images}
    for path in targets:
        if path.resolve() in resolved_inputs:
            raise ValueError(f"output {path} is one of the inputs; choose another output folder")
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    started = time.perf_counter()
    case = prepare_case(args.images, names, task, args.reference, args.skull_strip, progress=_progress(reporter))
    written = write_prepared(case, args.out)
    seconds = round(time.perf_counter() - started, 2)
    reporter.emit("result", out=str(args.out), files=[str(p) for p in written], seconds=seconds, report=case.report)
    if reporter.mode != "jsonl":
        print(f"prepared {len(names)} sequence(s) into {args.out} in {seconds} s (reference {reference})")
        for line in report_lines(case):
            print(f"  {line}")
    return 0


def report_lines(case: Any) -> list[str]:
    """A few human lines on what preparation did."""
    lines = []
    for name, entry in case.report["sequences"].items():
        if entry.get("reference"):
            continue
        shift = ", ".join(f"{v:+.1f}" for v in entry["translation_mm"])
        lines.append(
            f"{name}: rotated {entry['rotation_deg']:.1f} deg, shifted ({shift}) mm onto {case.reference_name} "
            f"(head outline Dice {entry['head_outline_dice']:.3f})"
        )
    mask = case.report.get("brain_mask")
    if mask:
        extended = mask.get("extended_over_edema_ml")
        over_edema = f", extended over {extended} ml of FLAIR-bright edge" if extended else ""
        lines.append(f"brain mask: {mask['volume_ml']} ml (from {mask['computed_on']}{over_edema})")
    lines += [f"note: {w}" for w in case.report["warnings"]]
    return lines


def predict_prepared(
    predictor: Any,
    paths: Sequence[Path],
    reference: str | None,
    skull_strip: str,
    reporter: Reporter,
    **predict_args: Any,
) -> tuple[Any, Any, Any]:
    """Prepare one case, segment it on the prepared grid and return the prediction on the reference sequence's
    original grid, that grid and the prepared case (:class:`cldl.prepare.pipeline.PreparedCase`)."""
    from ..data.cases import check_mixups, check_modality_order
    from ..prepare.pipeline import PrepareError, prediction_on_grid, prepare_case

    task = predictor.task
    if len(paths) != task.num_modalities:
        raise PrepareError(
            f"--prepare needs one image per sequence: model {task.name!r} expects {task.num_modalities} "
            f"({', '.join(task.modalities)}), got {len(paths)}"
        )
    check_modality_order(list(paths), task)
    case = prepare_case(paths, task.modalities, task, reference, skull_strip, progress=_progress(reporter))
    check_mixups(case.images, [f"{m} ({Path(p).name})" for m, p in zip(task.modalities, paths)])
    keep = bool(predict_args.pop("keep_probabilities", False))
    uncertainty = predict_args.get("uncertainty", "entropy")
    prediction = predictor.predict(case.images, keep_probabilities=True, geometry=case.grid, **predict_args)
    on_reference = prediction_on_grid(prediction, case.grid, case.reference_geometry, task, uncertainty)
    if not keep:
        on_reference.probabilities = None
    return on_reference, case.reference_geometry, case


def brain_mask_on_reference(case: Any) -> Any:
    """The prepared case's brain mask on the reference's original grid (uint8: linear interpolation >= 0.5), or
    None if it was not skull-stripped."""
    from ..files.geometry import resample

    if case.brain is None:
        return None
    return (resample(case.brain.astype("float32"), case.grid, case.reference_geometry, "linear") >= 0.5).astype("uint8")
