"""The CLDL trainer: config file + flags, seeded patch sampling, curriculum losses, exact resume, validation.

The defaults take the authors' method and schedule (the paper's training details; their whole pipeline is the preset
``brats2018_paper``, docs/reproduce.md): Adam lr 1e-4, betas (0.97, 0.999), weight decay
1e-5, StepLR x0.2 every 100 epochs, 250 x 250 iterations of 128^3 patches at batch size 1. Deliberate fixes of
the original code: per-volume normalisation (never per patch), seeds everywhere, full-volume sliding-window
validation, and an optional foreground oversampling rate (default 0.33, nnU-Net's; set 0 for uniform crops).
"""

from __future__ import annotations

import json
import math
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..data.augment import PlannedBatch
from ..data.preprocess import PreprocessConfig, Preprocessed
from ..events import Reporter
from ..inference.precision import cpu_has_native_bf16
from ..method.curriculum import Curriculum, region_sizes
from ..method.distributions import gaussian_label_distribution, rldl_targets
from ..method.losses import LossConfig, cldl_loss
from ..method.network import ModelConfig, UNetLDL, count_parameters
from ..tasks import get_task
from .cases import load_dataset
from .config import TrainConfig
from .distributed import (
    DistContext,
    all_gather_objects,
    any_rank,
    barrier,
    broadcast_buffers,
    check_in_sync,
    init_distributed,
    mean_over_ranks,
    shutdown,
)
from .prefetch import BatchPrefetcher
from .sampler import PatchSampler
from .state import (
    adam_options,
    json_to_random_state,
    load_optimizer_state,
    random_state_to_json,
    seed_everything,
    truncate_log,
    warm_start,
)
from .validation import validate


def command_line() -> str:
    """The command that started this process as it was typed (``python -m cldl ...`` for the package's entry)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "__main__.py" and Path(argv[0]).parent.name == "cldl":
        argv[0] = "python -m cldl"
    return " ".join(argv)


@dataclass
class RunState:
    """The moving parts of one training run: what the steps change and what a checkpoint saves."""

    model: UNetLDL
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: PatchSampler
    val_cases: list[Preprocessed]
    train_ids: list[str]
    val_ids: list[str]
    step_model: torch.nn.Module | None = None  # the model as the steps call it (DDP, compiled)
    prefetcher: BatchPrefetcher | None = None
    start_epoch: int = 0
    start_iteration: int = 0
    best: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, float] = field(default_factory=dict)  # loss sums of the interrupted epoch being resumed
    sums: dict[str, float] = field(default_factory=dict)  # loss sums of the current epoch
    stopped: bool = False
    stop_iteration: int = 0


class Trainer:
    """One training run in ``out_dir``: ``config.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt``.

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1) it is one rank of a DistributedDataParallel run; see
    ``docs/scaling.md``.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        reporter: Reporter | None = None,
        stop_requested: Callable[[], bool] | None = None,
        dist: DistContext | None = None,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.stop_requested = stop_requested or (lambda: False)
        self.stop_agreed = False  # set by every step: all ranks agreed to stop after it
        self.warm_start: dict[str, Any] | None = None  # where init_from's weights came from (provenance)
        self.task = get_task(config.task)
        self._owns_dist = dist is None  # a context passed in is left open for its owner
        self.dist = dist or init_distributed(config.device)  # joins torchrun's process group, if launched so
        self.device = self.dist.device
        self.reporter = (reporter or Reporter("none")) if self.dist.is_main else Reporter("none")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark
        self.model_config = ModelConfig(
            **{"in_channels": self.task.num_modalities, "num_classes": self.task.num_classes, **config.model}
        )
        if (
            self.model_config.in_channels != self.task.num_modalities
            or self.model_config.num_classes != self.task.num_classes
        ):
            raise ValueError("model in_channels/num_classes must match the task's modalities/labels")
        self.prep = PreprocessConfig.from_dict({"image_kind": self.task.image_kind, **config.preprocess}, strict=True)
        self.curriculum = Curriculum(self.model_config.ldl_stages, config.curriculum, config.ramp_epochs)
        self.regions = region_sizes(self.model_config.ldl_stages)  # 8, 4, 2: the grids of decoder levels 1-3
        self.loss_config = LossConfig(config.lambda_ldl, config.lambda_ce, config.dice)
        self.patch = tuple(int(p) for p in config.patch_size)
        self.amp_dtype = None
        if config.amp and self.device.type == "cuda":
            bf16 = config.amp_dtype == "bf16" or (config.amp_dtype == "auto" and torch.cuda.is_bf16_supported())
            self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        elif config.cpu_bf16 and self.device.type == "cpu" and cpu_has_native_bf16():
            self.amp_dtype = torch.bfloat16
        cuda = self.device.type == "cuda"
        self.augment_on = config.augment_on if config.augment_on != "auto" else ("device" if cuda else "prefetch")
        self.adam_impl = config.adam_impl if config.adam_impl != "auto" else ("fused" if cuda else "loop")
        self._targets: Callable[..., list[torch.Tensor]] = rldl_targets
        self._loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] = cldl_loss
        if config.compile_loss:
            self._targets, self._loss = (
                torch.compile(rldl_targets, dynamic=False),
                torch.compile(cldl_loss, dynamic=False),
            )

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to ``config.epochs`` (continuing from ``last.pt`` with ``resume``); returns a summary.

        Under ``torchrun`` every rank calls this; only rank 0 writes files and events. A stop request ends the run
        after the current step with a checkpoint from which ``resume`` continues exactly.
        """
        try:
            return self._run(resume)
        finally:
            if self._owns_dist:
                shutdown(self.dist)

    def _run(self, resume: bool) -> dict[str, Any]:
        """The body of :meth:`run`: set up (or restore) the run, then train epoch by epoch until done or stopped."""
        run = self._restore(resume)
        try:
            for epoch in range(run.start_epoch, self.config.epochs):
                if self._train_epoch(run, epoch) or self._end_epoch(run, epoch):
                    break
        finally:
            run.prefetcher.close()
        return self._finish(run)

    def _restore(self, resume: bool) -> RunState:
        """Check the run folder, build model, optimiser, scheduler, scaler, data and sampler, and with ``resume``
        put back the state of ``last.pt``; the same order of random draws as ever (exact resume depends on it)."""
        config, ctx = self.config, self.dist
        last_path = self.out_dir / "last.pt"
        if not resume and last_path.exists():
            raise FileExistsError(f"{self.out_dir} already holds a run (last.pt): use --resume or another --out")
        if resume and not last_path.exists():
            raise FileNotFoundError(f"{last_path} not found: nothing to resume")
        barrier(ctx)  # every rank has checked the run folder before rank 0 writes into it
        seed_everything(config.seed)
        model = UNetLDL(self.model_config).to(self.device)
        if config.init_from and not resume:
            self.warm_start = warm_start(model, config.init_from, self.task, self.model_config)
            self.reporter.log(f"warm start from {self.warm_start['path']} (sha256 {self.warm_start['sha256'][:12]})")
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        optimizer = torch.optim.Adam(
            model.parameters(),
            lr=config.lr,
            betas=tuple(config.betas),
            weight_decay=config.weight_decay,
            **adam_options(self.adam_impl),
        )
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        train_cases, val_cases, train_ids, val_ids = load_dataset(config, self.task, self.prep, self.reporter)
        if ctx.is_main:  # made once the data is loaded: a refused dataset leaves no run folder
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if config.max_val_cases is not None:
            val_cases, val_ids = val_cases[: config.max_val_cases], val_ids[: config.max_val_cases]
        pad_value = 0.0 if self.prep.image_kind == "mr" else float(min(c.images.min() for c in train_cases))
        sampler = PatchSampler(
            train_cases,
            self.patch,
            config.fg_oversample,
            config.flip_prob,
            config.seed,
            pad_value,
            rank=ctx.rank,
            augment=config.augment,
            deferred=self.augment_on == "device",
        )
        run = RunState(model, optimizer, scheduler, scaler, sampler, val_cases, train_ids, val_ids)
        if resume:
            self._load_last(run, last_path)
        elif ctx.is_main:
            (self.out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        barrier(ctx)  # every rank has read last.pt before rank 0 may replace it
        processes = f", {ctx.world_size} processes ({ctx.backend})" if ctx.enabled else ""
        self.reporter.log(
            f"training {self.task.name}: {count_parameters(model):,} parameters, {len(train_cases)} train / "
            f"{len(val_cases)} validation cases, patch {self.patch}, device {self.device}{processes}"
        )
        if ctx.is_main:
            truncate_log(self.out_dir / "metrics.jsonl", run.start_epoch)
        run.step_model = self._wrap(model)
        self.stop_agreed = False
        model.train()
        run.prefetcher = BatchPrefetcher(sampler, config.batch_size, config.prefetch, self.device.type == "cuda")
        return run

    def _load_last(self, run: RunState, last_path: Path) -> None:
        """Weights, optimiser, scheduler, scaler, random states, records and position of ``last.pt`` into ``run``."""
        saved = load_checkpoint(last_path, map_location=self.device)
        state = saved.training_state
        run.model.load_state_dict(saved.state_dict)
        self.warm_start = saved.provenance.get("warm_start")
        load_optimizer_state(run.optimizer, state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())  # loaded onto --device; the CPU RNG needs a CPU tensor
        random.setstate(json_to_random_state(state["python_rng"]))
        run.start_epoch, run.best, run.history = int(state["epoch"]), float(state["best"]), list(state["history"])
        run.start_iteration = int(state.get("iteration", 0))
        run.partial = self._restore_rank_state(state, run.sampler, run.start_epoch, run.start_iteration)
        where = f", iteration {run.start_iteration + 1}" if run.start_iteration else ""
        self.reporter.log(f"resuming {self.out_dir} at epoch {run.start_epoch + 1}{where}")

    def _train_epoch(self, run: RunState, epoch: int) -> bool:
        """The steps of one epoch (from the saved iteration when resuming); True when a stop request ended it early,
        after a mid-epoch checkpoint from which ``--resume`` continues with the next step exactly."""
        config = self.config
        first = run.start_iteration if epoch == run.start_epoch else 0
        run.sums = dict(run.partial) if first else {}
        for iteration in range(first, config.iters_per_epoch):
            progress = epoch + iteration / config.iters_per_epoch
            try:
                parts = self._step(run.step_model, run.optimizer, run.scaler, run.prefetcher, progress)
            except FloatingPointError as exc:  # where the run diverged; `cldl train` makes it its error line
                raise FloatingPointError(f"{exc} at epoch {epoch + 1}, iteration {iteration + 1}") from exc
            for key, value in parts.items():
                run.sums[key] = run.sums.get(key, 0.0) + value
            self.reporter.progress("train", iteration + 1, config.iters_per_epoch, epoch=epoch + 1, loss=parts["total"])
            if self.stop_agreed and iteration + 1 < config.iters_per_epoch:
                broadcast_buffers(self.dist, run.model)
                training_state = self._training_state(run, epoch, iteration + 1, run.sums)
                if self.dist.is_main:
                    record = run.history[-1] if run.history else {}
                    provenance = self._provenance(epoch, record, run.train_ids, run.val_ids)
                    save_checkpoint(self._checkpoint(run.model, provenance, training_state), self.out_dir / "last.pt")
                self.reporter.log(
                    f"stopped at epoch {epoch + 1}, iteration {iteration + 1}/{config.iters_per_epoch}; "
                    "continue with --resume"
                )
                run.stopped, run.stop_iteration = True, iteration + 1
                return True
        return False

    def _end_epoch(self, run: RunState, epoch: int) -> bool:
        """Scheduler step, validation when due, the epoch's record, ``last.pt`` and ``best.pt``; True when a stop
        was requested (the run ends after this epoch)."""
        config, ctx = self.config, self.dist
        record = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"]}  # the rate this epoch trained at
        run.scheduler.step()
        broadcast_buffers(ctx, run.model)  # rank 0's BatchNorm statistics for validation and the checkpoint
        losses = mean_over_ranks(ctx, {k: v / config.iters_per_epoch for k, v in run.sums.items()})
        record.update({f"loss_{k}": v for k, v in losses.items()})
        is_best = False
        if run.val_cases and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
            record.update(
                validate(
                    run.model,
                    run.val_cases,
                    self.task,
                    self.patch,
                    config.val_overlap,
                    None if self.prep.image_kind == "mr" else "min",
                    self.reporter,
                    rank=ctx.rank,
                    world_size=ctx.world_size,
                    empty=config.empty_regions,
                    et_min_voxels=config.et_min_voxels,
                )
            )
            is_best = record["dice_mean"] > run.best
            run.best = max(run.best, record["dice_mean"])
        run.history.append(record)
        training_state = self._training_state(run, epoch + 1, 0, {})
        if ctx.enabled:
            check_in_sync(ctx, run.model)
        if ctx.is_main:
            with (self.out_dir / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            self.reporter.emit("metrics", stage="epoch", **record)
            provenance = self._provenance(epoch + 1, record, run.train_ids, run.val_ids)
            save_checkpoint(self._checkpoint(run.model, provenance, training_state), self.out_dir / "last.pt")
            if is_best:
                save_checkpoint(self._checkpoint(run.model, provenance, None), self.out_dir / "best.pt")
        if any_rank(ctx, [self.stop_agreed or self.stop_requested()])[0]:
            self.reporter.log(f"stopped after epoch {epoch + 1}; continue with --resume")
            run.stopped = True
            return True
        return False

    def _finish(self, run: RunState) -> dict[str, Any]:
        """``best.pt`` if no validation chose one, the weights' digest, the ``result`` event and the summary."""
        ctx, best_path, history = self.dist, self.out_dir / "best.pt", run.history
        digest = check_in_sync(ctx, run.model)
        if ctx.is_main and not best_path.exists():
            record = history[-1] if history else {}
            provenance = self._provenance(len(history), record, run.train_ids, run.val_ids)
            save_checkpoint(self._checkpoint(run.model, provenance, None), best_path)
        barrier(ctx)  # no rank returns before rank 0 has written everything
        summary = {
            "out_dir": str(self.out_dir),
            "best": str(best_path),
            "last": str(self.out_dir / "last.pt"),
            "epochs": len(history),
            "best_dice_mean": run.best if math.isfinite(run.best) else None,
            "stopped": run.stopped,
            "stopped_at_iteration": run.stop_iteration,
            "world_size": ctx.world_size,
            "weights_sha256": digest,
            "history": history,
        }
        self.reporter.emit("result", **{k: v for k, v in summary.items() if k != "history"})
        return summary

    def _wrap(self, model: UNetLDL) -> torch.nn.Module:
        """The module the training steps call: DistributedDataParallel across ranks, compiled if asked."""
        wrapped: torch.nn.Module = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.config.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _training_state(
        self, run: RunState, epoch: int, iteration: int, partial_sums: dict[str, float]
    ) -> dict[str, Any]:
        """Everything exact resume needs after ``epoch`` epochs and ``iteration`` steps (a collective call)."""
        mine = {"sampler_rng": json.dumps(run.prefetcher.rng_state()), "partial_sums": dict(partial_sums)}
        rank_states = all_gather_objects(self.dist, mine)
        return {
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "sampler_rng": rank_states[0]["sampler_rng"],
            "rank_states": rank_states,
            "world_size": self.dist.world_size,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random_state_to_json(random.getstate()),
            "epoch": epoch,
            "iteration": iteration,
            "best": run.best,
            "history": run.history,
        }

    def _restore_rank_state(
        self, state: dict[str, Any], sampler: PatchSampler, epoch: int, iteration: int
    ) -> dict[str, float]:
        """Put this rank's sampler RNG back; returns its partial loss sums of an interrupted epoch."""
        ranks = state.get("rank_states") or [{"sampler_rng": state["sampler_rng"], "partial_sums": {}}]
        rank, world = self.dist.rank, self.dist.world_size
        if len(ranks) != world:
            self.reporter.log(
                f"the run was saved by {len(ranks)} process(es) and resumes with {world}: it continues, but not "
                "bit-identically to an uninterrupted run"
            )
        if rank >= len(ranks):
            sampler.rng = np.random.default_rng([self.config.seed, rank, epoch, iteration])
            return {}
        sampler.rng.bit_generator.state = json.loads(ranks[rank]["sampler_rng"])
        return {k: float(v) for k, v in (ranks[rank].get("partial_sums") or {}).items()}

    def _step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        sampler: PatchSampler | BatchPrefetcher,
        progress: float,
    ) -> dict[str, float]:
        """One optimisation step (on every rank); returns the loss parts as floats and sets ``stop_agreed``."""
        batch = sampler.sample(self.config.batch_size)
        if isinstance(batch, PlannedBatch):  # augment_on "device": the drawn patches are augmented here
            x, y = batch.apply(self.device)
        else:
            x, y = (t.to(self.device, non_blocking=True) for t in batch)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad():  # the targets are built on the training device
            targets = self._targets(y, self.task.num_classes, self.regions)
            final_targets = (
                gaussian_label_distribution(y, self.task.num_classes, self.config.final_sigma)
                if self.config.final_targets == "gaussian"
                else None
            )
        stage_weights, seg_weight = self.curriculum.weights(progress)
        if self.config.compile_loss:  # tensors (a torch that specialises floats recompiles per weight), sent
            # without a blocking copy, which would wait for the device's queue
            stage_weights = torch.tensor(stage_weights).to(self.device, non_blocking=True)
            seg_weight = torch.tensor(seg_weight).to(self.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            output = model(x)
            loss, parts = self._loss(output, y, targets, self.loss_config, stage_weights, seg_weight, final_targets)
        finite = bool(torch.isfinite(loss))
        # one small all-reduce: every rank raises together, and every rank stops after the same step
        not_finite, self.stop_agreed = any_rank(self.dist, [not finite, self.stop_requested()])
        if not_finite:
            where = "" if not finite else " on another rank"
            raise FloatingPointError(f"the loss became {loss.item() if not finite else 'NaN/Inf'}{where}")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return {k: float(v) for k, v in parts.items()}

    def _checkpoint(
        self, model: UNetLDL, provenance: dict[str, Any], training_state: dict[str, Any] | None
    ) -> Checkpoint:
        """A checkpoint of the current weights."""
        return Checkpoint(
            model_config=self.model_config,
            task=self.task,
            preprocess=self.prep,
            patch_size=self.patch,
            state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            provenance=provenance,
            training_state=training_state,
        )

    def _provenance(
        self, epoch: int, record: dict[str, Any], train_ids: list[str], val_ids: list[str]
    ) -> dict[str, Any]:
        """Where the weights came from."""
        return {
            "seed": self.config.seed,
            "epoch": epoch,
            "world_size": self.dist.world_size,
            "metrics": record,
            "config": self.config.to_dict(),
            "train_cases": train_ids,
            "val_cases": val_ids,
            "code_version": __version__,
            "torch_version": str(torch.__version__),  # a TorchVersion would not load with weights_only
            "python": platform.python_version(),
            "command": command_line(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "warm_start": self.warm_start,
        }


def train(
    config: TrainConfig, out_dir: str | Path, resume: bool = False, reporter: Reporter | None = None
) -> dict[str, Any]:
    """Run (or resume) a training run; see :class:`Trainer`."""
    return Trainer(config, out_dir, reporter).run(resume=resume)
