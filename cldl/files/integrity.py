"""Image files checked for completeness: the image data must be all there, as long as the header says.

A copy cut short or a write on a full disk leaves files that some readers accept silently (ITK fills a truncated
NIfTI file with zeros). Compressed NIfTI files are decompressed once, here, with the gzip checksum and length
checked; the image is then built from these bytes (:func:`read_nifti_gz`), so a verified read costs one
decompression, as an unverified one did. Uncompressed NIfTI files are checked by their size. NRRD and MetaImage
readers refuse incomplete data themselves; :func:`payload_problem` then says how much of it is there.
"""

from __future__ import annotations

import io
import os
import re
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
GZIP_WBITS = 31  # zlib: gzip container, checksum and length checked
AUTO_WBITS = 47  # zlib: zlib or gzip container (MetaImage compressed data)


class DamagedFileError(ValueError):
    """A file whose image data is incomplete or corrupt; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.problem = problem


def size_text(done: int, total: int) -> str:
    """``"1.2 of 35.7 MB"`` (kB below one megabyte)."""
    unit, scale = ("MB", 1e6) if total >= 1e6 else ("kB", 1e3)
    return f"{done / scale:.1f} of {total / scale:.1f} {unit}"


def truncated(done: int, total: int) -> str:
    """The problem of a file holding only ``done`` of ``total`` bytes of image data."""
    return f"truncated: {size_text(max(done, 0), total)} of image data"


def _inflate(handle: IO[bytes], wbits: int, sink: bytearray | None = None) -> tuple[int, str | None]:
    """Decompress a stream from the handle's position (concatenated gzip members too): bytes produced and the
    problem, if any (``"truncated"`` or a description of corrupt data)."""
    decompressor, fed, produced = zlib.decompressobj(wbits), False, 0
    while chunk := handle.read(CHUNK):
        while chunk:
            if not fed:
                chunk = chunk.lstrip(b"\x00")  # zero padding between or after gzip members
                if not chunk:
                    break
            fed = True
            try:
                piece = decompressor.decompress(chunk)
            except zlib.error as exc:
                return produced, _zlib_problem(exc)
            produced += len(piece)
            if sink is not None:
                sink += piece
            chunk = b""
            if decompressor.eof:
                chunk = decompressor.unused_data
                if wbits != GZIP_WBITS:
                    return produced, None  # a zlib stream is one member; trailing bytes are not image data
                decompressor, fed = zlib.decompressobj(wbits), False
    return produced, ("truncated" if fed else None)


ZLIB_PROBLEMS = {
    "incorrect data check": "its gzip checksum (CRC-32) does not match the data",
    "incorrect length check": "its gzip length field does not match the data",
    "incorrect header check": "not gzip data where the file says it is",
}


def _zlib_problem(exc: zlib.error) -> str:
    """A zlib error as what it means for the file."""
    for key, meaning in ZLIB_PROBLEMS.items():
        if key in str(exc):
            return meaning
    return f"corrupt compressed data ({exc})"


def _nifti_header(data: bytes) -> Any | None:
    """The nibabel header of NIfTI-1/2 bytes, or None when they do not start with one."""
    import nibabel as nib

    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.sizeof_hdr
        if len(data) >= size and size in (int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")):
            try:
                return klass.from_fileobj(io.BytesIO(bytes(data[:size])))
            except Exception:  # nibabel raises several types for odd headers: let the image reader decide
                return None
    return None


def nifti_data_bytes(header: Any) -> int:
    """Bytes of image data a NIfTI header announces."""
    return int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize


def read_nifti_gz(path: str | Path) -> tuple[bytearray, Any | None]:
    """The decompressed bytes of a ``.nii.gz`` file and its header (None if it has none), after checking the gzip
    checksum and that the image data is as long as the header says; a DamagedFileError otherwise."""
    data = bytearray()
    with open(path, "rb") as handle:
        if handle.read(2) != GZIP_MAGIC:
            handle.seek(0)
            data += handle.read()  # not compressed after all: the size check below still applies
            problem = None
        else:
            handle.seek(0)
            _, problem = _inflate(handle, GZIP_WBITS, data)
    header = _nifti_header(data)
    if not data and problem is None:
        raise DamagedFileError(path, "empty file (0 bytes)")
    if problem is not None and problem != "truncated":  # damaged, though perhaps complete: say what is wrong
        raise DamagedFileError(path, f"damaged: {problem}")
    if header is not None:
        offset, expected = int(header.get_data_offset()), nifti_data_bytes(header)
        if len(data) < offset + expected:
            raise DamagedFileError(path, truncated(len(data) - offset, expected))
    if problem == "truncated":
        raise DamagedFileError(path, "truncated: the compressed data ends early")
    if problem is not None:
        raise DamagedFileError(path, f"damaged: {problem}")
    return data, header


def nifti_array(data: bytearray, header: Any) -> np.ndarray | None:
    """The voxels of verified NIfTI bytes in ITK's array order and type, or None for layouts left to ITK (vector,
    complex or RGB voxels, more than four dimensions)."""
    shape = tuple(int(s) for s in header.get_data_shape())
    dtype = header.get_data_dtype()
    if not 3 <= len(shape) <= 4 or dtype.kind not in "iuf" or dtype.fields is not None:
        return None
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.frombuffer(data, dtype=dtype, count=count, offset=int(header.get_data_offset()))
    array = raw.reshape(shape, order="F").T  # NIfTI stores x fastest: the transpose is (t,) z, y, x, C-ordered
    slope, inter = (float(v) for v in header.get_slope_inter()) if _has_scaling(header) else (1.0, 0.0)
    if slope != 1.0 or inter != 0.0:  # ITK rescales in double precision into float32 (double stays double)
        scaled = array.astype(np.float64) * slope + inter
        return scaled.astype(np.float64 if dtype == np.float64 else np.float32)
    return array.astype(dtype.newbyteorder("="), copy=not array.flags.writeable)


def _has_scaling(header: Any) -> bool:
    """Whether the header's ``scl_slope``/``scl_inter`` apply (ITK ignores a zero or non-finite slope)."""
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    return bool(np.isfinite(slope) and slope != 0.0 and np.isfinite(inter))


def _header_lines(path: Path, limit: int = 1 << 16) -> tuple[list[str], int]:
    """The text header of an attached-header NRRD or MetaImage file and the offset of the data after it."""
    with open(path, "rb") as handle:
        head = handle.read(limit)
    if head.startswith(b"NRRD"):
        end = head.find(b"\n\n")
        end = len(head) if end < 0 else end + 2
        return head[:end].decode("latin-1").splitlines(), end
    lines, offset = [], 0
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        line = raw.decode("latin-1").strip()
        lines.append(line)
        if re.match(r"ElementDataFile\s*=", line):
            break
    return lines, offset


def _data_location(path: Path) -> tuple[Path, int, int] | None:
    """Where a NRRD or MetaImage file keeps its image data: file, offset and zlib window bits (0: uncompressed)."""
    lines, offset = _header_lines(path)
    fields = {}
    for line in lines:
        for separator in (":=", ":", "="):
            if separator in line:
                key, value = line.split(separator, 1)
                fields[key.strip().lower()] = value.strip()
                break
    if lines and lines[0].startswith("NRRD"):
        compressed = fields.get("encoding", "raw").lower() in ("gzip", "gz")
        if fields.get("encoding", "raw").lower() not in ("raw", "gzip", "gz"):
            return None
        name = fields.get("data file") or fields.get("datafile")
        wbits = GZIP_WBITS if compressed else 0
    else:
        compressed = fields.get("compresseddata", "false").lower() == "true"
        name = fields.get("elementdatafile")
        if name is None:
            return None
        name = None if name.upper() == "LOCAL" else name
        wbits = AUTO_WBITS if compressed else 0
    if name is None:
        return path, offset, wbits
    if " " in name or name.upper() == "LIST":
        return None  # several data files: left to the reader's own message
    return path.parent / name, 0, wbits


def payload_problem(path: str | Path) -> str | None:
    """What is wrong with the image data of a NIfTI, NRRD or MetaImage file (``"truncated: 1.2 of 35.7 MB of
    image data ..."``), or None when it is complete or the file is not one of these."""
    import SimpleITK as sitk

    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".nii.gz"):
            read_nifti_gz(path)
            return None
        if name.endswith(".nii"):
            with open(path, "rb") as handle:
                head = handle.read(540)
            if not head:
                return "empty file (0 bytes)"
            header = _nifti_header(head)
            if header is not None:
                expected, offset = nifti_data_bytes(header), int(header.get_data_offset())
                if os.path.getsize(path) < offset + expected:
                    return truncated(os.path.getsize(path) - offset, expected)
            return None
        if not name.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
            return None
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        location = _data_location(path)
    except DamagedFileError as exc:
        return exc.problem
    except (OSError, RuntimeError):
        return None
    if location is None:
        return None
    data_file, offset, wbits = location
    component = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID()).GetSizeOfPixelComponent()
    expected = int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents() * component
    try:
        if wbits == 0:
            done, problem = os.path.getsize(data_file) - offset, None
        else:
            with open(data_file, "rb") as handle:
                handle.seek(offset)
                done, problem = _inflate(handle, wbits)
    except OSError as exc:
        return f"cannot read its data file {data_file} ({exc.strerror})"
    if done < expected:
        return truncated(done, expected)
    if problem is not None and problem != "truncated":
        return f"damaged: {problem}"
    return None
