"""Write anatomy-based synthetic cases as a dataset folder in the BraTS 2018-2020 layout (``cldl synth``)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from ..events import Reporter
from .anatomy import AnatomyConfig, anatomy_case
from .phantoms import write_case


def case_complete(folder: Path, case_id: str, modalities: tuple[str, ...]) -> bool:
    """True when every file of a written case is there (files are written atomically, so present means complete)."""
    base = folder / case_id
    return all((base / f"{case_id}_{name}.nii.gz").is_file() for name in (*modalities, "seg"))


def _write_one(seed: int, folder: str, config: dict[str, Any]) -> str:
    """Generate and write one case (a worker process's job)."""
    import torch

    torch.set_num_threads(1)
    case = anatomy_case(seed, AnatomyConfig.from_dict(config))
    write_case(case, Path(folder))
    return case.case_id


def write_dataset(
    folder: Path, seeds: range, config: AnatomyConfig | None = None, workers: int = 1, reporter: Reporter | None = None
) -> list[str]:
    """Write the cases of ``seeds`` into ``folder`` (skipping complete ones); returns the case ids written."""
    config = config or AnatomyConfig()
    reporter = reporter or Reporter("none")
    folder.mkdir(parents=True, exist_ok=True)
    modalities = ("flair", "t1", "t1ce", "t2")
    todo = [s for s in seeds if not case_complete(folder, f"anatomy_{s:05d}", modalities)]
    if len(todo) < len(seeds):
        reporter.log(f"{len(seeds) - len(todo)} case(s) already complete in {folder}; skipped")
    written: list[str] = []
    if workers <= 1:
        for seed in todo:
            written.append(_write_one(seed, str(folder), config.to_dict()))
            reporter.progress("synth", len(written), len(todo))
        return written
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for case_id in pool.map(_write_one, todo, [str(folder)] * len(todo), [config.to_dict()] * len(todo)):
            written.append(case_id)
            reporter.progress("synth", len(written), len(todo))
    return written
