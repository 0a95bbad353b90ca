"""Raw scans to model inputs: co-registration to a reference sequence, one 1 mm grid, skull stripping.

:func:`prepare_case` reads one image per sequence, registers every other sequence rigidly to the reference
(:mod:`cldl.prepare.registration`), resamples all of them onto one 1 mm isotropic grid in the reference's frame
(covering the reference's field of view) and, for brain MRI, masks them with a brain mask
(:mod:`cldl.prepare.brain_mask`). :func:`write_prepared` writes the result (``cldl prepare``);
:func:`prediction_on_grid` brings a segmentation made on the prepared grid back onto the reference's original grid
(``cldl segment --prepare``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..defaults import SKULL_STRIP_CHOICES, reference_modality
from ..files.atomic_writes import StagedOutputs, atomic_outputs
from ..files.geometry import Geometry, overlap_fraction, resample_vector, vector_image
from ..files.images import ImageError, read_image, write_image
from ..inference.region_maps import StageMaps
from ..method.distributions import UNCERTAINTY_MAPS
from ..tasks import MODALITY_ALIASES, Task
from .brain_mask import brain_mask, extend_over_edema, looks_skull_stripped
from .registration import MetricImage, RigidResult, metric_image, register_rigid

GRID_SPACING_MM = 1.0
MIN_OVERLAP = 0.2
"""A sequence whose field of view covers less than this fraction of the reference's cannot be registered to it."""
T1_WEIGHTED = ("t1", "t1ce")
"""The sequences the brain mask is computed on, in order of preference (else the reference). Native T1 first: on a
T1ce, an enhancing tumour at the brain's surface looks like scalp fat, and the mask cut 4 % of one such tumour off;
on the T1 of the same cases it kept the tumour (docs/prepare.md)."""
BRAIN_MODALITIES = frozenset(MODALITY_ALIASES)
"""Tasks with one of these inputs segment the brain, so their scans are skull-stripped (``auto``)."""

Progress = Callable[[str, int, int], None]


class PrepareError(RuntimeError):
    """Inputs that cannot be prepared, with a message that names the sequence and says why."""


@dataclass
class PreparedCase:
    """Every sequence on one grid, the brain mask and what was done."""

    names: tuple[str, ...]
    images: np.ndarray  # C x z x y x float32 on ``grid`` (zero outside the brain when skull-stripped)
    grid: Geometry  # 1 mm isotropic, in the reference's frame, covering its field of view
    reference: int  # index of the reference sequence
    reference_geometry: Geometry  # the reference's original grid
    brain: np.ndarray | None  # bool mask on ``grid``; None when not skull-stripped
    transforms: list[sitk.Euler3DTransform | None]  # reference point -> sequence point (None: the reference)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def reference_name(self) -> str:
        """Name of the reference sequence."""
        return self.names[self.reference]


def default_reference(task: Task) -> str:
    """The sequence the others are registered to: T1ce for BraTS (as the BraTS pipeline), else the first input."""
    return reference_modality(task.modalities)


def is_brain_task(task: Task) -> bool:
    """Whether a task's inputs are brain MRI (skull stripping applies)."""
    return task.image_kind == "mr" and any(m in BRAIN_MODALITIES for m in task.modalities)


def reference_index(names: Sequence[str], reference: str | None, task: Task) -> int:
    """The index of ``reference`` (a sequence name; default: :func:`default_reference`) among ``names``."""
    wanted = (reference or default_reference(task)).lower()
    for index, name in enumerate(names):
        if name.lower() == wanted:
            return index
    raise PrepareError(f"--reference {wanted!r} is not one of the sequences ({', '.join(names)})")


def preparation_grid(reference: Geometry, spacing: float = GRID_SPACING_MM) -> Geometry:
    """A ``spacing`` mm isotropic grid in the reference's frame (same direction) covering its field of view."""
    extent = np.asarray(reference.size) * np.asarray(reference.spacing)
    size = tuple(max(1, int(math.ceil(e / spacing - 1e-6))) for e in extent)
    corner = reference.index_to_physical(np.full(3, -0.5))  # outer corner of the first voxel
    origin = corner + reference.matrix @ np.full(3, spacing / 2)
    return Geometry(size, (spacing,) * 3, tuple(float(v) for v in origin), reference.direction)


def _sitk_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A float32 SimpleITK image of a ``(z, y, x)`` array on ``geometry``."""
    return geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32)))


def _read(path: Path, name: str) -> tuple[np.ndarray, Geometry]:
    """One sequence as float32 ``(z, y, x)``, refused when it is not a 3D volume."""
    try:
        array, geometry = read_image(path, np.float32)
    except ImageError as exc:
        raise PrepareError(f"{name}: {exc}") from None
    if min(geometry.size) < 2 or array.ndim != 3:
        raise PrepareError(
            f"{name} ({path}) is a 2D image ({geometry.describe()}); preparation needs a 3D volume of the head"
        )
    if not np.isfinite(array).all():
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    return array, geometry


def _motion(result: RigidResult) -> dict[str, Any]:
    """A registration result for the report."""
    euler = result.transform
    angles = (euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ())
    return {
        "rotation_deg": round(result.rotation_deg, 2),
        "rotation_xyz_deg": [round(math.degrees(a), 2) for a in angles],
        "translation_mm": [round(v, 2) for v in result.translation_mm],
        "mattes_mi": round(result.metric, 4),
        "head_outline_dice": round(result.similarity, 4),
        "iterations": result.iterations,
    }


def prepare_case(
    paths: Sequence[str | Path],
    names: Sequence[str],
    task: Task,
    reference: str | None = None,
    skull_strip: str = "auto",
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> PreparedCase:
    """Register, resample and skull-strip one case's sequences (one file each, in ``names`` order)."""
    if skull_strip not in SKULL_STRIP_CHOICES:
        raise ValueError(f"skull_strip must be one of {SKULL_STRIP_CHOICES}, got {skull_strip!r}")
    if len(paths) != len(names):
        raise PrepareError(f"expected {len(names)} images ({', '.join(names)}), got {len(paths)}")
    progress = progress or (lambda stage, done, total: None)
    started = time.perf_counter()
    ref = reference_index(names, reference, task)
    arrays, geometries = zip(*(_read(Path(p), n) for p, n in zip(paths, names)))
    ref_geometry = geometries[ref]
    for name, geometry in zip(names, geometries):
        if name == names[ref]:
            continue
        covered = overlap_fraction(geometry, ref_geometry)
        if covered < MIN_OVERLAP:
            raise PrepareError(
                f"{name} covers {covered:.0%} of the reference {names[ref]}'s field of view (no overlap in space: "
                f"{geometry.describe()} vs {ref_geometry.describe()}); it cannot be the same head in the same session"
            )
    grid = preparation_grid(ref_geometry)
    others = [i for i in range(len(names)) if i != ref]
    report: dict[str, Any] = {"reference": names[ref], "grid": grid.to_dict(), "sequences": {}, "warnings": []}
    fixed: MetricImage = metric_image(_sitk_image(arrays[ref], ref_geometry))
    transforms: list[sitk.Euler3DTransform | None] = [None] * len(names)
    for step, index in enumerate(others):
        name = names[index]
        progress(f"registering {name}", step + 1, len(others))
        if cancel is not None and cancel():
            raise _cancelled()
        tic = time.perf_counter()
        moving = metric_image(_sitk_image(arrays[index], geometries[index]))
        result = register_rigid(fixed, moving, name, cancel=cancel)
        if cancel is not None and cancel():
            raise _cancelled()
        transforms[index] = result.transform
        entry = {"file": str(paths[index]), "grid": geometries[index].describe(), **_motion(result)}
        entry["seconds"] = round(time.perf_counter() - tic, 2)
        report["sequences"][name] = entry
    report["sequences"][names[ref]] = {"file": str(paths[ref]), "grid": ref_geometry.describe(), "reference": True}
    images = np.stack([_on_grid(arrays[i], geometries[i], grid, transforms[i]) for i in range(len(names))]).astype(
        np.float32
    )
    brain = None
    strip = skull_strip == "yes" or (skull_strip == "auto" and is_brain_task(task))
    if (
        strip
        and skull_strip == "auto"
        and all(looks_skull_stripped(a, g.spacing_zyx) for a, g in zip(arrays, geometries))
    ):
        strip = False
        report["warnings"].append(
            "the inputs look skull-stripped already (zero outside one brain-sized region); not stripped again"
        )
    if strip:
        progress("brain mask", 0, 1)
        if cancel is not None and cancel():
            raise _cancelled()
        source = next((names.index(m) for m in T1_WEIGHTED if m in names), ref)
        brain = brain_mask(images[source], grid)
        report["brain_mask"] = {"computed_on": names[source]}
        if "flair" in names and names[source] != "flair":
            extended = extend_over_edema(brain, images[names.index("flair")], grid.spacing_zyx)
            report["brain_mask"]["extended_over_edema_ml"] = _ml(extended & ~brain)
            brain = extended
        report["brain_mask"]["volume_ml"] = _ml(brain)
        images *= brain[None]
        progress("brain mask", 1, 1)
    report["skull_stripped"] = brain is not None
    report["seconds"] = round(time.perf_counter() - started, 2)
    return PreparedCase(tuple(names), images, grid, ref, ref_geometry, brain, transforms, report)


def _ml(mask: np.ndarray) -> float:
    """The volume of a mask on the 1 mm preparation grid, in millilitres (one decimal)."""
    return round(float(mask.sum()) * GRID_SPACING_MM**3 / 1000.0, 1)


def _cancelled() -> RuntimeError:
    """The engine's cancellation error."""
    from ..inference.predictor import Cancelled

    return Cancelled("cancelled")


def _on_grid(array: np.ndarray, geometry: Geometry, grid: Geometry, transform: sitk.Transform | None) -> np.ndarray:
    """A sequence resampled (linearly, through its registration transform) onto the preparation grid."""
    image = _sitk_image(array, geometry)
    out = sitk.Resample(
        image,
        [int(s) for s in grid.size],
        transform if transform is not None else sitk.Transform(),
        sitk.sitkLinear,
        grid.origin,
        grid.spacing,
        grid.direction,
        0.0,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out)


# --------------------------------------------------------------------------------------------------------------
# outputs


def output_files(names: Sequence[str], reference: str, out: Path) -> list[Path]:
    """Every file :func:`write_prepared` writes into ``out``."""
    files = [out / f"{name}.nii.gz" for name in names]
    files += [out / f"{name}_to_{reference}.tfm" for name in names if name != reference]
    return files + [out / "brain_mask.nii.gz", out / "prepare.json", out / "qc.png"]


def write_prepared(case: PreparedCase, out: Path, staged: StagedOutputs | None = None) -> list[Path]:
    """Write the prepared sequences, brain mask, transforms, ``prepare.json`` and ``qc.png`` (all or none)."""
    if staged is None:
        with atomic_outputs() as own:
            return write_prepared(case, out, own)
    written = []
    for name, image in zip(case.names, case.images):
        written.append(write_image(image, case.grid, staged.path(out / f"{name}.nii.gz")))
    for name, transform in zip(case.names, case.transforms):
        if transform is not None:
            target = staged.path(out / f"{name}_to_{case.reference_name}.tfm")
            sitk.WriteTransform(transform, str(target))
            written.append(target)
    if case.brain is not None:
        written.append(write_image(case.brain.astype(np.uint8), case.grid, staged.path(out / "brain_mask.nii.gz")))
    report = {**case.report, "outputs": sorted(p.name for p in written) + ["prepare.json", "qc.png"]}
    target = staged.path(out / "prepare.json")
    target.write_text(json.dumps(report, indent=1), encoding="utf-8")
    qc_png(case, staged.path(out / "qc.png"))
    return [out / p.name for p in written] + [out / "prepare.json", out / "qc.png"]


QC_RED = (255, 40, 40)
QC_YELLOW = (255, 220, 0)


def qc_png(case: PreparedCase, path: Path) -> Path:
    """A mosaic for checking the preparation at a glance: one column per sequence (in input order), rows axial,
    coronal and sagittal through the brain's centre; the brain mask's outline in red and, on the other sequences,
    the reference's strongest edges in yellow (they follow each sequence's anatomy when the registration worked)."""
    mask = case.brain if case.brain is not None else case.images[case.reference] > 0
    centre = np.round(np.argwhere(mask).mean(0)).astype(int) if mask.any() else np.asarray(mask.shape) // 2
    edges = _edges(case.images[case.reference])
    cuts = (
        lambda v: v[centre[0]][::-1, ::-1],  # axial, seen from below as radiologists do: patient's right on the left
        lambda v: v[:, centre[1]][::-1, ::-1],  # coronal, superior up
        lambda v: v[:, :, centre[2]][::-1],  # sagittal, superior up
    )
    rows = []
    for cut in cuts:
        tiles = []
        for index, image in enumerate(case.images):
            high = float(np.percentile(image[mask], 99.5)) if mask.any() else float(image.max())
            grey = (np.clip(cut(image) / max(high, 1e-6), 0, 1) * 255).astype(np.uint8)
            tile = np.repeat(grey[..., None], 3, axis=-1)
            if index != case.reference:
                tile[cut(edges)] = QC_YELLOW
            tile[_outline(cut(mask))] = QC_RED
            tiles.append(np.pad(tile, ((2, 2), (2, 2), (0, 0))))
        rows.append(tiles)
    height = max(t.shape[0] for row in rows for t in row)
    width = max(t.shape[1] for row in rows for t in row)
    mosaic = np.zeros((height * len(rows), width * len(case.names), 3), dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            mosaic[r * height : r * height + tile.shape[0], c * width : c * width + tile.shape[1]] = tile
    sitk.WriteImage(sitk.GetImageFromArray(mosaic, isVector=True), str(path))
    return path


def _outline(mask: np.ndarray) -> np.ndarray:
    """The one-pixel inner outline of a 2D binary mask."""
    mask = mask.astype(bool)
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def _edges(image: np.ndarray) -> np.ndarray:
    """The strongest edges of an image: gradient magnitude above its 95th percentile inside the image (bool)."""
    gradient = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(sitk.GetImageFromArray(image), 1.0))
    inside = gradient[image > 0]
    return gradient > np.percentile(inside, 95) if inside.size else np.zeros(image.shape, dtype=bool)


# --------------------------------------------------------------------------------------------------------------
# segmentation back on the reference's grid


def prediction_on_grid(prediction: Any, source: Geometry, target: Geometry, task: Task, uncertainty: str) -> Any:
    """A :class:`cldl.inference.predictor.Prediction` made on ``source`` (with its probabilities) resampled onto
    ``target``:
    probabilities linearly (background 1 outside ``source``), then the argmax, uncertainty and near ties there;
    region maps follow through :class:`ResampledStageMaps`."""
    from ..inference.predictor import Prediction, near_tie

    if prediction.probabilities is None:
        raise ValueError("prediction_on_grid needs the prediction's probabilities")
    probs = prediction.probabilities.astype(np.float32)
    probs[0] = probs[0] - 1.0  # resampled with 0 outside, so background becomes 1 there
    moved = _resample_channels(probs, source, target)
    moved[..., 0] += 1.0
    tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(moved, -1, 0)))
    classes = tensor.argmax(dim=0).to(torch.uint8).numpy()
    uncert = UNCERTAINTY_MAPS[uncertainty](tensor.unsqueeze(0))[0].to(torch.float16).numpy()
    ties = near_tie(tensor).numpy()
    maps = None
    if prediction.stage_maps is not None:
        maps = ResampledStageMaps(
            prediction.stage_maps.stages, prediction.stage_maps.case, prediction.stage_maps.interpolation
        )
        maps.source, maps.target = source, target
    return Prediction(task.classes_to_labels(classes), classes, uncert, ties, tensor.to(torch.float16).numpy(), maps)


def _resample_channels(
    channels: np.ndarray, source: Geometry, target: Geometry, interpolator: str = "linear"
) -> np.ndarray:
    """``C x source`` values resampled onto ``target``: ``target shape x C`` float32 (zero outside ``source``)."""
    return resample_vector(vector_image(channels, source), target, interpolator)


class ResampledStageMaps(StageMaps):
    """Region maps computed on the prepared grid, delivered on another grid (the reference's original one)."""

    source: Geometry
    target: Geometry

    def on_input(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Stage ``index``'s proportions and ambiguity on the target grid, float16."""
        proportions, ambiguity = super().on_input(index)
        values = np.concatenate([proportions, ambiguity[None]]).astype(np.float32)
        values[0] -= 1.0  # background proportion is 1 outside the source
        interpolator = "nearest" if self.interpolation == "nearest" else "linear"
        moved = np.moveaxis(_resample_channels(values, self.source, self.target, interpolator), -1, 0)
        moved[0] += 1.0
        moved = moved.astype(np.float16)
        return moved[:-1], moved[-1]
