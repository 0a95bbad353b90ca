"""Finding a dataset's cases (its layout is detected: :func:`detect_dataset`) and splitting them into training and
validation cases (:func:`split_cases`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from ..files.images import strip_image_suffix
from ..tasks import BRATS, MMWHS_CT, MMWHS_MR, Task, get_task
from .layouts import (
    CASE_LISTS,
    LAYOUT_HELP,
    CaseFiles,
    Dataset,
    case_list_layout,
    decathlon_layout,
    image_files,
    image_label_pairs_layout,
    nnunet_layout,
    per_modality_layout,
)
from .preprocess import InputError


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
            return case_list_layout(root, task)
        else:
            raise InputError(f"{root}: give a dataset folder or a .csv/.json case list, not a file")
    for name in CASE_LISTS:
        if (root / name).is_file():
            return case_list_layout(root / name, task)
    if root.name in ("imagesTr", "labelsTr", "imagesTs") and (root.parent / "imagesTr").is_dir():
        root = root.parent
    if (root / "imagesTr").is_dir():
        channel_files = [
            p for p in image_files(root / "imagesTr", recursive=False) if strip_image_suffix(p.name).endswith("_0000")
        ]
        return nnunet_layout(root, task) if channel_files else decathlon_layout(root, task)
    candidates: list[Task] = [task] if task is not None else []
    if task is None:
        names = [p.name.lower() for p in image_files(root)]
        ct = sum(n.startswith("ct_") and "_image" in n for n in names)
        mr = sum(n.startswith("mr_") and "_image" in n for n in names)
        if ct and mr:
            raise InputError(f"{root}: holds MM-WHS CT ({ct}) and MR ({mr}) cases; pass --task mmwhs_ct or mmwhs_mr")
        candidates = [MMWHS_MR if mr else MMWHS_CT, BRATS]
    for candidate in candidates:
        finders = (
            (image_label_pairs_layout, per_modality_layout)
            if candidate.num_modalities == 1 or candidate.name.startswith("mmwhs")
            else (per_modality_layout, image_label_pairs_layout)
        )
        for finder in finders:
            found = finder(root, candidate)
            if found is not None and (found.cases or found.problems):
                if found.layout == "mmwhs" and candidate.num_modalities != 1:
                    continue
                return found
    files = image_files(root)
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
