"""The cases of a run: a dataset folder split into training and validation, or synthetic phantoms."""

from __future__ import annotations

from typing import Any

from ..config_files import check_known_keys
from ..data.cache import open_cache
from ..data.cases import load_case
from ..data.discovery import discover_cases, split_cases
from ..data.preprocess import InputError, PreprocessConfig, Preprocessed, preprocess
from ..events import Reporter
from ..tasks import Task
from .config import TrainConfig


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
    from ..data import phantoms

    generator = spec.get("generator", "procedural")
    allowed = {"generator", "train_seeds", "val_seeds"} | (
        {"anatomy"} if generator == "anatomy" else {"shape", "spacing"}
    )
    check_known_keys(spec, sorted(allowed), f"phantom ({generator!r} generator)")
    if generator == "anatomy":
        from ..data.anatomy import AnatomyConfig, anatomy_case

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
