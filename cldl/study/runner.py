"""The evidence study (``cldl ablate``): train and evaluate every variant x seed of a study config, resumably.

A study config (YAML/JSON) holds ``train`` (the :class:`~cldl.training.config.TrainConfig` keys every run shares),
``variants`` (per-variant overrides of those keys; ``model`` dicts are merged), ``seeds``, ``baseline`` (the
variant every other is compared with), ``synthetic`` (the anatomy-based cases: ``train_seeds`` and ``test_seeds``
as half-open ranges and the ``anatomy`` generator settings) and ``evaluation`` (``band_mm``, ``overlap``).

Layout of the output folder ``DIR``:

* ``study.json``: the study as run (a later call with a different study is refused);
* ``data/train``, ``data/test``, ``data/test_fractions``: the synthetic cases, written once (not with ``--data``);
* ``runs/<variant>/seed<k>/``: the trainer's run folder plus ``result.json`` (per-case metrics, written atomically
  last: a run with it is finished and skipped) and ``qualitative.npz`` (one axial slice of the first test case);
* ``results.csv``, ``results.json``, ``cases.csv`` and ``figures/`` (:mod:`cldl.study.report`).

With ``--data`` the same study trains on a dataset folder and the test cases are the trainer's validation split
(``val_fraction``, ``split_seed``); the last checkpoint (``last.pt``) is evaluated, never the one selected on the
validation cases, so that split is not used for any choice.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import load_checkpoint
from ..config_files import check_known_keys, read_config_file
from ..data.cases import load_case
from ..data.discovery import discover_cases, split_cases
from ..data.layouts import CaseFiles
from ..data.preprocess import PreprocessConfig
from ..evaluation.calibration import ECE_BINS, calibration, qu_brats_score
from ..evaluation.overlap import dice
from ..evaluation.regions import region_metrics
from ..events import Reporter
from ..files.atomic_writes import atomic_path
from ..inference.predictor import sliding_window_probabilities
from ..method.curriculum import region_sizes
from ..method.distributions import normalized_entropy
from ..method.network import UNetLDL
from ..tasks import Task, get_task
from ..training.config import TrainConfig
from ..training.trainer import Trainer

STUDY_KEYS = ("seeds", "baseline", "train", "variants", "synthetic", "evaluation")
SYNTHETIC_DEFAULTS = {"train_seeds": [0, 16], "test_seeds": [50_000, 50_010], "anatomy": {}}
EVALUATION_DEFAULTS = {"band_mm": 4.0, "overlap": 0.5}
MIN_TEST_SEED = 50_000
MAX_TRAIN_SEED = 10_000


@dataclass
class Study:
    """A parsed study config; :meth:`run_config` gives the training config of one variant and seed."""

    train: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    baseline: str = "unet"
    synthetic: dict[str, Any] = field(default_factory=lambda: dict(SYNTHETIC_DEFAULTS))
    evaluation: dict[str, Any] = field(default_factory=lambda: dict(EVALUATION_DEFAULTS))

    def __post_init__(self) -> None:
        if not self.variants or self.baseline not in self.variants:
            raise ValueError(f"the study needs variants, including the baseline {self.baseline!r}")
        if not self.seeds:
            raise ValueError("the study needs at least one seed")
        forbidden = sorted({"data", "phantoms", "seed"} & set(self.train))
        if forbidden:
            raise ValueError(f"the study's train section must not set {forbidden} (the study sets them)")
        self.synthetic = {**SYNTHETIC_DEFAULTS, **self.synthetic}
        self.evaluation = {**EVALUATION_DEFAULTS, **self.evaluation}
        check_known_keys(self.synthetic, list(SYNTHETIC_DEFAULTS), "study 'synthetic'")
        check_known_keys(self.evaluation, list(EVALUATION_DEFAULTS), "study 'evaluation'")
        train, test = self.synthetic["train_seeds"], self.synthetic["test_seeds"]
        if train[1] > MAX_TRAIN_SEED or test[0] < MIN_TEST_SEED or train[0] >= train[1] or test[0] >= test[1]:
            raise ValueError(
                f"synthetic seeds: training in [0, {MAX_TRAIN_SEED}), test from {MIN_TEST_SEED} (half-open ranges)"
            )
        for variant in self.variants:
            self.run_config(variant, self.seeds[0], "<data>")  # every variant's config is valid

    @classmethod
    def from_file(cls, path: str | Path) -> Study:
        """Read a YAML or JSON study config, naming unknown keys."""
        data = read_config_file(path)
        check_known_keys(data, list(STUDY_KEYS), "study", f"{path}: ")
        return cls(**{k: v if k != "variants" else {n: o or {} for n, o in v.items()} for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (``study.json``)."""
        return {k: copy.deepcopy(getattr(self, k)) for k in STUDY_KEYS}

    def run_config(self, variant: str, seed: int, data: str | Path, cache: str | None = None) -> TrainConfig:
        """The training config of ``variant`` with ``seed`` on the dataset folder ``data``."""
        overrides = copy.deepcopy(self.variants[variant])
        merged = {**copy.deepcopy(self.train), **overrides}
        merged["model"] = {**self.train.get("model", {}), **overrides.get("model", {})}
        merged.update(seed=int(seed), data=str(data))
        if cache is not None and "cache" not in self.train:
            merged["cache"] = cache
        return TrainConfig.from_dict(merged)


@dataclass
class EvalCase:
    """One preprocessed test case: images, class labels, true fractions (None on real data) and spacing (mm)."""

    case_id: str
    images: np.ndarray
    labels: np.ndarray
    fractions: np.ndarray | None
    spacing: tuple[float, float, float]


# --------------------------------------------------------------------------------------------------------------
# data


def write_synthetic(study: Study, folder: Path, reporter: Reporter) -> tuple[Path, Path]:
    """Write the study's anatomy-based training and test cases once (complete cases are kept)."""
    from ..data.anatomy import AnatomyConfig, anatomy_case
    from ..data.phantoms import write_case
    from ..data.synth import case_complete, write_dataset

    config = AnatomyConfig.from_dict(study.synthetic["anatomy"])
    train_dir, test_dir, fraction_dir = folder / "train", folder / "test", folder / "test_fractions"
    write_dataset(train_dir, range(*study.synthetic["train_seeds"]), config, reporter=reporter)
    fraction_dir.mkdir(parents=True, exist_ok=True)
    seeds = range(*study.synthetic["test_seeds"])
    for done, seed in enumerate(seeds):
        case_id = f"anatomy_{seed:05d}"
        fractions_path = fraction_dir / f"{case_id}.npy"
        if not (fractions_path.is_file() and case_complete(test_dir, case_id, ("flair", "t1", "t1ce", "t2"))):
            case = anatomy_case(seed, config)
            write_case(case, test_dir)
            with atomic_path(fractions_path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, case.fractions.astype(np.float16))
        reporter.progress("synth test", done + 1, len(seeds))
    return train_dir, test_dir


def held_out_files(study: Study, data: Path, test_dir: Path | None, task: Task) -> list[CaseFiles]:
    """The test cases: the synthetic test folder, or the trainer's validation split of ``data``."""
    if test_dir is not None:
        return discover_cases(test_dir, task)
    files = [c for c in discover_cases(data, task) if c.label is not None]
    config = study.run_config(study.baseline, study.seeds[0], data)
    return split_cases(files, config.val_fraction, config.split_seed)[1]


def load_test_case(files: CaseFiles, task: Task, prep: PreprocessConfig, fraction_dir: Path | None) -> EvalCase:
    """Preprocess one test case; its true fractions follow the same reorientation and crop."""
    case = load_case(files, task, prep)
    fractions = None
    if fraction_dir is not None:
        if case.resampled:
            raise ValueError(
                "the synthetic test cases must be on the network grid: set the anatomy spacing to the "
                "preprocessing's target_spacing"
            )
        full = case.orientation.apply(np.load(fraction_dir / f"{files.case_id}.npy").astype(np.float32))
        fractions = np.ascontiguousarray(full[(slice(None),) + tuple(slice(a, b) for a, b in case.bbox)])
    spacing = tuple(float(s) for s in case.grid.spacing_zyx) if case.grid is not None else (1.0, 1.0, 1.0)
    return EvalCase(files.case_id, case.images, case.labels, fractions, spacing)


# --------------------------------------------------------------------------------------------------------------
# metrics


def boundary_band(ref: np.ndarray, spacing: tuple[float, ...], band_mm: float) -> np.ndarray:
    """Voxels whose centre lies within ``band_mm`` of the reference boundary (inside or outside)."""
    from scipy.ndimage import distance_transform_edt

    ref = np.asarray(ref, bool)
    inside = distance_transform_edt(ref, sampling=spacing)
    outside = distance_transform_edt(~ref, sampling=spacing)
    return (ref & (inside <= band_mm)) | (~ref & (outside <= band_mm))


def band_dice(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], band_mm: float) -> float:
    """Dice inside the boundary band of ``ref``; NaN when the reference is empty (no boundary)."""
    ref = np.asarray(ref, bool)
    if not ref.any():
        return math.nan
    band = boundary_band(ref, spacing, band_mm)
    return dice(np.asarray(pred, bool)[band], ref[band])


def distribution_error(predicted: torch.Tensor, fractions: torch.Tensor, region: int) -> float:
    """Mean absolute error between a predicted distribution grid and the true fractions average-pooled by
    ``region`` (``K x ...`` each; the prediction's grid is the pooled one)."""
    pooled = F.avg_pool3d(fractions[None], region)[0] if region > 1 else fractions
    if pooled.shape != predicted.shape:
        raise ValueError(f"pooled fractions {tuple(pooled.shape)} do not match the prediction {tuple(predicted.shape)}")
    return float((predicted.float() - pooled.float()).abs().mean())


def tumour_window(labels: np.ndarray, window: tuple[int, ...]) -> tuple[slice, ...]:
    """The window-sized box centred on the foreground's centre of mass (the volume centre without foreground),
    clipped to the volume (an axis shorter than the window starts at 0)."""
    points = np.argwhere(labels > 0)
    centre = points.mean(axis=0) if len(points) else (np.array(labels.shape) - 1) / 2
    starts = [int(np.clip(round(c - w / 2), 0, max(0, s - w))) for c, w, s in zip(centre, window, labels.shape)]
    return tuple(slice(a, a + w) for a, w in zip(starts, window))


@torch.no_grad()
def stage_errors(model: UNetLDL, case: EvalCase, window: tuple[int, ...], device: torch.device) -> dict[str, float]:
    """Distribution errors on one window around the tumour: each LDL stage's prediction against the true
    fractions pooled to its region (``stage_mae_r8`` ...; NaN for absent stages) and the final head's softmax pooled
    the same way (``final_mae_r1`` ... ``final_mae_r8``, every variant)."""
    fractions = case.fractions
    if fractions is None:  # real data: the one-hot reference is the true distribution
        fractions = np.moveaxis(np.eye(model.config.num_classes, dtype=np.float32)[case.labels], -1, 0)
    box = tumour_window(case.labels, window)
    image = torch.from_numpy(np.ascontiguousarray(case.images[(slice(None),) + box]))
    truth = torch.from_numpy(np.ascontiguousarray(fractions[(slice(None),) + box], dtype=np.float32))
    pad = [w - s for w, s in zip(window, image.shape[1:])]
    if any(pad):  # a volume smaller than the window: pad at the far side (background outside the volume)
        sides = (0, pad[2], 0, pad[1], 0, pad[0])
        image = F.pad(image, sides)
        background = F.pad(torch.zeros_like(truth[:1]), sides, value=1.0)
        truth = torch.cat([background + F.pad(truth[:1], sides), F.pad(truth[1:], sides)])
    output = model(image[None].to(device))
    result = {}
    for stage, region in enumerate(region_sizes(3)):
        present = stage < len(output.stage_log_probs)
        predicted = output.stage_log_probs[stage][0].exp().cpu() if present else None
        result[f"stage_mae_r{region}"] = distribution_error(predicted, truth, region) if present else math.nan
    final = torch.softmax(output.logits[0].float(), dim=0).cpu()
    for region in (1, 2, 4, 8):
        pooled = F.avg_pool3d(final[None], region)[0] if region > 1 else final
        result[f"final_mae_r{region}"] = distribution_error(pooled, truth, region)
    return result


def case_metrics(probs: np.ndarray, case: EvalCase, task: Task, band_mm: float) -> tuple[dict[str, float], np.ndarray]:
    """Every per-case metric of a ``K x ...`` probability map, and the reliability-bin sums (3 x ``ECE_BINS``:
    summed confidence, correct count, voxel count) over the brain."""
    pred = probs.argmax(0)
    brain = (case.images != 0).any(0)
    values: dict[str, float] = {}
    for region, scores in region_metrics(pred, case.labels, task, case.spacing, ("dice", "hd95", "assd")).items():
        values.update({f"{metric}_{region}": score for metric, score in scores.items()})
    uncertainty = normalized_entropy(torch.from_numpy(probs)[None])[0].numpy() * 100.0
    for region in task.regions:
        truth, mask = np.isin(case.labels, region.classes), np.isin(pred, region.classes)
        values[f"band_dice_{region.name}"] = band_dice(mask, truth, case.spacing, band_mm)
        values[f"qu_score_{region.name}"] = qu_brats_score(truth, mask, uncertainty, brain)["unc_score"]
    values.update(calibration(probs, case.labels, brain))
    confidence, correct = probs.max(0)[brain], (pred == case.labels)[brain]
    index = np.clip(np.ceil(confidence * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
    bins = np.stack(
        [np.bincount(index, weights=w, minlength=ECE_BINS) for w in (confidence, correct, np.ones_like(confidence))]
    )
    return values, bins


def evaluate_run(
    checkpoint_path: Path, cases: list[EvalCase], task: Task, evaluation: dict[str, Any], device: torch.device
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Per-case metrics and reliability bins of one checkpoint, and the qualitative slice of the first case."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = checkpoint.build_model(device)
    window = tuple(int(w) for w in checkpoint.patch_size)
    rows, bins, slices = [], np.zeros((3, ECE_BINS)), {}
    for case in cases:
        probs = sliding_window_probabilities(model, case.images, window, overlap=evaluation["overlap"])
        probs = probs.cpu().numpy()
        values, case_bins = case_metrics(probs, case, task, evaluation["band_mm"])
        values.update(stage_errors(model, case, window, device))
        rows.append({"case_id": case.case_id, **values})
        bins += case_bins
        if not slices:
            z = int(np.argmax((case.labels > 0).sum(axis=(1, 2))))
            slices = {"image": case.images[0, z], "reference": case.labels[z], "prediction": probs.argmax(0)[z]}
    return {"cases": rows, "reliability": bins.tolist()}, slices


# --------------------------------------------------------------------------------------------------------------
# the study


def run_study(
    study: Study,
    out: str | Path,
    data: str | Path | None = None,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    reporter: Reporter | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train and evaluate the selected variants x seeds (finished runs are skipped, interrupted ones resumed),
    then write the tables and figures over every finished run in ``out``; returns a summary."""
    from .report import write_report

    out, reporter = Path(out), reporter or Reporter("none")
    variants = only or list(study.variants)
    missing = sorted(set(variants) - set(study.variants))
    if missing:
        raise ValueError(f"unknown variants {missing}; the study has {list(study.variants)}")
    _check_same_study(study, out, data)
    task = get_task(study.train.get("task", "brats"))
    fraction_dir = None
    if data is None:
        train_dir, test_dir = write_synthetic(study, out / "data", reporter)
        fraction_dir = out / "data" / "test_fractions"
    else:
        train_dir, test_dir = Path(data), None
    prep = PreprocessConfig.from_dict({"image_kind": task.image_kind, **study.train.get("preprocess", {})})
    cases: list[EvalCase] | None = None  # loaded when the first run needs evaluating
    timings = []
    for variant in variants:
        for seed in seeds or study.seeds:
            run_dir = out / "runs" / variant / f"seed{seed}"
            if (run_dir / "result.json").is_file():
                reporter.log(f"{variant} seed {seed}: finished, skipped")
                continue
            config = study.run_config(variant, seed, train_dir, cache=str(out / "cache"))
            started = time.perf_counter()
            trainer = Trainer(config, run_dir, reporter, stop_requested=stop_requested)
            summary = trainer.run(resume=(run_dir / "last.pt").is_file())
            if summary["stopped"]:
                reporter.log(f"{variant} seed {seed}: stopped; run `cldl ablate` again to continue")
                return {"out": str(out), "stopped": True}
            trained = time.perf_counter() - started
            if cases is None:
                files = held_out_files(study, train_dir, test_dir, task)
                cases = [load_test_case(f, task, prep, fraction_dir) for f in files]
            result, slices = evaluate_run(run_dir / "last.pt", cases, task, study.evaluation, trainer.device)
            result.update(variant=variant, seed=seed, train_seconds=trained)
            result["eval_seconds"] = time.perf_counter() - started - trained
            with atomic_path(run_dir / "qualitative.npz") as tmp, open(tmp, "wb") as handle:
                np.savez_compressed(handle, **slices)
            with atomic_path(run_dir / "result.json") as tmp:
                tmp.write_text(json.dumps(_clean(result), indent=1))
            timings.append(time.perf_counter() - started)
            reporter.log(f"{variant} seed {seed}: done in {timings[-1]:.0f} s")
    report = write_report(out, study.baseline)
    return {"out": str(out), "stopped": False, "runs_done_now": len(timings), "run_seconds": timings, **report}


def _check_same_study(study: Study, out: Path, data: str | Path | None) -> None:
    """Record the study in ``out/study.json``; refuse an output folder that holds another study or data source."""
    record = {"study": study.to_dict(), "data": None if data is None else str(Path(data).resolve())}
    path = out / "study.json"
    if path.is_file():
        if json.loads(path.read_text()) != json.loads(json.dumps(record)):
            raise ValueError(f"{out} holds another study (or data source): use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
