"""The snapshot's colours, without VTK: the uncertainty colour map and opacity, the grey window, class outlines,
the scale-bar length and the slice shown.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Inferno (matplotlib) sampled at 0, 0.1, ..., 1.0; interpolated linearly in between.
INFERNO_CONTROL_POINTS = (
    (0.0, (0.001, 0.000, 0.014)),
    (0.1, (0.087, 0.045, 0.225)),
    (0.2, (0.258, 0.039, 0.406)),
    (0.3, (0.416, 0.090, 0.433)),
    (0.4, (0.578, 0.148, 0.404)),
    (0.5, (0.736, 0.216, 0.330)),
    (0.6, (0.865, 0.317, 0.226)),
    (0.7, (0.955, 0.469, 0.100)),
    (0.8, (0.988, 0.645, 0.040)),
    (0.9, (0.964, 0.844, 0.273)),
    (1.0, (0.988, 0.998, 0.645)),
)
UNCERTAINTY_TRANSPARENT_BELOW = 0.05  # overlay values below this are fully transparent
UNCERTAINTY_MAX_ALPHA = 0.8


def pick_tumour_slice(classes: np.ndarray) -> int:
    """Index of the axial slice with the largest foreground (classes > 0) area; the middle slice if there is none."""
    classes = np.asarray(classes)
    if classes.ndim != 3:
        raise ValueError(f"classes must be 3D (z, y, x), got shape {classes.shape}")
    if classes.shape[0] == 0:
        raise ValueError("classes has no slices")
    areas = np.count_nonzero(classes > 0, axis=(1, 2))
    if not areas.any():
        return int(classes.shape[0] // 2)
    return int(np.argmax(areas))


def inferno_rgb(values: np.ndarray | float) -> np.ndarray:
    """RGB (in 0..1) of the inferno-like uncertainty colour map at ``values`` (clipped to 0..1)."""
    xs = np.array([p for p, _ in INFERNO_CONTROL_POINTS])
    cs = np.array([c for _, c in INFERNO_CONTROL_POINTS])
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return np.stack([np.interp(v, xs, cs[:, i]) for i in range(3)], axis=-1)


def uncertainty_alpha(values: np.ndarray | float) -> np.ndarray:
    """Overlay opacity at ``values``: 0 below the threshold, then ramping up to ``UNCERTAINTY_MAX_ALPHA``."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    ramp = np.clip((v - UNCERTAINTY_TRANSPARENT_BELOW) / 0.45, 0.0, 1.0)
    return np.where(v < UNCERTAINTY_TRANSPARENT_BELOW, 0.0, UNCERTAINTY_MAX_ALPHA * (0.25 + 0.75 * ramp))


def as_unit_uncertainty(uncertainty: np.ndarray) -> np.ndarray:
    """Uncertainty as float32 in 0..1 (uint8 is read as 0..255)."""
    u = np.asarray(uncertainty)
    if u.dtype == np.uint8:
        u = u.astype(np.float32) / 255.0
    u = np.nan_to_num(u.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(u, 0.0, 1.0)


def grey_window(image: np.ndarray) -> tuple[float, float]:
    """1st and 99th percentile of the non-zero voxels (subsampled for large volumes); a valid (lo, hi) pair."""
    flat = np.asarray(image).ravel()
    if flat.size > 2_000_000:
        flat = flat[:: flat.size // 2_000_000 + 1]
    flat = flat.astype(np.float64)
    flat = flat[np.isfinite(flat)]
    values = flat[flat != 0]
    if values.size == 0:  # empty or all-zero image: draw it black
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    if not hi > lo:  # (nearly) constant foreground: use the full range, background included, so it shows bright
        lo, hi = min(float(flat.min()), lo), max(float(flat.max()), hi)
    if not hi > lo:
        lo = hi - 1.0
    return lo, hi


def nice_length(max_length: float) -> float:
    """The largest 1/2/5 x 10^k not above ``max_length`` (for the scale bar)."""
    if max_length <= 0:
        return 0.0
    exponent = np.floor(np.log10(max_length))
    for mantissa in (5.0, 2.0, 1.0):
        if mantissa * 10**exponent <= max_length:
            return float(mantissa * 10**exponent)
    return float(10 ** (exponent - 1) * 5)


def boundary_rgba(labels: np.ndarray, colors: Sequence[Sequence[float]], fy: int, fx: int) -> np.ndarray:
    """RGBA (rows*fy, cols*fx, 4) uint8 layer with the inner boundary pixels of every class > 0 in its colour.

    The labels are first upsampled (nearest) by (fy, fx) so that the outline is one fine pixel thick on screen; a
    boundary pixel is a class pixel with a 4-neighbour of another class (outside the slice counts as background), so
    two touching classes both show their own colour along the shared edge.
    """
    up = np.repeat(np.repeat(labels, fy, axis=0), fx, axis=1)
    padded = np.pad(up, 1, mode="constant", constant_values=0)
    centre = padded[1:-1, 1:-1]
    edge = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    ) & (centre > 0)
    palette = np.zeros((max(int(up.max(initial=0)) + 1, len(colors), 1), 4), dtype=np.uint8)
    for k in range(1, palette.shape[0]):
        color = colors[k] if k < len(colors) else (1.0, 1.0, 1.0)
        palette[k, :3] = np.round(np.clip(np.asarray(color[:3], dtype=np.float64), 0, 1) * 255)
        palette[k, 3] = 255
    rgba = palette[np.where(edge, up, 0)]
    return rgba
