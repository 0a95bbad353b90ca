"""The ``cldl`` command line: demo, segment, train, evaluate, models.

Errors are one line on stderr (``cldl: error: ...``) and a non-zero exit status (2 for usage, 1 otherwise);
with ``--progress jsonl`` they are also sent as an ``{"event": "error"}`` line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .events import PROGRESS_MODES, Reporter

DEMO_SEED = 90_000
DEMO_SHAPE = (96, 96, 96)


def _add_progress(parser: argparse.ArgumentParser) -> None:
    """The shared ``--progress`` option."""
    parser.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="bar",
        help="bar: a progress bar on stderr; jsonl: one JSON event per line on stdout; none",
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
        help="segment a synthetic brain-tumour case with the bundled demo model",
        description="Make a BraTS-like phantom case the demo model never saw, segment it and "
        "write inputs, segmentation, uncertainty, probabilities, a snapshot and metrics.",
    )
    demo.add_argument("--out", type=Path, default=Path("cldl-demo"), help="output folder (default: ./cldl-demo)")
    demo.add_argument("--model", default=None, help="model name or checkpoint (default: the bundled demo model)")
    demo.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom seed (default {DEMO_SEED})")
    demo.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    _add_progress(demo)

    seg = commands.add_parser(
        "segment",
        help="segment one case",
        description="Segment one case given one image per modality, in the model's order.",
    )
    seg.add_argument("--model", default=None, help="registry name or checkpoint path (default: the demo model)")
    seg.add_argument(
        "-i",
        "--images",
        nargs="+",
        required=True,
        type=Path,
        metavar="IMAGE",
        help="input images, one per modality in the model's order (see `cldl models list`)",
    )
    seg.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="LABELMAP",
        help="label map to write (.nii.gz, .nii, .nrrd, .seg.nrrd is not supported here)",
    )
    seg.add_argument("--uncertainty", type=Path, metavar="FILE", help="also write the uncertainty map (0..1)")
    seg.add_argument(
        "--uncertainty-map",
        choices=("entropy", "max_prob"),
        default="entropy",
        help="normalised entropy (default) or 1 - max probability",
    )
    seg.add_argument("--probabilities", type=Path, metavar="FILE", help="also write per-class probabilities (4D)")
    seg.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    seg.add_argument("--tta", action="store_true", help="average over the 8 mirror flips (8x slower)")
    seg.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    seg.add_argument("--window-batch", type=int, default=2, help="windows per forward pass (default 2)")
    seg.add_argument("--task", help="refuse the model unless it segments this task (e.g. brats)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_progress(seg)

    tr = commands.add_parser("train", help="train a CLDL model", description="Train (or resume) a CLDL model.")
    tr.add_argument("--config", type=Path, help="JSON or YAML config (see configs/); required unless --resume")
    tr.add_argument("--data", help="dataset folder (overrides the config's 'data')")
    tr.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and logs")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    tr.add_argument("--epochs", type=int, help="override the number of epochs (also when resuming)")
    tr.add_argument("--iters-per-epoch", type=int, help="override iterations per epoch")
    tr.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the device")
    tr.add_argument("--seed", type=int, help="override the seed")
    _add_progress(tr)

    ev = commands.add_parser(
        "evaluate",
        help="compare predictions with references",
        description="Dice, HD95, ASSD, sensitivity and specificity per region, on two files or "
        "two folders of label maps (cases matched by file name).",
    )
    ev.add_argument("--pred", required=True, type=Path, help="predicted label map or folder")
    ev.add_argument("--ref", required=True, type=Path, help="reference label map or folder")
    ev.add_argument("--task", default="brats", help="brats, mmwhs (mmwhs_ct/mmwhs_mr), binary or a dataset.json")
    ev.add_argument("--json", action="store_true", help="print per-case metrics as JSON on stdout")

    models = commands.add_parser("models", help="the model registry")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    models_commands.add_parser("list", help="list registered models")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cldl`` console script."""
    args = build_parser().parse_args(argv)
    reporter = Reporter(getattr(args, "progress", "none") if getattr(args, "progress", None) else "none")
    handler = {
        "demo": cmd_demo,
        "segment": cmd_segment,
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "models": cmd_models,
    }[args.command]
    try:
        return handler(args, reporter)
    except KeyboardInterrupt:
        reporter.close()
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


def _check_outputs(outputs: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse outputs that would replace an input, collide, exist (without overwrite) or cannot be written."""
    from .io import ensure_writable

    resolved_inputs = {p.resolve() for p in inputs}
    seen: set[Path] = set()
    for path in outputs:
        resolved = path.resolve()
        if resolved in resolved_inputs:
            raise ValueError(f"output {path} is one of the inputs; choose another file name")
        if resolved in seen:
            raise ValueError(f"output {path} is given twice")
        seen.add(resolved)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        ensure_writable(path)


def cmd_segment(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl segment``."""
    from .checkpoint import check_task
    from .infer import Predictor
    from .io import write_image, write_unit_interval
    from .tasks import get_task
    from .zoo import DEFAULT_MODEL, resolve_model

    outputs = [p for p in (args.output, args.uncertainty, args.probabilities) if p is not None]
    _check_outputs(outputs, list(args.images), args.overwrite)
    started = time.perf_counter()
    predictor = Predictor(
        resolve_model(args.model or DEFAULT_MODEL),
        device=args.device,
        overlap=args.overlap,
        window_batch=args.window_batch,
        tta=args.tta,
    )
    if args.task:
        check_task(predictor.checkpoint, get_task(args.task))
    prediction, geometry = predictor.predict_files(
        args.images,
        keep_probabilities=args.probabilities is not None,
        uncertainty=args.uncertainty_map,
        progress=lambda done, total: reporter.progress("inference", done, total),
    )
    write_image(prediction.labels, geometry, args.output)
    if args.uncertainty:
        write_unit_interval(prediction.uncertainty, geometry, args.uncertainty)
    if args.probabilities:
        write_unit_interval(prediction.probabilities, geometry, args.probabilities)
    volumes = {
        name: int(np.count_nonzero(prediction.classes == index)) * float(np.prod(geometry.spacing)) / 1000.0
        for index, name in enumerate(predictor.task.abbreviations or predictor.task.class_names)
        if index
    }
    result = {
        "labelmap": str(args.output),
        "uncertainty": str(args.uncertainty) if args.uncertainty else None,
        "probabilities": str(args.probabilities) if args.probabilities else None,
        "task": predictor.task.name,
        "device": str(predictor.device),
        "seconds": round(time.perf_counter() - started, 2),
        "volumes_ml": volumes,
    }
    reporter.emit("result", **result)
    if reporter.mode != "jsonl":
        print(
            f"wrote {args.output} in {result['seconds']} s on {result['device']}; volumes (ml): "
            + ", ".join(f"{k} {v:.1f}" for k, v in volumes.items())
        )
    return 0


def cmd_train(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl train``."""
    from .train import TrainConfig, Trainer

    overrides = {
        "data": args.data,
        "epochs": args.epochs,
        "iters_per_epoch": args.iters_per_epoch,
        "device": args.device,
        "seed": args.seed,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.resume:
        saved = args.out / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"{saved} not found: --resume needs a run folder made by `cldl train`")
        changed = sorted(set(overrides) - {"epochs", "device"})
        if changed:
            raise ValueError(f"a resumed run keeps its config; only --epochs and --device may change, not {changed}")
        config = TrainConfig.from_file(saved, **overrides)
    elif args.config is None:
        raise ValueError("--config is required (or --resume with an existing run folder)")
    else:
        if not args.config.is_file():
            raise FileNotFoundError(f"{args.config}: no such config file")
        if "data" in overrides:
            overrides["phantoms"] = None
        config = TrainConfig.from_file(args.config, **overrides)
    summary = Trainer(config, args.out, reporter).run(resume=args.resume)
    if reporter.mode != "jsonl":
        best = summary["best_dice_mean"]
        print(
            f"trained {summary['epochs']} epochs; best validation mean Dice "
            f"{'n/a' if best is None else f'{best:.4f}'}; checkpoints in {summary['out_dir']}"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl evaluate``."""
    from .metrics import evaluate_folders_or_files, summarize
    from .tasks import get_task

    task = get_task(args.task)
    results = evaluate_folders_or_files(args.pred, args.ref, task)
    summary = summarize(results)
    if args.json:
        print(json.dumps({"task": task.name, "cases": results, "summary": summary}, indent=2, default=_json_float))
        return 0
    print(f"{len(results)} case(s), task {task.name}; mean (std) over cases")
    metrics = list(next(iter(summary.values())).keys())
    print(f"{'region':8}" + "".join(f"{m:>20}" for m in metrics))
    for region, values in summary.items():
        cells = "".join(f"{values[m]['mean']:>12.4f} ({values[m]['std']:.3f})" for m in metrics)
        print(f"{region:8}{cells}")
    return 0


def _json_float(value: object) -> object:
    """JSON fallback for numpy scalars."""
    return value.item() if hasattr(value, "item") else str(value)


def cmd_models(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl models list``."""
    from .zoo import list_models

    for row in list_models():
        state = "available" if row["available"] else "not downloaded"
        print(f"{row['name']}  [{row['task']}, {row['source']}, {state}]\n    {row['description']}")
    return 0


def cmd_demo(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl demo``: phantom -> segmentation, uncertainty, probabilities, snapshot, metrics."""
    from .demo import run_demo

    summary = run_demo(args.out, model=args.model, seed=args.seed, device=args.device, reporter=reporter)
    if reporter.mode == "jsonl":
        return 0
    print(f"CLDL demo: case {summary['case']} ({summary['seconds']:.1f} s on {summary['device']})")
    for region, values in summary["metrics"].items():
        print(f"  {region}: Dice {values['dice']:.3f}  HD95 {values['hd95']:.2f} mm")
    print(f"outputs in {args.out}/ (open snapshot.png, or load the .nii.gz files in 3D Slicer)")
    print("synthetic data and a demo model: not for clinical use")
    return 0


if __name__ == "__main__":
    sys.exit(main())
