"""Per-volume preprocessing shared by training and inference (parameters live in the checkpoint).

Steps, in order (:func:`preprocess`):

1. **Checks**: NaN/Inf voxels, all-zero or constant channels are refused with the modality's name.
2. **Orientation** (``reorient``): the axes are permuted and flipped to the orientation nearest to LPS (ITK's
   identity direction), so any direction matrix gives the network the same anatomical axes. This is exact (no
   interpolation) and undone exactly at inference.
3. **Resampling** (``target_spacing``, mm in x, y, z order; off by default): SimpleITK, linear for images (outside
   the volume: 0 for MR, the channel minimum for CT) and nearest neighbour for labels; the physical extent is kept.
4. **Crop** to the union foreground box with inclusive bounds (MR: any channel non-zero; CT: above
   ``body_threshold`` HU before windowing), so the last foreground voxel is kept.
5. **Normalisation**, per channel and per volume (never per patch): MR z-scores each channel over its non-zero
   voxels (zeros stay 0); CT clips to ``ct_window`` (default [-100, 700] HU) and z-scores over the body.

At inference the network's probabilities are mapped back onto the input grid before the argmax: pasted into the
uncropped grid (background probability 1 outside the crop), resampled linearly when step 3 changed the grid
(:func:`input_grid_probabilities`), and re-oriented.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..config_files import check_known_keys
from ..files.geometry import Geometry, GeometryWarning, overlap_fraction, resample, resample_vector, vector_image


class InputError(ValueError):
    """Input data that cannot be segmented or trained on, with an actionable message."""


IMAGE_KINDS = ("mr", "ct")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a case is turned into network input; stored in checkpoints."""

    image_kind: str = "mr"
    crop_foreground: bool = True
    ct_window: tuple[float, float] = (-100.0, 700.0)
    body_threshold: float = -500.0
    target_spacing: tuple[float, float, float] | None = None  # mm, x y z (ITK order); None keeps the input's
    resize_factor: float | None = None  # e.g. 0.6: every case's grid scaled by 0.6 (the authors' MM-WHS resize)
    reorient: bool = True  # permute/flip axes to the nearest LPS orientation (exact)

    def __post_init__(self) -> None:
        if self.image_kind not in IMAGE_KINDS:
            raise ValueError(f"image_kind must be one of {IMAGE_KINDS}, got {self.image_kind!r}")
        if len(self.ct_window) != 2 or not self.ct_window[0] < self.ct_window[1]:
            raise ValueError(f"ct_window must be [low, high] with low < high, got {list(self.ct_window)}")
        if self.target_spacing is not None and (
            len(self.target_spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.target_spacing)
        ):
            raise ValueError(f"target_spacing must be three positive numbers (mm, x y z), got {self.target_spacing}")
        if self.resize_factor is not None and (self.target_spacing is not None or not 0 < self.resize_factor <= 4):
            raise ValueError("resize_factor must be in (0, 4] and cannot be combined with target_spacing")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form for checkpoints."""
        data = asdict(self)
        data["ct_window"] = list(self.ct_window)
        data["target_spacing"] = None if self.target_spacing is None else list(self.target_spacing)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], strict: bool = False) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, or refused with ``strict``."""
        if strict:
            check_known_keys(data, sorted(cls.__dataclass_fields__), "preprocessing")
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "ct_window" in values:
            values["ct_window"] = tuple(float(v) for v in values["ct_window"])
        if values.get("target_spacing") is not None:
            spacing = values["target_spacing"]
            spacing = [spacing] * 3 if isinstance(spacing, (int, float)) else spacing
            values["target_spacing"] = tuple(float(v) for v in spacing)
        return cls(**values)


BBox = tuple[tuple[int, int], ...]


# --------------------------------------------------------------------------------------------------------------
# orientation


@dataclass(frozen=True)
class Orientation:
    """Axis permutation and flips that take an array ``(z, y, x)`` to the orientation nearest to LPS.

    ``axes[a]`` is the input array axis that becomes output array axis ``a``; ``flips[a]`` flips output axis ``a``.
    """

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def is_identity(self) -> bool:
        """Whether nothing changes."""
        return self.axes == (0, 1, 2) and not any(self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Reorient the trailing three axes (a view)."""
        lead = array.ndim - 3
        out = np.transpose(array, tuple(range(lead)) + tuple(lead + a for a in self.axes))
        flipped = tuple(lead + a for a, f in enumerate(self.flips) if f)
        return np.flip(out, flipped) if flipped else out

    def invert(self, array: np.ndarray) -> np.ndarray:
        """Undo :meth:`apply` on the trailing three axes (a view)."""
        lead = array.ndim - 3
        flipped = tuple(lead + a for a, f in enumerate(self.flips) if f)
        out = np.flip(array, flipped) if flipped else array
        inverse = tuple(int(i) for i in np.argsort(self.axes))
        return np.transpose(out, tuple(range(lead)) + tuple(lead + a for a in inverse))

    def apply_geometry(self, geometry: Geometry) -> Geometry:
        """The geometry of the reoriented array (the same physical voxels)."""
        matrix = geometry.matrix
        source_xyz = [2 - self.axes[2 - n] for n in range(3)]  # output index axis n (xyz) <- input index axis
        flips_xyz = [self.flips[2 - n] for n in range(3)]
        columns, spacing, size = [], [], []
        corner = np.zeros(3)
        for n, c in enumerate(source_xyz):
            sign = -1.0 if flips_xyz[n] else 1.0
            columns.append(matrix[:, c] * sign)
            spacing.append(geometry.spacing[c])
            size.append(geometry.size[c])
            if flips_xyz[n]:
                corner[c] = geometry.size[c] - 1
        origin = geometry.index_to_physical(corner)
        direction = np.stack(columns, axis=1)
        return Geometry(
            size=tuple(int(s) for s in size),
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in origin),
            direction=tuple(float(d) for d in direction.ravel()),
        )


def nearest_orientation(geometry: Geometry) -> Orientation:
    """The permutation and flips that bring a grid's axes closest to LPS (x -> L, y -> P, z -> S)."""
    matrix = np.abs(geometry.matrix)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(matrix[n, p[n]] for n in range(3)))
    # best[n] = input index axis (xyz) that becomes output index axis n
    flips_xyz = [geometry.matrix[n, best[n]] < 0 for n in range(3)]
    axes = tuple(2 - best[2 - a] for a in range(3))
    flips = tuple(bool(flips_xyz[2 - a]) for a in range(3))
    return Orientation(axes=axes, flips=flips)  # type: ignore[arg-type]


def resampled_grid(geometry: Geometry, spacing_xyz: Sequence[float]) -> Geometry:
    """A grid with ``spacing_xyz`` covering the same physical extent (corner-aligned) as ``geometry``."""
    spacing = np.asarray(spacing_xyz, dtype=np.float64)
    old = np.asarray(geometry.spacing)
    size = np.maximum(1, np.round(np.asarray(geometry.size) * old / spacing)).astype(int)
    origin = geometry.index_to_physical((spacing / old - 1.0) / 2.0)
    return Geometry(
        size=tuple(int(s) for s in size),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in origin),
        direction=geometry.direction,
    )


# --------------------------------------------------------------------------------------------------------------
# checks, crop, normalisation


@dataclass
class Preprocessed:
    """A normalised, cropped case: ``images`` C x d x h x w float32 and where it sits in the input grid.

    ``bbox`` is ``(start, stop)`` per axis (stop exclusive, inclusive bounds of the foreground) in the *network
    grid* of shape ``grid_shape`` (the input reoriented and, if configured, resampled); ``input_shape`` is the
    input's array shape.
    """

    images: np.ndarray
    bbox: BBox
    input_shape: tuple[int, int, int]
    labels: np.ndarray | None = None
    grid_shape: tuple[int, int, int] | None = None
    grid: Geometry | None = None
    input_geometry: Geometry | None = None
    orientation: Orientation = field(default_factory=Orientation)
    resampled: bool = False

    def __post_init__(self) -> None:
        if self.grid_shape is None:
            self.grid_shape = self.input_shape

    def paste(self, crop_values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Put values of the crop (trailing three axes) into the whole network grid, ``fill`` elsewhere."""
        out = np.full(crop_values.shape[:-3] + tuple(self.grid_shape), fill, dtype=crop_values.dtype)
        out[(Ellipsis,) + tuple(slice(a, b) for a, b in self.bbox)] = crop_values
        return out

    def to_input(self, grid_values: np.ndarray) -> np.ndarray:
        """Values on the network grid back on the input grid (exact: only valid without resampling)."""
        if self.resampled:
            raise ValueError("a resampled case needs input_grid_probabilities to go back to the input grid")
        return np.ascontiguousarray(self.orientation.invert(grid_values))


def image_problems(images: np.ndarray, names: Sequence[str]) -> list[str]:
    """Every reason why ``images`` (C x z x y x) cannot be used, one message each (empty if none)."""
    if images.ndim != 4:
        return [f"expected channels x 3D volume, got an array of shape {images.shape}"]
    if len(names) != images.shape[0]:
        return [f"expected {len(names)} channels ({', '.join(names)}), got {images.shape[0]}"]
    problems = []
    for channel, name in zip(images, names):
        finite = np.isfinite(channel)
        if not finite.all():
            bad = int(np.size(channel) - np.count_nonzero(finite))
            problems.append(f"modality {name!r} has {bad} NaN/Inf voxels; fix or mask them before segmenting")
            continue
        if not channel.any():
            problems.append(f"modality {name!r} is an empty (all-zero) image")
        elif channel.min() == channel.max():
            problems.append(f"modality {name!r} is constant ({channel.flat[0]}); it holds no image")
    return problems


def check_images(images: np.ndarray, names: tuple[str, ...] | list[str]) -> None:
    """Refuse NaN/Inf voxels, all-zero or constant channels and non-3D data, naming the channel."""
    problems = image_problems(images, names)
    if problems:
        raise InputError(problems[0])


def foreground_mask(images: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Voxels that belong to the head (MR: any channel non-zero) or the body (CT: above the body threshold)."""
    if config.image_kind == "ct":
        return (images > config.body_threshold).any(axis=0)
    return (images != 0).any(axis=0)


def bounding_box(mask: np.ndarray) -> BBox:
    """Inclusive-bounds bounding box of a mask as (start, stop-exclusive) pairs; the whole grid if empty."""
    if not mask.any():
        return tuple((0, s) for s in mask.shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def crop(array: np.ndarray, bbox: BBox) -> np.ndarray:
    """Crop the trailing three axes of ``array`` to ``bbox``."""
    index = (Ellipsis,) + tuple(slice(a, b) for a, b in bbox)
    return array[index]


def normalize(images: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Per-volume, per-channel z-score (float32, new array); see the module docstring for MR vs CT.

    :func:`normalize_tensor` computes the same values on a GPU (NumPy is faster on CPUs).
    """
    out = np.empty(images.shape, dtype=np.float32)
    for index, channel in enumerate(images):
        channel = channel.astype(np.float32, copy=False)
        if config.image_kind == "ct":
            body = channel > config.body_threshold
            windowed = np.clip(channel, *config.ct_window)
            values = windowed[body] if body.any() else windowed.ravel()
            mean, std = float(values.mean(dtype=np.float64)), max(float(values.std(dtype=np.float64)), 1e-6)
            out[index] = (windowed - mean) / std
            out[index][~body] = (config.ct_window[0] - mean) / std
        else:
            inside = channel != 0
            values = channel[inside]
            mean, std = float(values.mean(dtype=np.float64)), max(float(values.std(dtype=np.float64)), 1e-6)
            out[index] = np.where(inside, (channel - mean) / std, 0.0)
    return out


def normalize_tensor(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """:func:`normalize` on a ``C x d x h x w`` tensor on its device (float32, new tensor; statistics in float64)."""
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    for index, channel in enumerate(images):
        channel = channel.float()
        if config.image_kind == "ct":
            inside = channel > config.body_threshold
            channel = channel.clamp(*config.ct_window)
        else:
            inside = channel != 0
        values = channel[inside] if bool(inside.any()) else channel.reshape(-1)
        std, mean = torch.std_mean(values.double(), correction=0)
        std = std.clamp_min(1e-6)
        torch.div(channel - mean.float(), std.float(), out=out[index])
        fill = (config.ct_window[0] - mean) / std if config.image_kind == "ct" else 0.0
        out[index].masked_fill_(~inside, fill)
    return out


def outside_value(channel: np.ndarray, image_kind: str) -> float:
    """The value of a channel outside its volume when resampling: 0 for MR, the minimum (air) for CT."""
    return float(channel.min()) if image_kind == "ct" and channel.size else 0.0


# --------------------------------------------------------------------------------------------------------------
# grids of one case


def stack_channels(
    arrays: Sequence[np.ndarray], geometries: Sequence[Geometry], names: Sequence[str], image_kind: str = "mr"
) -> tuple[np.ndarray, Geometry]:
    """Stack one array per modality on the first modality's grid.

    A modality on another grid is resampled onto the first (linear) with a :class:`GeometryWarning`, and refused
    with an InputError when the two grids do not overlap at all.
    """
    reference = geometries[0]
    out = []
    for array, geometry, name in zip(arrays, geometries, names):
        if not geometry.matches(reference):
            array = align(array, geometry, reference, name, names[0], "linear", outside_value(array, image_kind))
        out.append(np.asarray(array, dtype=np.float32))
    return np.stack(out), reference


def align(
    array: np.ndarray,
    geometry: Geometry,
    reference: Geometry,
    name: str,
    reference_name: str,
    interpolator: str,
    default: float = 0.0,
) -> np.ndarray:
    """``array`` resampled from ``geometry`` onto ``reference`` with a warning, or an InputError without overlap."""
    covered = overlap_fraction(geometry, reference)
    if covered == 0.0:
        raise InputError(
            f"{name} ({geometry.describe(reference)}) does not overlap {reference_name} "
            f"({reference.describe(geometry)}); "
            "they cannot belong to the same case"
        )
    warnings.warn(
        GeometryWarning(
            f"{name} is not on the grid of {reference_name} ({geometry.describe(reference)} vs "
            f"{reference.describe(geometry)}); "
            f"resampled onto it ({interpolator} interpolation, covering {covered:.0%} of it)"
        ),
        stacklevel=3,
    )
    return resample(array, geometry, reference, interpolator, default)


def preprocess(
    images: np.ndarray,
    config: PreprocessConfig,
    names: tuple[str, ...],
    labels: np.ndarray | None = None,
    geometry: Geometry | None = None,
    normalise: bool = True,
) -> Preprocessed:
    """Check, reorient, resample, crop and normalise one case (labels, if given, follow with nearest neighbour).

    Without ``geometry`` the arrays are taken as they are (no reorientation; resampling is then impossible).
    ``normalise=False`` leaves the cropped images as they are (float32) for the caller to normalise, e.g. on a GPU
    with :func:`normalize_tensor`.
    """
    check_images(images, names)
    input_shape = tuple(int(s) for s in images.shape[1:])
    if geometry is not None and tuple(geometry.shape) != input_shape:
        raise InputError(f"the image array {input_shape} does not match its geometry {geometry.shape}")
    if labels is not None and tuple(labels.shape) != input_shape:
        raise InputError(f"the label map {labels.shape} is not on the image grid {input_shape}")
    grid, orientation, resampled = geometry, Orientation(), False
    if geometry is not None and config.reorient:
        orientation = nearest_orientation(geometry)
        if not orientation.is_identity:
            images = orientation.apply(images)
            labels = None if labels is None else orientation.apply(labels)
            grid = orientation.apply_geometry(geometry)
    if config.target_spacing is not None or config.resize_factor is not None:
        if grid is None:
            raise InputError("this preprocessing resamples to a target spacing: the image geometry is needed")
        spacing = config.target_spacing or tuple(s / config.resize_factor for s in grid.spacing)
        target = resampled_grid(grid, spacing)
        if not target.matches(grid, tol=1e-6):
            images = np.stack(
                [resample(c, grid, target, "linear", outside_value(c, config.image_kind)) for c in images]
            )
            labels = None if labels is None else resample(labels, grid, target, "nearest", 0)
            grid, resampled = target, True
    grid_shape = tuple(int(s) for s in images.shape[1:])
    bbox = (
        bounding_box(foreground_mask(images, config)) if config.crop_foreground else tuple((0, s) for s in grid_shape)
    )
    cropped = crop(images, bbox)
    return Preprocessed(
        images=normalize(cropped, config) if normalise else np.ascontiguousarray(cropped, dtype=np.float32),
        bbox=bbox,
        input_shape=input_shape,
        labels=None if labels is None else np.ascontiguousarray(crop(labels, bbox)),
        grid_shape=grid_shape,
        grid=grid,
        input_geometry=geometry,
        orientation=orientation,
        resampled=resampled,
    )


def crop_geometry(grid: Geometry, bbox: BBox) -> Geometry:
    """The geometry of the crop ``bbox`` (array order) of ``grid``."""
    start_xyz = np.array([bbox[2][0], bbox[1][0], bbox[0][0]], dtype=np.float64)
    origin = grid.index_to_physical(start_xyz)
    return Geometry(
        size=(bbox[2][1] - bbox[2][0], bbox[1][1] - bbox[1][0], bbox[0][1] - bbox[0][0]),
        spacing=grid.spacing,
        origin=tuple(float(o) for o in origin),
        direction=grid.direction,
    )


def input_grid_probabilities(
    case: Preprocessed, probabilities: np.ndarray, max_bytes: int = 256 * 2**20
) -> Iterator[tuple[slice, np.ndarray]]:
    """Class probabilities of the crop (``K x d x h x w``) mapped onto the input grid, slab by slab along the input
    array's first axis: yields ``(z slice, K x dz x Y x X float32)``.

    Linear interpolation of every class with the same weights keeps each voxel's distribution summing to 1; input
    voxels outside the crop get background probability 1.
    """
    if case.grid is None or case.input_geometry is None:
        raise ValueError("mapping probabilities back needs the case geometry")
    target = case.input_geometry
    image = vector_image(probabilities, crop_geometry(case.grid, case.bbox))
    per_slice = probabilities.shape[0] * target.size[0] * target.size[1] * 4 * 2
    step = max(1, min(target.shape[0], max_bytes // max(per_slice, 1)))
    for start in range(0, target.shape[0], step):
        stop = min(start + step, target.shape[0])
        probs = np.moveaxis(resample_vector(image, target.slab(start, stop)), -1, 0)
        probs[0] += 1.0 - probs.sum(axis=0)
        yield slice(start, stop), probs
