"""Whole-folder segmentation: one model load, the next case read while the current one runs, resumable.

``cldl segment -i DATASET_DIR -o OUTPUT_DIR`` takes any layout :func:`cldl.data.discovery.detect_dataset` knows and
writes ``OUTPUT_DIR/<case>.nii.gz`` per case (and, when asked, ``<case>.nii.gz`` in the uncertainty and probability
folders, and the region maps of ``--ldl-maps DIR`` into ``DIR/<case>/``, named as one case's ``--ldl-maps`` names
them, plus ``ldl_maps.json`` listing them). A case counts as finished when every requested output of it exists:
outputs are written together and atomically (:mod:`cldl.files.atomic_writes`), so an existing file is a complete one,
and the region maps' list is renamed into place after the maps it lists; a re-run skips finished cases. Every case is
checked first: one missing a modality is reported before the others are segmented; a case that cannot be read or
segmented is reported and the others go on; the command then exits 1.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..data.cases import read_case
from ..data.discovery import detect_dataset, discover_cases
from ..data.layouts import CaseFiles
from ..events import Reporter
from ..files.atomic_writes import FileState, atomic_outputs, file_states
from ..files.geometry import Geometry
from ..files.images import write_unit_interval
from ..files.label_maps import write_labels
from .predictor import Prediction, Predictor
from .region_maps import write_stage_maps

CASE_ERRORS = (ValueError, OSError, RuntimeError)
MAPS_LIST = "ldl_maps.json"  # in each case's region-map folder: the maps it holds, written after them


@dataclasses.dataclass(frozen=True)
class FolderOutputs:
    """Where the results of a folder run go (None: not written)."""

    labels: Path
    uncertainty: Path | None = None
    probabilities: Path | None = None
    ldl_maps: Path | None = None  # region maps go into ldl_maps/<case>/

    def folders(self) -> list[Path]:
        """Every output folder given."""
        return [f for f in (self.labels, self.uncertainty, self.probabilities, self.ldl_maps) if f is not None]

    def files(self, case_id: str) -> list[Path]:
        """The image files of one case (label map first), without its region maps."""
        return [
            folder / f"{case_id}.nii.gz" for folder in (self.labels, self.uncertainty, self.probabilities) if folder
        ]

    def maps_folder(self, case_id: str) -> Path | None:
        """The folder of one case's region maps (None: not asked for)."""
        return None if self.ldl_maps is None else self.ldl_maps / case_id

    def finished(self, case_id: str) -> bool:
        """True when every output of the case exists (written atomically: present means complete), the region
        maps included when asked for: their list exists and every map it names."""
        if not all(path.is_file() for path in self.files(case_id)):
            return False
        folder = self.maps_folder(case_id)
        if folder is None:
            return True
        try:
            listed = json.loads((folder / MAPS_LIST).read_text(encoding="utf-8"))["maps"]
            return bool(listed) and all((folder / entry["path"]).is_file() for entry in listed)
        except (OSError, ValueError, KeyError, TypeError):  # no list yet, or not one this code wrote
            return False


def _read(
    case: CaseFiles, predictor: Predictor, prepare: tuple[str | None, str] | None = None
) -> tuple[np.ndarray, Geometry, Geometry]:
    """A case's images on the first modality's grid (its label map, if any, is not read) and the grid its outputs go
    on (the same); with ``prepare`` (reference, skull stripping): the prepared images on their 1 mm grid, and the
    reference sequence's original grid for the outputs."""
    if prepare is not None:
        from ..prepare.pipeline import PrepareError, prepare_case

        if case.channels is not None:
            raise PrepareError(f"case {case.case_id}: --prepare needs one file per sequence, not one 4D image")
        prepared = prepare_case(case.images, predictor.task.modalities, predictor.task, *prepare)
        return prepared.images, prepared.grid, prepared.reference_geometry
    images, geometry, _, _ = read_case(
        dataclasses.replace(case, label=None), predictor.task, predictor.checkpoint.preprocess.image_kind
    )
    return images, geometry, geometry


def _write_case(
    predictor: Predictor,
    prediction: Prediction,
    geometry: Geometry,
    outputs: FolderOutputs,
    case_id: str,
    expected: dict[Path, FileState] | None = None,
) -> None:
    """Write every output of one case, all or none (see :mod:`cldl.files.atomic_writes`; ``expected``: the state of its
    files
    when the run started, so that none that appeared meanwhile is replaced)."""
    targets = outputs.files(case_id)
    maps = outputs.maps_folder(case_id)
    with atomic_outputs(expected) as staged:
        write_labels(prediction.labels, geometry, staged.path(targets[0]), predictor.task)
        rest = iter(targets[1:])
        if outputs.uncertainty is not None:
            write_unit_interval(prediction.uncertainty, geometry, staged.path(next(rest)))
        if outputs.probabilities is not None:
            write_unit_interval(prediction.probabilities, geometry, staged.path(next(rest)))
        if maps is not None:
            entries = write_stage_maps(prediction.stage_maps, predictor.task, geometry, maps, staged)
            listed = [{**entry, "path": Path(entry["path"]).name} for entry in entries]
            document = {"case": case_id, "interpolation": prediction.stage_maps.interpolation, "maps": listed}
            staged.path(maps / MAPS_LIST).write_text(json.dumps(document, indent=1), encoding="utf-8")  # renamed last


def segment_folder(
    predictor: Predictor,
    dataset: Path,
    outputs: FolderOutputs,
    reporter: Reporter | None = None,
    uncertainty: str = "entropy",
    overwrite: bool = False,
    ldl_interpolation: str = "nearest",
    prepare: tuple[str | None, str] | None = None,
) -> dict[str, Any]:
    """Segment every case of a dataset folder; returns counts, per-case seconds and errors. ``prepare`` (the
    reference sequence or None, and the skull-strip choice) prepares each case first (:mod:`cldl.prepare`) and
    writes its outputs on the reference sequence's original grid."""
    reporter = reporter or Reporter("none")
    if outputs.ldl_maps is not None and predictor.checkpoint.model_config.ldl_stages == 0:
        raise ValueError("--ldl-maps: this model has no LDL stages (a plain U-Net), so it has no region maps")
    cases, problems = _usable_cases(dataset, predictor)
    inputs = {path.resolve() for case in cases for path in case.files}
    for folder in outputs.folders():
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder} exists and is not a folder (folder mode writes one file per case)")
        if folder.resolve() == dataset.resolve():
            raise ValueError(f"{folder}: the output folder must not be the dataset folder")
        folder.mkdir(parents=True, exist_ok=True)
    todo = [case for case in cases if overwrite or not outputs.finished(case.case_id)]
    if len(todo) < len(cases):
        reporter.log(f"{len(cases) - len(todo)} of {len(cases)} case(s) already segmented in {outputs.labels}; skipped")
    expected = file_states(path for case in todo for path in outputs.files(case.case_id))
    done, errors, seconds = [], [], {}
    for case_id, message in problems:  # cases that cannot be segmented at all (a missing modality): reported first
        errors.append({"case": case_id, "message": message})
        reporter.emit("case_error", case=case_id, message=message)
        reporter.log(f"error: {message}")
    with ThreadPoolExecutor(max_workers=1) as reader:  # reads case i+1 while case i runs
        pending: Future | None = reader.submit(_read, todo[0], predictor, prepare) if todo else None
        for index, case in enumerate(todo):
            started = time.perf_counter()
            current, pending = (
                pending,
                reader.submit(_read, todo[index + 1], predictor, prepare) if index + 1 < len(todo) else None,
            )
            try:
                images, geometry, output_geometry = current.result()
                if any(path.resolve() in inputs for path in outputs.files(case.case_id)):
                    raise ValueError(f"an output of case {case.case_id} would replace one of its inputs")
                prediction = predictor.predict(
                    images,
                    keep_probabilities=outputs.probabilities is not None or prepare is not None,
                    uncertainty=uncertainty,
                    geometry=geometry,
                    stage_maps=ldl_interpolation if outputs.ldl_maps is not None else None,
                )
                if prepare is not None:
                    from ..prepare.pipeline import prediction_on_grid

                    prediction = prediction_on_grid(prediction, geometry, output_geometry, predictor.task, uncertainty)
                _write_case(predictor, prediction, output_geometry, outputs, case.case_id, expected)
            except CASE_ERRORS as exc:
                _remove_if_empty(outputs.maps_folder(case.case_id))
                text = str(exc).strip()
                message = f"case {case.case_id}: {text.splitlines()[0] if text else type(exc).__name__}"
                errors.append({"case": case.case_id, "message": message})
                reporter.emit("case_error", case=case.case_id, message=message)
                reporter.log(f"error: {message}")
            else:
                seconds[case.case_id] = round(time.perf_counter() - started, 2)
                done.append(case.case_id)
            reporter.progress("cases", index + 1, len(todo))
    return {
        "cases": len(cases) + len(problems),
        "segmented": done,
        "skipped": len(cases) - len(todo),
        "errors": errors,
        "seconds": seconds,
    }


def _usable_cases(dataset: Path, predictor: Predictor) -> tuple[list[CaseFiles], list[tuple[str | None, str]]]:
    """The complete cases of a dataset folder, and (case id, message) for each problem that rules a case out
    (a missing modality, a case id found twice); an error when no case is usable."""
    found = detect_dataset(dataset, predictor.task)
    counts = Counter(case.case_id for case in found.cases)
    cases = sorted((case for case in found.cases if counts[case.case_id] == 1), key=lambda c: c.case_id)
    problems = []
    for problem in found.problems:
        named = re.match(r"case (?:id )?(\S+?):? ", problem)
        problems.append((named.group(1) if named else None, problem))
    if not cases:
        discover_cases(dataset, predictor.task)  # raises the error that says why
    return cases, problems


def _remove_if_empty(folder: Path | None) -> None:
    """Remove a case's region-map folder that staging created but a failure left empty."""
    if folder is not None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
