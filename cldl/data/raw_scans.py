"""Raw scans from a prepared case, for testing and benchmarking preparation (``cldl prepare``).

A prepared (skull-stripped, co-registered, 1 mm) case becomes what a scanner exports: a synthetic scalp and skull
around the brain (:func:`add_head`), and each sequence acquired on its own grid (thick slices, tilted or rotated
slabs) after its own head motion (:func:`acquire`). :func:`raw_case` does both with the grids of a typical clinical
protocol (:data:`CLINICAL_PROTOCOL`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..files.geometry import Geometry

# Relative intensity (x the brain's median of that sequence) of the layers outside the brain, per sequence:
# cerebrospinal fluid, inner and outer table of the skull (cortical bone), diploe (marrow), scalp (fat and skin).
HEAD_LAYERS = {
    "flair": {"csf": 0.25, "bone": 0.06, "diploe": 0.55, "scalp": 1.05},
    "t1": {"csf": 0.30, "bone": 0.06, "diploe": 0.90, "scalp": 1.35},
    "t1ce": {"csf": 0.35, "bone": 0.06, "diploe": 0.95, "scalp": 1.40},
    "t2": {"csf": 1.90, "bone": 0.06, "diploe": 0.70, "scalp": 1.00},
}
CSF_MM = (0.0, 2.5)
BONE_MM = (2.5, 9.0)
DIPLOE_MM = (4.5, 7.0)
SCALP_MM = (9.0, 15.0)


@dataclass(frozen=True)
class Acquisition:
    """A sequence's grid in a protocol: voxel size (x, y, z, mm), slab rotation (degrees about an axis)."""

    spacing: tuple[float, float, float]
    tilt_deg: float = 0.0
    tilt_axis: int = 0  # 0: x (a tilted axial slab), 2: z (rotated in-plane)


CLINICAL_PROTOCOL = {
    "flair": Acquisition((0.9, 0.9, 4.0)),
    "t2": Acquisition((0.8, 0.8, 3.0), 10.0, 2),
    "t1": Acquisition((1.0, 1.0, 1.2), 12.0, 0),
    "t1ce": Acquisition((1.0, 1.0, 1.0)),
}
"""The grids of the issue's new user: FLAIR 0.9 x 0.9 x 4 mm axial, T2 0.8 x 0.8 x 3 mm rotated 10 degrees, T1
1 x 1 x 1.2 mm tilted, T1ce 1 mm isotropic."""


def add_head(
    image: np.ndarray, brain: np.ndarray, spacing_zyx: tuple[float, float, float], sequence: str, seed: int = 0
) -> np.ndarray:
    """``image`` (a skull-stripped sequence, ``(z, y, x)``) with a scalp and skull around the brain: layers of CSF,
    bone with marrow inside, and scalp at distances from the brain that vary smoothly around the head (the same
    head for every sequence of one ``seed``), plus texture and noise in the air (drawn per sequence)."""
    rng = np.random.default_rng([seed, 0])
    layers = HEAD_LAYERS[sequence]
    unit = float(np.median(image[brain]))
    distance_image = sitk.SignedMaurerDistanceMap(
        _with_spacing(sitk.GetImageFromArray(brain.astype(np.uint8)), spacing_zyx),
        insideIsPositive=False,
        useImageSpacing=True,
    )
    distance = sitk.GetArrayFromImage(distance_image).astype(np.float32)
    stretch = 1.0 + 0.25 * _smooth_noise(rng, brain.shape, 12)  # thickness varies by +-25 % around the head
    d = distance / stretch
    rng = np.random.default_rng([seed, 1 + list(HEAD_LAYERS).index(sequence)])
    out = image.astype(np.float32).copy()
    texture = 1.0 + 0.08 * rng.standard_normal(brain.shape).astype(np.float32)
    outside = ~brain
    for name, (low, high) in (("csf", CSF_MM), ("bone", BONE_MM), ("diploe", DIPLOE_MM), ("scalp", SCALP_MM)):
        layer = outside & (d > low) & (d <= high)
        out[layer] = layers[name] * unit * texture[layer]
    air = outside & (d > SCALP_MM[1])
    out[air] = np.abs(rng.normal(0.0, 0.02 * unit, int(air.sum())))
    return out


def _with_spacing(image: sitk.Image, spacing_zyx: tuple[float, float, float]) -> sitk.Image:
    """``image`` with the voxel size of an array ``(z, y, x)``."""
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    return image


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], corr: int) -> np.ndarray:
    """A smooth random field in about [-1, 1] with correlation length ``corr`` voxels."""
    coarse = rng.uniform(-1, 1, [max(2, n // corr + 2) for n in shape]).astype(np.float32)
    image = sitk.GetImageFromArray(coarse)
    image.SetSpacing([float(corr)] * 3)
    reference = sitk.Image([int(n) for n in shape[::-1]], sitk.sitkFloat32)
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkBSpline, 0.0))


def scanner_grid(reference: Geometry, acquisition: Acquisition) -> Geometry:
    """A grid with the acquisition's voxel size and slab rotation covering the reference's field of view."""
    angles = [0.0, 0.0, 0.0]
    angles[acquisition.tilt_axis] = math.radians(acquisition.tilt_deg)
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*angles)
    direction = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ reference.matrix
    extent = np.asarray(reference.size) * np.asarray(reference.spacing)
    spacing = np.asarray(acquisition.spacing)
    size = np.ceil(extent / spacing).astype(int)
    centre = reference.index_to_physical((np.asarray(reference.size) - 1) / 2)
    origin = centre - direction @ ((size - 1) / 2 * spacing)
    return Geometry(
        tuple(int(s) for s in size),
        tuple(float(s) for s in spacing),
        tuple(float(o) for o in origin),
        tuple(float(d) for d in direction.ravel()),
    )


def head_motion(rng: np.random.Generator, centre: np.ndarray, max_deg: float, max_mm: float) -> sitk.Euler3DTransform:
    """A rigid motion about ``centre``: a random axis, an angle and a shift of random direction, each up to its
    maximum (at least half of it)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    versor = sitk.VersorRigid3DTransform()
    versor.SetCenter(tuple(float(c) for c in centre))
    versor.SetRotation(tuple(float(a) for a in axis), math.radians(rng.uniform(0.5, 1.0) * max_deg))
    shift = rng.normal(size=3)
    versor.SetTranslation(tuple(float(s) for s in shift / np.linalg.norm(shift) * rng.uniform(0.5, 1.0) * max_mm))
    euler = sitk.Euler3DTransform()
    euler.SetCenter(versor.GetCenter())
    euler.SetMatrix(versor.GetMatrix())
    euler.SetTranslation(versor.GetTranslation())
    return euler


def acquire(
    image: np.ndarray, geometry: Geometry, grid: Geometry, motion: sitk.Transform | None, interpolator: str = "linear"
) -> np.ndarray:
    """``image`` as a scanner records it on ``grid`` after the head moved by ``motion`` (a grid point ``p`` sees the
    anatomy at ``motion(p)``): blurred to the grid's voxel size first (slice profile), then resampled."""
    source = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float32)))
    if interpolator == "linear":  # slice profile: blur each axis up to the grid's voxel size (slabs tilt little)
        sigmas = [max(0.0, g**2 - s**2) ** 0.5 / 2.355 for g, s in zip(grid.spacing, geometry.spacing)]
        if max(sigmas) > 0.2:
            source = sitk.SmoothingRecursiveGaussian(source, [max(s, 0.01) for s in sigmas])
    out = sitk.Resample(
        source,
        [int(s) for s in grid.size],
        motion if motion is not None else sitk.Transform(),
        sitk.sitkLinear if interpolator == "linear" else sitk.sitkNearestNeighbor,
        grid.origin,
        grid.spacing,
        grid.direction,
        0.0,
        sitk.sitkFloat32 if interpolator == "linear" else source.GetPixelID(),
    )
    return sitk.GetArrayFromImage(out)


@dataclass
class RawCase:
    """Raw scans of one case: per sequence its image and grid, the motions applied and the true labels on the
    reference sequence's grid."""

    images: dict[str, tuple[np.ndarray, Geometry]]
    motions: dict[str, sitk.Euler3DTransform | None]
    labels: np.ndarray  # task label values on the reference's grid
    reference: str


def raw_case(
    images: np.ndarray,
    labels: np.ndarray,
    geometry: Geometry,
    names: tuple[str, ...],
    seed: int,
    reference: str = "t1ce",
    max_deg: float = 5.0,
    max_mm: float = 8.0,
    protocol: dict[str, Acquisition] | None = None,
) -> RawCase:
    """A prepared case (``images`` C x z x y x, skull-stripped, on ``geometry``) as raw scans: a head around the
    brain, every sequence but the reference moved (up to ``max_deg`` and ``max_mm``) and acquired on its protocol
    grid; the reference stays on ``geometry``'s frame at its protocol's voxel size."""
    protocol = protocol or CLINICAL_PROTOCOL
    rng = np.random.default_rng([seed, 19])
    brain = images.max(axis=0) > 0
    centre = geometry.index_to_physical((np.asarray(geometry.size) - 1) / 2)
    out, motions = {}, {}
    for index, name in enumerate(names):
        head = add_head(images[index], brain, geometry.spacing_zyx, name, seed=seed)
        grid = scanner_grid(geometry, protocol[name])
        motion = None if name == reference else head_motion(rng, centre, max_deg, max_mm)
        out[name] = (acquire(head, geometry, grid, motion), grid)
        motions[name] = motion
    ref_grid = out[reference][1]
    truth = acquire(labels.astype(np.uint8), geometry, ref_grid, None, interpolator="nearest")
    return RawCase(out, motions, truth, reference)
