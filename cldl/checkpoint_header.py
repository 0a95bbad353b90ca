"""A checkpoint's metadata (task, patch size, provenance) read without torch and without unpickling any tensor.

``torch.save`` writes a zip whose ``*/data.pkl`` holds the object tree; tensors in it are references to storages
stored as separate files. This reader unpickles ``data.pkl`` with an allow-list as strict as
``torch.load(weights_only=True)``: plain containers and numbers, and torch's tensor-rebuild functions and storage
classes replaced by inert placeholders. Any other global is refused, so a model file can never run code here,
and no tensor data is read. The Slicer modules use it (through ``cldl info``) where torch is not installed yet.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

#: The marker and the newest layout version of a CLDL checkpoint (see :mod:`cldl.checkpoint`).
FORMAT = "cldl-checkpoint"
FORMAT_VERSION = 1
MIN_PATCH, MAX_PATCH = 16, 1024  # sliding-window sides a checkpoint may name
#: The largest ``data.pkl`` read (the metadata and tensor references of a CLDL checkpoint are a few tens of kB).
MAX_PICKLE_BYTES = 16 * 1024 * 1024


class HeaderError(ValueError):
    """A file whose header cannot be read as a CLDL checkpoint's, with the reason."""


class TensorPlaceholder:
    """Stands for a tensor in the object tree: its shape only."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(s) for s in shape)

    def __repr__(self) -> str:
        return f"TensorPlaceholder{self.shape}"


class _StoragePlaceholder:
    """Stands for a storage class (``torch.FloatStorage``) or a storage reference."""


def _rebuildTensor(storage, offset, size, stride, *args, **kwargs) -> TensorPlaceholder:
    return TensorPlaceholder(size)


def _rebuildParameter(data, requires_grad=False, backward_hooks=None, *args) -> Any:
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuildTensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuildTensor,
    ("torch._utils", "_rebuild_parameter"): _rebuildParameter,
}


class _HeaderUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and (name.endswith("Storage") or name == "device"):
            return _StoragePlaceholder
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid: Any) -> _StoragePlaceholder:
        return _StoragePlaceholder()


def read_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict with every tensor as a :class:`TensorPlaceholder`; raises :class:`HeaderError`."""
    path = Path(path)
    if not path.is_file():
        raise HeaderError(f"{path}: no such checkpoint file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(names) != 1:
                raise HeaderError(f"{path}: not a CLDL checkpoint (no torch.save archive)")
            info = archive.getinfo(names[0])
            if info.file_size > MAX_PICKLE_BYTES:
                raise HeaderError(f"{path}: not a CLDL checkpoint (its object tree is {info.file_size} bytes)")
            data = _HeaderUnpickler(io.BytesIO(archive.read(info))).load()
    except zipfile.BadZipFile:
        raise HeaderError(f"{path}: not a CLDL checkpoint (not a torch.save archive)") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as exc:
        if isinstance(exc, HeaderError):
            raise
        raise HeaderError(f"{path}: not a loadable CLDL checkpoint ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HeaderError(f"{path}: not a CLDL checkpoint (no '{FORMAT}' marker)")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise HeaderError(
            f"{path}: checkpoint format {version} is newer than this cldl supports ({FORMAT_VERSION}); upgrade cldl"
        )
    return data


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """What ``cldl info`` says about a checkpoint without torch: task, patch size and epoch."""
    from .tasks import Task

    data = read_checkpoint_header(path)
    try:
        task = Task.from_dict(data["task"])
        patch = [int(s) for s in data["patch_size"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise HeaderError(f"{path}: damaged CLDL checkpoint ({exc})") from None
    if len(patch) != 3 or not all(MIN_PATCH <= side <= MAX_PATCH and side % 16 == 0 for side in patch):
        raise HeaderError(
            f"{path}: damaged CLDL checkpoint (patch size {patch}; each side must be a multiple of 16 from "
            f"{MIN_PATCH} to {MAX_PATCH})"
        )
    epoch = (data.get("provenance") or {}).get("epoch")
    return {"task": task.to_dict(), "patch_size": patch, "epoch": epoch}
