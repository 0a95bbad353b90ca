"""The predictor: load a checkpoint once, then segment volumes by Gaussian-weighted sliding windows.

Outputs live on the input grid: the label map in the task's original label values, the uncertainty map
(normalised entropy or 1 - max probability, float16) and, on request, per-class probabilities (float16).
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

from .checkpoint import Checkpoint, check_task, load_checkpoint
from .data.preprocess import InputError, preprocess
from .distributions import UNCERTAINTY_MAPS
from .io import Geometry, read_image
from .tasks import Task

ProgressFn = Callable[[int, int], None]


class Cancelled(RuntimeError):
    """Raised when a cancel callback asks the predictor to stop."""


@dataclass
class Prediction:
    """A segmentation on the input grid."""

    labels: np.ndarray  # original label values (z, y, x)
    classes: np.ndarray  # class indices 0..K-1, uint8
    uncertainty: np.ndarray  # float16 in [0, 1]
    probabilities: np.ndarray | None = None  # float16, K x z x y x


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(device)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Evenly spread window starts covering ``size`` with at least ``overlap`` between neighbours.

    The starts are mirror-symmetric (``size - window - s`` is a start for every start ``s``), so the windows
    of a flipped volume are the flipped windows.
    """
    if size <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((size - window) / step) + 1
    first_half = [math.floor(i * (size - window) / (count - 1) + 0.5) for i in range((count + 1) // 2)]
    return sorted(set(first_half) | {size - window - s for s in first_half})


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


class Predictor:
    """Segments volumes with one checkpoint; build once, call :meth:`predict` many times."""

    def __init__(
        self,
        checkpoint: str | Path | Checkpoint,
        device: str = "auto",
        overlap: float = 0.5,
        window_batch: int = 2,
        tta: bool = False,
        gaussian: bool = True,
    ) -> None:
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if window_batch < 1:
            raise ValueError(f"window_batch must be >= 1, got {window_batch}")
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.model = self.checkpoint.build_model(self.device)
        self.overlap = overlap
        self.window_batch = window_batch
        self.tta = tta
        self.gaussian = gaussian
        self.window = tuple(self.checkpoint.patch_size)

    @property
    def task(self) -> Task:
        """The task the checkpoint segments."""
        return self.checkpoint.task

    def predict_files(self, paths: Sequence[str | Path], **kwargs) -> tuple[Prediction, Geometry]:
        """Read one image per modality (same grid required), predict, and return the input geometry."""
        task = self.task
        if len(paths) != task.num_modalities:
            raise InputError(
                f"model {task.name!r} expects {task.num_modalities} images ({', '.join(task.modalities)}), "
                f"got {len(paths)}"
            )
        arrays, geometry = [], None
        for path, name in zip(paths, task.modalities):
            array, geo = read_image(path, np.float32)
            if geometry is None:
                geometry = geo
            elif not geometry.matches(geo):
                raise InputError(
                    f"{path} ({name}) is not on the same grid as {paths[0]}: size {geo.size} vs {geometry.size}, "
                    f"spacing {geo.spacing} vs {geometry.spacing}; resample it onto the first image first"
                )
            arrays.append(array)
        return self.predict(np.stack(arrays), **kwargs), geometry

    def predict(
        self,
        images: np.ndarray,
        keep_probabilities: bool = False,
        uncertainty: str = "entropy",
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Prediction:
        """Segment one case given as ``C x z x y x`` array in the task's modality order."""
        if uncertainty not in UNCERTAINTY_MAPS:
            raise ValueError(f"uncertainty must be one of {sorted(UNCERTAINTY_MAPS)}, got {uncertainty!r}")
        task = self.task
        case = preprocess(images, self.checkpoint.preprocess, task.modalities)
        probs = self.sliding_window(case.images, progress=progress, cancel=cancel)
        uncert = UNCERTAINTY_MAPS[uncertainty](probs.unsqueeze(0))[0]
        classes_crop = probs.argmax(dim=0).to(torch.uint8).cpu().numpy()
        index = tuple(slice(a, b) for a, b in case.bbox)
        classes = np.zeros(case.input_shape, dtype=np.uint8)
        classes[index] = classes_crop
        uncertainty_map = np.zeros(case.input_shape, dtype=np.float16)
        uncertainty_map[index] = uncert.to(torch.float16).cpu().numpy()
        probabilities = None
        if keep_probabilities:
            probabilities = np.zeros((task.num_classes, *case.input_shape), dtype=np.float16)
            probabilities[0] = 1.0
            probabilities[(slice(None),) + index] = probs.to(torch.float16).cpu().numpy()
        return Prediction(task.classes_to_labels(classes), classes, uncertainty_map, probabilities)

    def sliding_window(
        self, volume: np.ndarray, progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None
    ) -> torch.Tensor:
        """Class probabilities (K x d x h x w, float32, on the predictor's device) of a normalised volume."""
        return sliding_window_probabilities(
            self.model,
            volume,
            self.window,
            overlap=self.overlap,
            window_batch=self.window_batch,
            tta=self.tta,
            gaussian=self.gaussian,
            pad_value=None if self.checkpoint.preprocess.image_kind == "mr" else "min",
            progress=progress,
            cancel=cancel,
        )


@torch.inference_mode()
def sliding_window_probabilities(
    model: torch.nn.Module,
    volume: np.ndarray,
    window: Sequence[int],
    overlap: float = 0.5,
    window_batch: int = 2,
    tta: bool = False,
    gaussian: bool = True,
    pad_value: str | None = None,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Softmax of ``model``'s final head over a ``C x d x h x w`` volume by weighted sliding windows (float32).

    Volumes smaller than the window are padded evenly on both sides (with 0, or the volume's minimum for
    ``pad_value="min"``), so the windows of a mirrored volume are the mirrored windows.
    """
    device = next(model.parameters()).device
    window = tuple(int(w) for w in window)
    image = torch.from_numpy(np.ascontiguousarray(volume)).to(device)
    shape = tuple(image.shape[1:])
    pad = [max(0, w - s) for s, w in zip(shape, window)]
    before = [p // 2 for p in pad]
    if any(pad):
        fill = float(image.min()) if pad_value == "min" else 0.0
        sides = [(b, p - b) for b, p in zip(before, pad)]
        image = F.pad(image, (*sides[2], *sides[1], *sides[0]), value=fill)
    padded = tuple(image.shape[1:])
    starts = list(itertools.product(*(window_starts(s, w, overlap) for s, w in zip(padded, window))))
    weight = gaussian_importance(window, device=device) if gaussian else torch.ones(window, device=device)
    flips = [axes for n in range(4) for axes in itertools.combinations((2, 3, 4), n)] if tta else [()]
    accumulated = None
    coverage = torch.zeros(padded, dtype=torch.float32, device=device)
    total = len(starts)
    for first in range(0, total, window_batch):
        if cancel is not None and cancel():
            raise Cancelled("prediction cancelled")
        slices = [
            tuple(slice(s, s + w) for s, w in zip(start, window)) for start in starts[first : first + window_batch]
        ]
        probs = _mirrored_softmax(model, torch.stack([image[(slice(None),) + sl] for sl in slices]), flips)
        if accumulated is None:
            accumulated = torch.zeros((probs.shape[1], *padded), dtype=torch.float32, device=device)
        for sl, window_probs in zip(slices, probs):
            accumulated[(slice(None),) + sl].addcmul_(window_probs, weight)
            coverage[sl].add_(weight)
        if progress is not None:
            progress(min(first + window_batch, total), total)
    accumulated.div_(coverage)
    return accumulated[(slice(None),) + tuple(slice(b, b + s) for b, s in zip(before, shape))]


def _mirrored_softmax(model: torch.nn.Module, batch: torch.Tensor, flips: list[tuple[int, ...]]) -> torch.Tensor:
    """Softmax of the final head, averaged over the mirror flips (float32; autocast on CUDA)."""
    total = None
    for axes in flips:
        x = batch.flip(axes) if axes else batch
        if batch.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                logits = model(x).logits
        else:
            logits = model(x).logits
        probs = torch.softmax(logits.float(), dim=1)
        probs = probs.flip(axes) if axes else probs
        total = probs if total is None else total.add_(probs)
    return total.div_(len(flips))


def segment_files(
    model: str | Path,
    images: Sequence[str | Path],
    task: Task | None = None,
    **kwargs,
) -> tuple[Prediction, Geometry, Predictor]:
    """One-shot helper: resolve a model name or path, check the task, predict."""
    from .zoo import resolve_model

    predictor = Predictor(resolve_model(model), **{k: v for k, v in kwargs.items() if k in _PREDICTOR_ARGS})
    if task is not None:
        check_task(predictor.checkpoint, task)
    predict_args = {k: v for k, v in kwargs.items() if k not in _PREDICTOR_ARGS}
    prediction, geometry = predictor.predict_files(images, **predict_args)
    return prediction, geometry, predictor


_PREDICTOR_ARGS = ("device", "overlap", "window_batch", "tta", "gaussian")
