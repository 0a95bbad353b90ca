"""Task definitions: modalities, label values, class names, colours and evaluation regions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Region:
    """An evaluation region: the union of some class indices (e.g. BraTS whole tumour)."""

    name: str
    classes: tuple[int, ...]


@dataclass(frozen=True)
class Task:
    """What a model segments: inputs, label values (index = class), names, colours and regions."""

    name: str
    modalities: tuple[str, ...]
    label_values: tuple[int, ...]
    class_names: tuple[str, ...]
    colors: tuple[tuple[float, float, float], ...]
    regions: tuple[Region, ...]
    image_kind: str = "mr"  # "mr" (z-score over non-zero voxels) or "ct" (HU window, then z-score)
    abbreviations: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        k = len(self.label_values)
        if len(self.class_names) != k or len(self.colors) != k:
            raise ValueError(f"task {self.name!r}: label_values, class_names and colors must have the same length")
        if self.label_values[0] != 0:
            raise ValueError(f"task {self.name!r}: the first label value must be 0 (background)")
        if len(set(self.label_values)) != k:
            raise ValueError(f"task {self.name!r}: label values must be unique")
        for region in self.regions:
            if any(c <= 0 or c >= k for c in region.classes):
                raise ValueError(f"task {self.name!r}: region {region.name!r} refers to an unknown class")

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.label_values)

    @property
    def num_modalities(self) -> int:
        """Number of input channels."""
        return len(self.modalities)

    def labels_to_classes(self, labels: np.ndarray, unknown: str = "error") -> np.ndarray:
        """Map original label values to class indices 0..K-1 (uint8); unknown values raise or become 0."""
        lut_keys = np.asarray(self.label_values)
        values = np.unique(labels)
        stray = sorted(set(values.tolist()) - set(self.label_values))
        if stray and unknown == "error":
            shown = (
                str(stray)
                if len(stray) <= 8
                else f"[{', '.join(f'{v:g}' for v in stray[:8])}, ...] ({len(stray)} values)"
            )
            raise ValueError(
                f"label values {shown} are not part of task {self.name!r} (expected {list(self.label_values)}"
                + ("; an image rather than a label map?)" if len(stray) > 8 else ")")
            )
        out = np.zeros(labels.shape, dtype=np.uint8)
        for index, value in enumerate(lut_keys):
            if index:
                out[labels == value] = index
        return out

    def classes_to_labels(self, classes: np.ndarray) -> np.ndarray:
        """Map class indices back to the task's original label values."""
        lut = np.asarray(self.label_values, dtype=np.int16 if max(self.label_values) > 255 else np.uint8)
        return lut[classes]

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form stored in checkpoints and dataset.json files."""
        return {
            "name": self.name,
            "modalities": list(self.modalities),
            "label_values": list(self.label_values),
            "class_names": list(self.class_names),
            "colors": [list(c) for c in self.colors],
            "regions": [{"name": r.name, "classes": list(r.classes)} for r in self.regions],
            "image_kind": self.image_kind,
            "abbreviations": list(self.abbreviations),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=str(data["name"]),
            modalities=tuple(data["modalities"]),
            label_values=tuple(int(v) for v in data["label_values"]),
            class_names=tuple(data["class_names"]),
            colors=tuple(tuple(float(x) for x in c) for c in data["colors"]),
            regions=tuple(Region(r["name"], tuple(int(c) for c in r["classes"])) for r in data["regions"]),
            image_kind=str(data.get("image_kind", "mr")),
            abbreviations=tuple(data.get("abbreviations", ())),
        )

    def same_labels_as(self, other: Task) -> bool:
        """Whether two tasks agree on inputs and label meaning (used to refuse a wrong checkpoint)."""
        return self.modalities == other.modalities and self.label_values == other.label_values


MODALITY_ALIASES = {  # other names of the BraTS modalities (BraTS 2023+, MSD, nnU-Net conversions)
    "flair": ("flair", "t2f", "t2flair", "t2-flair"),
    "t1": ("t1", "t1n", "t1w", "t1-native"),
    "t1ce": ("t1ce", "t1c", "t1gd", "t1-gd", "t1post", "t1-ce"),
    "t2": ("t2", "t2w"),
}


def modality_aliases(modalities: Sequence[str]) -> dict[str, str]:
    """Lower-case name token -> modality (of a task's ``modalities``), including the built-in aliases of the BraTS
    modalities."""
    table: dict[str, str] = {}
    for modality in modalities:
        for alias in (modality.lower(), *MODALITY_ALIASES.get(modality.lower(), ())):
            table.setdefault(alias.lower(), modality)
            table.setdefault(alias.lower().replace("-", ""), modality)
    return table


BRATS = Task(
    name="brats",
    modalities=("flair", "t1", "t1ce", "t2"),
    label_values=(0, 1, 2, 4),
    class_names=(
        "Background",
        "Necrotic and non-enhancing tumour core",
        "Peritumoral edema",
        "GD-enhancing tumour",
    ),
    abbreviations=("BG", "NCR", "ED", "ET"),
    colors=((0.0, 0.0, 0.0), (0.80, 0.25, 0.20), (0.35, 0.75, 0.35), (0.95, 0.85, 0.25)),
    regions=(Region("WT", (1, 2, 3)), Region("TC", (1, 3)), Region("ET", (3,))),
    image_kind="mr",
)

MMWHS_NAMES = (
    "Background",
    "Left ventricle myocardium",
    "Left atrium blood cavity",
    "Left ventricle blood cavity",
    "Right atrium blood cavity",
    "Right ventricle blood cavity",
    "Ascending aorta",
    "Pulmonary artery",
)
MMWHS_ABBREVIATIONS = ("BG", "Myo", "LA", "LV", "RA", "RV", "AA", "PA")
MMWHS_COLORS = (
    (0.0, 0.0, 0.0),
    (0.86, 0.55, 0.35),
    (0.55, 0.35, 0.80),
    (0.85, 0.20, 0.25),
    (0.35, 0.55, 0.90),
    (0.25, 0.75, 0.65),
    (0.95, 0.80, 0.25),
    (0.40, 0.80, 0.30),
)


def _mmwhs(modality: str, image_kind: str) -> Task:
    """MM-WHS 2017 whole-heart task for one imaging modality."""
    return Task(
        name=f"mmwhs_{modality}",
        modalities=(modality,),
        label_values=(0, 205, 420, 500, 550, 600, 820, 850),
        class_names=MMWHS_NAMES,
        abbreviations=MMWHS_ABBREVIATIONS,
        colors=MMWHS_COLORS,
        regions=tuple(Region(abbr, (i,)) for i, abbr in enumerate(MMWHS_ABBREVIATIONS) if i),
        image_kind=image_kind,
    )


MMWHS_CT = _mmwhs("ct", "ct")
MMWHS_MR = _mmwhs("mr", "mr")

BINARY = Task(
    name="binary",
    modalities=("image",),
    label_values=(0, 1),
    class_names=("Background", "Foreground"),
    abbreviations=("BG", "FG"),
    colors=((0.0, 0.0, 0.0), (0.9, 0.6, 0.2)),
    regions=(Region("FG", (1,)),),
)

BUILTIN_TASKS = {t.name: t for t in (BRATS, MMWHS_CT, MMWHS_MR, BINARY)}
TASK_ALIASES = {"mmwhs": "mmwhs_ct"}


def get_task(name_or_path: str | Path) -> Task:
    """A built-in task by name, or a custom task from an nnU-Net/MSD style ``dataset.json``."""
    key = str(name_or_path)
    key = TASK_ALIASES.get(key, key)
    if key in BUILTIN_TASKS:
        return BUILTIN_TASKS[key]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "dataset.json"
    if path.suffix == ".json" and path.is_file():
        return task_from_dataset_json(path)
    raise ValueError(
        f"unknown task {key!r}: use one of {sorted(BUILTIN_TASKS) + sorted(TASK_ALIASES)} or a dataset.json path"
    )


def task_from_dataset_json(path: str | Path) -> Task:
    """Build a task from an nnU-Net v2 (``channel_names``/``labels``) or MSD (``modality``/``labels``) dataset.json."""
    data = json.loads(Path(path).read_text())
    channels = data.get("channel_names") or data.get("modality")
    if not channels or "labels" not in data:
        raise ValueError(f"{path}: a dataset.json needs 'channel_names' (or 'modality') and 'labels'")
    modalities = tuple(str(channels[k]) for k in sorted(channels, key=int))
    labels = data["labels"]
    if all(str(k).isdigit() for k in labels):  # MSD: {"0": "background", ...}
        pairs = sorted((int(k), str(v)) for k, v in labels.items())
    else:  # nnU-Net v2: {"background": 0, ...}; region-based labels (lists) are not supported
        if any(not isinstance(v, int) for v in labels.values()):
            raise ValueError(f"{path}: region-based (list-valued) labels are not supported")
        pairs = sorted((int(v), str(k)) for k, v in labels.items())
    values = tuple(v for v, _ in pairs)
    names = tuple(n for _, n in pairs)
    palette = [c for c in MMWHS_COLORS[1:]] + [c for c in BRATS.colors[1:]]
    colors = ((0.0, 0.0, 0.0),) + tuple(palette[i % len(palette)] for i in range(len(values) - 1))
    is_ct = any(m.lower() == "ct" for m in modalities)
    return Task(
        name=str(data.get("name", Path(path).parent.name)),
        modalities=modalities,
        label_values=values,
        class_names=names,
        abbreviations=names,
        colors=colors,
        regions=tuple(Region(names[i], (i,)) for i in range(1, len(values))),
        image_kind="ct" if is_ct else "mr",
    )
