"""The training config: :class:`TrainConfig` (every key of a run, read from a file or preset and checked
before anything is written) and the checks of its values."""

from __future__ import annotations

import math
import numbers
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import defaults
from ..config_files import check_known_keys, load_config
from ..data.augment import preset as augment_preset
from ..data.preprocess import PreprocessConfig
from ..evaluation.overlap import EMPTY_RULES
from ..method.curriculum import Curriculum
from ..method.losses import LossConfig
from ..method.network import ModelConfig

FINAL_TARGETS = ("onehot", "gaussian")
AMP_DTYPES = ("auto", "bf16", "fp16")
AUGMENT_ON = ("auto", "prefetch", "device")
ADAM_IMPLS = ("auto", "fused", "foreach", "loop")


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
        defaults.check_patch_size(self.patch_size, "patch_size")
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
        check_known_keys(self.model, sorted(ModelConfig.__dataclass_fields__), "model")
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
        check_known_keys(data, sorted(f.name for f in fields(cls)), "config")
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
