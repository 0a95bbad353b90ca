"""Patch augmentation presets: ``none``, ``paper`` (the authors' mirror flips), ``mmwhs`` (the authors' MM-WHS
rotation: every patch rotated by up to +-25 degrees about the x and y axes, no mirroring) and ``nnunet`` (nnU-Net
v2's set).

``nnunet`` follows nnU-Net v2's default 3D training transforms and probabilities: rotation (+-30 degrees about each
axis, p 0.2) and scaling (0.7-1.4, p 0.2) sampled from the whole volume around the patch (so no padding shows at the
corners), Gaussian noise (variance up to 0.1, p 0.1), Gaussian blur (sigma 0.5-1, p 0.2, per channel 0.5),
multiplicative brightness (0.75-1.25, p 0.15), contrast (0.75-1.25, p 0.15), low-resolution simulation (zoom 0.5-1,
p 0.25, per channel 0.5), inverted gamma (p 0.1) and gamma (0.7-1.5, p 0.3) with the statistics kept, and mirroring
(p 0.5 per axis). Elastic deformation is off by default in nnU-Net v2 and here too.

Every random draw comes from the sampler's numpy Generator, so an augmented stream resumes exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

AUGMENT_PRESETS = ("none", "paper", "mmwhs", "nnunet")


@dataclass(frozen=True)
class Augmentation:
    """Probabilities and ranges of one preset."""

    flip_prob: float = 0.0
    p_rotate: float = 0.0
    rotate_deg: float = 30.0
    rotate_axes: tuple[bool, bool, bool] = (True, True, True)  # rotation about z, y, x (array axes 0, 1, 2)
    p_scale: float = 0.0
    scale: tuple[float, float] = (0.7, 1.4)
    p_noise: float = 0.0
    noise_var: float = 0.1
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.0
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.0
    contrast: tuple[float, float] = (0.75, 1.25)
    p_low_res: float = 0.0
    low_res_zoom: tuple[float, float] = (0.5, 1.0)
    p_gamma: float = 0.0
    p_gamma_inverted: float = 0.0
    gamma: tuple[float, float] = (0.7, 1.5)
    p_per_channel: float = 0.5

    @property
    def spatial(self) -> bool:
        """True when patches may be rotated or scaled."""
        return self.p_rotate > 0 or self.p_scale > 0


def preset(name: str, flip_prob: float = 0.5) -> Augmentation:
    """The augmentation of a preset; ``flip_prob`` is the mirror probability per axis (the config's ``flip_prob``)."""
    if name == "none":
        return Augmentation()
    if name == "paper":
        return Augmentation(flip_prob=flip_prob)
    if name == "mmwhs":
        return Augmentation(p_rotate=1.0, rotate_deg=25.0, rotate_axes=(False, True, True))
    if name == "nnunet":
        return Augmentation(
            flip_prob=flip_prob,
            p_rotate=0.2,
            p_scale=0.2,
            p_noise=0.1,
            p_blur=0.2,
            p_brightness=0.15,
            p_contrast=0.15,
            p_low_res=0.25,
            p_gamma=0.3,
            p_gamma_inverted=0.1,
        )
    raise ValueError(f"unknown augmentation {name!r}; use one of {list(AUGMENT_PRESETS)}")


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix (z, y, x coordinates) from three angles in radians."""
    a, b, c = (float(v) for v in angles)
    rz = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rx = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def spatial_matrix(rng: np.random.Generator, aug: Augmentation) -> np.ndarray | None:
    """A random patch->volume linear map (rotation and scaling), or None when neither is drawn."""
    matrix = np.eye(3)
    drawn = False
    if aug.p_rotate and rng.random() < aug.p_rotate:
        angles = rng.uniform(-aug.rotate_deg, aug.rotate_deg, 3) * np.asarray(aug.rotate_axes, dtype=float)
        matrix = _rotation(np.deg2rad(angles)) @ matrix
        drawn = True
    if aug.p_scale and rng.random() < aug.p_scale:
        matrix = matrix / rng.uniform(*aug.scale)  # zoom > 1 shows a smaller region, larger
        drawn = True
    return matrix if drawn else None


def transformed_patch(
    images: np.ndarray,
    labels: np.ndarray,
    centre: np.ndarray,
    patch: tuple[int, int, int],
    matrix: np.ndarray,
    pad_value: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A patch sampled from the volume through ``matrix`` about ``centre`` (linear images, nearest labels)."""
    half = (np.array(patch) - 1) / 2
    extent = np.abs(matrix) @ half  # half-size of the source region
    lo = np.maximum(np.floor(centre - extent).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(centre + extent).astype(int) + 2, labels.shape)
    hi = np.maximum(hi, lo + 2)
    region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    source = torch.from_numpy(np.ascontiguousarray(images[(slice(None),) + region], dtype=np.float32)) - pad_value
    source_labels = torch.from_numpy(np.ascontiguousarray(labels[region], dtype=np.float32))
    axes = [torch.arange(p, dtype=torch.float64) - h for p, h in zip(patch, half)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) @ torch.from_numpy(matrix.T)
    grid = grid + torch.from_numpy(centre - lo)
    size = torch.tensor([b - a for a, b in zip(lo, hi)], dtype=torch.float64)
    grid = (2 * grid / (size - 1) - 1).flip(-1).float()[None]
    x = F.grid_sample(source[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0] + pad_value
    y = F.grid_sample(source_labels[None, None], grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
    return x.numpy(), y.numpy().astype(labels.dtype)


def _blur(channel: torch.Tensor, sigma: float) -> torch.Tensor:
    """Isotropic Gaussian blur of one ``(z, y, x)`` channel."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = channel[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(t)
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[0, 0]


def intensity_augment(rng: np.random.Generator, x: np.ndarray, aug: Augmentation) -> np.ndarray:
    """nnU-Net's intensity transforms on one ``(C, z, y, x)`` patch (a new array; ``x`` is left alone)."""
    t = torch.from_numpy(np.array(x, dtype=np.float32, copy=True))
    channels = range(t.shape[0])
    if aug.p_noise and rng.random() < aug.p_noise:
        sd = math.sqrt(rng.uniform(0, aug.noise_var))
        t += torch.from_numpy(rng.standard_normal(t.shape).astype(np.float32) * sd)
    if aug.p_blur and rng.random() < aug.p_blur:
        for c in channels:
            if rng.random() < aug.p_per_channel:
                t[c] = _blur(t[c], rng.uniform(*aug.blur_sigma))
    if aug.p_brightness and rng.random() < aug.p_brightness:
        t *= float(rng.uniform(*aug.brightness))
    if aug.p_contrast and rng.random() < aug.p_contrast:
        for c in channels:
            mean, low, high = t[c].mean(), t[c].min(), t[c].max()
            t[c] = ((t[c] - mean) * float(rng.uniform(*aug.contrast)) + mean).clamp(low, high)
    if aug.p_low_res and rng.random() < aug.p_low_res:
        for c in channels:
            if rng.random() < aug.p_per_channel:
                size = [max(1, round(n * rng.uniform(*aug.low_res_zoom))) for n in t.shape[1:]]
                low = F.interpolate(t[c][None, None], size=size, mode="nearest")
                t[c] = F.interpolate(low, size=tuple(t.shape[1:]), mode="trilinear", align_corners=False)[0, 0]
    for p, invert in ((aug.p_gamma_inverted, True), (aug.p_gamma, False)):
        if p and rng.random() < p:
            for c in channels:
                t[c] = _gamma(t[c], float(rng.uniform(*aug.gamma)), invert)
    return t.numpy()


def _gamma(channel: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """Gamma on the channel's range, keeping its mean and standard deviation (nnU-Net's retain_stats)."""
    c = -channel if invert else channel
    mean, sd = c.mean(), c.std()
    low, span = c.min(), (c.max() - c.min()).clamp_min(1e-7)
    c = ((c - low) / span) ** gamma * span + low
    c = (c - c.mean()) / c.std().clamp_min(1e-7) * sd + mean
    return -c if invert else c
