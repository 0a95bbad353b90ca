"""Finding cases on disk in the layouts datasets are distributed in, checking them, and loading them preprocessed.

Layouts (auto-detected by :func:`detect_dataset`; docs/datasets.md has the details):

* ``brats``: one file per modality, ``<case>_{flair,t1,t1ce,t2}`` + ``<case>_seg``, at any depth: BraTS 2018-2020
  (``{HGG,LGG}/Brats18_*``, or flat), BraTS 2021 (``BraTS2021_00000/``), BraTS 2023+ names (``-t2f``, ``-t1n``,
  ``-t1c``, ``-t2w``, ``-seg``; label 3 = enhancing tumour is mapped to 4), validation folders without labels.
* ``msd``: Medical Segmentation Decathlon (``imagesTr/<case>.nii.gz`` 4D, ``labelsTr/``, ``dataset.json``); the
  channels are ordered by their names in ``dataset.json`` and, for Task01_BrainTumour with the BraTS task, the
  labels 1 edema, 2 non-enhancing tumour, 3 enhancing tumour become BraTS 2, 1, 4.
* ``mmwhs``: ``<case>_image`` + ``<case>_label`` (MM-WHS 2017 ``ct_train_1001_image.nii.gz``; ``ct_``/``mr_``
  files are taken for the matching task). MM-WHS stray value 421 becomes 420 (LA); any other unknown value becomes
  background (the authors' loader does the same); both are reported.
* ``nnunet``: nnU-Net raw (``imagesTr/<case>_0000.nii.gz ...``, ``labelsTr/<case>.nii.gz``, ``dataset.json``).
* ``list``: a ``cases.csv`` / ``cases.json`` (or any .csv/.json file given directly) naming each case's files.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files.geometry import Geometry, labels_on_grid, overlap_fraction
from ..files.images import SEG_SUFFIX, ImageError, is_image_path, read_channels, strip_image_suffix
from ..files.label_maps import read_labels
from ..tasks import BRATS, MMWHS_CT, MMWHS_MR, Task, get_task, modality_aliases, task_from_dataset_json
from .preprocess import InputError, PreprocessConfig, Preprocessed, align, image_problems, preprocess, stack_channels

NIFTI = (".nii.gz", ".nii")
LABEL_TOKENS = ("seg", "label", "labels")
CASE_LISTS = ("cases.csv", "cases.json")
LABEL_LIKE_VALUES = 12  # an image with at most this many distinct integer values looks like a label map
SAME_CONTRAST_CORRELATION = 0.99  # two modalities correlated above this look like the same contrast
MIXUP_SAMPLE = 1 << 20  # voxels per channel the mix-up checks look at
BRATS_2023_TOKENS = ("t2f", "t1n", "t1c", "t2w")
MMWHS_STRAY = {421: 420}  # reported in some MM-WHS label files: a left-atrium voxel value off by one
BRATS_LABEL_SYNONYMS = (  # substring of a (normalised) label name -> BraTS value; first match wins
    ("non enhancing", 1),
    ("necro", 1),
    ("netc", 1),
    ("ncr", 1),
    ("edema", 2),
    ("snfh", 2),
    ("enhancing", 4),
)
LAYOUT_HELP = (
    "BraTS (<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz), MSD (imagesTr/ 4D + labelsTr/ + dataset.json), "
    "MM-WHS (<case>_image.nii.gz + <case>_label.nii.gz), nnU-Net raw (imagesTr/<case>_0000.nii.gz + labelsTr/ + "
    "dataset.json) or a cases.csv / cases.json list (see docs/datasets.md)"
)


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: one image per modality (task order) and an optional label map.

    ``channels``: for a single multi-channel (4D) file, the channel of each task modality. ``label_map``: source
    label value -> task label value, applied before the task check (e.g. MSD -> BraTS). ``unknown_labels``:
    ``"error"`` (default) or ``"background"`` for values outside the task after the map.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    channels: tuple[int, ...] | None = None
    label_map: tuple[tuple[int, int], ...] = ()
    unknown_labels: str = "error"

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file (or DICOM folder) of the case."""
        return self.images + ((self.label,) if self.label is not None else ())


@dataclass
class Dataset:
    """A detected dataset: its layout, task, cases and the problems found from the file names alone."""

    root: Path
    layout: str
    description: str
    task: Task
    cases: list[CaseFiles]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    modality_files: str = ""

    @property
    def labelled(self) -> list[CaseFiles]:
        """Cases with a label map."""
        return [c for c in self.cases if c.label is not None]


# --------------------------------------------------------------------------------------------------------------
# helpers


def _strip(name: str) -> str:
    """File name without its image suffix."""
    return strip_image_suffix(name)


def _visible(path: Path, root: Path) -> bool:
    """False for hidden files and folders (``.DS_Store``, macOS ``._`` resource forks in the MSD tarballs)."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (no hidden ones), sorted."""
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in paths if p.is_file() and is_image_path(p) and _visible(p, folder))


def _norm(text: str) -> str:
    """Lower-case, spelling-normalised label or channel name."""
    text = str(text).lower().replace("tumour", "tumor").replace("oedema", "edema")
    return " ".join(re.sub(r"[_\-./]", " ", text).split())


def modality_from_name(path: str | Path, task: Task) -> str | None:
    """The task modality a file name ends with (``..._t1ce.nii.gz``, ``...-t1c.nrrd``, ``T2.mha``), or None."""
    stem = _strip(Path(path).name)
    token = re.split(r"[_\-. ]", stem)[-1].lower()
    return modality_aliases(task.modalities).get(token)


def check_modality_order(paths: list[str | Path], task: Task) -> None:
    """Refuse one file given for two modalities, and images given in another order than the task's when their
    file names say so."""
    check_distinct_files(paths, task.modalities)
    if len(paths) != task.num_modalities or task.num_modalities < 2:
        return
    named = [modality_from_name(p, task) for p in paths]
    if None in named or sorted(named) != sorted(task.modalities) or named == list(task.modalities):
        return
    given = ", ".join(f"{Path(p).name} ({m})" for p, m in zip(paths, named))
    raise InputError(f"the images are in the wrong order: {given}; give them as {', '.join(task.modalities)}")


def check_distinct_files(paths: Sequence[str | Path], modalities: Sequence[str]) -> None:
    """Refuse the same file given for two modalities (by path, symbolic link or hard link)."""
    seen: dict[object, str] = {}
    for path, modality in zip(paths, modalities):
        try:
            stat = os.stat(path)
            key: object = (stat.st_dev, stat.st_ino)
        except OSError:  # missing: the read says so
            key = Path(path).resolve()
        if key in seen:
            raise InputError(f"{path} is given for both {seen[key]} and {modality}; each modality needs its own image")
        seen[key] = modality


def mixup_problems(images: np.ndarray, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Signs of mixed-up inputs in ``images`` (C x z x y x): errors (two channels with identical voxels) and
    warnings (a channel that looks like a label map, two channels that look like the same contrast). Measured on
    a regular sample of at most ~1M voxels per channel."""
    errors, notes = [], []
    step = max(1, images[0].size // MIXUP_SAMPLE)
    samples = [np.ravel(channel)[::step].astype(np.float64) for channel in images]
    for sample, name in zip(samples, names):
        values = np.unique(sample)
        # (a constant channel is refused by image_problems, not reported here)
        if 2 <= values.size <= LABEL_LIKE_VALUES and np.array_equal(values, np.round(values)):
            listed = ", ".join(f"{v:g}" for v in values)
            notes.append(f"{name} looks like a label map (only the values {listed}), not an image")
    for i, j in itertools.combinations(range(len(samples)), 2):
        a, b = samples[i], samples[j]
        if np.array_equal(a, b) and np.array_equal(images[i], images[j]):
            errors.append(f"{names[i]} and {names[j]} hold identical voxels: the same image is given twice")
            continue
        inside = (a != 0) | (b != 0)
        if np.count_nonzero(inside) < 2 or a[inside].std() == 0 or b[inside].std() == 0:
            continue
        correlation = float(np.corrcoef(a[inside], b[inside])[0, 1])
        if correlation > SAME_CONTRAST_CORRELATION:
            notes.append(
                f"{names[i]} and {names[j]} look like the same contrast (voxel correlation {correlation:.3f}); "
                "is one image given twice?"
            )
    return errors, notes


def check_mixups(images: np.ndarray, names: Sequence[str]) -> None:
    """Refuse identical channels (InputError) and warn about channels that look mixed up (see mixup_problems)."""
    errors, notes = mixup_problems(images, names)
    if errors:
        raise InputError(errors[0])
    for note in notes:
        warnings.warn(note, stacklevel=2)


def _channel_order(names: dict[int, str], task: Task) -> tuple[tuple[int, ...] | None, str]:
    """Channel index of each task modality from ``dataset.json`` channel names (None if they do not match)."""
    table = modality_aliases(task.modalities)
    by_modality: dict[str, int] = {}
    for index, name in names.items():
        key = _norm(name).replace(" ", "")
        modality = table.get(key) or table.get(_norm(name))
        if modality is not None and modality not in by_modality:
            by_modality[modality] = index
    if len(by_modality) == task.num_modalities:
        order = tuple(by_modality[m] for m in task.modalities)
        text = ", ".join(f"{names[i]} -> {m}" for i, m in zip(order, task.modalities))
        return order, f"channels {text}"
    return None, ""


def _label_map_from_names(names: dict[int, str], task: Task) -> tuple[dict[int, int] | None, str]:
    """Source value -> task value from label names (``dataset.json``); None when the names say nothing."""
    exact: dict[str, int] = {}
    for index in range(1, task.num_classes):
        exact[_norm(task.class_names[index])] = task.label_values[index]
        if index < len(task.abbreviations):
            exact[_norm(task.abbreviations[index])] = task.label_values[index]
    mapping: dict[int, int] = {}
    for value, name in names.items():
        if value == 0:
            continue
        key = _norm(name)
        target = exact.get(key)
        if target is None and task.label_values == BRATS.label_values:
            target = next((v for word, v in BRATS_LABEL_SYNONYMS if word in key), None)
        if target is None:
            return None, ""
        mapping[value] = target
    if not mapping or len(set(mapping.values())) != len(mapping):
        return None, ""
    if all(k == v for k, v in mapping.items()):
        return None, "label values match the task"
    text = ", ".join(f"{k} ({names[k]}) -> {v}" for k, v in sorted(mapping.items()))
    return mapping, f"labels {text}"


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict, or an InputError."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from None
    return data if isinstance(data, dict) else {"cases": data}


def _dataset_json_labels(data: dict[str, Any]) -> dict[int, str]:
    """``{value: name}`` from an MSD (``{"1": "edema"}``) or nnU-Net v2 (``{"edema": 1}``) labels entry."""
    labels = data.get("labels") or {}
    if all(str(k).isdigit() for k in labels):
        return {int(k): str(v) for k, v in labels.items()}
    return {int(v): str(k) for k, v in labels.items() if isinstance(v, int)}


def _dataset_json_channels(data: dict[str, Any]) -> dict[int, str]:
    """``{index: name}`` from ``channel_names`` (nnU-Net v2) or ``modality`` (MSD, nnU-Net v1)."""
    channels = data.get("channel_names") or data.get("modality") or {}
    return {int(k): str(v) for k, v in channels.items() if str(k).isdigit()}


# --------------------------------------------------------------------------------------------------------------
# layouts


def _per_modality(root: Path, task: Task) -> Dataset | None:
    """``<case>_<modality>`` files grouped by folder and case (BraTS and similar)."""
    table = modality_aliases(task.modalities)
    groups: dict[tuple[Path, str], dict[str, Path]] = {}
    used_2023 = False
    for path in _image_files(root):
        match = re.match(r"^(.+)[_-]([^_-]+)$", _strip(path.name))
        if match is None:
            continue
        case_id, token = match.group(1), match.group(2).lower()
        key = (path.parent, case_id)
        if token in LABEL_TOKENS:
            groups.setdefault(key, {})["__label__"] = path
        elif token in table:
            groups.setdefault(key, {})[table[token]] = path
            used_2023 |= token in BRATS_2023_TOKENS
    groups = {k: v for k, v in groups.items() if set(v) - {"__label__"}}
    if not groups:
        return None
    cases, problems, notes = [], [], []
    label_map: tuple[tuple[int, int], ...] = ()
    if used_2023 and task.label_values == BRATS.label_values:
        label_map = ((3, 4),)
        notes.append("BraTS 2023+ naming (t2f, t1n, t1c, t2w): label 3 (enhancing tumour) is read as 4")
    for (folder, case_id), files in sorted(groups.items(), key=lambda item: item[0][1]):
        missing = [m for m in task.modalities if m not in files]
        if missing:
            problems.append(f"case {case_id}: missing modality {', '.join(missing)} in {folder}")
            continue
        label = files.get("__label__")
        if label is None:  # BraTS 2020 case 355 ships its label as W39_1998.09.19_Segm.nii
            others = [
                p
                for p in _image_files(folder, recursive=False)
                if "seg" in p.name.lower() and p not in files.values() and not p.name.startswith(case_id)
            ]
            if len(others) == 1:
                label = others[0]
                notes.append(f"case {case_id}: label map taken from the oddly named {label.name}")
        images = tuple(files[m] for m in task.modalities)
        cases.append(CaseFiles(case_id, images, label, label_map=label_map))
    ids = Counter(c.case_id for c in cases)
    problems += [f"case id {cid} appears {n} times (in different folders)" for cid, n in ids.items() if n > 1]
    parents = {p.name.upper() for (folder, _) in groups for p in (folder, folder.parent)}
    example = cases[0].case_id if cases else ""
    if {"HGG", "LGG"} & parents:
        description = "BraTS 2018-2020 training ({HGG,LGG}/<case>/<case>_<modality>.nii.gz)"
    elif used_2023:
        description = "BraTS 2023+ (<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz)"
    elif example.lower().startswith("brats2") or example.lower().startswith("brats-"):
        description = "BraTS 2021+ (<case>/<case>_<modality>.nii.gz)"
    else:
        description = "one file per modality (<case>_<modality>.nii.gz, as BraTS 2019/2020)"
    if cases and all(c.label is None for c in cases):
        description += "; no label maps (a validation or test set)"
    return Dataset(
        root,
        "brats",
        description,
        task,
        cases,
        problems,
        notes,
        modality_files=", ".join(f"<case>_{m}" for m in task.modalities),
    )


def _image_label_pairs(root: Path, task: Task) -> Dataset | None:
    """``<case>_image`` with ``<case>_label`` (MM-WHS)."""
    pairs: dict[str, dict[str, Path]] = {}
    for path in _image_files(root):
        stem = _strip(path.name)
        for kind in ("image", "label"):
            if stem.lower().endswith("_" + kind):
                pairs.setdefault(str(path.parent / stem[: -len(kind) - 1]), {})[kind] = path
    pairs = {k: v for k, v in pairs.items() if "image" in v}
    if not pairs:
        return None
    prefix = {MMWHS_CT.name: "ct_", MMWHS_MR.name: "mr_"}.get(task.name)
    is_mmwhs = task.name in (MMWHS_CT.name, MMWHS_MR.name)
    cases, notes, skipped = [], [], 0
    for key, files in sorted(pairs.items(), key=lambda item: Path(item[0]).name):
        case_id = Path(key).name
        lower = case_id.lower()
        if prefix and lower[:3] in ("ct_", "mr_") and not lower.startswith(prefix):
            skipped += 1
            continue
        cases.append(
            CaseFiles(
                case_id,
                (files["image"],),
                files.get("label"),
                label_map=tuple(MMWHS_STRAY.items()) if is_mmwhs else (),
                unknown_labels="background" if is_mmwhs else "error",
            )
        )
    if skipped:
        notes.append(f"{skipped} case(s) of the other MM-WHS modality skipped (task {task.name})")
    if is_mmwhs:
        notes.append("MM-WHS labels: 421 is read as 420 (LA); other unknown values become background (reported)")
    kind = {MMWHS_CT.name: "CT", MMWHS_MR.name: "MR"}.get(task.name, "")
    description = f"MM-WHS 2017 {kind} (<case>_image.nii.gz + <case>_label.nii.gz)".replace("  ", " ")
    if not is_mmwhs:
        description = "image/label pairs (<case>_image + <case>_label)"
    problems = [] if cases else [f"no {kind or task.name} cases (all {skipped} are of the other modality)"]
    return Dataset(root, "mmwhs", description, task, cases, problems, notes, modality_files="<case>_image")


def _decathlon(root: Path, task: Task | None) -> Dataset:
    """MSD: ``imagesTr/<case>.nii.gz`` (4D for multi-modal tasks), ``labelsTr/<case>.nii.gz``, ``dataset.json``."""
    data = _read_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
    task = task or _msd_task(root, data)
    problems, notes = [], []
    channels, text = _channel_order(_dataset_json_channels(data), task)
    if channels is None:
        names = _dataset_json_channels(data)
        if names and len(names) != task.num_modalities:
            problems.append(
                f"dataset.json lists {len(names)} channels ({', '.join(names.values())}); task {task.name} needs "
                f"{task.num_modalities} ({', '.join(task.modalities)})"
            )
        channels = tuple(range(task.num_modalities))
        notes.append("channel order taken as the task's (dataset.json names do not say)")
    else:
        notes.append(text)
    label_map, text = _label_map_from_names(_dataset_json_labels(data), task)
    if text:
        notes.append(text)
    mapping = tuple(sorted(label_map.items())) if label_map else ()
    cases = []
    for split, labelled in (("imagesTr", True), ("imagesTs", False)):
        folder = root / split
        if not folder.is_dir():
            continue
        for path in _image_files(folder, recursive=False):
            case_id = _strip(path.name)
            label = root / "labelsTr" / path.name if labelled else None
            if label is not None and not label.is_file():
                if labelled:
                    problems.append(f"case {case_id}: no label map {label.relative_to(root)}")
                label = None
            cases.append(CaseFiles(case_id, (path,), label, channels=channels, label_map=mapping))
    name = str(data.get("name", root.name))
    return Dataset(
        root,
        "msd",
        f"Medical Segmentation Decathlon ({name}: imagesTr/<case>.nii.gz with {task.num_modalities} channels)",
        task,
        cases,
        problems,
        notes,
        modality_files="one 4D file per case",
    )


def _msd_task(root: Path, data: dict[str, Any]) -> Task:
    """The task of an MSD folder without ``--task``: BraTS for Task01_BrainTumour, else its dataset.json."""
    channels = _dataset_json_channels(data)
    if _channel_order(channels, BRATS)[0] is not None and _label_map_from_names(_dataset_json_labels(data), BRATS)[0]:
        return BRATS
    if not data:
        raise InputError(f"{root}: no dataset.json; pass --task")
    return task_from_dataset_json(root / "dataset.json")


def _nnunet(root: Path, task: Task | None) -> Dataset:
    """nnU-Net raw: ``imagesTr/<case>_XXXX<ending>``, ``labelsTr/<case><ending>``, ``dataset.json``."""
    data = _read_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
    if task is None:
        if not data:
            raise InputError(f"{root}: an nnU-Net folder without dataset.json; pass --task")
        task = task_from_dataset_json(root / "dataset.json")
    problems, notes = [], []
    names = _dataset_json_channels(data)
    count = len(names) or task.num_modalities
    if count != task.num_modalities:
        problems.append(
            f"dataset.json lists {count} channels ({', '.join(names.values())}); task {task.name} needs "
            f"{task.num_modalities} ({', '.join(task.modalities)})"
        )
    order, text = _channel_order(names, task) if names else (None, "")
    if order is None:
        order = tuple(range(task.num_modalities))
        if names:
            notes.append("channel order taken as the task's (dataset.json names do not say)")
    else:
        notes.append(text)
    label_map, text = _label_map_from_names(_dataset_json_labels(data), task)
    if text:
        notes.append(text)
    mapping = tuple(sorted(label_map.items())) if label_map else ()
    ending = str(data.get("file_ending", "")) or None
    cases = []
    for split, labelled in (("imagesTr", True), ("imagesTs", False)):
        folder = root / split
        if not folder.is_dir():
            continue
        stems: dict[str, dict[int, Path]] = {}
        for path in _image_files(folder, recursive=False):
            if ending and not path.name.endswith(ending):
                continue
            match = re.match(r"^(.+)_(\d{4})$", _strip(path.name))
            if match:
                stems.setdefault(match.group(1), {})[int(match.group(2))] = path
        for case_id, files in sorted(stems.items()):
            missing = [f"{case_id}_{i:04d}" for i in range(count) if i not in files]
            if missing:
                problems.append(f"case {case_id}: missing channel file(s) {', '.join(missing)} in {split}")
                continue
            suffix = files[0].name[len(case_id) + 5 :]
            label = root / "labelsTr" / f"{case_id}{suffix}" if labelled else None
            if label is not None and not label.is_file():
                problems.append(f"case {case_id}: no label map labelsTr/{label.name}")
                label = None
            images = tuple(files[i] for i in order) if len(order) == task.num_modalities else ()
            cases.append(CaseFiles(case_id, images, label, label_map=mapping))
    name = str(data.get("name", root.name))
    return Dataset(
        root,
        "nnunet",
        f"nnU-Net raw ({name}: imagesTr/<case>_XXXX, labelsTr/<case>)",
        task,
        cases,
        problems,
        notes,
        modality_files=", ".join(f"<case>_{i:04d} = {m}" for i, m in zip(order, task.modalities)),
    )


def _case_list(path: Path, task: Task | None) -> Dataset:
    """Cases listed in a CSV (header: case, one column per modality or ``image``, ``label``) or JSON file."""
    base = path.parent
    rows: list[dict[str, Any]]
    if path.suffix.lower() == ".csv":
        try:
            with path.open(newline="") as handle:
                rows = [
                    {(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(handle)
                ]
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a readable CSV file ({exc})") from None
    else:
        data = _read_json(path)
        rows = data.get("cases") or data.get("training") or []
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise InputError(f"{path}: expected a list of cases (objects with 'images' and 'label')")
    if not rows:
        raise InputError(f"{path}: lists no cases")
    columns = {k.lower() for r in rows for k in r}
    columns |= {str(k).lower() for r in rows if isinstance(r.get("images"), dict) for k in r["images"]}
    if task is None:
        table = modality_aliases(BRATS.modalities)
        if {table[c] for c in columns if c in table} == set(BRATS.modalities):
            task = BRATS
        else:
            raise InputError(f"{path}: cannot tell the task from the columns {sorted(columns)}; pass --task")
    table = modality_aliases(task.modalities)
    cases, problems = [], []
    for number, row in enumerate(rows, start=1):
        row = {str(k).lower(): v for k, v in row.items()}
        images_value = row.get("images", row.get("image"))
        channels = None
        if isinstance(images_value, dict):
            by_modality = {table.get(str(k).lower()): v for k, v in images_value.items()}
            images = [by_modality.get(m) for m in task.modalities]
        elif isinstance(images_value, list):
            images = list(images_value)
        elif images_value:
            images = [p.strip() for p in str(images_value).split(";") if p.strip()]
        else:
            by_modality = {table[k]: v for k, v in row.items() if k in table and v}
            images = [by_modality.get(m) for m in task.modalities]
        if len(images) == 1 and task.num_modalities > 1:
            channels = tuple(range(task.num_modalities))
        label_value = row.get("label") or row.get("seg") or row.get("labels") or None
        first = next((str(p) for p in images if p), "")
        case_id = str(row.get("case_id") or row.get("case") or row.get("id") or _strip(Path(first).name))
        if any(not p for p in images) or (channels is None and len(images) != task.num_modalities):
            problems.append(
                f"case {case_id} (entry {number}): needs {task.num_modalities} images "
                f"({', '.join(task.modalities)}) or one multi-channel image"
            )
            continue
        resolved = tuple(Path(p) if Path(p).is_absolute() else base / p for p in map(str, images))
        label = None
        if label_value:
            label = Path(label_value) if Path(label_value).is_absolute() else base / str(label_value)
        for file in resolved + ((label,) if label else ()):
            if not file.exists():
                problems.append(f"case {case_id}: {file} does not exist")
        cases.append(CaseFiles(case_id, resolved, label, channels=channels))
    ids = Counter(c.case_id for c in cases)
    problems += [f"case id {cid} appears {n} times" for cid, n in ids.items() if n > 1]
    return Dataset(
        base,
        "list",
        f"case list {path.name}",
        task,
        sorted(cases, key=lambda c: c.case_id),
        problems,
        [],
        modality_files="as listed",
    )


def detect_dataset(root: str | Path, task: Task | str | None = None) -> Dataset:
    """Recognise the layout of a dataset folder (or case-list file) and list its cases; a clear InputError when no
    known layout matches. Without ``task`` it is inferred (BraTS, MM-WHS CT/MR by file prefix, dataset.json)."""
    root = Path(root)
    task = get_task(task) if isinstance(task, str) else task
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if root.is_file():
        if root.name == "dataset.json":
            root = root.parent
        elif root.suffix.lower() in (".csv", ".json"):
            return _case_list(root, task)
        else:
            raise InputError(f"{root}: give a dataset folder or a .csv/.json case list, not a file")
    for name in CASE_LISTS:
        if (root / name).is_file():
            return _case_list(root / name, task)
    if root.name in ("imagesTr", "labelsTr", "imagesTs") and (root.parent / "imagesTr").is_dir():
        root = root.parent
    if (root / "imagesTr").is_dir():
        channel_files = [
            p for p in _image_files(root / "imagesTr", recursive=False) if _strip(p.name).endswith("_0000")
        ]
        return _nnunet(root, task) if channel_files else _decathlon(root, task)
    candidates: list[Task] = [task] if task is not None else []
    if task is None:
        names = [p.name.lower() for p in _image_files(root)]
        ct = sum(n.startswith("ct_") and "_image" in n for n in names)
        mr = sum(n.startswith("mr_") and "_image" in n for n in names)
        if ct and mr:
            raise InputError(f"{root}: holds MM-WHS CT ({ct}) and MR ({mr}) cases; pass --task mmwhs_ct or mmwhs_mr")
        candidates = [MMWHS_MR if mr else MMWHS_CT, BRATS]
    for candidate in candidates:
        finders = (
            (_image_label_pairs, _per_modality)
            if candidate.num_modalities == 1 or candidate.name.startswith("mmwhs")
            else (_per_modality, _image_label_pairs)
        )
        for finder in finders:
            found = finder(root, candidate)
            if found is not None and (found.cases or found.problems):
                if found.layout == "mmwhs" and candidate.num_modalities != 1:
                    continue
                return found
    files = _image_files(root)
    example = f", e.g. {', '.join(p.name for p in files[:3])}" if files else ""
    wanted = f" for task {task.name}" if task is not None else ""
    raise InputError(
        f"{root}: no known dataset layout{wanted} ({len(files)} image files{example}); expected {LAYOUT_HELP}"
    )


def discover_cases(root: str | Path, task: Task) -> list[CaseFiles]:
    """All cases under ``root`` for ``task``, sorted by id; a clear error when no known layout matches or cases are
    incomplete."""
    dataset = detect_dataset(root, task)
    if dataset.problems:
        more = f" (and {len(dataset.problems) - 1} more)" if len(dataset.problems) > 1 else ""
        raise InputError(f"{root}: {dataset.problems[0]}{more}; run `cldl datasets check {root}` for the full list")
    if not dataset.cases:
        raise InputError(f"{root}: no {task.name} cases found; expected {LAYOUT_HELP}")
    return sorted(dataset.cases, key=lambda c: c.case_id)


def split_rule(cases: Sequence[CaseFiles]) -> str:
    """``hgg_lgg`` when every case folder sits in an ``HGG`` or ``LGG`` folder of one parent (BraTS 2018/2019),
    else ``case_id``."""
    folders = {c.images[0].parent for c in cases if c.images}
    if len(folders) == len(cases) and folders and {f.parent.name for f in folders} <= {"HGG", "LGG"}:
        if len({f.parent.parent for f in folders}) == 1:
            return "hgg_lgg"
    return "case_id"


def split_cases(cases: Sequence[CaseFiles], val_fraction: float, seed: int) -> tuple[list[CaseFiles], list[CaseFiles]]:
    """Sort, shuffle with ``seed`` (Python's ``random``) and split into training and validation cases.

    The sort key depends on the layout (:func:`split_rule`): in the BraTS ``{HGG,LGG}/<case>`` layout it is
    ``HGG/<case>`` / ``LGG/<case>``, the order of the authors' sorted full paths, so that seed 3 and
    ``val_fraction`` 0.2 give the authors' 228 / 57 split of BraTS 2018 exactly; elsewhere it is the case id.
    """
    if split_rule(cases) == "hgg_lgg":
        ordered = sorted(cases, key=lambda c: f"{c.images[0].parent.parent.name}/{c.images[0].parent.name}")
    else:
        ordered = sorted(cases, key=lambda c: c.case_id)
    random.Random(seed).shuffle(ordered)
    n_train = len(ordered) - max(1, int(round(len(ordered) * val_fraction))) if len(ordered) > 1 else 1
    return ordered[:n_train], ordered[n_train:]


# --------------------------------------------------------------------------------------------------------------
# reading cases


def _modality_arrays(case: CaseFiles, task: Task) -> tuple[list[np.ndarray], list[Geometry], list[str]]:
    """One float32 array per task modality with its geometry and a display name."""
    arrays, geometries, names = [], [], []
    if case.channels is not None:
        if len(case.images) != 1:
            raise InputError(f"case {case.case_id}: channels are given for {len(case.images)} files; expected one")
        data, geometry = read_channels(case.images[0], np.float32)
        if data.shape[0] <= max(case.channels) or data.shape[0] != task.num_modalities:
            raise InputError(
                f"case {case.case_id}: {case.images[0].name} has {data.shape[0]} channel(s); task {task.name} "
                f"needs {task.num_modalities} ({', '.join(task.modalities)})"
            )
        for index, modality in zip(case.channels, task.modalities):
            arrays.append(data[index])
            geometries.append(geometry)
            names.append(f"{modality} (channel {index} of {case.images[0].name})")
        return arrays, geometries, names
    if len(case.images) != task.num_modalities:
        raise InputError(
            f"case {case.case_id}: {len(case.images)} image(s) for task {task.name}, which needs "
            f"{task.num_modalities} ({', '.join(task.modalities)})"
        )
    try:
        check_distinct_files(case.images, task.modalities)
    except InputError as exc:
        raise InputError(f"case {case.case_id}: {exc}") from None
    for path, modality in zip(case.images, task.modalities):
        data, geometry = read_channels(path, np.float32)
        if data.shape[0] != 1:
            raise InputError(
                f"case {case.case_id}: {path.name} has {data.shape[0]} channels; expected one ({modality})"
            )
        arrays.append(data[0])
        geometries.append(geometry)
        names.append(f"{modality} ({path.name})")
    return arrays, geometries, names


def map_label_values(labels: np.ndarray, mapping: Iterable[tuple[int, int]]) -> np.ndarray:
    """Replace source label values by target values (all at once, so 1->2 and 2->1 swap correctly)."""
    mapping = dict(mapping)
    if not mapping:
        return labels
    values, inverse = np.unique(labels, return_inverse=True)
    mapped = np.array([mapping.get(int(v), int(v)) for v in values], dtype=np.int32)
    dtype = np.uint8 if mapped.size and mapped.min() >= 0 and mapped.max() <= 255 else np.int16
    return mapped.astype(dtype)[inverse.reshape(labels.shape)]


def _label_values(case: CaseFiles, task: Task, raw: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Mapped label values and warnings about stray values (or an InputError for values outside the task)."""
    mapping = dict(case.label_map)
    values, counts = np.unique(raw, return_counts=True)
    notes = []
    for value, count in zip(values.tolist(), counts.tolist()):
        if value in mapping and case.unknown_labels == "background" and value not in task.label_values:
            notes.append(f"label value {value} ({count} voxels) read as {mapping[value]}")
    mapped = map_label_values(raw, mapping.items())
    stray = sorted(set(np.unique(mapped).tolist()) - set(task.label_values))
    if stray:
        if case.unknown_labels != "background":
            raise InputError(
                f"case {case.case_id}: label values {stray} are not part of task {task.name!r} "
                f"(expected {list(task.label_values)})"
            )
        counts_by_value = dict(zip(*np.unique(mapped, return_counts=True)))
        listed = ", ".join(f"{v} ({int(counts_by_value[v])} voxels)" for v in stray)
        notes.append(f"label values {listed} are not {task.name} labels; read as background")
    return mapped, notes


def read_case(
    case: CaseFiles, task: Task, image_kind: str = "mr"
) -> tuple[np.ndarray, Geometry, np.ndarray | None, list[str]]:
    """Images ``C x z x y x`` (float32, on the first modality's grid), their geometry, the label map in task values
    (or None) and notes on stray label values; modalities or labels on another grid are resampled with a warning."""
    arrays, geometries, names = _modality_arrays(case, task)
    images, geometry = stack_channels(arrays, geometries, names, image_kind)
    try:
        check_mixups(images, names)
    except InputError as exc:
        raise InputError(f"case {case.case_id}: {exc}") from None
    labels, notes = None, []
    if case.label is not None:
        try:
            raw, label_geometry = read_labels(case.label, task)
        except ImageError as exc:
            raise InputError(f"case {case.case_id}: {exc}") from None
        placed = raw if label_geometry.matches(geometry) else None
        if placed is None and case.label.name.lower().endswith(SEG_SUFFIX):  # Slicer crops to the segments
            placed = labels_on_grid(raw, label_geometry, geometry)
        if placed is None:
            placed = align(raw, label_geometry, geometry, f"label map {case.label.name}", names[0], "nearest")
        raw = placed
        labels, notes = _label_values(case, task, raw)
        for note in notes:
            warnings.warn(f"case {case.case_id}: {note}", stacklevel=2)
    return images, geometry, labels, notes


def load_case(case: CaseFiles, task: Task, config: PreprocessConfig) -> Preprocessed:
    """Read and preprocess one case; labels become class indices (uint8)."""
    images, geometry, labels, _ = read_case(case, task, config.image_kind)
    classes = None if labels is None else task.labels_to_classes(labels, unknown="background")
    try:
        return preprocess(images, config, task.modalities, classes, geometry=geometry)
    except InputError as exc:
        raise InputError(f"case {case.case_id}: {exc}") from None


# --------------------------------------------------------------------------------------------------------------
# checking


@dataclass
class CheckReport:
    """What ``cldl datasets check`` found."""

    dataset: Dataset
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    label_values: dict[int, int] = field(default_factory=dict)  # value (as in the files) -> number of cases
    spacings: list[tuple[float, float, float]] = field(default_factory=list)
    sizes: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        d = self.dataset
        return {
            "root": str(d.root),
            "layout": d.layout,
            "description": d.description,
            "task": d.task.name,
            "modalities": list(d.task.modalities),
            "cases": len(d.cases),
            "labelled": len(d.labelled),
            "label_values": {str(k): v for k, v in sorted(self.label_values.items())},
            "notes": d.notes,
            "problems": self.problems,
            "warnings": self.warnings,
            "ok": self.ok,
        }

    def lines(self) -> list[str]:
        """The human-readable report."""
        d = self.dataset
        out = [
            f"dataset: {d.root}",
            f"layout: {d.layout} - {d.description}",
            f"task: {d.task.name} (labels {', '.join(map(str, d.task.label_values))})",
            f"cases: {len(d.cases)} ({len(d.labelled)} with a label map, {len(d.cases) - len(d.labelled)} without)",
            f"modalities: {', '.join(d.task.modalities)} ({d.modality_files})",
        ]
        if self.label_values:
            found = ", ".join(f"{v} ({n} case{'s' if n != 1 else ''})" for v, n in sorted(self.label_values.items()))
            out.append(f"label values found: {found}")
        if self.spacings:
            spacing = np.asarray(self.spacings)
            low, high = spacing.min(axis=0), spacing.max(axis=0)
            out.append(
                "spacing (mm, x y z): "
                + " ".join(f"{a:.3g}" if a == b else f"{a:.3g}-{b:.3g}" for a, b in zip(low, high))
            )
            size = np.asarray(self.sizes)
            out.append(
                "size (x y z): "
                + " ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(size.min(axis=0), size.max(axis=0)))
            )
        out += [f"note: {n}" for n in d.notes]
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"problem: {p}" for p in self.problems]
        out.append("OK: no problems found" if self.ok else f"{len(self.problems)} problem(s) found")
        return out


def _check_case(case: CaseFiles, task: Task, report: CheckReport) -> None:
    """Read every file of a case and record every problem (never raises for data problems)."""
    prefix = f"case {case.case_id}: "
    arrays, geometries, names = [], [], []
    try:
        arrays, geometries, names = _modality_arrays(case, task)
    except (ImageError, InputError) as exc:
        message = str(exc)
        report.problems.append(message if message.startswith("case ") else prefix + message)
        # keep checking the other files of the case one by one
        for path in case.images:
            if case.channels is None:
                try:
                    read_channels(path)
                except ImageError as inner:
                    if str(inner) not in message:
                        report.problems.append(prefix + str(inner))
        arrays = []
    if arrays and _same_shape(arrays):
        stacked = np.stack(arrays)
        errors, notes = mixup_problems(stacked, names)
        report.problems += [prefix + problem for problem in image_problems(stacked, names) + errors]
        report.warnings += [prefix + note for note in notes]
    if arrays and not _same_shape(arrays):
        for array, name in zip(arrays, names):
            for problem in image_problems(array[np.newaxis], [name]):
                report.problems.append(prefix + problem)
    reference = geometries[0] if arrays else None
    for geometry, name in zip(geometries[1:] if arrays else [], names[1:]):
        if not geometry.matches(reference):
            if overlap_fraction(geometry, reference) == 0.0:
                report.problems.append(prefix + f"{name} does not overlap {names[0]} ({geometry.describe()})")
            else:
                report.warnings.append(
                    prefix + f"{name} is not on the grid of {names[0]} ({geometry.describe(reference)} vs "
                    f"{reference.describe(geometry)}); it will be resampled onto it"
                )
    if reference is not None:
        report.spacings.append(reference.spacing)
        report.sizes.append(reference.size)
    if case.label is None:
        return
    try:
        raw, label_geometry = read_labels(case.label, task)
    except ImageError as exc:
        report.problems.append(prefix + str(exc))
        return
    for value in np.unique(raw).tolist():
        report.label_values[int(value)] = report.label_values.get(int(value), 0) + 1
    aligned = label_geometry.matches(reference) if reference is not None else True
    if not aligned and case.label.name.lower().endswith(SEG_SUFFIX):
        aligned = labels_on_grid(raw, label_geometry, reference) is not None
    if reference is not None and not aligned:
        if overlap_fraction(label_geometry, reference) == 0.0:
            report.problems.append(prefix + f"the label map does not overlap the images ({label_geometry.describe()})")
        else:
            report.warnings.append(
                prefix + f"the label map is not on the image grid ({label_geometry.describe(reference)} vs "
                f"{reference.describe(label_geometry)}); it will be resampled (nearest neighbour)"
            )
    try:
        _, notes = _label_values(case, task, raw)
    except InputError as exc:
        report.problems.append(str(exc))
    else:
        report.warnings += [prefix + n for n in notes]


def _same_shape(arrays: list[np.ndarray]) -> bool:
    """Whether all arrays have the same shape."""
    return len({a.shape for a in arrays}) == 1


def check_dataset(dataset: Dataset, progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Read every file of every case and report every problem found (never stops at the first)."""
    report = CheckReport(dataset, problems=list(dataset.problems))
    if not dataset.cases and not dataset.problems:
        report.problems.append("no cases found")
    total = len(dataset.cases)
    for index, case in enumerate(dataset.cases):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # everything is reported in the report instead
            _check_case(case, dataset.task, report)
        if progress is not None:
            progress(index + 1, total)
    if dataset.cases and not dataset.labelled:
        report.warnings.append("no case has a label map: this dataset can be segmented and evaluated, not trained on")
    return report


__all__ = [
    "CaseFiles",
    "CheckReport",
    "Dataset",
    "check_dataset",
    "check_distinct_files",
    "check_mixups",
    "detect_dataset",
    "discover_cases",
    "load_case",
    "map_label_values",
    "mixup_problems",
    "read_case",
    "split_cases",
    "split_rule",
]
