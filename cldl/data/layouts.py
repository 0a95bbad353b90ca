"""The layouts datasets are distributed in: one reader per layout, each listing a folder's cases (:class:`Dataset`).

Layouts (auto-detected by :func:`cldl.data.discovery.detect_dataset`; docs/datasets.md has the details):

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
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files.images import is_image_path, strip_image_suffix
from ..tasks import BRATS, MMWHS_CT, MMWHS_MR, Task, modality_aliases, task_from_dataset_json
from .preprocess import InputError

LABEL_TOKENS = ("seg", "label", "labels")
CASE_LISTS = ("cases.csv", "cases.json")
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


def _visible(path: Path, root: Path) -> bool:
    """False for hidden files and folders (``.DS_Store``, macOS ``._`` resource forks in the MSD tarballs)."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (no hidden ones), sorted."""
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in paths if p.is_file() and is_image_path(p) and _visible(p, folder))


def _norm(text: str) -> str:
    """Lower-case, spelling-normalised label or channel name."""
    text = str(text).lower().replace("tumour", "tumor").replace("oedema", "edema")
    return " ".join(re.sub(r"[_\-./]", " ", text).split())


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


def _dataset_json_block(
    data: dict[str, Any], task: Task
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...], list[str], list[str]]:
    """What an MSD or nnU-Net ``dataset.json`` says for ``task``: the channel index of each task modality (the task's
    order when the channel names do not say), the label map (source -> task value), problems and notes."""
    problems, notes = [], []
    names = _dataset_json_channels(data)
    if names and len(names) != task.num_modalities:
        problems.append(
            f"dataset.json lists {len(names)} channels ({', '.join(names.values())}); task {task.name} needs "
            f"{task.num_modalities} ({', '.join(task.modalities)})"
        )
    order, text = _channel_order(names, task)
    if order is None:
        order = tuple(range(task.num_modalities))
        notes.append("channel order taken as the task's (dataset.json names do not say)")
    else:
        notes.append(text)
    label_map, text = _label_map_from_names(_dataset_json_labels(data), task)
    if text:
        notes.append(text)
    return order, tuple(sorted(label_map.items())) if label_map else (), problems, notes


# --------------------------------------------------------------------------------------------------------------
# layouts


def per_modality_layout(root: Path, task: Task) -> Dataset | None:
    """``<case>_<modality>`` files grouped by folder and case (BraTS and similar)."""
    table = modality_aliases(task.modalities)
    groups: dict[tuple[Path, str], dict[str, Path]] = {}
    used_2023 = False
    for path in image_files(root):
        match = re.match(r"^(.+)[_-]([^_-]+)$", strip_image_suffix(path.name))
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
                for p in image_files(folder, recursive=False)
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


def image_label_pairs_layout(root: Path, task: Task) -> Dataset | None:
    """``<case>_image`` with ``<case>_label`` (MM-WHS)."""
    pairs: dict[str, dict[str, Path]] = {}
    for path in image_files(root):
        stem = strip_image_suffix(path.name)
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


def decathlon_layout(root: Path, task: Task | None) -> Dataset:
    """MSD: ``imagesTr/<case>.nii.gz`` (4D for multi-modal tasks), ``labelsTr/<case>.nii.gz``, ``dataset.json``."""
    data = _read_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
    task = task or _msd_task(root, data)
    channels, mapping, problems, notes = _dataset_json_block(data, task)
    cases = []
    for split, labelled in (("imagesTr", True), ("imagesTs", False)):
        folder = root / split
        if not folder.is_dir():
            continue
        for path in image_files(folder, recursive=False):
            case_id = strip_image_suffix(path.name)
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


def nnunet_layout(root: Path, task: Task | None) -> Dataset:
    """nnU-Net raw: ``imagesTr/<case>_XXXX<ending>``, ``labelsTr/<case><ending>``, ``dataset.json``."""
    data = _read_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
    if task is None:
        if not data:
            raise InputError(f"{root}: an nnU-Net folder without dataset.json; pass --task")
        task = task_from_dataset_json(root / "dataset.json")
    order, mapping, problems, notes = _dataset_json_block(data, task)
    count = len(_dataset_json_channels(data)) or task.num_modalities
    ending = str(data.get("file_ending", "")) or None
    cases = []
    for split, labelled in (("imagesTr", True), ("imagesTs", False)):
        folder = root / split
        if not folder.is_dir():
            continue
        stems: dict[str, dict[int, Path]] = {}
        for path in image_files(folder, recursive=False):
            if ending and not path.name.endswith(ending):
                continue
            match = re.match(r"^(.+)_(\d{4})$", strip_image_suffix(path.name))
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


def case_list_layout(path: Path, task: Task | None) -> Dataset:
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
        case_id = str(row.get("case_id") or row.get("case") or row.get("id") or strip_image_suffix(Path(first).name))
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
