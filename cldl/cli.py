"""The ``cldl`` command line: demo, segment, train, evaluate, models.

Errors are one line on stderr (``cldl: error: ...``) and a non-zero exit status (2 for usage, 1 otherwise);
with ``--progress jsonl`` they are also sent as an ``{"event": "error"}`` line on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__, defaults
from .events import PROGRESS_MODES, Reporter
from .files.atomic_writes import FileState
from .prepare.commands import add_prepare_options

if TYPE_CHECKING:  # pragma: no cover
    from .distributed import StopSignals

DEMO_SEED = 90_000
SAMPLE_SEED = 0  # the case of Slicer's Sample Data module (cldl sample)


def _add_progress(parser: argparse.ArgumentParser) -> None:
    """The shared ``--progress`` option."""
    parser.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="bar",
        help="bar: a progress bar on stderr; jsonl: one JSON event per line on stdout; none",
    )


def _non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _add_image_limit(parser: argparse.ArgumentParser) -> None:
    """The shared ``--max-image-gb`` option."""
    parser.add_argument(
        "--max-image-gb",
        type=float,
        metavar="GB",
        help="refuse an image file whose header promises more voxel data than this, before reading it "
        f"(default {defaults.MAX_IMAGE_GB:g}; a small compressed file can inflate to gigabytes)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="cldl", description="Curriculum label distribution learning for 3D segmentation."
    )
    parser.add_argument("--version", action="version", version=f"cldl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="segment a synthetic brain-tumour case with the default model",
        description="Make a synthetic brain-tumour case on real anatomy (MNI152; needs the 'anatomy' extra) that "
        "the model never saw, segment it and write inputs, segmentation, uncertainty, probabilities, a snapshot "
        "and metrics.",
    )
    demo.add_argument("--out", type=Path, default=Path("cldl-demo"), help="output folder (default: ./cldl-demo)")
    demo.add_argument("--model", default=None, help="model name or checkpoint (default: the default model)")
    demo.add_argument("--seed", type=int, default=DEMO_SEED, help=f"seed of the synthetic case (default {DEMO_SEED})")
    demo.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    _add_progress(demo)

    seg = commands.add_parser(
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
        choices=("entropy", "max_prob"),
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
    seg.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
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
        choices=("auto", "fp32", "bf16"),
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
    _add_image_limit(seg)
    seg.add_argument(
        "--prepare",
        action="store_true",
        help="inputs are raw scans: co-register, resample and skull-strip them first (as `cldl prepare`), then write "
        "every output on the reference sequence's original grid",
    )
    seg.add_argument("--brain-mask", type=Path, metavar="FILE", help="with --prepare: also write the brain mask")
    add_prepare_options(seg)
    _add_progress(seg)

    prep = commands.add_parser(
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
    _add_progress(prep)

    tr = commands.add_parser("train", help="train a CLDL model", description="Train (or resume) a CLDL model.")
    tr.add_argument(
        "--config", help="JSON or YAML config file or a preset name (cldl/configs), required unless --resume"
    )
    tr.add_argument("--data", help="dataset folder (overrides the config's 'data')")
    tr.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and logs")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    tr.add_argument("--epochs", type=int, help="override the number of epochs (also when resuming)")
    tr.add_argument("--iters-per-epoch", type=int, help="override iterations per epoch")
    tr.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the device")
    tr.add_argument("--seed", type=int, help="override the seed")
    tr.add_argument("--compile", action="store_true", default=None, help="torch.compile the network (GPU)")
    tr.add_argument("--channels-last", action="store_true", default=None, help="channels-last 3D memory format (GPU)")
    tr.add_argument("--prefetch", type=int, help="batches prepared ahead in a background thread (0: none)")
    tr.add_argument(
        "--stop-file",
        type=Path,
        help="stop gracefully (finish the step, checkpoint, exit 0) once this file exists, like SIGTERM; for "
        "callers that cannot send signals (3D Slicer on Windows)",
    )
    _add_progress(tr)

    ev = commands.add_parser(
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
        "--et-min-voxels",
        type=_non_negative_int,
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
    _add_image_limit(ev)
    _add_progress(ev)

    datasets = commands.add_parser("datasets", help="inspect datasets")
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

    synth = commands.add_parser(
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
    _add_progress(synth)

    sample = commands.add_parser(
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
    _add_progress(sample)

    models = commands.add_parser("models", help="the model registry")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    models_commands.add_parser("list", help="list registered models")

    info = commands.add_parser(
        "info",
        help="engine, torch and device facts (and checkpoint descriptions)",
        description="Report the engine version, whether torch is installed and new enough, the device 'auto' "
        "picks, and what each given checkpoint holds; --json prints one JSON object (for the Slicer modules).",
    )
    info.add_argument("--checkpoint", type=Path, action="append", default=[], help="checkpoint to describe")
    info.add_argument("--json", action="store_true", help="print one JSON object")

    ablate = commands.add_parser(
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
    _add_progress(ablate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cldl`` console script."""
    args = build_parser().parse_args(argv)
    reporter = Reporter(getattr(args, "progress", "none") if getattr(args, "progress", None) else "none")
    handler = {
        "demo": cmd_demo,
        "segment": cmd_segment,
        "prepare": cmd_prepare,
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "models": cmd_models,
        "datasets": cmd_datasets,
        "info": cmd_info,
        "synth": cmd_synth,
        "sample": cmd_sample,
        "ablate": cmd_ablate,
    }[args.command]
    if args.command not in ("models", "info"):
        _quiet_image_libraries()
    with warnings.catch_warnings(), _sigterm_stops():
        warnings.showwarning = lambda message, *_args, **_kw: _warn(reporter, message)
        code = _run(handler, args, reporter)
    if args.command == "train":
        from .distributed import end_launched_process, launched_by_torchrun

        if launched_by_torchrun():
            end_launched_process(code)  # see its docstring: torch's gloo threads can abort interpreter finalisation
    return code


def _quiet_image_libraries() -> None:
    """Keep ITK's and nibabel's own diagnostics (multi-line, naming C++ sources) off stderr: what matters about a
    file is reported as one ``cldl:`` line."""
    import logging

    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    logging.getLogger("nibabel").setLevel(logging.ERROR)


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGTERM from a batch scheduler or ``kill``): the command stops as on Ctrl+C, cleaning up."""

    def __init__(self, number: int) -> None:
        super().__init__(signal.Signals(number).name)
        self.number = number


def _raise_stopped(number: int, _frame: object) -> None:
    """The SIGTERM handler: stop the command where it is."""
    raise Stopped(number)


def _training_stop(stop_file: Path | None = None) -> StopSignals:
    """``cldl train``'s stop signals (:class:`cldl.distributed.StopSignals`): graceful once training runs (finish
    the step, checkpoint, exit 0); before that (data still loading) a stop ends the command at once, as Ctrl+C. Under
    torchrun always graceful, since the ranks must agree. ``stop_file``: a graceful stop once it exists (checked by
    the trainer after every step)."""
    from .distributed import StopSignals, launched_by_torchrun

    class TrainingStop(StopSignals):
        """Stop signals that act at once until the trainer first asks whether to stop."""

        training = launched_by_torchrun()

        def __call__(self) -> bool:
            self.training = True  # the trainer asks from its first step on
            return super().__call__()

        def _handle(self, number: int, frame: object) -> None:
            if not self.training:
                raise Stopped(number)
            super()._handle(number, frame)

    return TrainingStop(stop_file=stop_file)


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM raises :class:`Stopped` during the block (``cldl train`` and ``ablate`` put their graceful stop in
    its place while they train)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _warn(reporter: Reporter, message: Warning | str) -> None:
    """A Python warning as one line on stderr (and a ``log`` event with ``--progress jsonl``)."""
    if reporter.mode == "jsonl":
        reporter.emit("log", message=f"warning: {message}")
    print(f"cldl: warning: {message}", file=sys.stderr)


def _run(handler: Callable[[argparse.Namespace, Reporter], int], args: argparse.Namespace, reporter: Reporter) -> int:
    """Run a command; expected failures become one ``cldl: error:`` line and exit status 1."""
    try:
        return handler(args, reporter)
    except KeyboardInterrupt as exc:
        reporter.close()
        if isinstance(exc, Stopped):
            print(f"cldl: stopped by {exc}", file=sys.stderr)
            return 128 + exc.number  # the shell's status of a process ended by that signal (SIGTERM: 143)
        print("cldl: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:  # every expected failure is one of these
        reporter.close()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if reporter.mode == "jsonl":
            reporter.emit("error", message=message)
        print(f"cldl: error: {message}", file=sys.stderr)
        return 1
    finally:
        reporter.close()


def _error_line(reporter: Reporter, message: str) -> None:
    """A failure that does not end the command (one case of many): a ``cldl: error:`` line and a ``log`` event."""
    if reporter.mode == "jsonl":
        reporter.emit("log", message=f"error: {message}")
    print(f"cldl: error: {message}", file=sys.stderr)


def _check_outputs(outputs: list[Path], inputs: list[Path], overwrite: bool) -> dict[Path, FileState]:
    """Refuse outputs that would replace an input, collide, exist (without overwrite) or cannot be written; returns
    their state now, which the final move checks (:mod:`cldl.files.atomic_writes`: nothing that appears meanwhile is
    replaced)."""
    from .files.atomic_writes import file_states
    from .files.images import IMAGE_SUFFIXES, ensure_writable, is_image_path

    resolved_inputs = {p.resolve() for p in inputs}
    seen: set[Path] = set()
    for path in outputs:
        if path.is_dir():
            raise IsADirectoryError(f"output {path} is a folder; give a file name such as {path / 'seg.nii.gz'}")
        if not is_image_path(path):
            raise ValueError(f"output {path}: unknown image format; use one of {', '.join(IMAGE_SUFFIXES)}")
        resolved = path.resolve()
        if resolved in resolved_inputs:
            raise ValueError(f"output {path} is one of the inputs; choose another file name")
        if resolved in seen:
            raise ValueError(f"output {path} is given twice")
        seen.add(resolved)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        ensure_writable(path)
    return file_states(outputs)


def cmd_segment(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl segment``."""
    from .checkpoint import check_task
    from .files.atomic_writes import atomic_outputs
    from .files.images import check_input_path, set_max_image_gb, write_unit_interval
    from .files.label_maps import write_labels
    from .inference.confidence import confidence_lines, segment_confidence
    from .inference.predictor import Predictor
    from .inference.region_maps import stage_map_files, write_stage_maps
    from .prepare.commands import brain_mask_on_reference, predict_prepared
    from .registry import DEFAULT_MODEL, resolve_model
    from .tasks import get_task

    set_max_image_gb(args.max_image_gb)
    folder_mode = len(args.images) == 1 and _is_dataset_folder(args.images[0])
    outputs = [p for p in (args.output, args.uncertainty, args.probabilities, args.brain_mask) if p is not None]
    if args.brain_mask is not None and (not args.prepare or folder_mode):
        raise ValueError("--brain-mask needs --prepare and one case (images, not a dataset folder)")
    expected: dict[Path, FileState] = {}
    if not folder_mode:
        for image in args.images:
            check_input_path(image)
        expected = _check_outputs(outputs, list(args.images), args.overwrite)
    started = time.perf_counter()
    predictor = Predictor(
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
        expected = {**_check_outputs(outputs + maps, list(args.images), args.overwrite), **expected}  # first wins
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
    return 0


DATASET_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".json", ".csv")


def _is_dataset_folder(path: Path) -> bool:
    """A folder holding NIfTI/NRRD/MetaImage files or a case list (a DICOM series folder holds none of these)."""
    if not path.is_dir():
        return False
    return any(f.name.lower().endswith(DATASET_FILE_SUFFIXES) for f in path.rglob("*") if f.is_file())


def _segment_folder(args: argparse.Namespace, predictor: object, reporter: Reporter, started: float) -> int:
    """``cldl segment -i DATASET_DIR -o OUTPUT_DIR``: every case, resumable; exit 1 if a case failed."""
    from .inference.folder import FolderOutputs, segment_folder

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


def cmd_prepare(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl prepare`` (:mod:`cldl.prepare.commands`)."""
    from .prepare.commands import cmd_prepare as prepare

    return prepare(args, reporter)


def cmd_train(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl train``."""
    from .train import TrainConfig, Trainer

    overrides = {
        "data": args.data,
        "epochs": args.epochs,
        "iters_per_epoch": args.iters_per_epoch,
        "device": args.device,
        "seed": args.seed,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "prefetch": args.prefetch,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.resume:
        saved = args.out / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"{saved} not found: --resume needs a run folder made by `cldl train`")
        recorded = json.loads(saved.read_text())
        same = {k for k, v in overrides.items() if recorded.get(k) == (str(v) if isinstance(v, Path) else v)}
        changed = sorted(set(overrides) - same - {"epochs", "device", "compile", "channels_last", "prefetch"})
        if changed:
            raise ValueError(
                f"a resumed run keeps its config; only --epochs and --device (and the speed options --compile, "
                f"--channels-last, --prefetch) may change, not {changed}"
            )
        config = TrainConfig.from_file(saved, **overrides)
    elif args.config is None:
        raise ValueError("--config is required (or --resume with an existing run folder)")
    else:
        if "data" in overrides:
            overrides["phantoms"] = None
        config = TrainConfig.from_file(args.config, **overrides)
    reporter.log_file = args.out / "events.jsonl"  # events outlive a closed stdout (Slicer quit during training)
    with _training_stop(args.stop_file) as stop:  # SIGTERM / SIGUSR1 / the stop file: see docs/scaling.md
        trainer = Trainer(config, args.out, reporter, stop_requested=stop)
        summary = trainer.run(resume=args.resume)
    if reporter.mode != "jsonl" and trainer.dist.is_main:
        best = summary["best_dice_mean"]
        print(
            f"trained {summary['epochs']} epochs; best validation mean Dice "
            f"{'n/a' if best is None else f'{best:.4f}'}; checkpoints in {summary['out_dir']}"
            + ("; stopped early, continue with --resume" if summary["stopped"] else "")
        )
    return 0


def cmd_evaluate(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl evaluate``."""
    from .evaluation.regions import summarize
    from .evaluation.reports import conventions, evaluate_folders_or_files, markdown_table, write_csv
    from .files.atomic_writes import atomic_outputs
    from .files.images import check_input_path, set_max_image_gb
    from .tasks import get_task

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
    )
    failed = [r for r in results if "error" in r]
    results = [r for r in results if "error" not in r]
    if failed:
        reporter.close()  # the progress bar's line ends before the error lines
    for failure in failed:  # each on its own line; the other cases are evaluated and reported
        _error_line(reporter, f"case {failure['case']}: {failure['error']}")
    summary = summarize(results)
    rules = conventions(args.empty, args.et_min_voxels, args.lesion_wise)
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
            text = json.dumps(_clean_json(document), indent=2, default=_json_float)
            staged.path(reports["summary.json"]).write_text(text, encoding="utf-8")
            staged.path(reports["summary.md"]).write_text(table, encoding="utf-8")
        if not failed:
            reporter.emit("result", **{k.replace(".", "_"): str(v) for k, v in reports.items()}, cases=len(results))
    if args.json:
        document = {"task": task.name, "cases": results, "summary": summary, "errors": failed, "conventions": rules}
        print(json.dumps(document, indent=2, default=_json_float))
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
    from .files.atomic_writes import file_states
    from .files.images import ensure_writable

    protected = {p.resolve() for p in inputs}
    for path in outputs:
        resolved = path.resolve()
        if resolved in protected:
            raise ValueError(f"report file {path} would overwrite an input; choose another --out")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        ensure_writable(path)
    return file_states(outputs)


def _clean_json(value: object) -> object:
    """NaN/Inf as null, so the JSON is strict."""
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def cmd_datasets(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl datasets check``: layout, cases, modalities, label values and every problem of a dataset;
    ``cldl datasets split``: the training / validation case ids of ``cldl train``."""
    from .data.check import CheckReport, check_dataset
    from .data.discovery import detect_dataset
    from .tasks import get_task

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
    from .data.discovery import discover_cases, split_cases, split_rule
    from .tasks import get_task
    from .train import TrainConfig, load_config

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


def _json_float(value: object) -> object:
    """JSON fallback for numpy scalars."""
    return value.item() if hasattr(value, "item") else str(value)


def cmd_synth(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl synth``: write anatomy-based synthetic cases."""
    from .data.anatomy import AnatomyConfig
    from .data.synth import write_dataset
    from .train import read_config_file

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


def cmd_sample(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl sample``: write the anatomy-based demo case once (Slicer's Sample Data module runs this)."""
    import importlib.util

    from .tasks import BRATS

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
        from .data.anatomy import COMPACT_GRID, REALISTIC, anatomy_case
        from .data.phantoms import compact_case, write_case

        case = anatomy_case(args.seed, dataclasses.replace(REALISTIC, **COMPACT_GRID) if args.compact else None)
        if case.case_id != case_id:
            raise RuntimeError(f"anatomy_case({args.seed}) made {case.case_id}, expected {case_id}")
        files = write_case(compact_case(case) if args.compact else case, args.out)
    reporter.emit("result", out=str(args.out), case=case_id, files={k: str(v) for k, v in files.items()})
    if reporter.mode != "jsonl":
        print(f"{case_id}: {base}")
    return 0


def cmd_models(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl models list``."""
    from .registry import list_models

    for row in list_models():
        state = "available" if row["available"] else "not downloaded"
        default = "  (default)" if row["default"] else ""
        print(f"{row['name']}{default}  [{row['task']}, {row['source']}, {state}]\n    {row['description']}")
    return 0


def _describe_checkpoint(path: Path, torch_installed: bool) -> dict:
    """Task, patch size and epoch of a checkpoint: fully loaded (weights_only) with torch, else from its header."""
    if not torch_installed:
        from .checkpoint_header import describe_checkpoint

        return describe_checkpoint(path)
    from .checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    return {
        "task": checkpoint.task.to_dict(),
        "patch_size": list(checkpoint.patch_size),
        "epoch": checkpoint.provenance.get("epoch"),
    }


def cmd_info(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl info``: run in a subprocess by the Slicer modules, so that torch never loads inside Slicer."""
    import importlib.metadata

    from .defaults import TORCH_REQUIREMENT, torch_supported

    facts: dict = {"event": "info", "cldl": __version__, "torch_requirement": TORCH_REQUIREMENT, "checkpoints": []}
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        version = None
    facts["torch"] = {"installed": version is not None, "version": version, "cuda": False, "device": "cpu"}
    if version is not None:
        import torch

        cuda = bool(torch.cuda.is_available())
        facts["torch"].update(
            supported=torch_supported(version),
            cudaVersion=torch.version.cuda,
            cuda=cuda,
            device="cuda" if cuda else "cpu",
            deviceName=torch.cuda.get_device_name(0) if cuda else "CPU",
        )
    for path in args.checkpoint:
        entry: dict = {"path": str(path.resolve())}
        try:
            entry.update(_describe_checkpoint(path, torch_installed=version is not None))
        except (ValueError, OSError, RuntimeError) as exc:
            entry["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        facts["checkpoints"].append(entry)
    if args.json:
        print(json.dumps(_clean_json(facts)))
    else:
        torch_line = f"torch {version} on {facts['torch']['device']}" if version else "torch: not installed"
        print(f"cldl {__version__}; {torch_line} (needs {TORCH_REQUIREMENT})")
        for entry in facts["checkpoints"]:
            print(f"{entry['path']}: {entry.get('error') or entry['task']['name']}")
    return 0


def cmd_demo(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl demo``: anatomy-based case -> segmentation, uncertainty, probabilities, snapshot, metrics."""
    from .demo import run_demo

    summary = run_demo(args.out, model=args.model, seed=args.seed, device=args.device, reporter=reporter)
    if reporter.mode == "jsonl":
        return 0
    print(f"CLDL demo: case {summary['case']} ({summary['seconds']:.1f} s on {summary['device']})")
    for region, values in summary["metrics"].items():
        print(f"  {region}: Dice {values['dice']:.3f}  HD95 {values['hd95']:.2f} mm")
    print(f"outputs in {args.out}/ (open snapshot.png, or load the .nii.gz files in 3D Slicer)")
    print("a synthetic tumour on real anatomy and a model trained on synthetic data: not for clinical use")
    return 0


def cmd_ablate(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl ablate``: the evidence study."""
    from .distributed import StopSignals
    from .study.runner import Study, run_study

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


if __name__ == "__main__":
    sys.exit(main())
