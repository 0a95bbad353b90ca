"""Volume nodes <-> image files with exact geometry (origin, spacing, direction, oblique ones too).

Files are written and read by Slicer's own ``vtkMRMLVolumeArchetypeStorageNode`` (ITK I/O, RAS <-> LPS handled
there), the path Slicer itself uses; 4D per-class probability files are read with SimpleITK (shipped with
Slicer) and split into one scalar volume per class on the grid of a reference volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import slicer
import vtk


def exportVolume(volumeNode, path: str | Path, compress: bool = False) -> Path:
    """Write a scalar volume node to ``path`` (format from the suffix, e.g. ``.nii``) with its geometry.

    The node's own IJK-to-RAS geometry is written; a parent transform is not applied (see
    :func:`checkInputs`, which refuses non-linear or unhardened transforms).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(1 if compress else 0)
    if not storage.WriteData(volumeNode):
        raise OSError(f"could not write {volumeNode.GetName()} to {path}")
    return path


def importVolume(path: str | Path, scene, name: str, labelmap: bool = False, node=None):
    """Read an image file into a (new or given) scalar or label map volume node with the file's geometry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if node is None:
        className = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if labelmap:
        storage.SetSingleFile(1)
    if not storage.ReadData(node):
        raise OSError(f"could not read {path}")
    return node


def ijkToRas(volumeNode) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix as numpy."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def sameGrid(a, b, tolerance: float = 1e-4) -> bool:
    """Whether two volume nodes have the same dimensions and IJK-to-RAS geometry."""
    if a.GetImageData() is None or b.GetImageData() is None:
        return False
    if tuple(a.GetImageData().GetDimensions()) != tuple(b.GetImageData().GetDimensions()):
        return False
    return bool(np.allclose(ijkToRas(a), ijkToRas(b), atol=tolerance))


def checkInputs(volumeNodes: Sequence, modalities: Sequence[str], requireSameGrid: bool = True) -> None:
    """Refuse missing, empty, differently gridded (unless ``requireSameGrid`` is False: raw scans that the engine
    prepares) or non-linearly transformed inputs with a clear message."""
    if len(volumeNodes) != len(modalities):
        raise ValueError(
            f"the model expects {len(modalities)} input volumes ({', '.join(modalities)}), got {len(volumeNodes)}"
        )
    for node, modality in zip(volumeNodes, modalities):
        if node is None:
            raise ValueError(f"select an input volume for {modality}")
        if node.GetImageData() is None:
            raise ValueError(f"input volume {node.GetName()} ({modality}) holds no image data")
        if node.GetImageData().GetNumberOfScalarComponents() != 1:
            raise ValueError(f"input volume {node.GetName()} ({modality}) is not a scalar (single-channel) volume")
        transform = node.GetParentTransformNode()
        if transform is not None and not transform.IsTransformToWorldLinear():
            raise ValueError(f"input volume {node.GetName()} is under a non-linear transform: harden it first")
    first = volumeNodes[0]
    for node, modality in zip(volumeNodes[1:], modalities[1:]):
        if requireSameGrid and not sameGrid(first, node):
            raise ValueError(
                f"input volume {node.GetName()} ({modality}) is not on the grid of {first.GetName()} "
                f"({modalities[0]}): resample it first (e.g. with the Resample Scalar/Vector/DWI Volume module)"
            )
        if node.GetParentTransformNode() != first.GetParentTransformNode():
            raise ValueError(f"input volumes {first.GetName()} and {node.GetName()} are under different transforms")


def copyGeometry(target, reference) -> None:
    """Give ``target`` the IJK-to-RAS geometry and parent transform of ``reference``."""
    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    target.SetIJKToRASMatrix(matrix)
    target.SetAndObserveTransformNodeID(reference.GetTransformNodeID())


def importProbabilities(path: str | Path, reference, scene, names: Sequence[str], skipFirst: bool = True) -> list:
    """Read a 4D (class, z, y, x) probability file into one float volume per class on ``reference``'s grid.

    ``names`` gives one node name per class; the first (background) class is skipped unless ``skipFirst`` is False.
    """
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayViewFromImage(image)
    if array.ndim == 3:
        array = array[None]
    if array.shape[0] != len(names):
        raise ValueError(f"{path} holds {array.shape[0]} probability maps, the model has {len(names)} classes")
    dims = reference.GetImageData().GetDimensions()
    if tuple(array.shape[1:]) != (dims[2], dims[1], dims[0]):
        raise ValueError(f"{path} has grid {array.shape[1:]}, the reference volume {dims[::-1]}")
    nodes = []
    for index, name in enumerate(names):
        if skipFirst and index == 0:
            continue
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array[index], dtype=np.float32))
        copyGeometry(node, reference)
        nodes.append(node)
    return nodes
