"""Whole-folder segmentation: one model load, the next case read while the current one runs, resumable.

``cldl segment -i DATASET_DIR -o OUTPUT_DIR`` takes any layout :func:`cldl.data.datasets.detect_dataset` knows and
writes ``OUTPUT_DIR/<case>.nii.gz`` per case (and, when asked, ``<case>.nii.gz`` in the uncertainty and probability
folders). A case counts as finished when every requested output of it exists: outputs are written together and
atomically (:mod:`cldl.atomic`), so an existing file is a complete one, and a re-run skips finished cases. A case
that cannot be read or segmented is reported and the others go on; the command then exits 1.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_outputs
from .data.datasets import CaseFiles, discover_cases, read_case
from .events import Reporter
from .infer import Predictor
from .io import Geometry, write_labels, write_unit_interval

CASE_ERRORS = (ValueError, OSError, RuntimeError)


@dataclasses.dataclass(frozen=True)
class FolderOutputs:
    """Where the results of a folder run go (None: not written)."""

    labels: Path
    uncertainty: Path | None = None
    probabilities: Path | None = None

    def files(self, case_id: str) -> list[Path]:
        """The output files of one case."""
        return [
            folder / f"{case_id}.nii.gz" for folder in (self.labels, self.uncertainty, self.probabilities) if folder
        ]

    def finished(self, case_id: str) -> bool:
        """True when every output of the case exists (written atomically: present means complete)."""
        return all(path.is_file() for path in self.files(case_id))


def _read(case: CaseFiles, predictor: Predictor) -> tuple[np.ndarray, Geometry]:
    """A case's images on the first modality's grid (its label map, if any, is not read)."""
    images, geometry, _, _ = read_case(
        dataclasses.replace(case, label=None), predictor.task, predictor.checkpoint.preprocess.image_kind
    )
    return images, geometry


def segment_folder(
    predictor: Predictor,
    dataset: Path,
    outputs: FolderOutputs,
    reporter: Reporter | None = None,
    uncertainty: str = "entropy",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Segment every case of a dataset folder; returns counts, per-case seconds and errors."""
    reporter = reporter or Reporter("none")
    cases = discover_cases(dataset, predictor.task)
    inputs = {path.resolve() for case in cases for path in case.files}
    for folder in (outputs.labels, outputs.uncertainty, outputs.probabilities):
        if folder is not None:
            if folder.exists() and not folder.is_dir():
                raise NotADirectoryError(f"{folder} exists and is not a folder (folder mode writes one file per case)")
            if folder.resolve() == dataset.resolve():
                raise ValueError(f"{folder}: the output folder must not be the dataset folder")
            folder.mkdir(parents=True, exist_ok=True)
    todo = [case for case in cases if overwrite or not outputs.finished(case.case_id)]
    if len(todo) < len(cases):
        reporter.log(f"{len(cases) - len(todo)} of {len(cases)} case(s) already segmented in {outputs.labels}; skipped")
    done, errors, seconds = [], [], {}
    with ThreadPoolExecutor(max_workers=1) as reader:  # reads case i+1 while case i runs
        pending: Future | None = reader.submit(_read, todo[0], predictor) if todo else None
        for index, case in enumerate(todo):
            started = time.perf_counter()
            current, pending = (
                pending,
                reader.submit(_read, todo[index + 1], predictor) if index + 1 < len(todo) else None,
            )
            try:
                images, geometry = current.result()
                targets = outputs.files(case.case_id)
                if any(path.resolve() in inputs for path in targets):
                    raise ValueError(f"an output of case {case.case_id} would replace one of its inputs")
                prediction = predictor.predict(
                    images,
                    keep_probabilities=outputs.probabilities is not None,
                    uncertainty=uncertainty,
                    geometry=geometry,
                )
                with atomic_outputs() as staged:
                    write_labels(prediction.labels, geometry, staged.path(targets[0]), predictor.task)
                    rest = iter(targets[1:])
                    if outputs.uncertainty is not None:
                        write_unit_interval(prediction.uncertainty, geometry, staged.path(next(rest)))
                    if outputs.probabilities is not None:
                        write_unit_interval(prediction.probabilities, geometry, staged.path(next(rest)))
            except CASE_ERRORS as exc:
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
        "cases": len(cases),
        "segmented": done,
        "skipped": len(cases) - len(todo),
        "errors": errors,
        "seconds": seconds,
    }
