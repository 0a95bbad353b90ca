"""The network's own label distributions: each LDL stage's region proportions, stitched and mapped to the input.

At decoder stage ``s`` CLDL predicts, for every ``r``^3 block of the network grid (r = 8, 4, 2), the proportion of
each class in that block (R-LDL). Here they are stitched across sliding windows on the stage's own grid (cells
anchored at the crop's first voxel) with the same Gaussian weights as the final output. A window whose start
(relative to the crop) is a multiple of ``r`` adds its cells as they are; a window shifted by ``o`` voxels is first
interpolated linearly at the grid's cell centres (``o / r`` of a cell along that axis; the border cell repeated).
Each contribution is weighted by the window's Gaussian weights summed over the voxels it shares with the cell, so
cells a window barely touches count little and padding voxels not at all. A volume that fits one window gives exactly
the network's stage output; windows placed at multiples of ``r`` agree exactly with one large window for a local
network.

Region ambiguity is the normalised entropy of the stitched proportions (0: one class fills the region, 1: all
classes equally mixed), high on boundaries. Mapping to the input grid is ``nearest`` (each region a block of
constant value) or ``linear`` (trilinear between region centres), through the same crop, resampling and orientation
as the final probabilities; outside the crop the proportions are background 1 and the ambiguity 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.preprocess import Preprocessed, crop_geometry
from ..files.atomic_writes import StagedOutputs
from ..files.geometry import Geometry, resample_vector, vector_image
from ..files.images import write_unit_interval
from ..method.distributions import normalized_entropy
from ..tasks import Task

INTERPOLATIONS = ("nearest", "linear")


class StageAccumulator:
    """Gaussian-weighted sums of the windows' stage distributions on each stage's grid over a crop."""

    def __init__(self, shape: Sequence[int], offset: Sequence[int], device: torch.device) -> None:
        self.shape = tuple(int(s) for s in shape)  # crop shape (z, y, x)
        self.offset = tuple(int(o) for o in offset)  # padded-volume index of the crop's first voxel
        self.device = device
        self.sums: dict[int, torch.Tensor] = {}
        self.weights: dict[int, torch.Tensor] = {}

    def add(self, start: Sequence[int], stage_probs: Sequence[torch.Tensor], weight: torch.Tensor) -> None:
        """Add one window (``start`` in the padded volume) given its stage probabilities ``K x w/r ...``."""
        window = tuple(weight.shape)
        origin = [s - o for s, o in zip(start, self.offset)]  # crop index of the window's first voxel
        valid = weight  # padding voxels (a volume smaller than the window) count for nothing
        for axis, (first, size, extent) in enumerate(zip(origin, window, self.shape)):
            index = torch.arange(first, first + size, device=weight.device)
            inside = (index >= 0) & (index < extent)
            if not bool(inside.all()):
                shape = [1, 1, 1]
                shape[axis] = size
                valid = valid * inside.view(shape)
        for probs in stage_probs:
            region = window[0] // probs.shape[1]
            shift = [first % region for first in origin]
            tail = [(-(size + s)) % region for size, s in zip(window, shift)]
            sides = (shift[2], tail[2], shift[1], tail[1], shift[0], tail[0])
            weights = F.avg_pool3d(F.pad(valid[None, None], sides), region)[0, 0]
            values = _shift_cells(probs, [s / region for s in shift])
            first_cell = [(first - s) // region for first, s in zip(origin, shift)]
            self._place(region, first_cell, values * weights, weights)

    def _place(self, region: int, cell: list[int], summed: torch.Tensor, weights: torch.Tensor) -> None:
        """Add pooled sums whose first cell is ``cell`` into the stage grid, dropping cells outside it."""
        grid = tuple(-(-s // region) for s in self.shape)
        if region not in self.sums:
            self.sums[region] = torch.zeros((summed.shape[0], *grid), dtype=torch.float32, device=self.device)
            self.weights[region] = torch.zeros(grid, dtype=torch.float32, device=self.device)
        dst, src = [], []
        for first, count, extent in zip(cell, weights.shape, grid):
            lo, hi = max(0, first), min(extent, first + count)
            dst.append(slice(lo, hi))
            src.append(slice(lo - first, hi - first))
        self.sums[region][(slice(None), *dst)] += summed[(slice(None), *src)]
        self.weights[region][tuple(dst)] += weights[tuple(src)]

    def distributions(self) -> list[tuple[int, torch.Tensor]]:
        """``(region, K x grid proportions)`` per stage, coarsest first."""
        return [
            (region, self.sums[region] / self.weights[region].clamp(min=1e-12))
            for region in sorted(self.sums, reverse=True)
        ]


def _shift_cells(values: torch.Tensor, fractions: Sequence[float]) -> torch.Tensor:
    """Window cells (``K x m ...``) linearly interpolated at cells moved by ``-fraction`` of a cell per axis (one cell
    more along a moved axis; values beyond the window repeat its border cell)."""
    for axis, fraction in zip((1, 2, 3), fractions):
        if fraction:
            first = values.narrow(axis, 0, 1)
            last = values.narrow(axis, values.shape[axis] - 1, 1)
            before = torch.cat([first, values], dim=axis)
            after = torch.cat([values, last], dim=axis)
            values = torch.lerp(after, before, fraction)
    return values


@dataclass
class StageMap:
    """One LDL stage on its own grid: ``region`` voxels per block edge, ``region_mm`` its size (x, y, z)."""

    region: int
    region_mm: tuple[float, float, float]
    proportions: np.ndarray  # K x grid, float32, sums 1
    ambiguity: np.ndarray  # grid, float32 normalised entropy of the proportions


@dataclass
class StageMaps:
    """Every stage's map plus what is needed to map them onto the input grid (:meth:`on_input`)."""

    stages: list[StageMap]
    case: Preprocessed
    interpolation: str = "nearest"

    def on_input(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Stage ``index``'s proportions (``K x input``) and ambiguity (input shape) on the input grid, float16."""
        stage = self.stages[index]
        values = np.concatenate([stage.proportions, stage.ambiguity[None]]).astype(np.float32)
        case = self.case
        if case.resampled:
            mapped = _resampled_to_input(case, values, stage.region, self.interpolation)
        else:
            fills = [1.0] + [0.0] * (values.shape[0] - 1)
            crop = np.stack([_upsample(c, stage.region, case, self.interpolation) for c in values])
            grid = np.stack([case.paste(c, fill=f) for c, f in zip(crop, fills)])
            mapped = case.to_input(grid).astype(np.float16)
        return mapped[:-1], mapped[-1]


def stage_maps_from(
    distributions: list[tuple[int, torch.Tensor]], case: Preprocessed, interpolation: str = "nearest"
) -> StageMaps:
    """Wrap stitched stage distributions of ``case`` (its images are dropped) with their region sizes in mm."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    spacing = case.grid.spacing if case.grid is not None else (1.0, 1.0, 1.0)
    stages = []
    for region, probs in distributions:
        probs = probs.float()
        ambiguity = normalized_entropy(probs[None])[0]
        size_mm = tuple(round(region * s, 3) for s in spacing)
        stages.append(StageMap(region, size_mm, probs.cpu().numpy(), ambiguity.cpu().numpy()))
    return StageMaps(stages, replace(case, images=np.empty((0, 0, 0, 0), np.float32)), interpolation)


def _upsample(values: np.ndarray, region: int, case: Preprocessed, interpolation: str) -> np.ndarray:
    """One stage-grid channel on the crop's voxels (float32)."""
    crop_shape = tuple(b - a for a, b in case.bbox)
    tensor = torch.from_numpy(np.ascontiguousarray(values))[None, None]
    size = tuple(region * s for s in values.shape)
    if interpolation == "nearest":
        up = F.interpolate(tensor, size=size, mode="nearest")
    else:
        up = F.interpolate(tensor, size=size, mode="trilinear", align_corners=False)
    return up[0, 0, : crop_shape[0], : crop_shape[1], : crop_shape[2]].numpy()


def stage_geometry(case: Preprocessed, region: int, grid_shape: Sequence[int]) -> Geometry:
    """The physical grid of a stage's cells: crop spacing x ``region``, origin at the first cell's centre."""
    crop = crop_geometry(case.grid, case.bbox)
    origin = crop.index_to_physical(np.full(3, (region - 1) / 2.0))
    return Geometry(
        size=tuple(int(s) for s in grid_shape[::-1]),
        spacing=tuple(region * s for s in crop.spacing),
        origin=tuple(float(o) for o in origin),
        direction=crop.direction,
    )


def _resampled_to_input(case: Preprocessed, values: np.ndarray, region: int, interpolation: str) -> np.ndarray:
    """Proportions + ambiguity channels resampled from the stage grid onto the input grid (float16)."""
    target = case.input_geometry
    image = vector_image(values, stage_geometry(case, region, values.shape[1:]))
    out = np.empty((values.shape[0], *target.shape), dtype=np.float16)
    step = max(1, (64 * 2**20) // max(1, values.shape[0] * target.size[0] * target.size[1] * 4))
    for start in range(0, target.shape[0], step):
        stop = min(start + step, target.shape[0])
        slab = np.moveaxis(resample_vector(image, target.slab(start, stop), interpolation), -1, 0)
        slab[0] += 1.0 - slab[:-1].sum(axis=0)  # outside the crop: background 1 (ambiguity stays 0)
        out[:, start:stop] = slab
    return out


def _size_text(region_mm: Sequence[float], sep: str) -> str:
    """``2mm`` for an isotropic region, ``2x2x6mm`` (x, y, z) otherwise."""
    sizes = [f"{s:g}" for s in region_mm]
    return (sizes[0] if len(set(sizes)) == 1 else "x".join(sizes)) + sep + "mm"


def _file_part(name: str) -> str:
    """A name safe in a file name (letters, digits, ``-``, ``_``)."""
    return re.sub(r"[^A-Za-z0-9-]+", "_", name).strip("_") or "class"


@dataclass(frozen=True)
class StageMapFile:
    """One written map: file name, what it shows for a person, and its kind (``ambiguity`` or ``proportion``)."""

    name: str
    title: str
    kind: str
    region_mm: tuple[float, float, float]
    class_index: int | None = None

    def to_dict(self, folder: Path) -> dict:
        """The entry of the result event (``path`` in ``folder``)."""
        return {
            "path": str(folder / self.name),
            "title": self.title,
            "kind": self.kind,
            "region_mm": list(self.region_mm),
            "class_index": self.class_index,
        }


def stage_map_files(maps: StageMaps, task: Task, suffix: str = ".nii.gz") -> list[list[StageMapFile]]:
    """Per stage: the region ambiguity file, then one proportion file per non-background class."""
    short = task.abbreviations or task.class_names
    result = []
    for stage in maps.stages:
        mm, words = _size_text(stage.region_mm, ""), _size_text(stage.region_mm, " ")
        files = [
            StageMapFile(
                f"region_ambiguity_{mm}{suffix}",
                f"Region ambiguity (mixed tissue), {words} regions",
                "ambiguity",
                stage.region_mm,
            )
        ]
        for index in range(1, len(task.class_names)):
            files.append(
                StageMapFile(
                    f"{_file_part(short[index])}_proportion_{mm}{suffix}",
                    f"{task.class_names[index]} fraction, {words} regions",
                    "proportion",
                    stage.region_mm,
                    index,
                )
            )
        result.append(files)
    return result


def write_stage_maps(
    maps: StageMaps, task: Task, geometry: Geometry, folder: Path, staged: StagedOutputs
) -> list[dict]:
    """Write every stage map (uint8 0..1 NIfTI) into ``folder`` through ``staged``; the result event's entries."""
    entries = []
    for index, files in enumerate(stage_map_files(maps, task)):
        proportions, ambiguity = maps.on_input(index)
        for file in files:
            values = ambiguity if file.class_index is None else proportions[file.class_index]
            write_unit_interval(values, geometry, staged.path(folder / file.name))
            entries.append(file.to_dict(folder))
    return entries
