"""Procedural, seeded synthetic cases: BraTS-like brain MRI and MM-WHS-like cardiac CT.

They are the embedded demo data and the test data. Every case is built from a ``numpy`` Generator seeded with the
case's seed only, so the same seed (with the same shape and spacing) always gives bit-identical arrays.

Anatomy is described by smooth signed-distance-like fields (millimetres, negative inside) deformed by low-frequency
random noise. Tissue *fractions* are sigmoids of those fields about half a voxel wide (partial volume), intensities
are fraction-weighted mixtures of per-tissue intensities, and the hard labels are the argmax of the per-class
fractions. The per-class fractions themselves (the true label distribution) are kept in :attr:`PhantomCase.fractions`.

Smooth random fields are Gaussian-kernel interpolations of white noise on a coarse control grid, evaluated with
three small separable matrix products (no FFT, no SciPy), normalised to unit variance at every voxel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cldl.files.geometry import Geometry
from cldl.files.images import write_image
from cldl.tasks import BRATS, MMWHS_CT

Shape = tuple[int, int, int]
Spacing = tuple[float, float, float]
Box = tuple[slice, slice, slice]

LAYOUTS = ("brats", "mmwhs")


@dataclass(eq=False)
class PhantomCase:
    """One synthetic case: images ``(C, z, y, x)`` float32, labels in the task's original values, geometry."""

    case_id: str
    images: np.ndarray
    labels: np.ndarray
    geometry: Geometry
    modalities: tuple[str, ...]
    fractions: np.ndarray | None = field(default=None, repr=False)
    """Per-class partial-volume fractions ``(K, z, y, x)`` float32 in the task's class order (sum to 1)."""

    @property
    def task_name(self) -> str:
        """Name of the :mod:`cldl.tasks` task the labels belong to."""
        return BRATS.name if self.modalities == BRATS.modalities else MMWHS_CT.name


# ----------------------------------------------------------------------------------------------------------------
# Grid, random fields and shape primitives
# ----------------------------------------------------------------------------------------------------------------


class _Grid:
    """A voxel grid centred on the physical origin; coordinates in mm, array order (z, y, x)."""

    def __init__(self, shape: Shape, spacing: Spacing) -> None:
        if len(shape) != 3 or any(int(n) < 8 for n in shape):
            raise ValueError(f"a phantom needs a 3D shape of at least 8 voxels per axis, got {shape}")
        if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
            raise ValueError(f"spacing must be three positive numbers, got {spacing}")
        self.shape: Shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
        self.spacing: Spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
        self.axes = [((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s) for n, s in zip(self.shape, self.spacing)]
        self.half = np.array([n * s / 2.0 for n, s in zip(self.shape, self.spacing)])
        self.voxel = float(np.prod(self.spacing) ** (1.0 / 3.0))  # geometric-mean voxel size (mm)
        self.full: Box = (slice(None), slice(None), slice(None))

    def geometry(self) -> Geometry:
        """Axis-aligned geometry with the volume centred on (0, 0, 0)."""
        origin_zyx = [float(a[0]) for a in self.axes]
        return Geometry(
            size=self.shape[::-1],
            spacing=self.spacing[::-1],
            origin=tuple(origin_zyx[::-1]),
            direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        )

    def box(self, center: np.ndarray, radius: np.ndarray | float) -> Box | None:
        """Index box covering ``center +- radius`` (mm), or None if it misses the grid."""
        radius = np.broadcast_to(np.asarray(radius, dtype=float), (3,))
        out = []
        for axis, n, s, c, r in zip(self.axes, self.shape, self.spacing, center, radius):
            lo = math.floor((float(c) - float(r) - float(axis[0])) / s)
            hi = math.ceil((float(c) + float(r) - float(axis[0])) / s) + 1
            lo, hi = max(lo, 0), min(hi, n)
            if hi <= lo:
                return None
            out.append(slice(lo, hi))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable coordinate arrays (z, y, x) in mm of a box."""
        z, y, x = (a[b] for a, b in zip(self.axes, box))
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def sub_axes(self, box: Box) -> list[np.ndarray]:
        """1D coordinate axes of a box."""
        return [a[b] for a, b in zip(self.axes, box)]


def _noise(rng: np.random.Generator, axes: list[np.ndarray], corr: float | tuple[float, float, float]) -> np.ndarray:
    """Smooth Gaussian random field (zero mean, unit variance per voxel) with correlation length ``corr`` mm.

    Cubic B-spline interpolation of white noise on a control grid of spacing ``1.7 * corr``, applied one axis at a
    time with four taps; plain element-wise arithmetic (no BLAS), so bit-reproducible whatever the threading.
    """
    corrs = np.broadcast_to(np.asarray(corr, dtype=float), (3,))
    taps = []
    for p, length in zip(axes, corrs):
        h = max(1.7 * float(length), 1e-3)
        pos = (p.astype(np.float64) - (float(p[0]) - h)) / h  # >= 1, so that the first tap index is >= 0
        floor = np.floor(pos)
        t = pos - floor
        weights = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3]) / 6.0
        weights /= np.sqrt((weights * weights).sum(axis=0))  # unit variance at every position
        first = floor.astype(np.intp) - 1
        taps.append((first, weights.astype(np.float32), int(first.max()) + 4))
    f = rng.standard_normal(tuple(n for _, _, n in taps), dtype=np.float32)
    for axis in (2, 1, 0):  # coarse -> fine; the last pass creates the full-size array
        first, weights, _ = taps[axis]
        shape = [1, 1, 1]
        shape[axis] = -1
        out = np.take(f, first, axis=axis)
        out *= weights[0].reshape(shape)
        for k in range(1, 4):
            term = np.take(f, first + k, axis=axis)
            term *= weights[k].reshape(shape)
            out += term
        f = out
    return f


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings (float32 in, float32 out)."""
    return (np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.5) * x)).astype(np.float32, copy=False)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix (zyx coordinate order) from three angles in radians."""
    a, b, c = (float(v) for v in angles)
    rz = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])  # about z (mixes y, x)
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])  # about y
    rx = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])  # about x
    return _mm(_mm(rz, ry), rx)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Small matrix-matrix or matrix-vector product without BLAS (bit-reproducible whatever the threading)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if b.ndim == 1:
        return (a * b[None, :]).sum(axis=1)
    return (a[:, :, None] * b[None, :, :]).sum(axis=1)


def _norm(v: np.ndarray) -> float:
    return math.sqrt(sum(float(x) * float(x) for x in v))


def _frame(axis: np.ndarray) -> np.ndarray:
    """A rotation whose first column (local axis 0) points along ``axis`` (zyx)."""
    a = np.asarray(axis, dtype=float)
    a = a / _norm(a)
    helper = np.array([0.0, 1.0, 0.0]) if abs(a[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    b = np.cross(a, helper)
    b /= _norm(b)
    c = np.cross(a, b)
    return np.stack([a, b, c], axis=1)


def _ellipsoid(
    grid: _Grid,
    box: Box,
    center: np.ndarray,
    radii: np.ndarray,
    rot: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    deform: float = 0.0,
    corr: float = 10.0,
    dims: tuple[bool, bool, bool] = (True, True, True),
) -> np.ndarray:
    """Signed-distance-like field (mm, negative inside) of a rotated, noise-deformed ellipsoid on a box.

    ``dims`` switches local axes off, which turns the ellipsoid into an elliptic cylinder along the missing axes.
    """
    z, y, x = grid.coords(box)
    d = (z - np.float32(center[0]), y - np.float32(center[1]), x - np.float32(center[2]))
    rot = np.eye(3) if rot is None else rot
    rho2 = None
    used = [float(r) for r, on in zip(radii, dims) if on]
    for i in range(3):
        if not dims[i]:
            continue
        u = d[0] * np.float32(rot[0, i] / radii[i]) + d[1] * np.float32(rot[1, i] / radii[i])
        u = u + d[2] * np.float32(rot[2, i] / radii[i])
        rho2 = u * u if rho2 is None else rho2 + u * u
    assert rho2 is not None
    rgeo = float(np.prod(used) ** (1.0 / len(used)))
    rho2 = np.broadcast_to(rho2, tuple(s.stop - s.start for s in _resolve(box, grid.shape))).astype(np.float32)
    phi = (np.sqrt(rho2) - np.float32(1.0)) * np.float32(rgeo)
    if deform and rng is not None:
        phi += np.float32(deform * rgeo) * _noise(rng, grid.sub_axes(box), corr)
    return phi


def _resolve(box: Box, shape: Shape) -> Box:
    """Slices with explicit start/stop."""
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, shape))  # type: ignore[return-value]


def _tube(grid: _Grid, box: Box, points: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (mm) to a tube of ``radius`` around a polyline of points (zyx mm)."""
    z, y, x = grid.coords(box)
    best = None
    for a, b in itertools.pairwise(points):
        ab = b - a
        length2 = _norm(ab) ** 2
        dz, dy, dx = z - np.float32(a[0]), y - np.float32(a[1]), x - np.float32(a[2])
        t = dz * np.float32(ab[0] / length2) + dy * np.float32(ab[1] / length2) + dx * np.float32(ab[2] / length2)
        np.clip(t, 0.0, 1.0, out=t)
        ez, ey, ex = dz - t * np.float32(ab[0]), dy - t * np.float32(ab[1]), dx - t * np.float32(ab[2])
        d2 = ez * ez + ey * ey + ex * ex
        best = d2 if best is None else np.minimum(best, d2)
    assert best is not None
    return np.sqrt(best) - np.float32(radius)


def _polyline_box(grid: _Grid, points: np.ndarray, margin: float) -> Box | None:
    lo, hi = points.min(axis=0) - margin, points.max(axis=0) + margin
    return grid.box((lo + hi) / 2.0, (hi - lo) / 2.0)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _argmax_labels(fractions: np.ndarray, values: tuple[int, ...], dtype: type) -> np.ndarray:
    lut = np.asarray(values, dtype=dtype)
    return lut[np.argmax(fractions, axis=0)]


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# ----------------------------------------------------------------------------------------------------------------
# BraTS-like brain MRI
# ----------------------------------------------------------------------------------------------------------------

# Mean intensity of each tissue (columns) per modality (rows), before per-case jitter; background is 0.
_BRATS_TISSUES = ("csf", "gm", "wm", "ncr", "et", "ed")
_BRATS_MEANS = np.array(
    [
        #  csf   gm    wm    ncr   et    ed
        [130, 430, 360, 400, 560, 660],  # FLAIR: CSF dark, oedema bright
        [160, 390, 540, 210, 330, 300],  # T1: WM bright, tumour dark-ish
        [170, 400, 540, 190, 1050, 320],  # T1ce: enhancing rim very bright, necrosis dark
        [900, 520, 380, 820, 600, 740],  # T2: CSF and oedema bright
    ],
    dtype=np.float64,
)
# Relative texture amplitude per tissue (healthy texture field / tumour heterogeneity field).
_BRATS_TEXTURE = np.array([0.03, 0.035, 0.03, 0.14, 0.10, 0.07])


@dataclass(frozen=True, eq=False)
class _BrainShape:
    """The brain ellipsoid of a BraTS phantom: its field (mm, negative inside), centre, radii, rotation, mean radius."""

    phi: np.ndarray
    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray
    r_mean: float

    def local_to_world(self, p: np.ndarray | list[float]) -> np.ndarray:
        """Position (zyx mm) of a point given in the brain's local frame (in units of its radii)."""
        return self.center + _mm(self.rot, np.asarray(p) * self.radii)


def _brats_brain_shape(rng: np.random.Generator, grid: _Grid) -> _BrainShape:
    """Brain: a rotated, low-frequency-deformed ellipsoid filling most of the field of view."""
    b_radii = grid.half * np.array([_u(rng, 0.72, 0.80), _u(rng, 0.82, 0.88), _u(rng, 0.76, 0.84)])
    b_center = grid.half * rng.uniform(-0.03, 0.03, 3)
    b_rot = _rotation(np.radians(rng.uniform(-7, 7, 3)))
    r_mean = float(np.prod(b_radii) ** (1 / 3))
    phi_b = _ellipsoid(grid, grid.full, b_center, b_radii, b_rot, rng, deform=0.05, corr=0.35 * r_mean)
    return _BrainShape(phi_b, b_center, b_radii, b_rot, r_mean)


def _brats_ventricles_and_nuclei(
    rng: np.random.Generator, grid: _Grid, shape: _BrainShape, w: np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Fractions of the two lateral ventricles and the two deep grey nuclei."""
    vox, b_radii, b_rot = grid.voxel, shape.radii, shape.rot
    vent = np.zeros(grid.shape, np.float32)
    nuclei = np.zeros(grid.shape, np.float32)
    v_scale = _u(rng, 0.8, 1.25)
    for side in (-1.0, 1.0):
        c = shape.local_to_world([0.12 + _u(rng, -0.03, 0.03), 0.02 + _u(rng, -0.04, 0.04), side * 0.12])
        radii = b_radii * np.array([0.16, 0.42, 0.09]) * v_scale * rng.uniform(0.9, 1.1, 3)
        box = grid.box(c, radii.max() * 1.3 + 2 * vox)
        if box is not None:
            phi = _ellipsoid(grid, box, c, radii, b_rot, rng, deform=0.12, corr=radii.max() * 0.6)
            np.maximum(vent[box], _sigmoid(-phi / w), out=vent[box])
        c = shape.local_to_world([-0.12 + _u(rng, -0.03, 0.03), 0.05 + _u(rng, -0.05, 0.05), side * 0.28])
        radii = b_radii * np.array([0.14, 0.17, 0.10]) * rng.uniform(0.9, 1.1, 3)
        box = grid.box(c, radii.max() * 1.3 + 2 * vox)
        if box is not None:
            phi = _ellipsoid(grid, box, c, radii, b_rot, rng, deform=0.1, corr=radii.max() * 0.6)
            np.maximum(nuclei[box], _sigmoid(-phi / w), out=nuclei[box])
    return vent, nuclei


def _brats_sulci_and_fissure(
    rng: np.random.Generator, grid: _Grid, shape: _BrainShape, fine: np.ndarray, w: np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Sulci (zero-crossings of a smooth field within the cortical band) and the interhemispheric fissure."""
    vox, b_center, b_radii, b_rot = grid.voxel, shape.center, shape.radii, shape.rot
    z, y, x = grid.coords(grid.full)
    dz, dy, dx = z - np.float32(b_center[0]), y - np.float32(b_center[1]), x - np.float32(b_center[2])
    local = [
        dz * np.float32(b_rot[0, i]) + dy * np.float32(b_rot[1, i]) + dx * np.float32(b_rot[2, i]) for i in range(3)
    ]
    del dz, dy, dx
    sulci = _sigmoid(
        (np.float32(0.22) - np.abs(_noise(rng, grid.axes, max(0.09 * shape.r_mean, 2.0 * vox)))) / np.float32(0.07)
    )
    where = np.maximum(
        _sigmoid((local[0] / np.float32(b_radii[0]) - np.float32(0.3)) / np.float32(0.04)),
        _sigmoid((np.abs(local[1]) / np.float32(b_radii[1]) - np.float32(0.62)) / np.float32(0.04)),
    )
    fissure = where * _sigmoid((np.float32(0.7 * vox) - np.abs(local[2] + np.float32(0.8 * vox) * fine)) / w)
    return sulci, fissure


def _brats_healthy_tissues(
    rng: np.random.Generator, grid: _Grid, shape: _BrainShape, brain: np.ndarray, w: np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSF, grey and white matter: outer CSF rim, cortical band, white matter, ventricles, deep nuclei, sulci."""
    vox, phi_b, r_mean = grid.voxel, shape.phi, shape.r_mean
    fine = _noise(rng, grid.axes, max(0.06 * r_mean, 1.5 * vox))
    t_csf = np.float32(0.7 * vox) * np.maximum(np.float32(1.0) + fine, np.float32(0.0))
    parenchyma = _sigmoid(-(phi_b + t_csf) / w)
    t_ctx = np.float32(max(0.09 * r_mean, 1.5 * vox)) * (np.float32(1.0) + np.float32(0.35) * fine)
    deep = _sigmoid(-(phi_b + t_csf + t_ctx) / w)
    del t_csf, t_ctx
    vent, nuclei = _brats_ventricles_and_nuclei(rng, grid, shape, w)
    sulci, fissure = _brats_sulci_and_fissure(rng, grid, shape, fine, w)
    cortex = parenchyma - deep
    q_ctx = np.maximum(sulci, fissure)
    csf = (brain - parenchyma) + cortex * q_ctx + deep * (fissure + (1 - fissure) * vent)
    gm = cortex * (1 - q_ctx) + deep * (1 - fissure) * (1 - vent) * nuclei
    wm = deep * (1 - fissure) * (1 - vent) * (1 - nuclei)
    return csf, gm, wm


def _brats_tumour(
    rng: np.random.Generator, grid: _Grid, shape: _BrainShape, brain: np.ndarray, w: np.float32
) -> tuple[np.ndarray, Box, np.ndarray, float]:
    """The glioma: fractions (ncr, et, ed) on the grid, its box, its whole-tumour fraction on the box, its radius.

    The whole-tumour volume is set by a quantile; a necrotic core sits inside an enhancing rim inside the oedema.
    """
    vox, b_radii = grid.voxel, shape.radii
    brain_voxels = float(brain.sum(dtype=np.float64))
    target = _u(rng, 0.018, 0.036) * brain_voxels
    r_e = (3.0 * target * float(np.prod(grid.spacing)) / (4.0 * math.pi)) ** (1 / 3)
    direction = rng.normal(size=3)
    direction[2] = math.copysign(max(abs(direction[2]), 0.6 * _norm(direction)), direction[2])
    direction /= _norm(direction)
    rho_max = max(0.2, 0.85 - 1.6 * r_e / float(b_radii.min()))
    t_center = shape.local_to_world(direction * _u(rng, min(0.2, rho_max), rho_max))

    e_radii = r_e * rng.uniform(0.85, 1.15, 3)
    e_radii *= r_e / float(np.prod(e_radii) ** (1 / 3))
    e_rot = _rotation(rng.uniform(-math.pi, math.pi, 3))
    t_box = grid.box(t_center, 2.6 * r_e + 2 * vox)
    assert t_box is not None
    phi_e = _ellipsoid(grid, t_box, t_center, e_radii, e_rot, rng, deform=0.25, corr=0.55 * r_e)
    phi_e += np.float32(1e6) * (brain[t_box] < 0.5)  # the quantile only counts brain voxels
    k = int(min(max(round(target), 1), phi_e.size - 1))
    phi_e -= np.partition(phi_e.ravel(), k)[k]

    r_c = max(_u(rng, 0.5, 0.66) * r_e, 3.8 * vox)
    c_center = t_center + rng.normal(size=3) / math.sqrt(3) * 0.12 * r_e
    c_radii = r_c * rng.uniform(0.85, 1.15, 3)
    c_radii *= r_c / float(np.prod(c_radii) ** (1 / 3))
    c_rot = _rotation(rng.uniform(-math.pi, math.pi, 3))
    phi_c = _ellipsoid(grid, t_box, c_center, c_radii, c_rot, rng, deform=0.16, corr=0.5 * r_c)
    rim_noise = _noise(rng, grid.sub_axes(t_box), 0.5 * r_c)
    rim = np.float32(max(0.2 * r_c, 1.3 * vox)) * (np.float32(1.0) + np.float32(0.3) * rim_noise)
    np.maximum(rim, np.float32(0.9 * vox), out=rim)

    s_tc = _sigmoid(-phi_c / w)
    s_ncr = _sigmoid(-(phi_c + rim) / w)
    s_wt = np.maximum(_sigmoid(-phi_e / w), _sigmoid(-(phi_c - np.float32(1.5 * vox)) / w))
    del phi_e, phi_c, rim

    tumour = np.zeros((3,) + grid.shape, np.float32)  # ncr, et, ed (fractions of the whole voxel)
    bb = brain[t_box]
    tumour[(0,) + t_box] = bb * s_ncr
    tumour[(1,) + t_box] = bb * (s_tc - s_ncr)
    tumour[(2,) + t_box] = bb * (s_wt - s_tc)
    return tumour, t_box, s_wt, r_e


def _brats_images(
    rng: np.random.Generator,
    grid: _Grid,
    healthy_fractions: tuple[np.ndarray, np.ndarray, np.ndarray],
    tumour: np.ndarray,
    t_box: Box,
    inside: np.ndarray,
    r_mean: float,
    r_e: float,
) -> np.ndarray:
    """Intensities: per-tissue means (jittered per case), texture, smooth bias field, Rician noise, zero background."""
    vox = grid.voxel
    means = _BRATS_MEANS * rng.uniform(0.94, 1.06, _BRATS_MEANS.shape) * rng.uniform(0.85, 1.2, (4, 1))
    texture = [np.float32(a) for a in _BRATS_TEXTURE]
    tex = _noise(rng, grid.axes, max(2.5 * vox, 0.05 * r_mean))
    healthy = [f * (np.float32(1.0) + a * tex) for f, a in zip(healthy_fractions, texture)]
    tex = _noise(rng, grid.sub_axes(t_box), max(1.5 * vox, 0.25 * r_e))
    lesion = [tumour[(i,) + t_box] * (np.float32(1.0) + a * tex) for i, a in enumerate(texture[3:])]
    del tex

    images = np.empty((4,) + grid.shape, np.float32)
    bias_corr = 0.8 * r_mean
    for ch in range(4):
        m = [np.float32(v) for v in means[ch]]
        img = healthy[0] * m[0]
        for f, v in zip(healthy[1:], m[1:3]):
            img += f * v
        for f, v in zip(lesion, m[3:]):
            img[t_box] += f * v
        img *= np.exp(np.float32(_u(rng, 0.03, 0.06)) * _noise(rng, grid.axes, bias_corr))
        sigma = np.float32(_u(rng, 0.02, 0.035) * float(means[ch].max()))
        img += sigma * rng.standard_normal(grid.shape, dtype=np.float32)
        img *= img
        img += (sigma * rng.standard_normal(grid.shape, dtype=np.float32)) ** 2
        np.sqrt(img, out=img)  # Rician magnitude
        np.maximum(img, np.float32(1.0), out=img)
        img[~inside] = 0.0
        images[ch] = img
    return images


def brats_phantom(seed: int, shape: Shape = (96, 96, 96), spacing: Spacing = (1.0, 1.0, 1.0)) -> PhantomCase:
    """A BraTS-like skull-stripped multi-modal brain MRI (flair, t1, t1ce, t2) with one glioma.

    ``shape`` and ``spacing`` are in array order (z, y, x). Labels are BraTS values 0, 1 (necrotic core),
    2 (oedema) and 4 (enhancing tumour), uint8; the whole tumour is about 2-4 % of the brain.
    """
    seed = _check_seed(seed)
    rng = np.random.default_rng(seed)
    grid = _Grid(shape, spacing)
    w = np.float32(0.4 * grid.voxel)

    brain_shape = _brats_brain_shape(rng, grid)
    brain = _sigmoid(-brain_shape.phi / w)
    csf, gm, wm = _brats_healthy_tissues(rng, grid, brain_shape, brain, w)
    tumour, t_box, s_wt, r_e = _brats_tumour(rng, grid, brain_shape, brain, w)
    healthy_scale = np.ones(grid.shape, np.float32)
    healthy_scale[t_box] = 1 - s_wt
    for tissue in (csf, gm, wm):
        tissue *= healthy_scale
    del healthy_scale

    inside = brain >= 0.5
    images = _brats_images(rng, grid, (csf, gm, wm), tumour, t_box, inside, brain_shape.r_mean, r_e)

    # Labels: argmax of the class fractions (background, NCR, ED, ET).
    fractions = np.empty((4,) + grid.shape, np.float32)
    fractions[1] = tumour[0]
    fractions[2] = tumour[2]
    fractions[3] = tumour[1]
    fractions[0] = 1 - tumour.sum(axis=0)
    labels = _argmax_labels(fractions, BRATS.label_values, np.uint8)
    labels[~inside] = 0
    return PhantomCase(f"phantom_brats_{seed:05d}", images, labels, grid.geometry(), BRATS.modalities, fractions)


# ----------------------------------------------------------------------------------------------------------------
# MM-WHS-like cardiac CT
# ----------------------------------------------------------------------------------------------------------------

# MM-WHS class indices (task order): 0 BG, 1 Myo, 2 LA, 3 LV, 4 RA, 5 RV, 6 AA, 7 PA.
_MYO, _LA, _LV, _RA, _RV, _AA, _PA = 1, 2, 3, 4, 5, 6, 7
_BLOOD_TEXTURE_HU = np.float32(12.0)  # amplitude of the blood pool's texture


class _Painter:
    """Painter's-algorithm compositing of soft structures: earlier structures take precedence."""

    def __init__(self, grid: _Grid, body: np.ndarray, num_classes: int) -> None:
        self.grid = grid
        self.rem = body.copy()  # fraction of each voxel not yet claimed by a structure
        self.hu = np.zeros(grid.shape, np.float32)
        self.classes = np.zeros((num_classes,) + grid.shape, np.float32)

    def paint(
        self,
        box: Box | None,
        inner: np.ndarray,
        hu_inner: float | np.ndarray,
        cls: int = 0,
        outer: np.ndarray | None = None,
        hu_wall: float | np.ndarray = 60.0,
        wall_cls: int = 0,
    ) -> None:
        """Claim ``inner`` (fraction 0..1 on ``box``) and the shell ``outer - inner`` of what is still free."""
        if box is None:
            return
        rem = self.rem[box]
        f_in = rem * inner
        self.hu[box] += f_in * np.float32(hu_inner) if np.isscalar(hu_inner) else f_in * hu_inner
        if cls:
            self.classes[(cls,) + box] += f_in
        if outer is None:
            rem -= f_in
            return
        f_wall = rem * np.maximum(outer - inner, np.float32(0.0))
        self.hu[box] += f_wall * np.float32(hu_wall) if np.isscalar(hu_wall) else f_wall * hu_wall
        if wall_cls:
            self.classes[(wall_cls,) + box] += f_wall
        rem *= 1 - np.maximum(outer, inner)


class _Chest:
    """An MM-WHS phantom under construction: grid, random stream, scale, the body, painter and blood levels.

    Positions are given in real-anatomy mm (x left, y posterior, z superior) and scaled by ``s`` (mm of phantom per
    mm of real anatomy); the heart frame is set by :meth:`place_heart`.
    """

    def __init__(self, rng: np.random.Generator, grid: _Grid) -> None:
        self.rng, self.grid = rng, grid
        self.vox, self.w = grid.voxel, np.float32(0.4 * grid.voxel)
        self.s = min(float(grid.half[2]) / 140.0, float(grid.half[1]) / 135.0)
        s = self.s
        # Body: an elliptic cylinder (about 330 x 240 mm) with a smooth, slightly irregular outline.
        self.body_c = self.at((_u(rng, -4, 4), _u(rng, -2, 8), 0.0))
        self.body_r = np.array([1.0, _u(rng, 112, 128), _u(rng, 150, 175)]) * s
        self.phi_body = _ellipsoid(
            grid, grid.full, self.body_c, self.body_r, None, rng, 0.03, 60 * s, dims=(False, True, True)
        )
        self.body = _sigmoid(-self.phi_body / self.w)
        self.paint = _Painter(grid, self.body, len(MMWHS_CT.label_values))
        self.blood_l = _u(rng, 320, 430)  # contrast-enhanced arterial blood (left heart, aorta)
        self.blood_r = self.blood_l - _u(rng, 20, 110)  # right heart: similar, a little less enhanced
        self.h_scale = s
        self.h_center = np.zeros(3)
        self.h_rot = np.eye(3)

    def at(self, p: tuple[float, float, float], origin: np.ndarray | None = None) -> np.ndarray:
        """Position (zyx mm) of a point given in real-anatomy mm (x left, y posterior, z superior)."""
        return (np.zeros(3) if origin is None else origin) + np.array([p[2], p[1], p[0]]) * self.s

    def blood(self, box: Box, level: float) -> np.ndarray:
        """Contrast-enhanced blood (HU) on a box: ``level`` jittered, with a faint texture."""
        rng = self.rng
        return np.float32(level + _u(rng, -15, 15)) + _BLOOD_TEXTURE_HU * _noise(
            rng, self.grid.sub_axes(box), 6 * self.s
        )

    def cylinder(self, center: np.ndarray, ry: float, rx: float) -> tuple[Box | None, np.ndarray]:
        """A cranio-caudal elliptic cylinder through the whole field of view: its box and field (or None)."""
        grid = self.grid
        box = grid.box(center, np.array([grid.half[0], ry + 3 * self.vox, rx + 3 * self.vox]))
        if box is None:
            return None, np.zeros(0, np.float32)
        return box, _ellipsoid(grid, box, center, np.array([1.0, ry, rx]), dims=(False, True, True))

    def place_heart(self) -> None:
        """Heart frame (real mm: x left, y posterior, z superior): centre, orientation and size jitter."""
        rng = self.rng
        self.h_scale = self.s * _u(rng, 0.92, 1.08)
        self.h_center = self.at((_u(rng, 6, 16), _u(rng, -28, -18), _u(rng, -12, 8)), self.body_c)
        self.h_rot = _rotation(np.radians(rng.uniform(-8, 8, 3)))

    def hp(self, p: tuple[float, float, float]) -> np.ndarray:
        """Position (zyx mm) of a point given in heart-frame real mm."""
        return self.h_center + _mm(self.h_rot, np.array([p[2], p[1], p[0]]) * self.h_scale)

    def chamber(
        self, center: tuple, radii: tuple, rot: np.ndarray, deform: float = 0.07
    ) -> tuple[Box | None, np.ndarray]:
        """A heart-frame ellipsoid; ``radii`` (real mm) along the local axes 0, 1, 2 (the columns of ``rot``)."""
        rng, grid = self.rng, self.grid
        c = self.hp(center)
        r = np.array(radii) * self.h_scale * rng.uniform(0.92, 1.08, 3)
        box = grid.box(c, r.max() * 1.35 + 12 * self.h_scale + 2 * self.vox)
        if box is None:
            return None, np.zeros(0, np.float32)
        return box, _ellipsoid(grid, box, c, r, rot, rng, deform, float(r.max()) * 0.7)

    def tube(
        self,
        points: list[tuple[float, float, float]],
        radius: float,
        level: float,
        cls: int,
        wall: np.float32,
        wall_hu: float,
    ) -> None:
        """Paint a blood-filled vessel of class ``cls`` with a wall along a heart-frame polyline."""
        grid, w = self.grid, self.w
        pts = np.stack([self.hp(p) for p in points])
        r = radius * self.h_scale * _u(self.rng, 0.9, 1.1)
        box = _polyline_box(grid, pts, r + 4 * self.vox + float(wall))
        if box is None:
            return
        phi = _tube(grid, box, pts, r)
        phi += np.float32(0.06 * r) * _noise(self.rng, grid.sub_axes(box), 2 * r)
        self.paint.paint(box, _sigmoid(-phi / w), self.blood(box, level), cls, _sigmoid(-(phi - wall) / w), wall_hu)


def _paint_spine_and_aorta(chest: _Chest) -> None:
    """Spine (vertebral body, discs, spinal canal in its bony arch) and the descending aorta."""
    rng, grid, s, w, sig = chest.rng, chest.grid, chest.s, chest.w, _sigmoid
    sp_c = chest.body_c + np.array([0.0, float(chest.body_r[1]) - 62 * s, _u(rng, -3, 3) * s])
    sp_scale = _u(rng, 0.9, 1.1) * s
    box, phi = chest.cylinder(sp_c, 17 * sp_scale, 20 * sp_scale)
    if box is not None:
        z = grid.coords(box)[0]
        period = 27.0 * s
        disc = sig((np.float32(3.0 * s) - np.abs(np.mod(z - np.float32(_u(rng, 0, period)), period) - period / 2)) / w)
        bone_hu = _u(rng, 600, 800) * (1 - disc) + 80 * disc
        core_hu = _u(rng, 200, 300) * (1 - disc) + 80 * disc
        chest.paint.paint(box, sig(-(phi + np.float32(2.5 * s)) / w), core_hu, outer=sig(-phi / w), hu_wall=bone_hu)
    box, phi = chest.cylinder(sp_c + np.array([0.0, 17 * sp_scale + 11 * s, 0.0]), 8 * s, 9 * s)
    if box is not None:
        chest.paint.paint(
            box, sig(-phi / w), 25.0, outer=sig(-(phi - np.float32(5 * s)) / w), hu_wall=_u(rng, 500, 700)
        )

    # Descending aorta (arterial blood, not a labelled structure), left-anterior of the spine.
    da_r = 11.0 * s * _u(rng, 0.9, 1.15)
    box, phi = chest.cylinder(sp_c + np.array([0.0, -24 * s, 24 * s]), da_r, da_r)
    if box is not None:
        chest.paint.paint(
            box, sig(-phi / w), chest.blood(box, chest.blood_l), outer=sig(-(phi - np.float32(2 * s)) / w)
        )


def _paint_heart(chest: _Chest) -> None:
    """The heart: LV and myocardium, the great arteries, the other chambers, then the epicardial fat around it."""
    rng, grid, s, w, sig, paint = chest.rng, chest.grid, chest.s, chest.w, _sigmoid, chest.paint
    chest.place_heart()
    h_scale, h_rot = chest.h_scale, chest.h_rot

    # LV cavity and myocardium: an ellipsoid along the long axis (base -> apex: left, anterior, inferior).
    lv_axis = _mm(h_rot, np.array([-0.65, -0.45 + _u(rng, -0.1, 0.1), 0.6 + _u(rng, -0.1, 0.1)]))  # zyx
    box, phi = chest.chamber((18.0, 4.0, -10.0), (40.0, 22.0, 22.0), _frame(lv_axis))
    if box is not None:
        myo_t = np.float32(10.0 * h_scale * _u(rng, 0.85, 1.15))
        myo_hu = _u(rng, 90, 140) + np.float32(10) * _noise(rng, grid.sub_axes(box), 5 * s)
        paint.paint(box, sig(-phi / w), chest.blood(box, chest.blood_l), _LV, sig(-(phi - myo_t) / w), myo_hu, _MYO)

    wall = np.float32(2.5 * h_scale)
    wall_hu = _u(rng, 50, 80)
    blood_l, blood_r = chest.blood_l, chest.blood_r
    top = float(grid.half[0] / h_scale) + 60.0  # beyond the top of the field of view
    chest.tube([(0, 8, 8), (-6, 0, 38), (-10, 4, 70), (-12, 10, top)], 14.0, blood_l, _AA, wall, wall_hu)
    chest.tube([(4, -30, 8), (10, -32, 34), (24, -12, 54), (40, 10, 56)], 13.0, blood_r, _PA, wall, wall_hu)
    chest.tube([(24, -12, 54), (-10, 8, 58), (-40, 14, 55)], 9.0, blood_r, _PA, wall, wall_hu)

    for center, radii, level, cls, angle in (
        ((8.0, 36.0, 20.0), (30.0, 18.0, 20.0), blood_l, _LA, 0.0),
        ((-40.0, 8.0, 12.0), (24.0, 24.0, 28.0), blood_r, _RA, 0.0),
        ((-12.0, -22.0, -12.0), (34.0, 20.0, 32.0), blood_r, _RV, -0.5),
    ):
        rot = _mm(h_rot, _rotation(np.array([angle + _u(rng, -0.1, 0.1), 0.0, 0.0])))
        box, phi = chest.chamber(center, radii[::-1], rot)
        if box is not None:
            paint.paint(box, sig(-phi / w), chest.blood(box, level), cls, sig(-(phi - wall) / w), wall_hu)

    # Epicardial / pericardial fat around the heart.
    box, phi = chest.chamber((-4.0, 0.0, -2.0), (66.0, 58.0, 72.0), h_rot, deform=0.1)
    if box is not None:
        paint.paint(box, sig(-phi / w), _u(rng, -110, -70))


def _paint_lungs_and_chest_wall(chest: _Chest) -> None:
    """The lungs, ribs and subcutaneous fat; the rest of the body is muscle."""
    rng, grid, s, w, sig, paint = chest.rng, chest.grid, chest.s, chest.w, _sigmoid, chest.paint
    lung_tex = _noise(rng, grid.axes, 4 * s)
    vessels = sig((_noise(rng, grid.axes, 2.5 * s) - np.float32(1.8)) / np.float32(0.15))
    lung_hu = np.float32(_u(rng, -860, -800)) + np.float32(25) * lung_tex + np.float32(600) * vessels
    del lung_tex, vessels
    wall_depth = _u(rng, 26, 34) * s
    for side in (-1.0, 1.0):
        c = chest.at((side * 80 + _u(rng, -5, 5), 6 + _u(rng, -5, 5), 60.0), chest.body_c)
        r = np.array([200.0, 88.0, 56.0]) * s * rng.uniform(0.92, 1.05, 3)
        box = grid.box(c, r + 0.25 * float(np.prod(r)) ** (1 / 3) + 2 * chest.vox)  # room for the deformation
        if box is not None:
            phi = _ellipsoid(grid, box, c, r, None, rng, 0.06, 60 * s)
            chest_wall = sig(-(chest.phi_body[box] + np.float32(wall_depth)) / w)  # keep ribs, muscle, fat outside
            paint.paint(box, sig(-phi / w) * chest_wall, lung_hu[box])

    depth = -chest.phi_body  # mm inside the body surface
    z, _, x = grid.coords(grid.full)
    rib_d = np.float32(wall_depth - _u(rng, 6, 9) * s)
    ribs = sig((np.float32(4.0 * s) - np.abs(depth - rib_d)) / w)
    slope = (z + np.float32(0.25) * np.abs(x)) * np.float32(2 * math.pi / (30 * s))
    ribs *= sig((np.cos(slope) - np.float32(0.3)) / np.float32(0.15))
    fat_t = np.float32(_u(rng, 6, 14) * s) * (1 + np.float32(0.3) * _noise(rng, grid.axes, 30 * s))
    paint.paint(grid.full, ribs, _u(rng, 450, 650))
    paint.paint(grid.full, sig((fat_t - depth) / w), _u(rng, -115, -85))
    del ribs, depth, slope, fat_t
    paint.paint(grid.full, np.ones(grid.shape, np.float32), _u(rng, 35, 60))


def mmwhs_phantom(seed: int, shape: Shape = (96, 96, 96), spacing: Spacing = (1.0, 1.0, 1.0)) -> PhantomCase:
    """An MM-WHS-like contrast-enhanced cardiac CT (Hounsfield units) with the seven whole-heart structures.

    ``shape`` and ``spacing`` are in array order (z, y, x), LPS: +x is the patient's left, +y posterior,
    +z superior. The field of view is a ~280 mm cardiac reconstruction (the body is cut off laterally, as in
    cardiac CTA). Labels are MM-WHS values 205 (Myo), 420 (LA), 500 (LV), 550 (RA), 600 (RV), 820 (AA),
    850 (PA), int16.
    """
    seed = _check_seed(seed)
    rng = np.random.default_rng(seed)
    grid = _Grid(shape, spacing)
    chest = _Chest(rng, grid)
    _paint_spine_and_aorta(chest)
    _paint_heart(chest)
    _paint_lungs_and_chest_wall(chest)

    hu = chest.paint.hu + (1 - chest.body) * np.float32(-1000.0)
    hu += np.float32(_u(rng, 15, 25)) * rng.standard_normal(grid.shape, dtype=np.float32)
    np.clip(hu, -1024.0, 3071.0, out=hu)

    fractions = chest.paint.classes
    fractions[0] = 1 - fractions[1:].sum(axis=0)
    labels = _argmax_labels(fractions, MMWHS_CT.label_values, np.int16)
    return PhantomCase(f"phantom_mmwhs_{seed:05d}", hu[None], labels, grid.geometry(), MMWHS_CT.modalities, fractions)


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------

PHANTOMS: dict[str, Callable[..., PhantomCase]] = {BRATS.name: brats_phantom, MMWHS_CT.name: mmwhs_phantom}


def make_phantom(task: str, seed: int, shape: Shape = (96, 96, 96), spacing: Spacing = (1.0, 1.0, 1.0)) -> PhantomCase:
    """A phantom for a task name (``brats``, ``mmwhs_ct`` or its alias ``mmwhs``)."""
    key = "mmwhs_ct" if task == "mmwhs" else task
    if key not in PHANTOMS:
        raise ValueError(f"no phantom for task {task!r}: use one of {sorted(PHANTOMS) + ['mmwhs']}")
    return PHANTOMS[key](seed, shape, spacing)


#: The top of the int16 range each modality of a compact case is scaled to (the models z-score every volume, so a
#: linear scale changes nothing they see; 0 stays 0 and no other value becomes 0, so the head mask is kept). 256
#: levels keep the files small.
COMPACT_MAXIMUM = 255


def compact_case(case: PhantomCase, margin: int = 2) -> PhantomCase:
    """The case cropped to the head (the bounding box of voxels non-zero in any modality, plus ``margin`` voxels)
    with each modality linearly scaled to int16 ``0..COMPACT_MAXIMUM`` and the labels as uint8: a few MB on disk
    instead of tens, on the same physical grid (the crop's origin moves with it)."""
    head = (case.images != 0).any(axis=0)
    if not head.any():
        raise ValueError(f"{case.case_id}: every voxel is 0, nothing to crop to")
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(head.any(axis=other))
        box.append((max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, head.shape[axis])))
    index = tuple(slice(a, b) for a, b in box)
    images = []
    for image in case.images[(slice(None), *index)]:
        top = float(np.abs(image).max()) or 1.0
        scaled = np.rint(image.astype(np.float64) * (COMPACT_MAXIMUM / top))
        scaled = np.where((image != 0) & (scaled == 0), np.sign(image), scaled)  # keep the head mask
        images.append(scaled.astype(np.int16))
    grid = case.geometry
    start = grid.index_to_physical(np.array([box[2][0], box[1][0], box[0][0]], dtype=np.float64))
    geometry = Geometry(
        size=(box[2][1] - box[2][0], box[1][1] - box[1][0], box[0][1] - box[0][0]),
        spacing=grid.spacing,
        origin=tuple(float(o) for o in start),
        direction=grid.direction,
    )
    labels = case.labels[index].astype(np.uint8)
    return PhantomCase(case.case_id, np.stack(images), labels, geometry, case.modalities)


def write_case(case: PhantomCase, folder: Path, layout: str = "brats") -> dict[str, Path]:
    """Write a case as NIfTI files and return ``{name: path}``.

    ``layout="brats"``: ``folder/<id>/<id>_<modality>.nii.gz`` per modality and ``<id>_seg.nii.gz`` (BraTS
    2018-2020 naming). ``layout="mmwhs"``: ``folder/<id>_image.nii.gz`` and ``folder/<id>_label.nii.gz``
    (single-channel cases only).
    """
    folder = Path(folder)
    out: dict[str, Path] = {}
    if layout == "brats":
        base = folder / case.case_id
        for name, image in zip(case.modalities, case.images):
            out[name] = write_image(image, case.geometry, base / f"{case.case_id}_{name}.nii.gz")
        out["seg"] = write_image(case.labels, case.geometry, base / f"{case.case_id}_seg.nii.gz")
    elif layout == "mmwhs":
        if case.images.shape[0] != 1:
            raise ValueError(f"the mmwhs layout holds one image per case; {case.case_id} has {case.images.shape[0]}")
        out["image"] = write_image(case.images[0], case.geometry, folder / f"{case.case_id}_image.nii.gz")
        out["label"] = write_image(case.labels, case.geometry, folder / f"{case.case_id}_label.nii.gz")
    else:
        raise ValueError(f"unknown layout {layout!r}: use one of {list(LAYOUTS)}")
    return out
