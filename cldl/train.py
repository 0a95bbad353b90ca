"""The old home of training, kept for code that imports ``cldl.train``: training now lives in :mod:`cldl.training`
(:mod:`~cldl.training.config`, :mod:`~cldl.training.trainer`, ...) and config files are read by
:mod:`cldl.config_files`. The public names are re-exported here unchanged.
"""

from .config_files import load_config, merge_configs, read_config_file, resolve_config
from .training.cases import load_dataset
from .training.config import TrainConfig, check_config_values
from .training.sampler import PatchSampler
from .training.state import (
    adam_options,
    json_to_random_state,
    load_optimizer_state,
    random_state_to_json,
    seed_everything,
    warm_start,
)
from .training.trainer import RunState, Trainer, train
from .training.validation import validate

__all__ = [
    "PatchSampler",
    "RunState",
    "TrainConfig",
    "Trainer",
    "adam_options",
    "check_config_values",
    "json_to_random_state",
    "load_config",
    "load_dataset",
    "load_optimizer_state",
    "merge_configs",
    "random_state_to_json",
    "read_config_file",
    "resolve_config",
    "seed_everything",
    "train",
    "validate",
    "warm_start",
]
