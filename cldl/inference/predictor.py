"""The predictor: load a checkpoint once, then segment volumes by Gaussian-weighted sliding windows.

Outputs live on the input grid: the label map in the task's original label values, the uncertainty map
(normalised entropy or 1 - max probability, float16), the near-tie mask (the two most likely classes within
``NEAR_TIE`` of each other) and, on request, per-class probabilities (float16) and the LDL stages' region
distributions (:mod:`cldl.inference.region_maps`).
Probabilities are averaged over windows (and mirror flips with TTA) on the cropped foreground, then the
argmax is taken; no float64 copy of a volume is ever made.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint, load_checkpoint
from ..data.cases import check_mixups, check_modality_order
from ..data.preprocess import (
    InputError,
    Preprocessed,
    input_grid_probabilities,
    normalize_tensor,
    preprocess,
    stack_channels,
)
from ..defaults import OVERLAP
from ..files.geometry import Geometry
from ..files.images import read_channels
from ..method.distributions import UNCERTAINTY_MAPS
from ..tasks import Task
from .precision import autocast_dtype
from .region_maps import StageAccumulator, StageMaps, stage_maps_from

ProgressFn = Callable[[int, int], None]

DEFAULT_OVERLAP = OVERLAP  # cldl.defaults, measured by benchmarks/overlap.py
MAX_WINDOW_FACTOR = 50  # the most sliding windows an overlap may plan, in multiples of overlap 0.5's
CPU_WINDOW_MEMORY_GB = 3.0
"""Activation memory the predictor may use for a batch of windows on CPU (keeps a BraTS case under 4 GB)."""
ACTIVATION_FACTOR = 11
"""Peak inference activations of UNetLDL, in float32 maps of (base width x window) (8-11 measured on CPU)."""
NEAR_TIE = 0.2
"""A voxel whose two most likely classes are closer than this could flip label (confidence summary)."""


class Cancelled(RuntimeError):
    """Raised when a cancel callback asks the predictor to stop."""


@dataclass
class Prediction:
    """A segmentation on the input grid."""

    labels: np.ndarray  # original label values (z, y, x)
    classes: np.ndarray  # class indices 0..K-1, uint8
    uncertainty: np.ndarray  # float16 in [0, 1]
    near_tie: np.ndarray  # bool: top-two class probabilities within NEAR_TIE
    probabilities: np.ndarray | None = None  # float16, K x z x y x
    stage_maps: StageMaps | None = None  # the LDL stages' region distributions (predict(stage_maps=...))


def near_tie(probs: torch.Tensor) -> torch.Tensor:
    """Voxels (``K x ...`` probabilities) whose two most likely classes are within ``NEAR_TIE`` of each other."""
    top = probs.topk(2, dim=0).values
    return (top[0] - top[1]) < NEAR_TIE


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(device)


def window_starts(size: int, window: int, overlap: float, symmetric: bool = True) -> list[int]:
    """Evenly spread window starts covering ``size`` with at least ``overlap`` between neighbours.

    ``symmetric`` starts are mirror-symmetric (``size - window - s`` is a start for every start ``s``), so the
    windows of a flipped volume are the flipped windows (what mirror TTA needs); when an odd number of windows has
    no integer middle start, that costs one window more along the axis. Without TTA the sliding window uses the
    plain ``symmetric=False`` placement.
    """
    if size <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((size - window) / step) + 1
    if not symmetric:
        return sorted({math.floor(i * (size - window) / (count - 1) + 0.5) for i in range(count)})
    first_half = [math.floor(i * (size - window) / (count - 1) + 0.5) for i in range((count + 1) // 2)]
    return sorted(set(first_half) | {size - window - s for s in first_half})


def window_count(shape: Sequence[int], window: Sequence[int], overlap: float, symmetric: bool = False) -> int:
    """How many sliding windows cover a volume of ``shape``."""
    return math.prod(len(window_starts(s, w, overlap, symmetric)) for s, w in zip(shape, window))


def check_window_count(shape: Sequence[int], window: Sequence[int], overlap: float, symmetric: bool = False) -> None:
    """Refuse an overlap that plans more than :data:`MAX_WINDOW_FACTOR` times the windows of overlap 0.5 (an
    overlap near 1 plans one window per voxel step: hours for no better result), naming the count."""
    count = window_count(shape, window, overlap, symmetric)
    usual = window_count(shape, window, 0.5, symmetric)
    if count <= MAX_WINDOW_FACTOR * usual:
        return
    fitting = [
        o
        for o in (0.9, 0.875, 0.8, 0.75, 0.5)
        if window_count(shape, window, o, symmetric) <= MAX_WINDOW_FACTOR * usual
    ]
    raise ValueError(
        f"an overlap of {overlap:g} plans {count:,} sliding windows for this {'x'.join(map(str, shape))} volume, "
        f"more than {MAX_WINDOW_FACTOR} times the {usual} of overlap 0.5; use --overlap {fitting[0]:g} or less"
    )


def gaussian_importance(
    window: Sequence[int], sigma_scale: float = 1.0 / 8, device: torch.device | None = None
) -> torch.Tensor:
    """Separable Gaussian weight map (peak 1) that down-weights window borders; never exactly zero."""
    weight = torch.ones((), device=device)
    for axis, size in enumerate(window):
        x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
        g = torch.exp(-(x**2) / (2 * (sigma_scale * size) ** 2))
        shape = [1, 1, 1]
        shape[axis] = size
        weight = weight * g.view(shape)
    weight = weight / weight.max()
    return weight.clamp_(min=1e-3)


def window_memory_bytes(model: torch.nn.Module, window: Sequence[int]) -> int:
    """Estimated peak activation memory of one window's forward pass (``ACTIVATION_FACTOR`` float32 maps)."""
    width = getattr(getattr(model, "config", None), "base_width", None)
    if width is None:  # another network: the widest first-level convolution
        width = next((m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv3d)), 32)
    return int(ACTIVATION_FACTOR * width * math.prod(int(w) for w in window) * 4)


def memory_capped_window_batch(
    model: torch.nn.Module, window: Sequence[int], window_batch: int, memory_limit_gb: float | None
) -> int:
    """The largest batch of windows up to ``window_batch`` whose activations fit ``memory_limit_gb`` (at least 1).

    ``None`` picks the limit: ``CPU_WINDOW_MEMORY_GB`` on CPU, half the free memory on a GPU.
    """
    if memory_limit_gb is None:
        device = next(model.parameters()).device
        if device.type == "cuda":
            memory_limit_gb = torch.cuda.mem_get_info(device)[0] / 2 / 2**30
        else:
            memory_limit_gb = CPU_WINDOW_MEMORY_GB
    fits = int(memory_limit_gb * 2**30 // max(1, window_memory_bytes(model, window)))
    return max(1, min(window_batch, fits))


class Predictor:
    """Segments volumes with one checkpoint; build once, call :meth:`predict` many times.

    ``window_batch`` windows go through the network together unless their activations would exceed
    ``memory_limit_gb`` (default: ``CPU_WINDOW_MEMORY_GB`` on CPU, half the free GPU memory); on a GPU the
    network runs in bfloat16/float16 autocast. None of this changes the outputs beyond float rounding.

    Speed options (``benchmarks/gpu.sh`` measures each): ``channels_last`` runs the network in channels-last 3D
    memory format; ``compile`` is a ``torch.compile`` mode (``"default"``, ``"reduce-overhead"`` = CUDA graphs,
    ``"max-autotune"``), with every window batch padded to ``window_batch`` windows so the compiled network sees one
    shape; ``normalise_on_device`` (default: on a GPU) uploads the cropped raw images and z-scores them there.
    """

    def __init__(
        self,
        checkpoint: str | Path | Checkpoint,
        device: str = "auto",
        overlap: float = DEFAULT_OVERLAP,
        window_batch: int = 2,
        tta: bool = False,
        gaussian: bool = True,
        memory_limit_gb: float | None = None,
        precision: str = "auto",
        channels_last: bool = False,
        compile: str | None = None,
        normalise_on_device: bool | None = None,
    ) -> None:
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if window_batch < 1:
            raise ValueError(f"window_batch must be >= 1, got {window_batch}")
        if memory_limit_gb is not None and memory_limit_gb <= 0:
            raise ValueError(f"memory_limit_gb must be positive, got {memory_limit_gb}")
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed window shapes: let cuDNN pick its fastest kernels
        self.model = self.checkpoint.build_model(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.compile = compile
        self.network = self.model if compile is None else torch.compile(self.model, mode=compile, dynamic=False)
        self.normalise_on_device = self.device.type == "cuda" if normalise_on_device is None else normalise_on_device
        self.overlap = overlap
        self.window = tuple(self.checkpoint.patch_size)
        self.window_batch = memory_capped_window_batch(self.model, self.window, window_batch, memory_limit_gb)
        self.tta = tta
        self.gaussian = gaussian
        self.precision = precision
        self.autocast = autocast_dtype(precision, self.device)

    @property
    def task(self) -> Task:
        """The task the checkpoint segments."""
        return self.checkpoint.task

    def predict_files(self, paths: Sequence[str | Path], **kwargs) -> tuple[Prediction, Geometry]:
        """Read one image per modality (or one multi-channel image), predict on the first image's grid, and return
        that geometry; a modality on another grid is resampled onto the first with a warning (refused when the
        grids do not overlap)."""
        task = self.task
        check_modality_order(list(paths), task)
        arrays, geometries, names = [], [], []
        for path in paths:
            channels, geo = read_channels(path, np.float32)
            for index, channel in enumerate(channels):
                arrays.append(channel)
                geometries.append(geo)
                names.append(Path(path).name if len(channels) == 1 else f"channel {index} of {Path(path).name}")
        if len(arrays) != task.num_modalities:
            got = f"{len(paths)}" if len(arrays) == len(paths) else f"{len(arrays)} channels in {len(paths)} file(s)"
            raise InputError(
                f"model {task.name!r} expects {task.num_modalities} images ({', '.join(task.modalities)}), got {got}"
            )
        names = [f"{m} ({n})" for m, n in zip(task.modalities, names)]
        images, geometry = stack_channels(arrays, geometries, names, self.checkpoint.preprocess.image_kind)
        check_mixups(images, names)
        return self.predict(images, geometry=geometry, **kwargs), geometry

    def predict(
        self,
        images: np.ndarray,
        keep_probabilities: bool = False,
        uncertainty: str = "entropy",
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | None = None,
        geometry: Geometry | None = None,
        stage_maps: str | None = None,
    ) -> Prediction:
        """Segment one case given as ``C x z x y x`` array in the task's modality order.

        With ``geometry`` the checkpoint's orientation and resampling steps apply; the probabilities are mapped
        back onto the input grid (exactly, or by linear interpolation after resampling) before the argmax.
        ``stage_maps`` (``"nearest"`` or ``"linear"``, the interpolation onto the input grid) also returns the LDL
        stages' stitched region distributions.
        """
        if uncertainty not in UNCERTAINTY_MAPS:
            raise ValueError(f"uncertainty must be one of {sorted(UNCERTAINTY_MAPS)}, got {uncertainty!r}")
        task = self.task
        config = self.checkpoint.preprocess
        case = preprocess(images, config, task.modalities, geometry=geometry, normalise=not self.normalise_on_device)
        volume = (
            normalize_tensor(torch.from_numpy(case.images).to(self.device), config)
            if self.normalise_on_device
            else case.images
        )
        probs, stages = self.sliding_window_outputs(
            volume, stages=stage_maps is not None, progress=progress, cancel=cancel
        )
        maps = None if stage_maps is None else stage_maps_from(stages, case, stage_maps)
        if case.resampled:
            prediction = self._resampled_prediction(case, probs, keep_probabilities, uncertainty)
            prediction.stage_maps = maps
            return prediction
        uncert = UNCERTAINTY_MAPS[uncertainty](probs.unsqueeze(0))[0]
        classes = case.to_input(case.paste(probs.argmax(dim=0).to(torch.uint8).cpu().numpy()))
        uncertainty_map = case.to_input(case.paste(uncert.to(torch.float16).cpu().numpy()))
        ties = case.to_input(case.paste(near_tie(probs).cpu().numpy()))
        probabilities = None
        if keep_probabilities:
            crop_probabilities = probs.to(torch.float16).cpu().numpy()
            probabilities = case.paste(crop_probabilities)
            probabilities[0] = case.paste(crop_probabilities[0], fill=1.0)  # background outside the crop
            probabilities = case.to_input(probabilities)
        return Prediction(task.classes_to_labels(classes), classes, uncertainty_map, ties, probabilities, maps)

    def _resampled_prediction(
        self, case: Preprocessed, probs: torch.Tensor, keep_probabilities: bool, uncertainty: str
    ) -> Prediction:
        """Probabilities resampled slab by slab onto the input grid, then argmax and uncertainty there."""
        shape = case.input_shape
        classes = np.zeros(shape, dtype=np.uint8)
        uncertainty_map = np.zeros(shape, dtype=np.float16)
        ties = np.zeros(shape, dtype=bool)
        probabilities = np.zeros((self.task.num_classes, *shape), dtype=np.float16) if keep_probabilities else None
        for index, slab in input_grid_probabilities(case, probs.float().cpu().numpy()):
            tensor = torch.from_numpy(slab)
            classes[index] = tensor.argmax(dim=0).to(torch.uint8).numpy()
            uncertainty_map[index] = UNCERTAINTY_MAPS[uncertainty](tensor.unsqueeze(0))[0].to(torch.float16).numpy()
            ties[index] = near_tie(tensor).numpy()
            if probabilities is not None:
                probabilities[:, index] = slab.astype(np.float16)
        return Prediction(self.task.classes_to_labels(classes), classes, uncertainty_map, ties, probabilities)

    def sliding_window(
        self,
        volume: np.ndarray | torch.Tensor,
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """Class probabilities (K x d x h x w, float32, on the predictor's device) of a normalised volume."""
        return self.sliding_window_outputs(volume, progress=progress, cancel=cancel)[0]

    def sliding_window_outputs(
        self,
        volume: np.ndarray | torch.Tensor,
        stages: bool = False,
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
        """Class probabilities and, with ``stages``, the stitched stage distributions (module function)."""
        return sliding_window_outputs(
            self.network,
            volume,
            self.window,
            overlap=self.overlap,
            window_batch=self.window_batch,
            tta=self.tta,
            gaussian=self.gaussian,
            pad_value=None if self.checkpoint.preprocess.image_kind == "mr" else "min",
            progress=progress,
            cancel=cancel,
            autocast=self.autocast,
            stages=stages,
            channels_last=self.channels_last,
            fixed_batch=self.compile is not None,
        )


def sliding_window_probabilities(
    model: torch.nn.Module, volume: np.ndarray | torch.Tensor, window: Sequence[int], **kwargs
) -> torch.Tensor:
    """Softmax of ``model``'s final head over a ``C x d x h x w`` volume by weighted sliding windows (float32);
    keyword arguments as :func:`sliding_window_outputs`."""
    return sliding_window_outputs(model, volume, window, **kwargs)[0]


@torch.inference_mode()
def sliding_window_outputs(
    model: torch.nn.Module,
    volume: np.ndarray | torch.Tensor,
    window: Sequence[int],
    overlap: float = DEFAULT_OVERLAP,
    window_batch: int = 2,
    tta: bool = False,
    gaussian: bool = True,
    pad_value: str | None = None,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    autocast: torch.dtype | None = None,
    stages: bool = False,
    channels_last: bool = False,
    fixed_batch: bool = False,
) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
    """Softmax of ``model``'s final head over a ``C x d x h x w`` volume by weighted sliding windows (float32) and,
    with ``stages``, each LDL stage's ``(region, K x grid)`` distribution stitched on its own grid (coarsest first;
    :class:`cldl.inference.region_maps.StageAccumulator`), else an empty list.

    Volumes smaller than the window are padded evenly on both sides (with 0, or the volume's minimum for
    ``pad_value="min"``), so the windows of a mirrored volume are the mirrored windows. ``autocast`` runs the
    network in that dtype (:func:`cldl.inference.precision.autocast_dtype`); softmax and accumulation stay float32.
    ``channels_last`` feeds the network channels-last 3D batches; ``fixed_batch`` pads the last batch of windows to
    ``window_batch`` (repeating its last window) so that every call has the same shape (for compiled networks).
    """
    device = next(model.parameters()).device
    window = tuple(int(w) for w in window)
    image = volume if isinstance(volume, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(volume))
    image = image.to(device)
    shape = tuple(image.shape[1:])
    pad = [max(0, w - s) for s, w in zip(shape, window)]
    before = [p // 2 for p in pad]
    if any(pad):
        fill = float(image.min()) if pad_value == "min" else 0.0
        sides = [(b, p - b) for b, p in zip(before, pad)]
        image = F.pad(image, (*sides[2], *sides[1], *sides[0]), value=fill)
    padded = tuple(image.shape[1:])
    check_window_count(padded, window, overlap, tta)
    axes = (window_starts(s, w, overlap, symmetric=tta) for s, w in zip(padded, window))
    starts = list(itertools.product(*axes))
    weight = gaussian_importance(window, device=device) if gaussian else torch.ones(window, device=device)
    flips = [axes for n in range(4) for axes in itertools.combinations((2, 3, 4), n)] if tta else [()]
    accumulated = None
    stage_sums = StageAccumulator(shape, before, device) if stages else None
    coverage = torch.zeros(padded, dtype=torch.float32, device=device)
    total = len(starts)
    for first in range(0, total, window_batch):
        if cancel is not None and cancel():
            raise Cancelled("prediction cancelled")
        slices = [
            tuple(slice(s, s + w) for s, w in zip(start, window)) for start in starts[first : first + window_batch]
        ]
        windows = [image[(slice(None),) + sl] for sl in slices]
        if fixed_batch:
            windows += windows[-1:] * (window_batch - len(windows))
        batch = torch.stack(windows)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        probs, stage_probs = _mirrored_softmax(model, batch, flips, autocast, stages)
        if accumulated is None:
            accumulated = torch.zeros((probs.shape[1], *padded), dtype=torch.float32, device=device)
        for n, (sl, window_probs) in enumerate(zip(slices, probs)):
            accumulated[(slice(None),) + sl].addcmul_(window_probs, weight)
            coverage[sl].add_(weight)
            if stage_sums is not None:
                stage_sums.add([s.start for s in sl], [p[n] for p in stage_probs], weight)
        if progress is not None:
            progress(min(first + window_batch, total), total)
    accumulated.div_(coverage)
    crop = accumulated[(slice(None),) + tuple(slice(b, b + s) for b, s in zip(before, shape))]
    if not bool(torch.isfinite(crop).all()):
        raise RuntimeError("the network's outputs hold NaN or Inf values (broken weights?); no result written")
    return crop, [] if stage_sums is None else stage_sums.distributions()


def _mirrored_softmax(
    model: torch.nn.Module,
    batch: torch.Tensor,
    flips: list[tuple[int, ...]],
    autocast: torch.dtype | None,
    stages: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Softmax of the final head and, with ``stages``, the stage distributions, averaged over the mirror flips
    (float32; the network in ``autocast``)."""
    total, stage_totals = None, []
    for axes in flips:
        x = batch.flip(axes) if axes else batch
        with torch.autocast(batch.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            output = model(x)
        outputs = [torch.softmax(output.logits.float(), dim=1)]
        if stages:
            outputs += [log_probs.float().exp() for log_probs in output.stage_log_probs]
        outputs = [o.flip(axes) if axes else o for o in outputs]
        total = outputs[0] if total is None else total.add_(outputs[0])
        stage_totals = outputs[1:] if not stage_totals else [t.add_(o) for t, o in zip(stage_totals, outputs[1:])]
    return total.div_(len(flips)), [t.div_(len(flips)) for t in stage_totals]
