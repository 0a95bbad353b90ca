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
import numbers
import platform
import random
import sys
import time
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, defaults
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data.augment import PlannedBatch, PlannedPatch, draw_intensity, source_region, spatial_matrix
from .data.augment import preset as augment_preset
from .data.cache import open_cache
from .data.cases import load_case
from .data.discovery import discover_cases, split_cases
from .data.preprocess import InputError, PreprocessConfig, Preprocessed, preprocess
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
from .evaluation.overlap import EMPTY_RULES, dice
from .evaluation.reports import relabel_small_et
from .events import Reporter
from .inference.precision import autocast_dtype, cpu_has_native_bf16
from .inference.predictor import sliding_window_probabilities
from .method.curriculum import Curriculum, region_sizes
from .method.distributions import gaussian_label_distribution, rldl_targets
from .method.losses import LossConfig, cldl_loss
from .method.network import ModelConfig, UNetLDL, count_parameters
from .prefetch import BatchPrefetcher
from .tasks import Task, get_task

FINAL_TARGETS = ("onehot", "gaussian")
AMP_DTYPES = ("auto", "bf16", "fp16")
AUGMENT_ON = ("auto", "prefetch", "device")
ADAM_IMPLS = ("auto", "fused", "foreach", "loop")
CONFIG_DIR = Path(__file__).parent / "configs"
MAX_CONFIG_VALUES = 100_000  # what a config file may expand to (a YAML alias bomb grows without bound)


@dataclass
class TrainConfig:
    """Everything that defines a training run; read from JSON/YAML, overridable by CLI flags."""

    task: str = "brats"
    data: str | None = None
    phantoms: dict[str, Any] | None = None
    val_fraction: float = 0.2
    split_seed: int = 3
    model: dict[str, Any] = field(default_factory=dict)
    patch_size: list[int] = field(default_factory=lambda: defaults.check_patch_size(defaults.PATCH_SIZE))
    batch_size: int = 1
    epochs: int = defaults.EPOCHS
    iters_per_epoch: int = defaults.ITERS_PER_EPOCH
    lr: float = defaults.LEARNING_RATE
    betas: list[float] = field(default_factory=lambda: [0.97, 0.999])
    weight_decay: float = 1e-5
    lr_step: int = 100
    lr_gamma: float = 0.2
    lambda_ldl: float = 1.0
    lambda_ce: float = 1.0
    dice: str = "robust"
    curriculum: str = defaults.CURRICULUM
    ramp_epochs: float = 10.0
    final_targets: str = "onehot"  # onehot | gaussian (voxel-level LDL baseline, SVLS-style: smoothed one-hot CE)
    final_sigma: float = 1.0  # voxels, the Gaussian's sd for final_targets "gaussian"
    fg_oversample: float = 0.33
    flip_prob: float = 0.5
    augment: str = "paper"  # none | paper (mirror flips, the authors') | nnunet (cldl.data.augment)
    seed: int = 0
    val_every: int = 1
    val_overlap: float = defaults.OVERLAP
    empty_regions: str = "brats"  # both masks empty: brats = Dice 1 (HD95 0), authors = Dice 0 (validation + best.pt)
    et_min_voxels: int = 0  # >0: predicted enhancing tumour smaller than this becomes necrosis (BraTS; 0: off)
    max_val_cases: int | None = None
    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "auto"  # CUDA autocast: auto (bf16 where supported, else fp16) | bf16 | fp16 (+ GradScaler)
    cpu_bf16: bool = False  # bf16 autocast for CPU training where the CPU has native bf16 (fp32 elsewhere)
    prefetch: int = 2  # batches drawn ahead by a background thread (0: on demand); results do not depend on it
    channels_last: bool = False  # channels-last 3D memory format for the training step (GPU; measure first)
    compile: bool = False  # torch.compile the training step's network (slow first steps while it compiles)
    compile_loss: bool = False  # torch.compile the R-LDL targets and the CLDL loss too
    augment_on: str = "auto"  # where patches are augmented: prefetch (thread) | device (training device) | auto
    adam_impl: str = "auto"  # Adam's kernels: fused | foreach | loop | auto (fused on CUDA, loop elsewhere)
    cudnn_benchmark: bool = True  # let cuDNN time and pick the fastest convolution algorithms (GPU)
    preprocess: dict[str, Any] = field(default_factory=dict)  # PreprocessConfig keys, e.g. target_spacing
    cache: str | None = "auto"  # preprocessed-case cache: "auto" ($CLDL_DATA_CACHE or ~/.cache/cldl), a folder, null
    init_from: str | None = None  # warm start: the weights of a model name or checkpoint path (same task and network)

    def __post_init__(self) -> None:
        check_config_values(self)
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
        augment_preset(self.augment, self.flip_prob)  # names an unknown preset early
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {list(AMP_DTYPES)}, got {self.amp_dtype!r}")
        if self.empty_regions not in EMPTY_RULES or self.et_min_voxels < 0:
            raise ValueError(f"empty_regions must be one of {list(EMPTY_RULES)} and et_min_voxels >= 0")
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.augment_on not in AUGMENT_ON or self.adam_impl not in ADAM_IMPLS:
            raise ValueError(
                f"augment_on must be one of {list(AUGMENT_ON)} and adam_impl one of {list(ADAM_IMPLS)}, got "
                f"{self.augment_on!r} and {self.adam_impl!r}"
            )
        unknown = sorted(set(self.model) - set(ModelConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown model keys {unknown}; valid keys: {sorted(ModelConfig.__dataclass_fields__)}")
        ModelConfig(**self.model)  # validates the model values early
        Curriculum(3, self.curriculum, self.ramp_epochs)
        if self.final_targets not in FINAL_TARGETS or not self.final_sigma > 0:
            raise ValueError(f"final_targets must be one of {FINAL_TARGETS} and final_sigma > 0")
        LossConfig(self.lambda_ldl, self.lambda_ce, self.dice)
        PreprocessConfig.from_dict(self.preprocess, strict=True)  # validates the preprocessing keys early

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a JSON or YAML config file or preset name (with its ``extends`` chain); ``overrides`` win."""
        return cls.from_dict({**load_config(path), **overrides})

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


#: Ranges of numeric config keys, checked before a run writes anything: (low, high, low included, high included).
CONFIG_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "val_fraction": (0, 1, True, False),
    "split_seed": (0, 2**32 - 1, True, True),
    "seed": (0, 2**32 - 1, True, True),
    "lr": (0, math.inf, False, False),
    "weight_decay": (0, math.inf, True, False),
    "lr_gamma": (0, math.inf, False, False),
    "lambda_ldl": (0, math.inf, True, False),
    "lambda_ce": (0, math.inf, True, False),
    "ramp_epochs": (0, math.inf, True, False),
    "val_overlap": (0, 1, True, False),
    "max_val_cases": (0, math.inf, True, False),
    "final_sigma": (0, math.inf, False, False),
}


def _type_problem(value: Any, hint: Any) -> str | None:
    """What is wrong with ``value`` for a field annotated ``hint`` (None when it fits)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _type_problem(value, next(a for a in args if a is not type(None)))
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else "must be a whole number"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return "must be a number"
        return None if math.isfinite(value) else "must be a finite number"
    if hint is str:
        return None if isinstance(value, str) else "must be a text"
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return f"must be a list of {'whole numbers' if args[0] is int else 'numbers'}"
        problems = [_type_problem(item, args[0]) for item in value]
        return next((f"every item {p.removeprefix('must be ')}" for p in problems if p), None)
    if origin is dict:
        return None if isinstance(value, dict) else "must be a mapping of keys to values"
    return None


def _bound(value: float) -> str:
    """A range bound as written in a message (``4294967295``, ``0.5``, ``inf``)."""
    return str(int(value)) if math.isfinite(value) and float(value).is_integer() else f"{value:g}"


def check_config_values(config: TrainConfig) -> None:
    """Check every config key's type and range, naming the key (ValueError)."""
    hints = typing.get_type_hints(type(config))
    for item in fields(config):
        value = getattr(config, item.name)
        problem = _type_problem(value, hints[item.name])
        if problem is None and item.name in CONFIG_RANGES and value is not None:
            low, high, low_in, high_in = CONFIG_RANGES[item.name]
            if not ((low <= value if low_in else low < value) and (value <= high if high_in else value < high)):
                bounds = f"{'[' if low_in else '('}{_bound(low)}, {_bound(high)}{']' if high_in else ')'}"
                problem = f"must be in {bounds}"
        if problem is None and item.name == "betas" and not (len(value) == 2 and all(0 <= b < 1 for b in value)):
            problem = "must be two numbers in [0, 1)"
        if problem is None and item.name == "phantoms" and value is not None:
            problem = _phantom_seed_problem(value)
        if problem is not None:
            shown = repr(value) if len(repr(value)) <= 100 else repr(value)[:97] + "..."
            raise ValueError(f"config key {item.name!r} {problem}, got {shown}")


def _phantom_seed_problem(spec: dict[str, Any]) -> str | None:
    """What is wrong with the phantoms' seed ranges (``[first, stop)``, 0 <= first < stop; validation may be empty)."""
    for key, relation in (("train_seeds", "<"), ("val_seeds", "<=")):
        seeds = spec.get(key, [0, 1])
        ok = isinstance(seeds, (list, tuple)) and len(seeds) == 2
        ok = ok and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) and 0 <= seeds[0]
        ok = ok and (seeds[0] < seeds[1] if relation == "<" else seeds[0] <= seeds[1])
        if not ok:
            return f"needs {key} as a half-open range [first, stop) with 0 <= first {relation} stop"
    return None


def resolve_config(name: str | Path) -> Path:
    """A config file path, or a preset name of ``cldl/configs`` (``brats2018_paper`` -> its ``.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    for suffix in ("", ".yaml", ".yml", ".json"):
        preset = CONFIG_DIR / f"{name}{suffix}"
        if path.name == str(name) and preset.is_file():
            return preset
    presets = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"{name}: no such config file or preset (presets: {', '.join(presets)})")


def merge_configs(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``; mappings (``model``, ``preprocess``, ...) are merged key by key."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_configs(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(name: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file or preset with ``extends: <preset or path relative to the file>`` resolved (base first)."""
    path = resolve_config(name).resolve()
    if path in _seen:
        raise ValueError(f"{path}: 'extends' loops back to this file")
    data = read_config_file(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    relative = path.parent / str(parent)
    base = load_config(relative if relative.is_file() else parent, (*_seen, path))
    return merge_configs(base, data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or YAML file holding a mapping, with one clear error when it is not."""
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
    if _expands_beyond(data, MAX_CONFIG_VALUES):
        raise ValueError(
            f"{path}: expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases repeated inside each other?); "
            "a config is a few hundred values"
        )
    return data


def _expands_beyond(data: Any, limit: int) -> bool:
    """Whether ``data`` holds more than ``limit`` values once every YAML alias is expanded (stops counting there)."""
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return False


class PatchSampler:
    """Seeded random patches with optional foreground-centred crops and augmentation (:mod:`cldl.data.augment`).

    ``rank`` > 0 (another process of a multi-process run) draws its own stream from ``(seed, rank)``; rank 0 draws
    the single-process stream, so a one-process run is unchanged. ``deferred``: :meth:`sample` returns the drawn
    batch unaugmented (:class:`cldl.data.augment.PlannedBatch`) for the training device to augment; the random
    draws, and so the patches, are the same either way.
    """

    def __init__(
        self,
        cases: list[Preprocessed],
        patch: tuple[int, int, int],
        fg_rate: float,
        flip_prob: float,
        seed: int,
        pad_value: float = 0.0,
        rank: int = 0,
        augment: str = "paper",
        deferred: bool = False,
    ) -> None:
        self.patch = patch
        self.deferred = deferred
        self.fg_rate = fg_rate
        self.augmentation = augment_preset(augment, flip_prob)
        self.pad_value = pad_value
        self.rng = np.random.default_rng(seed if rank == 0 else [seed, rank])
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

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | PlannedBatch:
        """A batch ``(B x C x P^3 float32, B x P^3 int64)``; with ``deferred`` its :class:`PlannedBatch`, whose
        ``apply(device)`` gives the same batch augmented on that device."""
        batch = PlannedBatch(tuple(self._plan() for _ in range(batch_size)), self.patch, self.pad_value)
        return batch if self.deferred else batch.apply()

    def _plan(self) -> PlannedPatch:
        """Draw one patch: case, position, then its augmentation (the order of draws exact resume relies on)."""
        index = int(self.rng.integers(len(self.images)))
        images, labels = self.images[index], self.labels[index]
        shape = labels.shape
        use_fg = self.fg_rate > 0 and len(self.foreground[index]) and self.rng.random() < self.fg_rate
        if use_fg:
            centre = np.unravel_index(self.foreground[index][self.rng.integers(len(self.foreground[index]))], shape)
            start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch, shape)]
        else:
            start = [int(self.rng.integers(s - p + 1)) for s, p in zip(shape, self.patch)]
        aug = self.augmentation
        matrix = spatial_matrix(self.rng, aug) if aug.spatial else None
        centre = None
        if matrix is None:
            region = tuple(slice(a, a + p) for a, p in zip(start, self.patch))
        else:
            centre = np.array(start) + (np.array(self.patch) - 1) / 2
            region = source_region(shape, centre, self.patch, matrix)
            centre = centre - np.array([s.start for s in region])
        intensity = draw_intensity(self.rng, aug, (images.shape[0], *self.patch)) if aug.intensity else None
        flips = tuple(axis for axis in range(3) if self.rng.random() < aug.flip_prob)
        return PlannedPatch(
            torch.from_numpy(np.array(images[(slice(None),) + region], dtype=np.float32)),
            torch.from_numpy(np.array(labels[region])),
            matrix,
            centre,
            intensity,
            flips,
        )


def load_dataset(
    config: TrainConfig, task: Task, prep: PreprocessConfig, reporter: Reporter
) -> tuple[list[Preprocessed], list[Preprocessed], list[str], list[str]]:
    """Train and validation cases (preprocessed; memory-mapped from the cache when one is set) and their ids."""
    if config.phantoms is not None:
        return _phantom_dataset(config.phantoms, task, prep, reporter)
    files = [c for c in discover_cases(config.data, task) if c.label is not None]
    if len(files) < 2:
        raise InputError(f"{config.data}: need at least 2 labelled cases to train and validate, found {len(files)}")
    train_files, val_files = split_cases(files, config.val_fraction, config.split_seed)
    cache = open_cache(config.cache)
    cases = []
    for i, case in enumerate(train_files + val_files):
        cases.append(cache.load(case, task, prep) if cache is not None else load_case(case, task, prep))
        reporter.progress("load", i + 1, len(files))
    if cache is not None and cache.misses:
        reporter.log(f"preprocessed {cache.misses} case(s) into the cache {cache.folder}")
    n = len(train_files)
    return cases[:n], cases[n:], [c.case_id for c in train_files], [c.case_id for c in val_files]


def _phantom_dataset(
    spec: dict[str, Any], task: Task, prep: PreprocessConfig, reporter: Reporter
) -> tuple[list[Preprocessed], list[Preprocessed], list[str], list[str]]:
    """Synthetic cases: ``{"train_seeds": [a, b], "val_seeds": [c, d], ...}`` (half-open ranges).

    ``"generator": "procedural"`` (default; ``shape``, ``spacing``) makes :mod:`cldl.data.phantoms` cases;
    ``"generator": "anatomy"`` (BraTS only; ``anatomy``: :class:`cldl.data.anatomy.AnatomyConfig` keys) makes
    anatomy-based cases.
    """
    from .data import phantoms

    generator = spec.get("generator", "procedural")
    allowed = {"generator", "train_seeds", "val_seeds"} | (
        {"anatomy"} if generator == "anatomy" else {"shape", "spacing"}
    )
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"unknown phantom keys {sorted(unknown)} for the {generator!r} generator")
    if generator == "anatomy":
        from .data.anatomy import AnatomyConfig, anatomy_case

        if task.name != "brats":
            raise ValueError(f"the anatomy generator makes BraTS cases, not {task.name!r}")
        anatomy_config = AnatomyConfig.from_dict(spec.get("anatomy", {}))

        def make(seed: int) -> phantoms.PhantomCase:
            return anatomy_case(seed, anatomy_config)

    elif generator == "procedural":
        build = {"brats": phantoms.brats_phantom, "mmwhs_ct": phantoms.mmwhs_phantom}.get(task.name)
        if build is None:
            raise ValueError(f"phantoms exist for the brats and mmwhs_ct tasks, not {task.name!r}")
        shape = tuple(spec.get("shape", (96, 96, 96)))
        spacing = tuple(spec.get("spacing", (1.0, 1.0, 1.0)))

        def make(seed: int) -> phantoms.PhantomCase:
            return build(seed, shape=shape, spacing=spacing)

    else:
        raise ValueError(f"unknown phantom generator {generator!r}; use 'procedural' or 'anatomy'")
    train_seeds = range(*spec.get("train_seeds", (0, 20)))
    val_seeds = range(*spec.get("val_seeds", (10_000, 10_004)))
    out: list[list[Preprocessed]] = [[], []]
    ids: list[list[str]] = [[], []]
    total = len(train_seeds) + len(val_seeds)
    for part, seeds in enumerate((train_seeds, val_seeds)):
        for seed in seeds:
            case = make(seed)
            labels = task.labels_to_classes(case.labels)
            out[part].append(preprocess(case.images, prep, task.modalities, labels, geometry=case.geometry))
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
    rank: int = 0,
    world_size: int = 1,
    empty: str = "brats",
    et_min_voxels: int = 0,
) -> dict[str, float]:
    """Full-volume sliding-window Dice per region (mean over cases) and their mean as ``dice_mean``.

    ``empty`` scores a region empty in prediction and reference (Dice 1 for ``brats``, 0 for ``authors``);
    ``et_min_voxels`` > 0 relabels a small predicted enhancing tumour as necrosis first.

    With ``world_size`` > 1 every rank validates its share of the cases (``cases[rank::world_size]``) and the
    per-case scores are gathered, so every rank returns the numbers one process would have computed.
    """
    model.eval()
    device = next(model.parameters()).device
    shard = range(rank, len(cases), world_size)
    rows: list[tuple[int, list[float]]] = []
    for done, index in enumerate(shard):
        case = cases[index]
        autocast = autocast_dtype("auto" if device.type == "cuda" else "fp32", device)  # as before: fp32 on CPU
        probs = sliding_window_probabilities(
            model, case.images, patch, overlap=overlap, pad_value=pad_value, autocast=autocast
        )
        pred = relabel_small_et(probs.argmax(0).cpu().numpy(), task, et_min_voxels)
        rows.append(
            (index, [dice(np.isin(pred, r.classes), np.isin(case.labels, r.classes), empty) for r in task.regions])
        )
        reporter.progress("validate", done + 1, len(shard))
    model.train()
    if world_size > 1:
        gathered: list[list[tuple[int, list[float]]] | None] = [None] * world_size
        torch.distributed.all_gather_object(gathered, rows)
        rows = sorted(row for part in gathered for row in part or [])
    scores = {r.name: [values[i] for _, values in rows] for i, r in enumerate(task.regions)}
    result = {f"dice_{name}": float(np.mean(values)) for name, values in scores.items()}
    result["dice_mean"] = float(np.mean(list(result.values())))
    return result


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
            _truncate_log(self.out_dir / "metrics.jsonl", run.start_epoch)
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
            parts = self._step(run.step_model, run.optimizer, run.scaler, run.prefetcher, progress)
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
        run.scheduler.step()
        broadcast_buffers(ctx, run.model)  # rank 0's BatchNorm statistics for validation and the checkpoint
        record = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"]}
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
            raise FloatingPointError(
                f"the loss became {loss.item() if not finite else 'NaN/Inf'}{where} "
                "(check the data and lower the learning rate)"
            )
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
            "command": " ".join(sys.argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "warm_start": self.warm_start,
        }


def warm_start(model: UNetLDL, name_or_path: str, task: Task, model_config: ModelConfig) -> dict[str, Any]:
    """Load the weights of a model name or checkpoint into ``model``; returns where they came from (provenance)."""
    from .registry import resolve_model, sha256_of

    path = resolve_model(name_or_path)
    saved = load_checkpoint(path)
    if saved.task.name != task.name or saved.model_config != model_config:
        raise ValueError(
            f"init_from {name_or_path}: its task {saved.task.name!r} and network {saved.model_config.to_dict()} "
            f"differ from this run's {task.name!r} and {model_config.to_dict()}; warm start needs the same ones"
        )
    model.load_state_dict(saved.state_dict)
    return {
        "path": str(path),
        "sha256": sha256_of(path),
        "epochs": saved.provenance.get("epoch"),
        "metrics": saved.provenance.get("metrics", {}),
        "warm_start": saved.provenance.get("warm_start"),  # the source's own warm start: the whole chain
    }


def adam_options(impl: str) -> dict[str, bool]:
    """``torch.optim.Adam`` keyword arguments of an implementation: ``fused``, ``foreach`` or ``loop``."""
    if impl not in ADAM_IMPLS[1:]:
        raise ValueError(f"Adam implementation must be one of {list(ADAM_IMPLS[1:])}, got {impl!r}")
    return {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an Adam state saved by any implementation into ``optimizer``, which keeps its own (fused or not).

    ``load_state_dict`` would take the saved groups' ``fused``/``foreach`` flags; this keeps the optimiser's, puts
    each ``step`` count where its implementation keeps it (on the parameter's device when fused, else CPU) and lays
    the moments out like their parameter (a run resumed with another ``channels_last``: CUDA's fused Adam refuses
    moments whose strides differ from the parameter's).
    """
    flags = [{key: group.get(key) for key in ("fused", "foreach")} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, flags):
        group.update(kept)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for param in group["params"]:
            values = optimizer.state.get(param, {})
            for key, value in values.items():
                if key == "step":
                    step = value.to(device=param.device, dtype=torch.float32) if on_device else value.to("cpu")
                    values[key] = step
                elif value.shape == param.shape and value.stride() != param.stride():
                    values[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


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
