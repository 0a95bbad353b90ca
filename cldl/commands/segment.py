"""``cldl segment``: one case (images, one per modality) or every case of a dataset folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .. import defaults
from ..events import Reporter
from ..files.atomic_writes import FileState
from .common import add_image_limit, add_progress, check_outputs
from .prepare import add_prepare_options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``cldl segment`` command and its flags."""
    seg = subparsers.add_parser(
        "segment",
        help="segment one case, or every case of a dataset folder",
        description="Segment one case given one image per modality, in the model's order; or, given one dataset "
        "folder (any layout `cldl datasets check` recognises), every case into an output folder "
        "(OUTPUT/<case>.nii.gz; --uncertainty/--probabilities then name folders too, and --ldl-maps DIR writes "
        "each case's region maps into DIR/<case>/). Folder runs load the model once, read the next case while one "
        "runs, skip cases whose outputs (region maps included, when asked for) are all there (unless "
        "--overwrite), and report a case that fails without stopping the others (exit status 1).",
    )
    seg.add_argument("--model", default=None, help="registry name or checkpoint path (default: the default model)")
    seg.add_argument(
        "-i",
        "--images",
        nargs="+",
        required=True,
        type=Path,
        metavar="IMAGE",
        help="input images, one per modality in the model's order (see `cldl models list`), or one dataset folder",
    )
    seg.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="LABELMAP",
        help="label map to write (.nii.gz, .nii, .nrrd, .mha, or .seg.nrrd with segment names and colours); "
        "with a dataset folder as input, the output folder",
    )
    seg.add_argument("--uncertainty", type=Path, metavar="FILE", help="also write the uncertainty map (0..1)")
    seg.add_argument(
        "--uncertainty-map",
        choices=defaults.UNCERTAINTY_MAPS,
        default="entropy",
        help="normalised entropy (default) or 1 - max probability",
    )
    seg.add_argument("--probabilities", type=Path, metavar="FILE", help="also write per-class probabilities (4D)")
    seg.add_argument(
        "--ldl-maps",
        type=Path,
        metavar="DIR",
        help="also write the network's own label distributions into DIR: per LDL stage (8, 4, 2 voxel regions) the "
        "region ambiguity (normalised entropy) and each class's fraction, e.g. region_ambiguity_2mm.nii.gz, "
        "ET_proportion_4mm.nii.gz (0..1); with a dataset folder as input, per case into DIR/<case>/ with a list "
        "of them, ldl_maps.json",
    )
    seg.add_argument(
        "--ldl-interpolation",
        choices=("nearest", "linear"),
        default="nearest",
        help="how the region maps reach the input grid: nearest (default; each region one block) or linear",
    )
    seg.add_argument("--device", default="auto", choices=defaults.DEVICES)
    seg.add_argument("--tta", action="store_true", help="average over the 8 mirror flips (8x slower)")
    seg.add_argument(
        "--overlap",
        type=float,
        default=defaults.OVERLAP,
        help=f"sliding-window overlap in [0, 1) (default {defaults.OVERLAP})",
    )
    seg.add_argument("--window-batch", type=int, default=2, help="windows per forward pass (default 2)")
    seg.add_argument(
        "--memory-limit-gb",
        type=float,
        help="activation memory for batched windows (default: 3 on CPU, half the free GPU memory)",
    )
    seg.add_argument(
        "--precision",
        choices=defaults.PRECISIONS,
        default="auto",
        help="network arithmetic: auto (default) = bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX), "
        "fp32 elsewhere; window outputs are accumulated in fp32 either way",
    )
    seg.add_argument(
        "--compile",
        choices=("default", "reduce-overhead", "max-autotune"),
        help="torch.compile the network in this mode (reduce-overhead = CUDA graphs); the first case pays the "
        "compilation, so it pays off over a folder of cases (GPU; benchmarks/gpu.sh measures it)",
    )
    seg.add_argument("--channels-last", action="store_true", help="run the network in channels-last 3D memory format")
    seg.add_argument("--task", help="refuse the model unless it segments this task (e.g. brats)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_image_limit(seg)
    seg.add_argument(
        "--prepare",
        action="store_true",
        help="inputs are raw scans: co-register, resample and skull-strip them first (as `cldl prepare`), then write "
        "every output on the reference sequence's original grid",
    )
    seg.add_argument("--brain-mask", type=Path, metavar="FILE", help="with --prepare: also write the brain mask")
    add_prepare_options(seg)
    add_progress(seg)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl segment``."""
    from ..checkpoint import check_task
    from ..files.atomic_writes import atomic_outputs
    from ..files.images import check_input_path, set_max_image_gb, write_unit_interval
    from ..files.label_maps import write_labels
    from ..inference.region_maps import stage_map_files, write_stage_maps
    from ..tasks import get_task
    from .prepare import brain_mask_on_reference, predict_prepared

    set_max_image_gb(args.max_image_gb)
    folder_mode = len(args.images) == 1 and _is_dataset_folder(args.images[0])
    outputs = [p for p in (args.output, args.uncertainty, args.probabilities, args.brain_mask) if p is not None]
    if args.brain_mask is not None and (not args.prepare or folder_mode):
        raise ValueError("--brain-mask needs --prepare and one case (images, not a dataset folder)")
    expected: dict[Path, FileState] = {}
    if not folder_mode:
        for image in args.images:
            check_input_path(image)
        expected = check_outputs(outputs, list(args.images), args.overwrite)
    started = time.perf_counter()
    predictor = _predictor(args)
    if args.task:
        check_task(predictor.checkpoint, get_task(args.task))
    if folder_mode:
        return _segment_folder(args, predictor, reporter, started)
    if args.ldl_maps is not None and predictor.checkpoint.model_config.ldl_stages == 0:
        raise ValueError("--ldl-maps: this model has no LDL stages (a plain U-Net), so it has no region maps")
    predict_args = dict(
        keep_probabilities=args.probabilities is not None,
        uncertainty=args.uncertainty_map,
        progress=lambda done, total: reporter.progress("inference", done, total),
        stage_maps=args.ldl_interpolation if args.ldl_maps is not None else None,
    )
    prepared = None
    if args.prepare:
        prediction, geometry, prepared = predict_prepared(
            predictor, args.images, args.reference, args.skull_strip, reporter, **predict_args
        )
    else:
        prediction, geometry = predictor.predict_files(args.images, **predict_args)
    if args.ldl_maps is not None:
        names = [f.name for stage in stage_map_files(prediction.stage_maps, predictor.task) for f in stage]
        maps = [args.ldl_maps / n for n in names]
        expected = {**check_outputs(outputs + maps, list(args.images), args.overwrite), **expected}  # first wins
    ldl_maps: list[dict] = []
    with atomic_outputs(expected) as staged:  # all outputs or none; existing files stay untouched on failure
        write_labels(prediction.labels, geometry, staged.path(args.output), predictor.task)
        if args.uncertainty:
            write_unit_interval(prediction.uncertainty, geometry, staged.path(args.uncertainty))
        if args.probabilities:
            write_unit_interval(prediction.probabilities, geometry, staged.path(args.probabilities))
        if args.ldl_maps is not None:
            ldl_maps = write_stage_maps(prediction.stage_maps, predictor.task, geometry, args.ldl_maps, staged)
        if args.brain_mask is not None and prepared is not None and prepared.brain is not None:
            write_labels(brain_mask_on_reference(prepared), geometry, staged.path(args.brain_mask))
    _report(args, reporter, predictor, prediction, geometry, prepared, ldl_maps, started)
    return 0


def _predictor(args: argparse.Namespace) -> Any:
    """The :class:`~cldl.inference.predictor.Predictor` of the flags (the model loaded once, for a case or a folder)."""
    from ..inference.predictor import Predictor
    from ..registry import DEFAULT_MODEL, resolve_model

    return Predictor(
        resolve_model(args.model or DEFAULT_MODEL),
        device=args.device,
        overlap=args.overlap,
        window_batch=args.window_batch,
        tta=args.tta,
        memory_limit_gb=args.memory_limit_gb,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
    )


def _report(
    args: argparse.Namespace,
    reporter: Reporter,
    predictor: Any,
    prediction: Any,
    geometry: Any,
    prepared: Any,
    ldl_maps: list[dict],
    started: float,
) -> None:
    """One case's ``result`` event (volumes, confidence, what was written) and, unless jsonl, its summary lines."""
    from ..inference.confidence import confidence_lines, segment_confidence

    confidence = segment_confidence(prediction, predictor.task, geometry)
    result = {
        "labelmap": str(args.output),
        "uncertainty": str(args.uncertainty) if args.uncertainty else None,
        "probabilities": str(args.probabilities) if args.probabilities else None,
        "ldl_maps": ldl_maps,
        "ldl_interpolation": args.ldl_interpolation if ldl_maps else None,
        "task": predictor.task.name,
        "device": str(predictor.device),
        "seconds": round(time.perf_counter() - started, 2),
        "volumes_ml": {row["name"]: row["volume_ml"] for row in confidence["segments"]},
        "confidence": confidence,
    }
    if prepared is not None:
        result.update(prepare=prepared.report, brain_mask=str(args.brain_mask) if args.brain_mask else None)
    reporter.emit("result", **result)
    if reporter.mode != "jsonl":
        print(f"wrote {args.output} in {result['seconds']} s on {result['device']}")
        for line in confidence_lines(confidence):
            print(f"  {line}")
        if ldl_maps:
            print(f"  {len(ldl_maps)} region maps in {args.ldl_maps}")


DATASET_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".json", ".csv")


def _is_dataset_folder(path: Path) -> bool:
    """A folder holding NIfTI/NRRD/MetaImage files or a case list (a DICOM series folder holds none of these)."""
    if not path.is_dir():
        return False
    return any(f.name.lower().endswith(DATASET_FILE_SUFFIXES) for f in path.rglob("*") if f.is_file())


def _segment_folder(args: argparse.Namespace, predictor: object, reporter: Reporter, started: float) -> int:
    """``cldl segment -i DATASET_DIR -o OUTPUT_DIR``: every case, resumable; exit 1 if a case failed."""
    from ..inference.folder import FolderOutputs, segment_folder

    outputs = FolderOutputs(args.output, args.uncertainty, args.probabilities, args.ldl_maps)
    summary = segment_folder(
        predictor,
        args.images[0],
        outputs,
        reporter,
        uncertainty=args.uncertainty_map,
        overwrite=args.overwrite,
        ldl_interpolation=args.ldl_interpolation,
        prepare=(args.reference, args.skull_strip) if args.prepare else None,
    )
    summary["seconds_total"] = round(time.perf_counter() - started, 2)
    if args.ldl_maps is not None:
        summary.update(ldl_maps=str(args.ldl_maps), ldl_interpolation=args.ldl_interpolation)
    reporter.emit("result", out=str(args.output), **summary)
    if reporter.mode != "jsonl":
        print(
            f"segmented {len(summary['segmented'])} of {summary['cases']} case(s) into {args.output} "
            f"({summary['skipped']} already done) in {summary['seconds_total']} s"
        )
        if args.ldl_maps is not None:
            print(f"  region maps in {args.ldl_maps}/<case>/")
    for error in summary["errors"]:
        print(f"cldl: error: {error['message']}", file=sys.stderr)
    return 1 if summary["errors"] else 0
