"""Per-volume preprocessing shared by training and inference (parameters live in the checkpoint).

MR: crop to the union of the channels' non-zero voxels, then z-score each channel over its non-zero voxels
(zeros stay zero). CT: window to ``ct_window`` HU, crop to the body (voxels above ``body_threshold`` HU
before windowing), then z-score over the body. Normalisation is always per volume, never per patch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


class InputError(ValueError):
    """Input data that cannot be segmented or trained on, with an actionable message."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a case is turned into network input; stored in checkpoints."""

    image_kind: str = "mr"
    crop_foreground: bool = True
    ct_window: tuple[float, float] = (-100.0, 700.0)
    body_threshold: float = -500.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form for checkpoints."""
        data = asdict(self)
        data["ct_window"] = list(self.ct_window)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`, ignoring unknown keys."""
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "ct_window" in values:
            values["ct_window"] = tuple(float(v) for v in values["ct_window"])
        return cls(**values)


BBox = tuple[tuple[int, int], ...]


@dataclass
class Preprocessed:
    """A normalised, cropped case: ``images`` C x d x h x w float32 and where it sits in the input grid."""

    images: np.ndarray
    bbox: BBox  # (start, stop) per axis, stop exclusive, in the input's array grid
    input_shape: tuple[int, int, int]
    labels: np.ndarray | None = None


def check_images(images: np.ndarray, names: tuple[str, ...] | list[str]) -> None:
    """Refuse NaN/Inf voxels, all-zero or constant channels and non-3D data, naming the channel."""
    if images.ndim != 4:
        raise InputError(f"expected channels x 3D volume, got an array of shape {images.shape}")
    if len(names) != images.shape[0]:
        raise InputError(f"expected {len(names)} channels ({', '.join(names)}), got {images.shape[0]}")
    for channel, name in zip(images, names):
        if not np.isfinite(channel).all():
            bad = int(np.size(channel) - np.count_nonzero(np.isfinite(channel)))
            raise InputError(f"modality {name!r} has {bad} NaN/Inf voxels; fix or mask them before segmenting")
        if not channel.any():
            raise InputError(f"modality {name!r} is an empty (all-zero) image")
        if channel.min() == channel.max():
            raise InputError(f"modality {name!r} is constant ({channel.flat[0]}); it holds no image")


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
    """Per-volume, per-channel z-score (float32, new array); see the module docstring for MR vs CT."""
    out = np.empty(images.shape, dtype=np.float32)
    for index, channel in enumerate(images):
        channel = channel.astype(np.float32, copy=False)
        if config.image_kind == "ct":
            body = channel > config.body_threshold
            windowed = np.clip(channel, *config.ct_window)
            values = windowed[body] if body.any() else windowed.ravel()
            out[index] = (windowed - values.mean()) / max(float(values.std()), 1e-6)
            out[index][~body] = (config.ct_window[0] - values.mean()) / max(float(values.std()), 1e-6)
        else:
            inside = channel != 0
            values = channel[inside]
            mean, std = float(values.mean()), max(float(values.std()), 1e-6)
            out[index] = np.where(inside, (channel - mean) / std, 0.0)
    return out


def preprocess(
    images: np.ndarray, config: PreprocessConfig, names: tuple[str, ...], labels: np.ndarray | None = None
) -> Preprocessed:
    """Check, crop and normalise one case (labels, if given, are cropped alike)."""
    check_images(images, names)
    shape = tuple(int(s) for s in images.shape[1:])
    bbox = bounding_box(foreground_mask(images, config)) if config.crop_foreground else tuple((0, s) for s in shape)
    cropped = crop(images, bbox)
    return Preprocessed(
        images=normalize(cropped, config),
        bbox=bbox,
        input_shape=shape,
        labels=None if labels is None else np.ascontiguousarray(crop(labels, bbox)),
    )
