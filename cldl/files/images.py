"""Image reading and writing with exact geometry (origin, spacing, direction).

Arrays are numpy in SimpleITK order ``(z, y, x)``; :class:`Geometry` keeps ITK's ``(x, y, z)`` order (LPS), so
the spacing of an array axis is ``geometry.spacing[::-1]``.

Reading: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``), DICOM series
(a folder holding one series, or any ``.dcm`` file of a series) and Slicer segmentations (``.seg.nrrd``, segment
names, colours and overlapping layers; :func:`read_segmentation`). Multi-channel images (4D NIfTI such as the
Medical Segmentation Decathlon's, or vector images) are read with :func:`read_channels`.

Writing keeps the geometry exactly: a NIfTI output written on the grid of a NIfTI input copies the input's header
(qform/sform codes and values, so every reader places both identically), other outputs store the geometry in
double precision. ``.seg.nrrd`` outputs carry segment names and colours (:func:`write_segmentation`).

Every read checks that the file's image data is complete (:mod:`cldl.files.integrity`; a truncated file is an ImageError
that says how much of it is there), and every write goes to a temporary file that is checked and then renamed onto
the target (:func:`image_output`), so an output is complete or absent.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from ..defaults import MAX_IMAGE_GB
from .atomic_writes import atomic_path, final_path
from .integrity import DamagedFileError, nifti_array, payload_problem, read_nifti_gz

if TYPE_CHECKING:  # pragma: no cover
    from ..tasks import Task

SEG_SUFFIX = ".seg.nrrd"
IMAGE_SUFFIXES = (SEG_SUFFIX, ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".ima")
CLASS_TAG = "CLDL.Class"  # segment tag holding the class abbreviation (shared with CLDLSegmentationLib)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
DAMAGED_HINT = " (an interrupted copy or download?)"


class ImageError(ValueError):
    """An input image that cannot be used, with a message that says why."""


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


def _lower(path: str | Path) -> str:
    """The lower-case file name of a path."""
    return Path(path).name.lower()


def is_image_path(path: str | Path) -> bool:
    """Whether a file name has one of the supported image suffixes (DICOM folders are not files)."""
    return _lower(path).endswith(IMAGE_SUFFIXES)


def is_nifti(path: str | Path) -> bool:
    """Whether a path names a NIfTI file."""
    return _lower(path).endswith(NIFTI_SUFFIXES)


def strip_image_suffix(name: str) -> str:
    """A file name without its image suffix (``.seg.nrrd`` and ``.nii.gz`` count as one)."""
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES + DICOM_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _reason(exc: BaseException) -> str:
    """The most telling line of an ITK exception."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    for line in lines:
        if "Unable to determine ImageIO reader" in line or "orthonormal" in line or "Could not create IO" in line:
            return line.split(": ", 1)[-1][:200]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def _series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID of one DICOM file, if it has one."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    key = "0020|000e"
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else None


def _read_dicom_series(folder: Path, file: Path | None = None) -> sitk.Image:
    """The DICOM series in ``folder`` (the one holding ``file`` when given)."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageError(f"{file or folder}: no DICOM series found (a folder must hold the slices of one series)")
    uid = _series_uid(file) if file is not None else None
    if uid is None:
        if len(series) > 1:
            raise ImageError(
                f"{folder}: holds {len(series)} DICOM series; give each series its own folder or pass one file of "
                "the series to read"
            )
        uid = series[0]
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise ImageError(f"{folder}: unreadable DICOM series ({_reason(exc)})") from None


_ITEM_BYTES = {
    getattr(sitk, f"sitk{kind}{name}"): size
    for name, size in (("UInt8", 1), ("Int8", 1), ("UInt16", 2), ("Int16", 2), ("UInt32", 4), ("Int32", 4))
    + (("UInt64", 8), ("Int64", 8), ("Float32", 4), ("Float64", 8))
    for kind in ("", "Vector")
}
_max_image_gb = MAX_IMAGE_GB


def set_max_image_gb(gb: float | None) -> None:
    """The largest image (GB of voxel data, as its header promises) a read accepts; None: the default."""
    global _max_image_gb
    if gb is not None and not gb > 0:
        raise ValueError(f"--max-image-gb must be positive, got {gb}")
    _max_image_gb = MAX_IMAGE_GB if gb is None else float(gb)


def check_input_path(path: str | Path) -> Path:
    """An input that exists and is a regular file or a folder (a FIFO or device would block or never end)."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file or folder")
    if not (path.is_file() or path.is_dir()):
        raise ImageError(f"{path}: not a regular file (a pipe, socket or device); give an image file")
    return path


def _check_promised_size(path: Path) -> None:
    """Refuse a file whose header promises more voxel data than the limit, before any of it is read (a small
    compressed file can inflate to gigabytes)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # not readable as an image: the read itself says why
    size = reader.GetSize()
    promised = float(np.prod(size, dtype=np.float64)) * reader.GetNumberOfComponents()
    promised *= _ITEM_BYTES.get(reader.GetPixelID(), 16)
    if promised > _max_image_gb * 1e9:
        raise ImageError(
            f"{path}: its header promises a {'x'.join(str(s) for s in size)} image of {promised / 1e9:.3g} GB of "
            f"voxel data, more than the limit of {_max_image_gb:g} GB; if it really is that large, raise the limit "
            f"with --max-image-gb {math.ceil(promised / 1e9)}"
        )


OTHER_FORMATS = {  # file signatures of formats that are not volumes (their readers would print their own errors)
    b"\x89PNG": "a PNG picture",
    b"\xff\xd8\xff": "a JPEG picture",
    b"GIF8": "a GIF picture",
    b"II*\x00": "a TIFF picture",
    b"MM\x00*": "a TIFF picture",
    b"BM": "a BMP picture",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive",
}


def _check_content(path: Path) -> None:
    """Refuse a file whose content is a picture or document format however it is named (a PNG named .nii.gz)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    for signature, what in OTHER_FORMATS.items():
        if head.startswith(signature):
            raise ImageError(f"{path}: not a readable image: it holds {what}, not a 3D volume")


def _read_sitk(path: str | Path) -> sitk.Image:
    """Any supported image as a SimpleITK image, or a one-line ImageError."""
    path = check_input_path(path)
    if path.is_dir():
        return _read_dicom_series(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return _read_dicom_series(path.parent, path)
    _check_content(path)
    _check_promised_size(path)
    try:
        if _lower(path).endswith(".nii.gz"):
            image = _read_nifti_gz(path)
            if image is not None:
                return image
        elif _lower(path).endswith(".nii") and (problem := payload_problem(path)):
            raise ImageError(f"{path}: {problem}{DAMAGED_HINT}")
        return sitk.ReadImage(str(path))
    except DamagedFileError as exc:
        raise ImageError(f"{exc}{DAMAGED_HINT}") from None
    except RuntimeError as exc:
        problem = payload_problem(path)  # NRRD and MetaImage readers refuse incomplete data: say how much is there
        if problem is not None:
            raise ImageError(f"{path}: {problem}{DAMAGED_HINT}") from None
        raise ImageError(f"{path}: not a readable image ({_reason(exc)})") from None


def _read_nifti_gz(path: Path) -> sitk.Image | None:
    """A ``.nii.gz`` image from one verified decompression (:mod:`cldl.files.integrity`), or None for layouts ITK reads
    itself (vector, complex or RGB voxels)."""
    data, header = read_nifti_gz(path)
    array = None if header is None else nifti_array(data, header)
    if array is None:
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # the header only: geometry exactly as ITK derives it
    if reader.GetDimension() != array.ndim or tuple(reader.GetSize()) != array.shape[::-1]:
        return None
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(reader.GetSpacing())
    image.SetOrigin(reader.GetOrigin())
    image.SetDirection(reader.GetDirection())
    return image


def _check_3d(path: str | Path, image: sitk.Image) -> None:
    """Refuse 2D images and single-slice volumes."""
    dim = image.GetDimension()
    if dim < 3:
        raise ImageError(f"{path}: is a {dim}D image; a 3D volume is needed")
    if dim > 4:
        raise ImageError(f"{path}: is a {dim}D image; a 3D volume (or 4D with channels) is needed")
    size = image.GetSize()[:3]
    if min(size) < 2:
        raise ImageError(f"{path}: is a single slice (size {'x'.join(map(str, size))}); a 3D volume is needed")


def _nifti_non_finite(path: str | Path) -> int:
    """NaN/Inf voxels of an uncompressed floating-point NIfTI file, counted on its raw data (ITK reads them as 0)."""
    import nibabel as nib

    image = nib.load(str(path))
    if not np.issubdtype(image.get_data_dtype(), np.floating):
        return 0
    data = np.asanyarray(image.dataobj)
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def read_channels(path: str | Path, dtype: type | None = None) -> tuple[np.ndarray, Geometry]:
    """Read an image as channels ``(C, z, y, x)`` and its 3D geometry: C = 1 for a 3D image, C = the 4th size of a
    4D image (MSD style) or the number of components of a vector image."""
    image = _read_sitk(path)
    _check_3d(path, image)
    array = sitk.GetArrayFromImage(image)
    if Path(path).is_file() and is_nifti(path) and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        gz = _lower(path).endswith(".gz")  # read from the file's own bytes, NaN/Inf kept
        bad = int(array.size - np.count_nonzero(np.isfinite(array))) if gz else _nifti_non_finite(path)
        if bad:
            raise ImageError(f"{path}: has {bad} NaN/Inf voxels; fix or mask them before using the image")
    if image.GetDimension() == 4:
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ImageError(f"{path}: a 4D image with vector voxels is not supported")
    elif image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    else:
        array = array[np.newaxis]
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    source = path if Path(path).is_file() and (is_nifti(path) or _lower(path).endswith(".nrrd")) else None
    return array, Geometry.of(image, source)


def read_image(path: str | Path, dtype: type | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image as an array ``(z, y, x)`` and its geometry; a clear ImageError on anything else."""
    array, geometry = read_channels(path, dtype)
    if array.shape[0] != 1:
        raise ImageError(f"{path}: has {array.shape[0]} channels (a 4D or vector image); one 3D image is expected here")
    return array[0], geometry


def image_info(path: str | Path) -> tuple[Geometry, int, str]:
    """Geometry, channel count and pixel type of an image from its header only (no voxels read)."""
    path = check_input_path(path)
    if path.is_dir() or path.suffix.lower() in DICOM_SUFFIXES:
        image = _read_sitk(path)
        return Geometry.of(image), image.GetNumberOfComponentsPerPixel(), image.GetPixelIDTypeAsString()
    _check_content(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageError(f"{path}: not a readable image ({_reason(exc)})") from None
    _check_3d(path, reader)
    channels = reader.GetSize()[3] if reader.GetDimension() == 4 else reader.GetNumberOfComponents()
    return Geometry.of(reader), int(channels), sitk.GetPixelIDValueAsString(reader.GetPixelID())


# --------------------------------------------------------------------------------------------------------------
# label maps and Slicer segmentations


@dataclass
class Segment:
    """One segment of a Slicer segmentation file."""

    id: str
    name: str
    label_value: int
    layer: int = 0
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Segmentation:
    """A ``.seg.nrrd`` file: one label layer per set of non-overlapping segments, ``(L, z, y, x)``."""

    layers: np.ndarray
    geometry: Geometry
    segments: list[Segment]

    def to_labels(self, task: Task | None = None, path: str | Path = "") -> np.ndarray:
        """One label map: the task's label value of each segment (matched by class tag, then name), or the
        file's label values when no task is given (single layer only)."""
        if task is None:
            if self.layers.shape[0] != 1:
                raise ImageError(f"{path}: overlapping segments in {self.layers.shape[0]} layers; a task is needed")
            return self.layers[0]
        values = _segment_values(self.segments, task, path)
        dtype = np.uint8 if max(task.label_values) <= 255 else np.int16
        out = np.zeros(self.layers.shape[1:], dtype=dtype)
        written = np.zeros(out.shape, dtype=bool)
        overlap = 0
        for segment, value in zip(self.segments, values):
            if not 0 <= segment.layer < self.layers.shape[0]:
                raise ImageError(f"{path}: segment {segment.name!r} refers to a missing layer {segment.layer}")
            mask = self.layers[segment.layer] == segment.label_value
            overlap += int(np.count_nonzero(mask & written))
            out[mask] = value
            written |= mask
        if overlap:
            warnings.warn(
                f"{path}: {overlap} voxels belong to several segments; the later segment's label was kept",
                stacklevel=2,
            )
        return out


def _norm(text: str) -> str:
    """Lower-case name with British/American spelling differences removed."""
    text = text.lower().replace("tumour", "tumor").replace("oedema", "edema").replace("_", " ").replace("-", " ")
    return " ".join(text.split())


def segment_names(task: Task) -> list[str]:
    """Segment names of a task's classes (index = class): ``"Peritumoral edema (ED)"``, as CLDLSegmentationLib."""
    names = []
    for index, name in enumerate(task.class_names):
        abbreviation = task.abbreviations[index] if index < len(task.abbreviations) else ""
        names.append(f"{name} ({abbreviation})" if abbreviation and abbreviation != name else name)
    return names


def _segment_values(segments: list[Segment], task: Task, path: str | Path) -> list[int]:
    """The task label value of each segment: by the CLDL class tag, then by name, then by label value."""
    keys: dict[str, int] = {}
    for index in range(1, task.num_classes):
        value = task.label_values[index]
        candidates = [task.class_names[index], segment_names(task)[index]]
        if index < len(task.abbreviations):
            candidates.append(task.abbreviations[index])
        for candidate in candidates:
            keys.setdefault(_norm(candidate), value)
    out: list[int | None] = []
    for segment in segments:
        tag = segment.tags.get(CLASS_TAG)
        value = keys.get(_norm(tag)) if tag else None
        if value is None:
            value = keys.get(_norm(segment.name))
        if value is None and segment.name.endswith(")") and "(" in segment.name:
            value = keys.get(_norm(segment.name.rsplit("(", 1)[1][:-1]))
        out.append(value)
    unmatched = [s for s, v in zip(segments, out) if v is None]
    if unmatched:
        if all(s.label_value in task.label_values[1:] for s in segments) and len(
            {s.label_value for s in segments}
        ) == len(segments):
            warnings.warn(
                f"{path}: segment names do not name {task.name} classes; using their label values "
                f"{[s.label_value for s in segments]}",
                stacklevel=3,
            )
            return [s.label_value for s in segments]
        names = ", ".join(repr(s.name) for s in unmatched)
        raise ImageError(
            f"{path}: segment(s) {names} match no class of task {task.name!r} "
            f"(expected names such as {', '.join(repr(n) for n in segment_names(task)[1:])})"
        )
    return [int(v) for v in out]  # type: ignore[arg-type]


def read_segmentation(path: str | Path) -> Segmentation:
    """Read a Slicer ``.seg.nrrd`` (3D, or 4D with one layer per set of overlapping segments)."""
    image = _read_sitk(path)
    _check_3d(path, image)
    array = sitk.GetArrayFromImage(image)
    array = np.moveaxis(array, -1, 0) if image.GetNumberOfComponentsPerPixel() > 1 else array[np.newaxis]
    if not np.issubdtype(array.dtype, np.integer):
        raise ImageError(f"{path}: a segmentation must hold integer voxels, not {array.dtype}")
    fields: dict[int, dict[str, str]] = {}
    for key in image.GetMetaDataKeys():
        if key.startswith("Segment") and "_" in key and key[7:].split("_", 1)[0].isdigit():
            index, name = key[7:].split("_", 1)
            fields.setdefault(int(index), {})[name] = image.GetMetaData(key)
    segments = []
    for index in sorted(fields):
        f = fields[index]
        try:
            color = tuple(float(c) for c in f.get("Color", "0.5 0.5 0.5").split()[:3])
            tags = {}
            for item in f.get("Tags", "").split("|"):
                if ":" in item:
                    key, value = item.split(":", 1)
                    tags[key] = value
            segments.append(
                Segment(
                    id=f.get("ID", f"Segment_{index + 1}"),
                    name=f.get("Name", f.get("ID", f"Segment_{index + 1}")),
                    label_value=int(f.get("LabelValue", index + 1)),
                    layer=int(f.get("Layer", 0)),
                    color=color,  # type: ignore[arg-type]
                    tags=tags,
                )
            )
        except ValueError:
            raise ImageError(f"{path}: damaged metadata of segment {index}") from None
    if not segments:  # a plain label map saved as .seg.nrrd: one segment per value
        segments = [Segment(id=f"Segment_{v}", name=str(v), label_value=int(v)) for v in np.unique(array[0]) if v != 0]
    return Segmentation(layers=array, geometry=Geometry.of(image), segments=segments)


def _as_label_array(path: str | Path, array: np.ndarray) -> np.ndarray:
    """Integer label values, or an ImageError for fractional values."""
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
        raise ImageError(f"{path}: not a label map (it holds non-integer values)")
    top = float(np.abs(array).max()) if array.size else 0.0
    return array.astype(np.uint8 if array.min() >= 0 and top <= 255 else np.int32)


def read_labels(path: str | Path, task: Task | None = None) -> tuple[np.ndarray, Geometry]:
    """A label map ``(z, y, x)`` in label values: any label image, or a ``.seg.nrrd`` whose segments are matched to
    the task's classes by their CLDL class tag or name."""
    if _lower(path).endswith(SEG_SUFFIX):
        segmentation = read_segmentation(path)
        return segmentation.to_labels(task, path), segmentation.geometry
    array, geometry = read_image(path)
    return _as_label_array(path, array), geometry


# --------------------------------------------------------------------------------------------------------------
# writing


def ensure_writable(path: str | Path) -> None:
    """Raise a clear error if ``path`` cannot be created (read-only folder, a file where a folder must be); creates
    nothing (missing folders are made when the output is written)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ImageError(f"cannot create the folder {parent}: {existing} is not a folder")
    if not os.access(existing, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ImageError(f"{path}: not writable (check the folder's permissions)")


@contextmanager
def image_output(path: Path) -> Iterator[Path]:
    """A temporary path for an image output (:func:`cldl.files.atomic_writes.atomic_path`): renamed onto ``path`` once
    the
    written file is checked complete, removed otherwise (ITK reports no error when a NIfTI write hits a full disk)."""
    target = final_path(path)  # the name the user gave, also when the caller staged the file
    with atomic_path(path) as tmp:
        try:
            yield tmp
        except (RuntimeError, OSError) as exc:  # ITK's and nibabel's write errors: one line, with the free space
            reason = _reason(exc) if isinstance(exc, RuntimeError) else exc.strerror or str(exc)
            raise OSError(f"{target}: not written ({reason}; {_free_space(path)})") from None
        problem = payload_problem(tmp)
        if problem is not None:
            raise OSError(f"{target}: not written: the new file came out {problem} ({_free_space(path)})")


def _free_space(path: Path) -> str:
    """``"12.3 MB free on its file system"``."""
    free = shutil.disk_usage(path.parent if str(path.parent) else ".").free
    return f"{free / 1e6:.1f} MB free on its file system"


def _source_matches(geometry: Geometry) -> bool:
    """Whether ``geometry.source`` exists and lies exactly on ``geometry`` (so its header can be reused)."""
    if geometry.source is None or not Path(geometry.source).is_file():
        return False
    reader = sitk.ImageFileReader()
    reader.SetFileName(geometry.source)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return Geometry.of(reader).same_as(geometry)


def _source_header(geometry: Geometry):
    """The NIfTI header of ``geometry.source`` when that file is NIfTI and lies exactly on ``geometry``."""
    if geometry.source is None or not is_nifti(geometry.source) or not _source_matches(geometry):
        return None
    try:
        import nibabel as nib

        return nib.load(geometry.source).header.copy()
    except Exception:  # any problem: fall back to writing the geometry itself
        return None


NRRD_SPACE_KEYS = (b"space:", b"space directions:", b"space origin:")


def _nrrd_space_lines(path: str | Path) -> dict[bytes, bytes] | None:
    """The ``space``, ``space directions`` and ``space origin`` lines of an attached-header 3D NRRD file."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if not head.startswith(b"NRRD") or b"\n\n" not in head:
        return None
    lines = {}
    for line in head.split(b"\n\n", 1)[0].split(b"\n"):
        for key in NRRD_SPACE_KEYS:
            if line.startswith(key):
                lines[key] = line
    if len(lines) != len(NRRD_SPACE_KEYS) or b"none" in lines[b"space directions:"]:
        return None
    return lines


def _copy_nrrd_space(geometry: Geometry, path: Path) -> None:
    """Give a NRRD output the source NRRD's exact space lines when it lies on the source's grid, so that both are
    placed identically to the last bit (ITK would otherwise re-derive them from the read doubles)."""
    if geometry.source is None or not _lower(geometry.source).endswith(".nrrd") or not _lower(path).endswith(".nrrd"):
        return
    if not _source_matches(geometry):
        return
    source_lines = _nrrd_space_lines(geometry.source)
    if source_lines is None:
        return
    data = path.read_bytes()
    header, separator, body = data.partition(b"\n\n")
    lines = header.split(b"\n")
    for index, line in enumerate(lines):
        for key in NRRD_SPACE_KEYS:
            if line.startswith(key):
                lines[index] = source_lines[key]
    path.write_bytes(b"\n".join(lines) + separator + body)


def _write_nifti_with_header(array: np.ndarray, header, path: Path, slope: float | None = None) -> None:
    """Write ``array`` ((z, y, x) or channels-first) with a copy of an input's NIfTI header."""
    import nibabel as nib

    data = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header.set_intent("none")
    header["cal_min"] = header["cal_max"] = 0
    header["descrip"] = b"cldl"
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(np.ascontiguousarray(data), None, header=header)
    image.header.set_slope_inter(slope if slope is not None else 1.0, 0.0)
    nib.save(image, str(path))


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path, compress: bool = True) -> Path:
    """Write an array ``(z, y, x)`` with exact geometry; the format follows the suffix."""
    path = Path(path)
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match the geometry {geometry.shape}")
    if array.dtype in (np.float64, np.float16):
        array = array.astype(np.float32)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    ensure_writable(path)
    header = _source_header(geometry) if is_nifti(path) else None
    with image_output(path) as tmp:
        if header is not None:
            _write_nifti_with_header(array, header, tmp)
        else:
            image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))
            sitk.WriteImage(image, str(tmp), compress)
            _copy_nrrd_space(geometry, tmp)
    return path


def write_segmentation(labels: np.ndarray, geometry: Geometry, path: str | Path, task: Task) -> Path:
    """Write a label map (task label values) as a Slicer ``.seg.nrrd``: one segment per class of the task, with
    the task's names, colours and a ``CLDL.Class`` tag, voxel values = the task's label values."""
    path = Path(path)
    if tuple(labels.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {labels.shape} does not match the geometry {geometry.shape}")
    stray = sorted(set(np.unique(labels).tolist()) - set(task.label_values))
    if stray:
        raise ValueError(f"label values {stray} are not part of task {task.name!r}")
    dtype = np.uint8 if max(task.label_values) <= 255 else np.int16
    ensure_writable(path)
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(labels.astype(dtype, copy=False))))
    names = segment_names(task)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for number, index in enumerate(range(1, task.num_classes)):
        value = task.label_values[index]
        abbreviation = task.abbreviations[index] if index < len(task.abbreviations) else f"Class{index}"
        mask = labels == value
        extent = "0 -1 0 -1 0 -1"
        if mask.any():
            ranges = []
            for axis in (2, 1, 0):  # x, y, z
                hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
                ranges += [str(int(hits[0])), str(int(hits[-1]))]
            extent = " ".join(ranges)
        prefix = f"Segment{number}_"
        image.SetMetaData(prefix + "ID", abbreviation)
        image.SetMetaData(prefix + "Name", names[index])
        image.SetMetaData(prefix + "NameAutoGenerated", "0")
        image.SetMetaData(prefix + "Color", " ".join(f"{c:.6g}" for c in task.colors[index]))
        image.SetMetaData(prefix + "ColorAutoGenerated", "0")
        image.SetMetaData(prefix + "LabelValue", str(value))
        image.SetMetaData(prefix + "Layer", "0")
        image.SetMetaData(prefix + "Extent", extent)
        image.SetMetaData(prefix + "Tags", f"{CLASS_TAG}:{abbreviation}|Segmentation.Status:completed|")
    with image_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
        _copy_nrrd_space(geometry, tmp)
    return path


def write_labels(labels: np.ndarray, geometry: Geometry, path: str | Path, task: Task | None = None) -> Path:
    """Write a label map: a ``.seg.nrrd`` with segment names and colours (needs the task), else a label image."""
    if _lower(path).endswith(SEG_SUFFIX):
        if task is None:
            raise ValueError(f"{path}: writing a .seg.nrrd needs the task (segment names and colours)")
        return write_segmentation(labels, geometry, path, task)
    return write_image(labels, geometry, path)


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
    if not is_nifti(path):
        if array.ndim == 3:
            return write_image(array.astype(np.float32), geometry, path)
        image = sitk.JoinSeries([geometry.apply(sitk.GetImageFromArray(c.astype(np.float32))) for c in array])
        with image_output(path) as tmp:
            sitk.WriteImage(image, str(tmp), True)
        return path
    import nibabel as nib

    quantised = np.empty(array.shape, dtype=np.uint8)
    for index in np.ndindex(array.shape[:-3]):  # channel by channel: no full float32 copy of a 4D array
        quantised[index] = np.clip(np.rint(array[index].astype(np.float32) * 255.0), 0, 255)
    header = _source_header(geometry)
    with image_output(path) as tmp:
        if header is not None:
            _write_nifti_with_header(quantised, header, tmp, slope=1.0 / 255.0)
            return path
        data = quantised.transpose(2, 1, 0) if array.ndim == 3 else quantised.transpose(3, 2, 1, 0)
        image = nib.Nifti1Image(np.ascontiguousarray(data), affine_ras(geometry))
        image.header.set_slope_inter(1.0 / 255.0, 0.0)
        image.header.set_xyzt_units("mm")
        image.set_qform(affine_ras(geometry), code=1)
        image.set_sform(affine_ras(geometry), code=1)
        nib.save(image, str(tmp))
    return path


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
