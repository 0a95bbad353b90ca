"""Patch augmentation presets: ``none``, ``paper`` (the authors' mirror flips), ``mmwhs`` (after the angles of the
authors' MM-WHS transform: every patch rotated by up to +-25 degrees about the x and y axes, no mirroring; the
elastic deformation, scaling and rotation about z that their transform takes from batchgenerators' defaults are not
done, docs/method.md) and ``nnunet`` (nnU-Net v2's set).

``nnunet`` follows nnU-Net v2's default 3D training transforms and probabilities: rotation (+-30 degrees about each
axis, p 0.2) and scaling (0.7-1.4, p 0.2) sampled from the whole volume around the patch (so no padding shows at the
corners), Gaussian noise (variance up to 0.1, p 0.1), Gaussian blur (sigma 0.5-1, p 0.2, per channel 0.5),
multiplicative brightness (0.75-1.25, p 0.15), contrast (0.75-1.25, p 0.15), low-resolution simulation (zoom 0.5-1,
p 0.25, per channel 0.5), inverted gamma (p 0.1) and gamma (0.7-1.5, p 0.3) with the statistics kept, and mirroring
(p 0.5 per axis). Elastic deformation is off by default in nnU-Net v2 and here too.

Every random draw comes from the sampler's numpy Generator, so an augmented stream resumes exactly. Drawing and
applying are separate: the sampler draws a :class:`PlannedPatch` (the crop, or the source region a rotation or
scaling samples from, plus every random value of its transforms) and :meth:`PlannedBatch.apply` runs the
transforms with torch ops on whatever device the tensors are moved to, the prefetch thread's CPU or the training
GPU; the same plan gives the same patch on either, up to float rounding. The Gaussian noise is part of the plan as
values, not as a seed: numpy draws normals by rejection, a data-dependent number of raw draws each, so only drawing
them from the sampler's Generator keeps every later draw of the stream where it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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

    @property
    def intensity(self) -> bool:
        """True when patches may get an intensity transform."""
        return any(
            p > 0
            for p in (
                self.p_noise,
                self.p_blur,
                self.p_brightness,
                self.p_contrast,
                self.p_low_res,
                self.p_gamma,
                self.p_gamma_inverted,
            )
        )


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


def source_region(
    shape: tuple[int, ...], centre: np.ndarray, patch: tuple[int, int, int], matrix: np.ndarray
) -> tuple[slice, slice, slice]:
    """The part of a volume of ``shape`` that a patch through ``matrix`` about ``centre`` samples from."""
    half = (np.array(patch) - 1) / 2
    extent = np.abs(matrix) @ half  # half-size of the source region
    lo = np.maximum(np.floor(centre - extent).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(centre + extent).astype(int) + 2, shape)
    hi = np.maximum(hi, lo + 2)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def resample(
    source: torch.Tensor,
    source_labels: torch.Tensor,
    centre: np.ndarray,
    patch: tuple[int, int, int],
    matrix: np.ndarray,
    pad_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The patch through ``matrix`` about ``centre`` (voxel coordinates of the ``(C, z, y, x)`` source), on the
    source's device: linear images (``pad_value`` outside), nearest labels (0 outside, the labels' dtype).

    The three small host arrays go over with non-blocking copies (staged at once, no wait for the device's queue).
    """
    device = source.device
    half = (np.array(patch) - 1) / 2
    matrix_t, offset, size = (
        torch.from_numpy(np.array(a, dtype=np.float64)).to(device, non_blocking=True)
        for a in (matrix.T, centre, source_labels.shape)
    )
    axes = [torch.arange(p, dtype=torch.float64, device=device) - h for p, h in zip(patch, half)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) @ matrix_t + offset
    grid = (2 * grid / (size - 1) - 1).flip(-1).float()[None]
    x = F.grid_sample((source - pad_value)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    y = F.grid_sample(source_labels.float()[None, None], grid, mode="nearest", padding_mode="zeros", align_corners=True)
    return x[0] + pad_value, y[0, 0].to(source_labels.dtype)


@dataclass(frozen=True, eq=False)  # holds tensors: compare their values, not the plans
class IntensityPlan:
    """The random values of nnU-Net's intensity transforms for one patch (:func:`draw_intensity`)."""

    noise: torch.Tensor | None = None  # the Gaussian noise itself, float32, already scaled by its drawn sd
    blur: tuple[tuple[int, float], ...] = ()  # (channel, sigma)
    brightness: float | None = None
    contrast: tuple[float, ...] = ()  # a factor per channel, or none
    low_res: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (channel, the low-resolution size)
    gamma_inverted: tuple[float, ...] = ()  # a gamma per channel, or none
    gamma: tuple[float, ...] = ()

    def pin_memory(self) -> IntensityPlan:
        """The plan with its noise in page-locked memory (fast, asynchronous copies to a GPU)."""
        return self if self.noise is None else replace(self, noise=self.noise.pin_memory())


def draw_intensity(rng: np.random.Generator, aug: Augmentation, shape: tuple[int, ...]) -> IntensityPlan:
    """Draw the intensity transforms of one ``(C, z, y, x)`` patch (the same draws, in the same order, as ever)."""
    channels = range(shape[0])
    noise = None
    if aug.p_noise and rng.random() < aug.p_noise:
        sd = math.sqrt(rng.uniform(0, aug.noise_var))
        noise = torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * sd)
    blur = []
    if aug.p_blur and rng.random() < aug.p_blur:
        for c in channels:
            if rng.random() < aug.p_per_channel:
                blur.append((c, float(rng.uniform(*aug.blur_sigma))))
    brightness = None
    if aug.p_brightness and rng.random() < aug.p_brightness:
        brightness = float(rng.uniform(*aug.brightness))
    contrast: tuple[float, ...] = ()
    if aug.p_contrast and rng.random() < aug.p_contrast:
        contrast = tuple(float(rng.uniform(*aug.contrast)) for _ in channels)
    low_res = []
    if aug.p_low_res and rng.random() < aug.p_low_res:
        for c in channels:
            if rng.random() < aug.p_per_channel:
                low_res.append((c, tuple(max(1, round(n * rng.uniform(*aug.low_res_zoom))) for n in shape[1:])))
    gammas: list[tuple[float, ...]] = []
    for p in (aug.p_gamma_inverted, aug.p_gamma):
        drawn = p and rng.random() < p
        gammas.append(tuple(float(rng.uniform(*aug.gamma)) for _ in channels) if drawn else ())
    return IntensityPlan(noise, tuple(blur), brightness, contrast, tuple(low_res), gammas[0], gammas[1])


def apply_intensity(t: torch.Tensor, plan: IntensityPlan) -> torch.Tensor:
    """Apply ``plan`` to a ``(C, z, y, x)`` float32 patch in place, on the patch's device; returns the patch."""
    if plan.noise is not None:
        t += plan.noise.to(t.device, non_blocking=True)
    for c, sigma in plan.blur:
        t[c] = _blur(t[c], sigma)
    if plan.brightness is not None:
        t *= plan.brightness
    for c, factor in enumerate(plan.contrast):
        mean, low, high = t[c].mean(), t[c].min(), t[c].max()
        t[c] = ((t[c] - mean) * factor + mean).clamp(low, high)
    for c, size in plan.low_res:
        low = F.interpolate(t[c][None, None], size=size, mode="nearest")
        t[c] = F.interpolate(low, size=tuple(t.shape[1:]), mode="trilinear", align_corners=False)[0, 0]
    for gammas, invert in ((plan.gamma_inverted, True), (plan.gamma, False)):
        for c, gamma in enumerate(gammas):
            t[c] = _gamma(t[c], gamma, invert)
    return t


def _blur(channel: torch.Tensor, sigma: float) -> torch.Tensor:
    """Isotropic Gaussian blur of one ``(z, y, x)`` channel."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=channel.device)
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


def _gamma(channel: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """Gamma on the channel's range, keeping its mean and standard deviation (nnU-Net's retain_stats)."""
    c = -channel if invert else channel
    mean, sd = c.mean(), c.std()
    low, span = c.min(), (c.max() - c.min()).clamp_min(1e-7)
    c = ((c - low) / span) ** gamma * span + low
    c = (c - c.mean()) / c.std().clamp_min(1e-7) * sd + mean
    return -c if invert else c


@dataclass(frozen=True, eq=False)  # holds tensors: compare their values, not the plans
class PlannedPatch:
    """One training patch before augmentation: its source and every random value of its transforms."""

    images: torch.Tensor  # (C, z, y, x) float32: the crop, or with ``matrix`` the source region
    labels: torch.Tensor  # (z, y, x) integer labels of the same voxels
    matrix: np.ndarray | None = None  # patch->source linear map (rotation, scaling)
    centre: np.ndarray | None = None  # with ``matrix``: the patch centre in the source's voxel coordinates
    intensity: IntensityPlan | None = None
    flips: tuple[int, ...] = ()  # mirrored axes (0, 1, 2 = z, y, x)

    def pin_memory(self) -> PlannedPatch:
        """The patch with its tensors in page-locked memory."""
        intensity = None if self.intensity is None else self.intensity.pin_memory()
        return replace(self, images=self.images.pin_memory(), labels=self.labels.pin_memory(), intensity=intensity)

    def apply(
        self, device: torch.device | str, patch: tuple[int, int, int], pad_value: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented ``(C, *patch)`` images and ``patch`` labels on ``device`` (it may reuse this patch's
        tensors: apply once)."""
        x = self.images.to(device, non_blocking=True)
        y = self.labels.to(device, non_blocking=True)
        if self.matrix is not None:
            x, y = resample(x, y, self.centre, patch, self.matrix, pad_value)
        if self.intensity is not None:
            x = apply_intensity(x, self.intensity)
        if self.flips:
            x, y = x.flip([a + 1 for a in self.flips]), y.flip(list(self.flips))
        return x, y


@dataclass(frozen=True, eq=False)  # holds tensors: compare their values, not the plans
class PlannedBatch:
    """Patches drawn but not yet augmented: :meth:`apply` runs their transforms where the batch is moved."""

    patches: tuple[PlannedPatch, ...]
    patch: tuple[int, int, int]
    pad_value: float = 0.0

    def pin_memory(self) -> PlannedBatch:
        """The batch in page-locked memory (what the prefetch thread hands a GPU run)."""
        return replace(self, patches=tuple(p.pin_memory() for p in self.patches))

    def apply(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Move to ``device`` and augment there: ``(B x C x P^3 float32, B x P^3 int64)`` (apply once)."""
        pairs = [p.apply(device, self.patch, self.pad_value) for p in self.patches]
        return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs]).long()
