"""The CLDL trainer: config file + flags, seeded patch sampling, curriculum losses, exact resume, validation.

Defaults follow the authors' BraTS recipe (cldl_method.md §7): Adam lr 1e-4, betas (0.97, 0.999), weight decay
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .curriculum import Curriculum, region_sizes
from .data.datasets import discover_cases, load_case, split_cases
from .data.preprocess import InputError, PreprocessConfig, Preprocessed, preprocess
from .distributions import rldl_targets
from .events import Reporter
from .infer import resolve_device, sliding_window_probabilities
from .losses import LossConfig, cldl_loss
from .metrics import dice
from .model import ModelConfig, UNetLDL, count_parameters
from .tasks import Task, get_task


@dataclass
class TrainConfig:
    """Everything that defines a training run; read from JSON/YAML, overridable by CLI flags."""

    task: str = "brats"
    data: str | None = None
    phantoms: dict[str, Any] | None = None
    val_fraction: float = 0.2
    split_seed: int = 3
    model: dict[str, Any] = field(default_factory=dict)
    patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    batch_size: int = 1
    epochs: int = 250
    iters_per_epoch: int = 250
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.97, 0.999])
    weight_decay: float = 1e-5
    lr_step: int = 100
    lr_gamma: float = 0.2
    lambda_ldl: float = 1.0
    lambda_ce: float = 1.0
    dice: str = "robust"
    curriculum: str = "joint"
    ramp_epochs: float = 10.0
    fg_oversample: float = 0.33
    flip_prob: float = 0.5
    seed: int = 0
    val_every: int = 1
    val_overlap: float = 0.5
    max_val_cases: int | None = None
    device: str = "auto"
    amp: bool = True

    def __post_init__(self) -> None:
        if (self.data is None) == (self.phantoms is None):
            raise ValueError("set exactly one of 'data' (a dataset folder) or 'phantoms' (synthetic cases)")
        if len(self.patch_size) != 3 or any(int(p) % 16 or int(p) <= 0 for p in self.patch_size):
            raise ValueError(f"patch_size must be three positive multiples of 16, got {self.patch_size}")
        if math.prod(int(p) // 16 for p in self.patch_size) < 2:
            raise ValueError(f"patch_size {self.patch_size} leaves one voxel at the bottleneck; use at least 16x16x32")
        for name in ("epochs", "iters_per_epoch", "batch_size", "val_every", "lr_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.fg_oversample <= 1 or not 0 <= self.flip_prob <= 1:
            raise ValueError("fg_oversample and flip_prob must be in [0, 1]")
        unknown = sorted(set(self.model) - set(ModelConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown model keys {unknown}; valid keys: {sorted(ModelConfig.__dataclass_fields__)}")
        ModelConfig(**self.model)  # validates the model values early
        Curriculum(3, self.curriculum, self.ramp_epochs)
        LossConfig(self.lambda_ldl, self.lambda_ce, self.dice)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a JSON or YAML config file; ``overrides`` win over the file."""
        path = Path(path)
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:  # not a ValueError: the CLI would show a traceback
                raise ValueError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config file must hold a mapping of keys to values")
        return cls.from_dict({**data, **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict, naming unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:  # a value of the wrong type, e.g. "epochs": "ten"
            raise ValueError(f"invalid config value: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (saved as ``config.json`` in the run folder)."""
        return asdict(self)


class PatchSampler:
    """Seeded random patches with optional foreground-centred crops and mirror flips."""

    def __init__(
        self,
        cases: list[Preprocessed],
        patch: tuple[int, int, int],
        fg_rate: float,
        flip_prob: float,
        seed: int,
        pad_value: float = 0.0,
    ) -> None:
        self.patch = patch
        self.fg_rate = fg_rate
        self.flip_prob = flip_prob
        self.rng = np.random.default_rng(seed)
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.foreground: list[np.ndarray] = []
        for case in cases:
            pad = [(0, max(0, p - s)) for s, p in zip(case.labels.shape, patch)]
            images = (
                np.pad(case.images, [(0, 0)] + pad, constant_values=pad_value)
                if any(b for _, b in pad)
                else case.images
            )
            labels = np.pad(case.labels, pad) if any(b for _, b in pad) else case.labels
            self.images.append(images)
            self.labels.append(labels)
            self.foreground.append(np.flatnonzero(labels.ravel()))

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch ``(B x C x P^3 float32, B x P^3 int64)``."""
        xs, ys = [], []
        for _ in range(batch_size):
            index = int(self.rng.integers(len(self.images)))
            images, labels = self.images[index], self.labels[index]
            shape = labels.shape
            use_fg = self.fg_rate > 0 and len(self.foreground[index]) and self.rng.random() < self.fg_rate
            if use_fg:
                centre = np.unravel_index(self.foreground[index][self.rng.integers(len(self.foreground[index]))], shape)
                start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch, shape)]
            else:
                start = [int(self.rng.integers(s - p + 1)) for s, p in zip(shape, self.patch)]
            window = tuple(slice(a, a + p) for a, p in zip(start, self.patch))
            x, y = images[(slice(None),) + window], labels[window]
            flips = [axis for axis in range(3) if self.rng.random() < self.flip_prob]
            if flips:
                x = np.flip(x, axis=[a + 1 for a in flips])
                y = np.flip(y, axis=flips)
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))


def load_dataset(
    config: TrainConfig, task: Task, prep: PreprocessConfig, reporter: Reporter
) -> tuple[list[Preprocessed], list[Preprocessed], list[str], list[str]]:
    """Train and validation cases (preprocessed, in memory) and their ids."""
    if config.phantoms is not None:
        return _phantom_dataset(config.phantoms, task, prep, reporter)
    files = [c for c in discover_cases(config.data, task) if c.label is not None]
    if len(files) < 2:
        raise InputError(f"{config.data}: need at least 2 labelled cases to train and validate, found {len(files)}")
    train_files, val_files = split_cases(files, config.val_fraction, config.split_seed)
    cases = []
    for i, case in enumerate(train_files + val_files):
        cases.append(load_case(case, task, prep))
        reporter.progress("load", i + 1, len(files))
    n = len(train_files)
    return cases[:n], cases[n:], [c.case_id for c in train_files], [c.case_id for c in val_files]


def _phantom_dataset(
    spec: dict[str, Any], task: Task, prep: PreprocessConfig, reporter: Reporter
) -> tuple[list[Preprocessed], list[Preprocessed], list[str], list[str]]:
    """Synthetic cases: ``{"train_seeds": [a, b], "val_seeds": [c, d], "shape": [z, y, x]}`` (half-open ranges)."""
    from .data import phantoms

    make = {"brats": phantoms.brats_phantom, "mmwhs_ct": phantoms.mmwhs_phantom}.get(task.name)
    if make is None:
        raise ValueError(f"phantoms exist for the brats and mmwhs_ct tasks, not {task.name!r}")
    unknown = set(spec) - {"train_seeds", "val_seeds", "shape", "spacing"}
    if unknown:
        raise ValueError(f"unknown phantom keys {sorted(unknown)}")
    shape = tuple(spec.get("shape", (96, 96, 96)))
    spacing = tuple(spec.get("spacing", (1.0, 1.0, 1.0)))
    train_seeds = range(*spec.get("train_seeds", (0, 20)))
    val_seeds = range(*spec.get("val_seeds", (10_000, 10_004)))
    out: list[list[Preprocessed]] = [[], []]
    ids: list[list[str]] = [[], []]
    total = len(train_seeds) + len(val_seeds)
    for part, seeds in enumerate((train_seeds, val_seeds)):
        for seed in seeds:
            case = make(seed, shape=shape, spacing=spacing)
            out[part].append(preprocess(case.images, prep, task.modalities, task.labels_to_classes(case.labels)))
            ids[part].append(case.case_id)
            reporter.progress("load", sum(map(len, out)), total)
    return out[0], out[1], ids[0], ids[1]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def validate(
    model: UNetLDL,
    cases: list[Preprocessed],
    task: Task,
    patch: tuple[int, ...],
    overlap: float,
    pad_value: str | None,
    reporter: Reporter,
) -> dict[str, float]:
    """Full-volume sliding-window Dice per region (mean over cases) and their mean as ``dice_mean``."""
    model.eval()
    scores: dict[str, list[float]] = {r.name: [] for r in task.regions}
    for i, case in enumerate(cases):
        probs = sliding_window_probabilities(model, case.images, patch, overlap=overlap, pad_value=pad_value)
        pred = probs.argmax(0).cpu().numpy()
        for region in task.regions:
            scores[region.name].append(dice(np.isin(pred, region.classes), np.isin(case.labels, region.classes)))
        reporter.progress("validate", i + 1, len(cases))
    model.train()
    result = {f"dice_{name}": float(np.mean(values)) for name, values in scores.items()}
    result["dice_mean"] = float(np.mean(list(result.values())))
    return result


class Trainer:
    """One training run in ``out_dir``: ``config.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt``."""

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        reporter: Reporter | None = None,
        stop_requested: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.reporter = reporter or Reporter("none")
        self.stop_requested = stop_requested or (lambda: False)
        self.task = get_task(config.task)
        self.device = resolve_device(config.device)
        self.model_config = ModelConfig(
            **{"in_channels": self.task.num_modalities, "num_classes": self.task.num_classes, **config.model}
        )
        if (
            self.model_config.in_channels != self.task.num_modalities
            or self.model_config.num_classes != self.task.num_classes
        ):
            raise ValueError("model in_channels/num_classes must match the task's modalities/labels")
        self.prep = PreprocessConfig(image_kind=self.task.image_kind)
        self.curriculum = Curriculum(self.model_config.ldl_stages, config.curriculum, config.ramp_epochs)
        self.regions = region_sizes(self.model_config.ldl_stages)  # 8, 4, 2: the grids of decoder levels 1-3
        self.loss_config = LossConfig(config.lambda_ldl, config.lambda_ce, config.dice)
        self.patch = tuple(int(p) for p in config.patch_size)
        self.amp_dtype = None
        if config.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to ``config.epochs`` (continuing from ``last.pt`` with ``resume``); returns a summary."""
        config, reporter = self.config, self.reporter
        last_path, best_path = self.out_dir / "last.pt", self.out_dir / "best.pt"
        if not resume and last_path.exists():
            raise FileExistsError(f"{self.out_dir} already holds a run (last.pt): use --resume or another --out")
        if resume and not last_path.exists():
            raise FileNotFoundError(f"{last_path} not found: nothing to resume")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(config.seed)
        model = UNetLDL(self.model_config).to(self.device)
        optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        train_cases, val_cases, train_ids, val_ids = load_dataset(config, self.task, self.prep, reporter)
        if config.max_val_cases is not None:
            val_cases, val_ids = val_cases[: config.max_val_cases], val_ids[: config.max_val_cases]
        pad_value = 0.0 if self.prep.image_kind == "mr" else float(min(c.images.min() for c in train_cases))
        sampler = PatchSampler(train_cases, self.patch, config.fg_oversample, config.flip_prob, config.seed, pad_value)
        start_epoch, best, history = 0, -math.inf, []
        if resume:
            saved = load_checkpoint(last_path, map_location=self.device)
            state = saved.training_state
            model.load_state_dict(saved.state_dict)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            sampler.rng.bit_generator.state = json.loads(state["sampler_rng"])
            torch.set_rng_state(state["torch_rng"].cpu())  # loaded onto --device; the CPU RNG needs a CPU tensor
            random.setstate(json_to_random_state(state["python_rng"]))
            start_epoch, best, history = int(state["epoch"]), float(state["best"]), list(state["history"])
            reporter.log(f"resuming {self.out_dir} at epoch {start_epoch + 1}")
        else:
            (self.out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        reporter.log(
            f"training {self.task.name}: {count_parameters(model):,} parameters, {len(train_cases)} train / "
            f"{len(val_cases)} validation cases, patch {self.patch}, device {self.device}"
        )
        metrics_log = self.out_dir / "metrics.jsonl"
        _truncate_log(metrics_log, start_epoch)
        stopped = False
        model.train()
        for epoch in range(start_epoch, config.epochs):
            sums: dict[str, float] = {}
            for iteration in range(config.iters_per_epoch):
                parts = self._step(model, optimizer, scaler, sampler, epoch + iteration / config.iters_per_epoch)
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + value
                reporter.progress("train", iteration + 1, config.iters_per_epoch, epoch=epoch + 1, loss=parts["total"])
            scheduler.step()
            record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            record.update({f"loss_{k}": v / config.iters_per_epoch for k, v in sums.items()})
            is_best = False
            if val_cases and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
                record.update(
                    validate(
                        model,
                        val_cases,
                        self.task,
                        self.patch,
                        config.val_overlap,
                        None if self.prep.image_kind == "mr" else "min",
                        reporter,
                    )
                )
                is_best = record["dice_mean"] > best
                best = max(best, record["dice_mean"])
            history.append(record)
            with metrics_log.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            reporter.emit("metrics", stage="epoch", **record)
            training_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "sampler_rng": json.dumps(sampler.rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random_state_to_json(random.getstate()),
                "epoch": epoch + 1,
                "best": best,
                "history": history,
            }
            provenance = self._provenance(epoch + 1, record, train_ids, val_ids)
            save_checkpoint(self._checkpoint(model, provenance, training_state), last_path)
            if is_best:
                save_checkpoint(self._checkpoint(model, provenance, None), best_path)
            if self.stop_requested():
                reporter.log(f"stopped after epoch {epoch + 1}; continue with --resume")
                stopped = True
                break
        if not best_path.exists():
            save_checkpoint(
                self._checkpoint(
                    model, self._provenance(len(history), history[-1] if history else {}, train_ids, val_ids), None
                ),
                best_path,
            )
        summary = {
            "out_dir": str(self.out_dir),
            "best": str(best_path),
            "last": str(last_path),
            "epochs": len(history),
            "best_dice_mean": best if math.isfinite(best) else None,
            "stopped": stopped,
            "history": history,
        }
        reporter.emit("result", **{k: v for k, v in summary.items() if k != "history"})
        return summary

    def _step(
        self,
        model: UNetLDL,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        sampler: PatchSampler,
        progress: float,
    ) -> dict[str, float]:
        """One optimisation step; returns the loss parts as floats."""
        x, y = sampler.sample(self.config.batch_size)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with torch.no_grad():
            targets = rldl_targets(y, self.task.num_classes, self.regions)
        stage_weights, seg_weight = self.curriculum.weights(progress)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            output = model(x)
            loss, parts = cldl_loss(output, y, targets, self.loss_config, stage_weights, seg_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} (check the data and lower the learning rate)")
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
            "metrics": record,
            "config": self.config.to_dict(),
            "train_cases": train_ids,
            "val_cases": val_ids,
            "code_version": __version__,
            "torch_version": str(torch.__version__),  # a TorchVersion would not load with weights_only
            "python": platform.python_version(),
            "command": " ".join(sys.argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def random_state_to_json(state: tuple) -> str:
    """Python ``random`` state as JSON (checkpoints hold no pickled objects)."""
    return json.dumps([state[0], list(state[1]), state[2]])


def json_to_random_state(text: str) -> tuple:
    """Inverse of :func:`random_state_to_json`."""
    version, internal, gauss = json.loads(text)
    return version, tuple(internal), gauss


def _truncate_log(path: Path, epochs: int) -> None:
    """Keep only the first ``epochs`` records of a metrics log (a resumed run rewrites later ones)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(line + "\n" for line in lines[:epochs]))


def train(
    config: TrainConfig, out_dir: str | Path, resume: bool = False, reporter: Reporter | None = None
) -> dict[str, Any]:
    """Run (or resume) a training run; see :class:`Trainer`."""
    return Trainer(config, out_dir, reporter).run(resume=resume)
