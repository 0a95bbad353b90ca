"""Brain extraction (skull stripping) with deepbet's networks, loaded as TorchScript: nothing is downloaded.

deepbet (PyPI, MIT; Fisch et al. 2024) ships two TorchScript models inside its wheel: a 128^3 network that finds
the brain's bounding box, and a 256^3 network that segments the brain inside that box. Only the weight files are
used: ``torch.jit.load`` reads TorchScript (no pickled Python objects) and deepbet's own modules, which import
pandas and a GUI toolkit, are never imported, so ``pip install --no-deps deepbet`` is all it needs. The steps
follow deepbet's ``BrainExtraction.run_model`` (closest-RAS array order, 0.5/99.5 percentile window, nearest-exact
resizing) with the post-processing (largest component, filled holes) done in SimpleITK.
"""

from __future__ import annotations

import functools
import importlib.metadata
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..files.geometry import Geometry

DEEPBET_INSTALL = "pip install --no-deps deepbet==1.0.2"
BOX_SHAPE = (128, 128, 128)
BRAIN_SHAPE = (256, 256, 256)
BOX_MARGIN = 0.1
THRESHOLD = 0.5
EDGE_MM = 3.0
"""How far outside the brain mask FLAIR-hyperintense voxels are taken in (:func:`extend_over_edema`)."""
EDEMA_RATIO = 1.1
"""FLAIR intensity, relative to the brain's median, above which a voxel next to the mask counts as edema."""
# LPS direction of each closest-RAS array axis (i -> right, j -> anterior, k -> superior)
RAS_AXES_LPS = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])


class BrainMaskError(RuntimeError):
    """Brain extraction is not possible (models not installed, or no brain found)."""


def deepbet_model_files() -> tuple[Path, Path]:
    """The installed deepbet TorchScript files (brain model, bounding-box model), or a BrainMaskError saying how
    to install them."""
    try:
        dist = importlib.metadata.distribution("deepbet")
    except importlib.metadata.PackageNotFoundError:
        raise BrainMaskError(
            f"skull stripping needs deepbet's models: {DEEPBET_INSTALL} (or pass --skull-strip no for inputs that "
            "are already skull-stripped)"
        ) from None
    files = tuple(Path(str(dist.locate_file(f"data/models/{name}"))) for name in ("model.pt", "bbox_model.pt"))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise BrainMaskError(f"deepbet is installed but its model file {missing[0]} is missing; reinstall it")
    return files  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def _models() -> tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]:
    """The two TorchScript networks on the CPU, loaded once per process."""
    brain_file, box_file = deepbet_model_files()
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; it still loads these files safely
        warnings.simplefilter("ignore", DeprecationWarning)
        return (
            torch.jit.load(str(brain_file), map_location="cpu").eval(),
            torch.jit.load(str(box_file), map_location="cpu").eval(),
        )


def deepbet_available() -> bool:
    """Whether deepbet's model files are installed."""
    try:
        deepbet_model_files()
    except BrainMaskError:
        return False
    return True


def ras_axes(geometry: Geometry) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """For the closest-RAS axes i, j, k: which array axis ``(z, y, x)`` each one is, and whether it is flipped."""
    matrix = geometry.matrix  # columns: index axes x, y, z in LPS
    order, flips = [], []
    for target in RAS_AXES_LPS:
        dots = target @ matrix
        for used in order:
            dots[2 - used] = 0.0
        index_axis = int(np.argmax(np.abs(dots)))  # 0 = x, 1 = y, 2 = z
        order.append(2 - index_axis)  # array axis in (z, y, x)
        flips.append(bool(dots[index_axis] < 0))
    return tuple(order), tuple(flips)  # type: ignore[return-value]


def to_ras(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A ``(z, y, x)`` array as a closest-RAS ``(i, j, k)`` array (a permutation and flips, no interpolation)."""
    order, flips = ras_axes(geometry)
    out = np.transpose(array, order)
    return np.flip(out, axis=[a for a, f in enumerate(flips) if f]) if any(flips) else out


def from_ras(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Inverse of :func:`to_ras`."""
    order, flips = ras_axes(geometry)
    if any(flips):
        array = np.flip(array, axis=[a for a, f in enumerate(flips) if f])
    return np.transpose(array, np.argsort(order))


def _normalise(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """deepbet's input normalisation: window, z-score, then ImageNet-like mean and scale."""
    x = ((x - low) / (high - low)).clamp(0, 1)
    x = (x - x.mean()) / x.std()
    return 0.226 * x + 0.449


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary ``(z, y, x)`` mask."""
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
    largest = sitk.RelabelComponent(components, sortByObjectSize=True) == 1
    return sitk.GetArrayFromImage(largest).astype(bool)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill every cavity of a binary mask (3D)."""
    image = sitk.BinaryFillhole(sitk.GetImageFromArray(mask.astype(np.uint8)), fullyConnected=False)
    return sitk.GetArrayFromImage(image).astype(bool)


def _box(mask_small: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """deepbet's bounding box of the coarse brain, scaled to ``shape`` with a 10 % margin per side."""
    small = torch.from_numpy(mask_small.astype(np.float32))
    slices = []
    for axis, dims in enumerate(((1, 2), (0, 2), (0, 1))):
        hits = torch.where(small.mean(dims) > 0.02)[0]
        if hits.numel() == 0:
            raise BrainMaskError("no brain found in the image (is it a head MRI?)")
        scale = shape[axis] / small.shape[axis]
        centre = float(hits.max() + 1 + hits.min()) / 2 * scale
        size = float(hits.max() + 1 - hits.min()) * scale * (1 + 2 * BOX_MARGIN)
        centre, size = round(centre), round(size)
        slices.append(slice(max(0, int(centre - size / 2)), min(shape[axis], int(centre + size / 2))))
    return tuple(slices)


@torch.no_grad()
def brain_mask(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Binary brain mask (``(z, y, x)`` bool) of a T1-weighted head image on ``geometry``."""
    brain_model, box_model = _models()
    x = torch.nan_to_num(torch.from_numpy(np.ascontiguousarray(to_ras(image, geometry), dtype=np.float32)))
    small = F.interpolate(x[None, None], BOX_SHAPE, mode="nearest-exact")[0, 0]
    low, high = small.quantile(0.005), small.quantile(0.995)
    if not float(high) > float(low):
        raise BrainMaskError("the image is empty or constant; no brain to find")
    coarse = box_model(_normalise(small, low, high)[None, None])[0, 1] > 0.5
    coarse_np = coarse.numpy()
    if not coarse_np.any():
        raise BrainMaskError("no brain found in the image (is it a head MRI?)")
    box = _box(_largest_component(coarse_np), tuple(x.shape))
    crop = F.interpolate(x[box][None, None], BRAIN_SHAPE, mode="nearest-exact")
    probability = brain_model(_normalise(crop[0, 0], low, high)[None, None])[0, 1]
    mask = np.zeros(tuple(x.shape), dtype=bool)
    box_shape = tuple(s.stop - s.start for s in box)
    inside = F.interpolate(probability[None, None], box_shape, mode="nearest-exact")[0, 0].numpy() > THRESHOLD
    if not inside.any():
        raise BrainMaskError("no brain found in the image (is it a head MRI?)")
    mask[box] = _fill_holes(_largest_component(inside))
    return np.ascontiguousarray(from_ras(mask, geometry))


def extend_over_edema(mask: np.ndarray, flair: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """The brain mask extended over edema at the brain's surface: FLAIR-hyperintense voxels (above ``EDEMA_RATIO``
    times the brain's median) within ``EDGE_MM`` of the mask, plus a one-voxel rim around them (partial volume).

    Edema is dark on the T1 the mask is computed on, and where it reaches the cortex the mask can cut it off; on
    FLAIR it is bright, while the skull and CSF beside the brain are dark."""
    if not mask.any():
        return mask
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, squaredDistance=False, useImageSpacing=True))
    near = (distance > 0) & (distance <= EDGE_MM)
    edema = near & (flair > EDEMA_RATIO * float(np.median(flair[mask])))
    if not edema.any():
        return mask
    rim = sitk.BinaryDilate(sitk.GetImageFromArray(edema.astype(np.uint8)), (1, 1, 1), sitk.sitkCross)
    return mask | (sitk.GetArrayFromImage(rim).astype(bool) & near)


def looks_skull_stripped(image: np.ndarray, spacing_zyx: tuple[float, float, float]) -> bool:
    """Whether an image is already skull-stripped: its non-zero voxels form one compact blob with a zero background
    around it (BraTS-style), rather than a head whose background is noisy or whose scalp reaches the border."""
    foreground = image > 0
    fraction = float(foreground.mean())
    if fraction == 0.0 or fraction > 0.6:
        return False
    # a stripped brain leaves exact zeros everywhere outside it; a raw scan has noise in the air and the skull
    exact_zero = float((image == 0).mean())
    if exact_zero < 0.3:
        return False
    volume_ml = float(foreground.sum()) * float(np.prod(spacing_zyx)) / 1000.0
    return 600.0 <= volume_ml <= 2200.0
