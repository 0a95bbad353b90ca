"""Image reading and writing with exact geometry (origin, spacing, direction).

Arrays are numpy in SimpleITK order ``(z, y, x)``; :class:`Geometry` keeps ITK's ``(x, y, z)`` order, so the
spacing of an array axis is ``geometry.spacing[::-1]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


class ImageError(ValueError):
    """An input image that cannot be used, with a message that says why."""


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a 3D voxel grid, in ITK (LPS, x-y-z) conventions."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        """Geometry of a SimpleITK image."""
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    @classmethod
    def identity(cls, shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float] = (1, 1, 1)) -> Geometry:
        """Axis-aligned grid at the origin for an array of ``shape_zyx``."""
        return cls(
            size=tuple(int(s) for s in shape_zyx[::-1]),
            spacing=tuple(float(s) for s in spacing_zyx[::-1]),
            origin=(0.0, 0.0, 0.0),
            direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return self.size[::-1]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel spacing in array order."""
        return self.spacing[::-1]

    def matches(self, other: Geometry, tol: float = 1e-4) -> bool:
        """Same grid within a tolerance (relative for spacing, absolute in mm for the origin)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, rtol=tol, atol=0)
            and np.allclose(self.origin, other.origin, atol=max(tol, 1e-3 * min(self.spacing)))
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def apply(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry onto an image of the same size."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def is_image_path(path: str | Path) -> bool:
    """Whether a file name has one of the supported image suffixes."""
    name = str(path).lower()
    return name.endswith(IMAGE_SUFFIXES)


def read_image(path: str | Path, dtype: type | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image as an array ``(z, y, x)`` and its geometry; a clear ImageError on anything else."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise ImageError(f"{path}: not a readable image ({first})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected 1")
    if image.GetDimension() != 3:
        raise ImageError(f"{path}: is {image.GetDimension()}D; a 3D image is needed")
    array = sitk.GetArrayFromImage(image)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array, Geometry.of(image)


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path, compress: bool = True) -> Path:
    """Write an array ``(z, y, x)`` with exact geometry; the format follows the suffix."""
    path = Path(path)
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match the geometry {geometry.shape}")
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    ensure_writable(path)
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    sitk.WriteImage(image, str(path), compress)
    return path


def ensure_writable(path: str | Path) -> None:
    """Raise a clear error if ``path`` cannot be created (missing or read-only folder)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"cannot create the folder {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ImageError(f"{path}: not writable (check the folder's permissions)")


def affine_ras(geometry: Geometry) -> np.ndarray:
    """The NIfTI (RAS) voxel-to-world affine of an ITK (LPS) geometry, for arrays indexed (x, y, z)."""
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(geometry.spacing)[None, :]
    affine[:3, 3] = geometry.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def write_unit_interval(array: np.ndarray, geometry: Geometry, path: str | Path) -> Path:
    """Write values in [0, 1] (3D, or channels-first 4D) compactly.

    NIfTI files store uint8 with ``scl_slope = 1/255``, so every reader (ITK, Slicer, nibabel) sees floats in
    0..1 at a quarter of the float32 size; other formats store float32.
    """
    path = Path(path)
    ensure_writable(path)
    if array.shape[-3:] != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match the geometry {geometry.shape}")
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        if array.ndim == 4:
            image = sitk.JoinSeries([geometry.apply(sitk.GetImageFromArray(c.astype(np.float32))) for c in array])
            sitk.WriteImage(image, str(path), True)
            return path
        return write_image(array.astype(np.float32), geometry, path)
    import nibabel as nib

    quantised = np.empty(array.shape, dtype=np.uint8)
    for index in np.ndindex(array.shape[:-3]):  # channel by channel: no full float32 copy of a 4D array
        quantised[index] = np.clip(np.rint(array[index].astype(np.float32) * 255.0), 0, 255)
    data = quantised.transpose(2, 1, 0) if array.ndim == 3 else quantised.transpose(3, 2, 1, 0)
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine_ras(geometry))
    image.header.set_slope_inter(1.0 / 255.0, 0.0)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine_ras(geometry), code=1)
    image.set_sform(affine_ras(geometry), code=1)
    nib.save(image, str(path))
    return path
