"""Finding training cases on disk and loading them into memory, preprocessed.

Layouts recognised here: BraTS (one folder per case with ``<case>_{flair,t1,t1ce,t2,seg}.nii.gz``, at any
depth, so ``{HGG,LGG}/Brats18_*`` works), MM-WHS (``<case>_image.nii.gz`` + ``<case>_label.nii.gz``) and
nnU-Net raw (``imagesTr/<case>_0000.nii.gz ...`` + ``labelsTr/<case>.nii.gz``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import read_image
from ..tasks import Task
from .preprocess import InputError, PreprocessConfig, Preprocessed, preprocess

NIFTI = (".nii.gz", ".nii")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: one image per modality (task order) and an optional label map."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


def _strip(name: str) -> str:
    """File name without a NIfTI suffix."""
    for suffix in NIFTI:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def discover_cases(root: str | Path, task: Task) -> list[CaseFiles]:
    """All cases under ``root`` for ``task``, sorted by id; a clear error when no known layout matches."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    if (root / "imagesTr").is_dir():
        cases = _nnunet_cases(root, task)
    elif task.name == "brats" or task.num_modalities > 1:
        cases = _per_modality_cases(root, task)
    else:
        cases = _image_label_cases(root)
    if not cases:
        raise InputError(
            f"{root}: no {task.name} cases found (expected <case>/<case>_{{{','.join(task.modalities)},seg}}.nii.gz, "
            "<case>_image/_label.nii.gz or an nnU-Net imagesTr/labelsTr folder)"
        )
    return sorted(cases, key=lambda c: c.case_id)


def _per_modality_cases(root: Path, task: Task) -> list[CaseFiles]:
    """BraTS-style cases: files named ``<case>_<modality>`` with a ``_seg`` label."""
    cases = []
    first = task.modalities[0]
    for suffix in NIFTI:
        for path in root.rglob(f"*_{first}{suffix}"):
            case_id = _strip(path.name)[: -len(first) - 1]
            images = tuple(path.with_name(f"{case_id}_{m}{suffix}") for m in task.modalities)
            missing = [p.name for p in images if not p.is_file()]
            if missing:
                raise InputError(f"case {case_id}: missing modality files {missing} in {path.parent}")
            label = path.with_name(f"{case_id}_seg{suffix}")
            cases.append(CaseFiles(case_id, images, label if label.is_file() else None))
    return cases


def _image_label_cases(root: Path) -> list[CaseFiles]:
    """MM-WHS-style cases: ``<case>_image`` with ``<case>_label``."""
    cases = []
    for suffix in NIFTI:
        for path in root.rglob(f"*_image{suffix}"):
            case_id = _strip(path.name)[: -len("_image")]
            label = path.with_name(f"{case_id}_label{suffix}")
            cases.append(CaseFiles(case_id, (path,), label if label.is_file() else None))
    return cases


def _nnunet_cases(root: Path, task: Task) -> list[CaseFiles]:
    """nnU-Net raw cases: ``imagesTr/<case>_XXXX`` channels and ``labelsTr/<case>``."""
    cases = []
    for suffix in NIFTI:
        for path in (root / "imagesTr").glob(f"*_0000{suffix}"):
            case_id = _strip(path.name)[: -len("_0000")]
            images = tuple(path.with_name(f"{case_id}_{i:04d}{suffix}") for i in range(task.num_modalities))
            missing = [p.name for p in images if not p.is_file()]
            if missing:
                raise InputError(f"case {case_id}: missing channel files {missing} in {path.parent}")
            label = root / "labelsTr" / f"{case_id}{suffix}"
            cases.append(CaseFiles(case_id, images, label if label.is_file() else None))
    return cases


def split_cases(cases: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Sort, shuffle with ``seed`` and split (the authors use seed 3 and an 80/20 split)."""
    ordered = sorted(cases, key=lambda c: c.case_id)
    random.Random(seed).shuffle(ordered)
    n_train = len(ordered) - max(1, int(round(len(ordered) * val_fraction))) if len(ordered) > 1 else 1
    return ordered[:n_train], ordered[n_train:]


def load_case(case: CaseFiles, task: Task, config: PreprocessConfig) -> Preprocessed:
    """Read and preprocess one case; labels become class indices (uint8)."""
    arrays, geometry = [], None
    for path in case.images:
        array, geo = read_image(path, np.float32)
        if geometry is not None and not geometry.matches(geo):
            raise InputError(f"case {case.case_id}: {path.name} is not on the same grid as {case.images[0].name}")
        geometry = geometry or geo
        arrays.append(array)
    labels = None
    if case.label is not None:
        label_array, label_geo = read_image(case.label)
        if not geometry.matches(label_geo):
            raise InputError(f"case {case.case_id}: the label map is not on the image grid")
        try:
            labels = task.labels_to_classes(label_array)
        except ValueError as exc:
            raise InputError(f"case {case.case_id}: {exc}") from None
    return preprocess(np.stack(arrays), config, task.modalities, labels)
