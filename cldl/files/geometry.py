"""Where a voxel grid lies in space (:class:`Geometry`), and moving values between grids.

Arrays are numpy in SimpleITK order ``(z, y, x)``; :class:`Geometry` keeps ITK's ``(x, y, z)`` order (LPS), so
the spacing of an array axis is ``geometry.spacing[::-1]``.

Resampling (:func:`resample`, :func:`resample_vector`) works in physical space with SimpleITK;
:func:`labels_on_grid` places a voxel-aligned sub- or super-grid exactly, and :func:`overlap_fraction` says how much
of one grid another covers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class GeometryWarning(UserWarning):
    """Images of one case were not on the same grid and were resampled."""


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a 3D voxel grid, in ITK (LPS, x-y-z) conventions.

    ``source`` remembers the file the geometry was read from (not part of equality); a NIfTI output on that exact
    grid copies its header.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    source: str | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader, source: str | Path | None = None) -> Geometry:
        """Geometry of a SimpleITK image (the first three axes of a 4D one)."""
        dim = image.GetDimension()
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
        return cls(
            size=tuple(int(s) for s in image.GetSize()[:3]),
            spacing=tuple(float(s) for s in image.GetSpacing()[:3]),
            origin=tuple(float(o) for o in image.GetOrigin()[:3]),
            direction=tuple(float(d) for d in direction.ravel()),
            source=None if source is None else str(source),
        )

    @classmethod
    def identity(cls, shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float] = (1, 1, 1)) -> Geometry:
        """Axis-aligned grid at the origin for an array of ``shape_zyx``."""
        return cls(
            size=tuple(int(s) for s in shape_zyx[::-1]),
            spacing=tuple(float(s) for s in spacing_zyx[::-1]),
            origin=(0.0, 0.0, 0.0),
            direction=IDENTITY,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return self.size[::-1]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel spacing in array order."""
        return self.spacing[::-1]

    @property
    def matrix(self) -> np.ndarray:
        """The 3x3 direction matrix (columns: the x, y, z index axes in LPS)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Physical (LPS, mm) points of continuous indices ``(..., 3)`` in x, y, z order."""
        index = np.asarray(index_xyz, dtype=np.float64)
        return np.asarray(self.origin) + (index * np.asarray(self.spacing)) @ self.matrix.T

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous x, y, z indices of physical points ``(..., 3)``."""
        offset = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        return (offset @ np.linalg.inv(self.matrix).T) / np.asarray(self.spacing)

    def matches(self, other: Geometry, tol: float = 1e-4) -> bool:
        """Same grid within a tolerance (relative for spacing, absolute in mm for the origin)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, rtol=tol, atol=0)
            and np.allclose(self.origin, other.origin, atol=max(tol, 1e-3 * min(self.spacing)))
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def same_as(self, other: Geometry) -> bool:
        """Bit-identical grid (size, spacing, origin and direction)."""
        return (self.size, self.spacing, self.origin, self.direction) == (
            other.size,
            other.spacing,
            other.origin,
            other.direction,
        )

    def describe(self, other: Geometry | None = None) -> str:
        """A short human description: size, spacing and origin; with ``other`` (the grid it is compared with), also
        the direction when that is what differs, so that the two descriptions never read the same."""
        size = "x".join(str(s) for s in self.size)
        spacing = "x".join(f"{s:.4g}" for s in self.spacing)
        origin = ", ".join(f"{o:.4g}" for o in self.origin)
        axis_aligned = np.allclose(np.abs(self.matrix).max(axis=1), 1.0, atol=1e-6)  # permuted or flipped axes too
        oblique = "" if axis_aligned else ", oblique"
        text = f"size {size}, spacing {spacing} mm, origin ({origin}){oblique}"
        if other is not None and self.direction != other.direction:
            digits = next(
                (
                    d
                    for d in range(4, 17)
                    if [f"{v:.{d}g}" for v in self.direction] != [f"{v:.{d}g}" for v in other.direction]
                ),
                17,
            )
            text += f", direction ({', '.join(f'{v:.{digits}g}' for v in self.direction)})"
        if other is not None and text == other.describe() and not self.same_as(other):
            text += f" (differs beyond the digits shown: origin {self.origin}, spacing {self.spacing})"
        return text

    def apply(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry onto an image of the same size."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def slab(self, start_z: int, stop_z: int) -> Geometry:
        """The sub-grid of array slices ``start_z:stop_z`` (same spacing and direction)."""
        origin = self.index_to_physical(np.array([0.0, 0.0, float(start_z)]))
        return Geometry(
            size=(self.size[0], self.size[1], int(stop_z - start_z)),
            spacing=self.spacing,
            origin=tuple(float(o) for o in origin),
            direction=self.direction,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (JSON)."""
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict`."""
        return cls(
            size=tuple(int(v) for v in data["size"]),
            spacing=tuple(float(v) for v in data["spacing"]),
            origin=tuple(float(v) for v in data["origin"]),
            direction=tuple(float(v) for v in data["direction"]),
        )


def affine_ras(geometry: Geometry) -> np.ndarray:
    """The NIfTI (RAS) voxel-to-world affine of an ITK (LPS) geometry, for arrays indexed (x, y, z)."""
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(geometry.spacing)[None, :]
    affine[:3, 3] = geometry.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


# --------------------------------------------------------------------------------------------------------------
# resampling between grids


def resample(
    array: np.ndarray,
    source: Geometry,
    target: Geometry,
    interpolator: str = "linear",
    default: float = 0.0,
) -> np.ndarray:
    """Resample ``(z, y, x)`` (or channels-first) values from one grid onto another in physical space
    (SimpleITK; ``linear`` for images, ``nearest`` for labels); points outside the source get ``default``."""
    if array.shape[-3:] != tuple(source.shape):
        raise ValueError(f"array shape {array.shape} does not match the source geometry {source.shape}")
    if array.ndim == 4:
        return np.stack([resample(c, source, target, interpolator, default) for c in array])
    if interpolator not in ("linear", "nearest"):
        raise ValueError(f"interpolator must be 'linear' or 'nearest', got {interpolator!r}")
    image = source.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    out = _resampler(target, interpolator, default).Execute(image)
    return sitk.GetArrayFromImage(out)


def _resampler(target: Geometry, interpolator: str, default: float) -> sitk.ResampleImageFilter:
    """A resample filter onto ``target``."""
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in target.size])
    f.SetOutputSpacing(target.spacing)
    f.SetOutputOrigin(target.origin)
    f.SetOutputDirection(target.direction)
    f.SetInterpolator(sitk.sitkLinear if interpolator == "linear" else sitk.sitkNearestNeighbor)
    f.SetDefaultPixelValue(float(default))
    return f


def vector_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Channels-first float data as one SimpleITK vector image (float32) on ``geometry``."""
    if array.shape[-3:] != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match the geometry {geometry.shape}")
    data = np.ascontiguousarray(np.moveaxis(array, 0, -1), dtype=np.float32)
    return geometry.apply(sitk.GetImageFromArray(data, isVector=True))


def resample_vector(image: sitk.Image, target: Geometry, interpolator: str = "linear") -> np.ndarray:
    """Resample a vector image (:func:`vector_image`) onto ``target`` (``linear`` or ``nearest``): ``(z, y, x, C)``
    float32, zero outside the source."""
    return sitk.GetArrayFromImage(_resampler(target, interpolator, 0.0).Execute(image))


def labels_on_grid(labels: np.ndarray, geometry: Geometry, reference: Geometry) -> np.ndarray | None:
    """``labels`` placed exactly on ``reference`` when their grid is a voxel-aligned sub- or super-grid of it (same
    spacing and direction, integer offset: what Slicer writes when it crops a segmentation to its extent); None
    otherwise. Voxels outside ``reference`` are dropped (a warning names how many labelled ones)."""
    if geometry.matches(reference):
        return labels
    if not (
        np.allclose(geometry.spacing, reference.spacing, rtol=1e-4)
        and np.allclose(geometry.direction, reference.direction, atol=1e-4)
    ):
        return None
    offset = reference.physical_to_index(np.asarray(geometry.origin))
    start = np.round(offset).astype(int)
    if not np.allclose(offset, start, atol=1e-3):
        return None
    out = np.zeros(reference.shape, dtype=labels.dtype)
    start_zyx = start[::-1]
    dst = tuple(slice(max(0, a), min(n, a + m)) for a, n, m in zip(start_zyx, reference.shape, labels.shape))
    src = tuple(slice(d.start - a, d.stop - a) for d, a in zip(dst, start_zyx))
    if any(d.stop <= d.start for d in dst):
        return None
    out[dst] = labels[src]
    lost = int(np.count_nonzero(labels)) - int(np.count_nonzero(out))
    if lost:
        warnings.warn(f"{lost} labelled voxels lie outside the image grid and were dropped", stacklevel=2)
    return out


def overlap_fraction(source: Geometry, target: Geometry, samples: int = 24) -> float:
    """Fraction of ``target`` (sampled on a lattice of at most ``samples`` points per axis) whose voxel centres lie
    inside ``source``; 0 means the grids do not overlap."""
    axes = [np.linspace(0, n - 1, min(n, samples)) for n in target.size]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    index = source.physical_to_index(target.index_to_physical(grid))
    inside = np.all((index >= -0.5) & (index <= np.asarray(source.size) - 0.5), axis=1)
    return float(inside.mean())
