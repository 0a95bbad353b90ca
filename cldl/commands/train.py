"""``cldl train``: train (or resume) a CLDL model from a config file or preset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import defaults
from ..events import Reporter
from .common import Stopped, add_progress

if TYPE_CHECKING:  # pragma: no cover
    from ..training.distributed import StopSignals


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``cldl train`` command and its flags."""
    tr = subparsers.add_parser("train", help="train a CLDL model", description="Train (or resume) a CLDL model.")
    tr.add_argument(
        "--config", help="JSON or YAML config file or a preset name (cldl/configs), required unless --resume"
    )
    tr.add_argument("--data", help="dataset folder (overrides the config's 'data')")
    tr.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and logs")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    tr.add_argument("--epochs", type=int, help="override the number of epochs (also when resuming)")
    tr.add_argument("--iters-per-epoch", type=int, help="override iterations per epoch")
    tr.add_argument("--device", choices=defaults.DEVICES, help="override the device")
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
    add_progress(tr)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cldl train``."""
    from ..training.config import TrainConfig
    from ..training.trainer import Trainer

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
        try:
            summary = trainer.run(resume=args.resume)
        except FloatingPointError as exc:  # a diverged run: one error line, exit status 1 (docs/method.md)
            raise RuntimeError(_diverged(str(exc), args.out / "last.pt")) from exc
    if reporter.mode != "jsonl" and trainer.dist.is_main:
        best = summary["best_dice_mean"]
        print(
            f"trained {summary['epochs']} epochs; best validation mean Dice "
            f"{'n/a' if best is None else f'{best:.4f}'}; checkpoints in {summary['out_dir']}"
            + ("; stopped early, continue with --resume" if summary["stopped"] else "")
        )
    return 0


def _diverged(cause: str, last: Path) -> str:
    """The error line of a run whose loss became NaN or infinite: what happened, what to try, what is kept."""
    kept = f"its last checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
    return (
        f"training stopped: {cause}; lower the learning rate (lr in the config) or check the input data and start "
        f"a new run (a resumed run keeps its config); {kept}"
    )


def _training_stop(stop_file: Path | None = None) -> StopSignals:
    """``cldl train``'s stop signals (:class:`~cldl.training.distributed.StopSignals`): graceful once training
    runs (finish the step, checkpoint, exit 0); before that (data still loading) a stop ends the command at once, as
    Ctrl+C. Under torchrun always graceful, since the ranks must agree. ``stop_file``: a graceful stop once it exists
    (checked by the trainer after every step)."""
    from ..training.distributed import StopSignals, launched_by_torchrun

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
