"""Image reading and writing with exact geometry (origin, spacing, direction).

Arrays are numpy in SimpleITK order ``(z, y, x)``; :class:`cldl.files.geometry.Geometry` keeps ITK's ``(x, y, z)``
order (LPS), so the spacing of an array axis is ``geometry.spacing[::-1]``.

Reading: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and DICOM series
(a folder holding one series, or any ``.dcm`` file of a series). Multi-channel images (4D NIfTI such as the Medical
Segmentation Decathlon's, or vector images) are read with :func:`read_channels`. Label maps and Slicer segmentations
(``.seg.nrrd``) are read and written by :mod:`cldl.files.label_maps`.

Writing keeps the geometry exactly: a NIfTI output written on the grid of a NIfTI input copies the input's header
(qform/sform codes and values, so every reader places both identically), other outputs store the geometry in
double precision.

Every read checks that the file's image data is complete (:mod:`cldl.files.integrity`; a truncated file is an
ImageError that says how much of it is there), and every write goes to a temporary file that is checked and then
renamed onto the target (:func:`image_output`), so an output is complete or absent.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..defaults import MAX_IMAGE_GB
from .atomic_writes import atomic_path, final_path
from .geometry import Geometry, affine_ras
from .integrity import DamagedFileError, nifti_array, payload_problem, read_nifti_gz

SEG_SUFFIX = ".seg.nrrd"
IMAGE_SUFFIXES = (SEG_SUFFIX, ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".ima")
DAMAGED_HINT = " (an interrupted copy or download?)"


class ImageError(ValueError):
    """An input image that cannot be used, with a message that says why."""


def lower_name(path: str | Path) -> str:
    """The lower-case file name of a path."""
    return Path(path).name.lower()


def is_image_path(path: str | Path) -> bool:
    """Whether a file name has one of the supported image suffixes (DICOM folders are not files)."""
    return lower_name(path).endswith(IMAGE_SUFFIXES)


def is_nifti(path: str | Path) -> bool:
    """Whether a path names a NIfTI file."""
    return lower_name(path).endswith(NIFTI_SUFFIXES)


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


def read_sitk(path: str | Path) -> sitk.Image:
    """Any supported image as a SimpleITK image, or a one-line ImageError."""
    path = check_input_path(path)
    if path.is_dir():
        return _read_dicom_series(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return _read_dicom_series(path.parent, path)
    _check_content(path)
    _check_promised_size(path)
    try:
        if lower_name(path).endswith(".nii.gz"):
            image = _read_nifti_gz(path)
            if image is not None:
                return image
        elif lower_name(path).endswith(".nii") and (problem := payload_problem(path)):
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


def check_3d(path: str | Path, image: sitk.Image) -> None:
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
    image = read_sitk(path)
    check_3d(path, image)
    array = sitk.GetArrayFromImage(image)
    if Path(path).is_file() and is_nifti(path) and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        gz = lower_name(path).endswith(".gz")  # read from the file's own bytes, NaN/Inf kept
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
    source = path if Path(path).is_file() and (is_nifti(path) or lower_name(path).endswith(".nrrd")) else None
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
        image = read_sitk(path)
        return Geometry.of(image), image.GetNumberOfComponentsPerPixel(), image.GetPixelIDTypeAsString()
    _check_content(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageError(f"{path}: not a readable image ({_reason(exc)})") from None
    check_3d(path, reader)
    channels = reader.GetSize()[3] if reader.GetDimension() == 4 else reader.GetNumberOfComponents()
    return Geometry.of(reader), int(channels), sitk.GetPixelIDValueAsString(reader.GetPixelID())


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


def copy_nrrd_space(geometry: Geometry, path: Path) -> None:
    """Give a NRRD output the source NRRD's exact space lines when it lies on the source's grid, so that both are
    placed identically to the last bit (ITK would otherwise re-derive them from the read doubles)."""
    if (
        geometry.source is None
        or not lower_name(geometry.source).endswith(".nrrd")
        or not lower_name(path).endswith(".nrrd")
    ):
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
            copy_nrrd_space(geometry, tmp)
    return path


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
