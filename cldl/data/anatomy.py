"""Domain-randomised brain-tumour cases built from real anatomy (SynthSeg-style), with exact label distributions.

The anatomy is a real brain atlas: the MNI ICBM152 2009a (nonlinear symmetric) T1 template with its grey- and
white-matter probability maps, read from the installed ``nilearn`` package (``pip install 'cldl[anatomy]'``;
nothing is downloaded). CSF is brain minus grey minus white matter. Colin27 (Debian ``mricron-data``) is reserved
for testing (:func:`anatomy_from_t1` builds test anatomy from any skull-stripped T1); never train or tune on it.

One case (:func:`anatomy_case`), all drawn from the case's seed:

1. **A different brain**: a random affine (rotation, per-axis scaling, translation, left/right flip) and a smooth
   elastic deformation map the BraTS grid (240 x 240 x 155, 1 mm, LPS) into the atlas.
2. **A glioma**: centred mostly in white matter; an irregular bulk (1-80 ml) with a necrotic core, an enhancing rim
   of variable thickness and completeness, non-enhancing tumour where the rim is missing, no enhancement at all in
   LGG-like cases, sometimes a second focus. **Mass effect** pushes the surrounding anatomy (and the ventricles)
   away from the bulk, volume-preserving. **Edema** is the front of a diffusion from the bulk with diffusivity
   about 10x higher in white than in grey matter and none in CSF, so it follows white matter and stops at the cortex.
3. **Contrasts**: per tissue (CSF, GM, WM, necrosis, non-enhancing tumour, edema, enhancing tumour) and per
   modality, a mean drawn around realistic relative orderings (:data:`BASE_CONTRAST`) with wide jitter, or fully
   at random in a share of cases (domain randomisation), and a within-tissue texture.
4. **Acquisition**: skull-stripping edge errors, bias field, blur and thick-slice resolution loss, Rician noise,
   gamma, and int16 storage scaled like a scanner's (BraTS files are int16).

Why not TorchIO or MONAI transforms: they deform each image on its own, whereas here one coordinate mapping (affine,
elastic field and mass effect composed) carries the anatomy, the tumour and so the exact class fractions together,
and every draw comes from one numpy Generator per seed, so a case does not change with a library's version. The
acquisition steps are a few lines each on torch tensors. The nnU-Net-style patch augmentation of training is
:mod:`cldl.data.augment`.

Labels are the argmax of the exact per-class partial-volume fractions, which are kept as
:attr:`~cldl.data.phantoms.PhantomCase.fractions` (the true label distribution). Heavy array work runs in torch on
the CPU; the random draws come from numpy Generators seeded by the case's seed, so a seed always gives the same case.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config_files import check_known_keys
from ..files.geometry import Geometry
from ..tasks import BRATS
from .phantoms import PhantomCase

ATLAS_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
TISSUES = ("csf", "gm", "wm", "necrosis", "non_enhancing", "edema", "enhancing")
# Relative mean intensity of each tissue (columns, TISSUES order) per modality (rows, BraTS order), before jitter.
# FLAIR: CSF dark, edema and non-enhancing tumour bright, GM > WM; T1: WM > GM > CSF, tumour hypointense;
# T1ce: as T1 but the enhancing rim bright; T2: CSF brightest, edema and necrosis bright, WM darkest.
BASE_CONTRAST = np.array(
    [
        # csf   gm    wm    ncr   net   ed    et
        [0.30, 1.10, 0.85, 0.70, 1.35, 1.55, 1.30],  # flair
        [0.35, 0.70, 1.00, 0.40, 0.60, 0.65, 0.70],  # t1
        [0.35, 0.70, 1.00, 0.40, 0.60, 0.65, 1.65],  # t1ce
        [2.00, 1.25, 0.80, 1.90, 1.50, 1.65, 1.30],  # t2
    ],
    dtype=np.float64,
)
RANDOM_CONTRAST_RANGE = (0.05, 2.0)
# What makes a tumour visible on every real scanner, as ratios (modality, tissue, other tissues, minimum ratio):
# a realistic draw whose jitter breaks one (an "enhancing" rim that does not enhance, edema as dark as white matter
# on FLAIR) is drawn again. Fully random contrasts (domain randomisation) are exempt.
VISIBILITY_RULES = (
    (0, "edema", ("gm", "wm"), 1.2),  # FLAIR: edema brighter than parenchyma
    (0, "non_enhancing", ("gm", "wm"), 1.1),  # FLAIR: non-enhancing tumour bright
    (0, "wm", ("csf",), 1.6),  # FLAIR: CSF suppressed
    (1, "wm", ("necrosis", "edema", "gm"), 1.15),  # T1: white matter brighter than tumour, edema and grey matter
    (2, "enhancing", ("gm", "wm"), 1.3),  # T1ce: the enhancing tumour enhances
    (2, "wm", ("necrosis",), 1.3),  # T1ce: necrosis dark
    (3, "edema", ("gm", "wm"), 1.2),  # T2: edema bright
    (3, "csf", ("gm", "wm"), 1.3),  # T2: CSF brightest
)


@dataclass(frozen=True)
class AnatomyConfig:
    """The generator's knobs (all ranges are ``[low, high]``); the defaults make the bundled model's training data."""

    shape: tuple[int, int, int] = (155, 240, 240)  # z, y, x voxels (BraTS grid)
    spacing: float = 1.0  # mm, isotropic
    rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.80, 1.02)
    shift_mm: float = 6.0
    elastic_mm: tuple[float, float] = (0.0, 3.0)
    tumour_ml: tuple[float, float] = (1.0, 80.0)  # tumour core (TC) volume, drawn log-uniformly
    rim_mm: tuple[float, float] = (1.5, 8.0)  # enhancing rim thickness
    rim_completeness: tuple[float, float] = (0.5, 1.0)
    p_lgg: float = 0.25  # no enhancement
    p_solid: float = 0.2  # no necrotic core
    p_multifocal: float = 0.15
    edema_mm: tuple[float, float] = (2.0, 35.0)  # reach of the edema front beyond the bulk
    mass_effect: tuple[float, float] = (0.3, 0.9)  # displaced volume as a fraction of the core's radius
    p_random_contrast: float = 0.1
    p_healthy: float = 0.1  # a brain with no tumour (no mass effect, all background)
    contrast_jitter: tuple[float, float] = (0.08, 0.25)  # log-sd of the realistic contrasts, drawn per case
    texture: tuple[float, float] = (0.02, 0.10)
    noise: tuple[float, float] = (0.01, 0.06)  # Rician noise sd relative to the brain's mean intensity
    bias: tuple[float, float] = (0.0, 0.35)
    blur_mm: tuple[float, float] = (0.0, 1.0)
    p_thick_slices: float = 0.3
    p_gamma: float = 0.3
    p_strip_error: float = 0.5

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnatomyConfig:
        """Build from a mapping (lists become tuples), naming unknown keys."""
        check_known_keys(data, sorted(f.name for f in fields(cls)), "anatomy generator")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (recorded with a run)."""
        return asdict(self)


REALISTIC = AnatomyConfig(
    p_random_contrast=0.0, p_healthy=0.0, p_strip_error=0.0, elastic_mm=(0.0, 1.0), rotation_deg=5.0, scale=(0.95, 1.05)
)
"""A scan as it comes from a BraTS-style pipeline: realistic contrasts only, a clean skull strip, mild deformation.
Used for the demo case and for test cases on another brain (Colin27); training uses the wider defaults."""


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Tissue maps on a 1 mm grid in LPS array order (z: inferior->superior, y: anterior->posterior, x: right->left)."""

    name: str
    brain: np.ndarray  # soft brain mask 0..1
    gm: np.ndarray
    wm: np.ndarray
    t1: np.ndarray | None = None  # a real T1 (0..1) to use as the T1 contrast of healthy tissue, if given

    def tensor(self) -> torch.Tensor:
        """``(1, 3, z, y, x)`` float32 stack of brain, GM and WM for sampling."""
        return torch.from_numpy(np.stack([self.brain, self.gm, self.wm]).astype(np.float32))[None]


def atlas_folder() -> Path:
    """Folder of the MNI152 files inside the installed ``nilearn`` package."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ImportError(
            "the anatomy-based generator reads the MNI152 atlas shipped in the nilearn package: "
            "pip install 'cldl[anatomy]' (or pip install nilearn)"
        )
    folder = Path(spec.origin).parent / "datasets" / "data"
    missing = [name for name in ATLAS_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: the nilearn package lacks {missing}")
    return folder


def _ras_to_lps_zyx(data: np.ndarray) -> np.ndarray:
    """A nibabel array (i: left->right, j: posterior->anterior, k: up) in LPS array order (z, y, x)."""
    return np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])


@functools.lru_cache(maxsize=1)
def mni152_anatomy() -> Anatomy:
    """The MNI ICBM152 2009a atlas: brain = the (skull-stripped) template's support, GM and WM probabilities."""
    import nibabel as nib

    folder = atlas_folder()
    maps = {}
    for key, name in ATLAS_FILES.items():
        image = nib.load(folder / name)
        if not np.allclose(image.affine[:3, :3], np.eye(3)):
            raise ValueError(f"{name}: expected a 1 mm RAS grid, got the affine {image.affine.tolist()}")
        maps[key] = _ras_to_lps_zyx(np.asarray(image.dataobj, dtype=np.float32) / 255.0)
    brain = _smooth_mask(maps["t1"] > 0)
    gm = np.minimum(maps["gm"], brain)
    wm = np.minimum(maps["wm"], brain - gm)
    return Anatomy("mni152_2009a", brain, gm, wm)


def _smooth_mask(mask: np.ndarray) -> np.ndarray:
    """A binary mask with a one-voxel soft edge (partial volume)."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.avg_pool3d(m, 3, stride=1, padding=1)[0, 0].numpy()


def anatomy_from_t1(t1_zyx: np.ndarray, brain: np.ndarray, name: str, iterations: int = 30) -> Anatomy:
    """Test anatomy from a skull-stripped 1 mm T1 (LPS array order).

    Tissue means come from a 3-class Gaussian mixture of the brain's intensities (CSF < GM < WM on T1); each voxel's
    CSF/GM/WM fractions then follow the linear partial-volume model between the two nearest means.
    """
    values = t1_zyx[brain > 0.5].astype(np.float64)
    mu = np.percentile(values, [10, 50, 90])
    sd = np.full(3, values.std() / 4)
    weight = np.full(3, 1 / 3)
    sample = values[:: max(1, values.size // 400_000)]
    for _ in range(iterations):  # EM on a subsample
        like = weight * np.exp(-0.5 * ((sample[:, None] - mu) / sd) ** 2) / sd
        post = like / np.maximum(like.sum(1, keepdims=True), 1e-300)
        weight = post.mean(0)
        mu = (post * sample[:, None]).sum(0) / post.sum(0)
        sd = np.sqrt((post * (sample[:, None] - mu) ** 2).sum(0) / post.sum(0)) + 1e-6
    csf_mu, gm_mu, wm_mu = np.sort(mu)
    x = t1_zyx.astype(np.float32)
    wm = np.clip((x - gm_mu) / (wm_mu - gm_mu), 0, 1)
    gm = np.where(x >= gm_mu, 1 - wm, np.clip((x - csf_mu) / (gm_mu - csf_mu), 0, 1))
    soft = _smooth_mask(brain > 0.5)
    t1 = np.clip(t1_zyx / np.percentile(values, 99.5), 0, 1.5).astype(np.float32)
    return Anatomy(name, soft, (gm * soft).astype(np.float32), (wm * soft).astype(np.float32), t1 * (soft > 0))


def load_t1_anatomy(path: str | Path, name: str | None = None) -> Anatomy:
    """Test anatomy from a skull-stripped T1 NIfTI on an axis-aligned 1 mm grid (e.g. Colin27's ``ch2bet.nii.gz``)."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(path)))  # RAS axis order; exact (no interpolation)
    zooms = image.header.get_zooms()[:3]
    if not np.allclose(zooms, 1.0, atol=0.05):
        raise ValueError(f"{path}: test anatomy needs a 1 mm grid, got voxels of {tuple(float(z) for z in zooms)} mm")
    t1 = _ras_to_lps_zyx(np.asarray(image.dataobj, dtype=np.float32))
    if not (t1 > 0).any():
        raise ValueError(f"{path}: the image is empty")
    return anatomy_from_t1(t1, (t1 > 0).astype(np.float32), name or Path(path).name.split(".")[0])


# ----------------------------------------------------------------------------------------------------------------
# Random fields and resampling (torch, CPU)
# ----------------------------------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], corr_vox: float) -> torch.Tensor:
    """Smooth zero-mean unit-variance random field of ``shape`` with correlation length ``corr_vox`` voxels."""
    coarse = tuple(max(2, math.ceil(n / max(corr_vox, 1.0)) + 1) for n in shape)
    noise = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
    field = F.interpolate(noise, size=shape, mode="trilinear", align_corners=True)[0, 0]
    return (field - field.mean()) / field.std().clamp_min(1e-6)


def _gaussian_blur(volume: torch.Tensor, sigmas: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian blur of a ``(z, y, x)`` tensor with per-axis sigma in voxels (0 leaves an axis alone)."""
    out = volume[None, None]
    for axis, sigma in enumerate(sigmas):
        if sigma < 0.2:
            continue
        radius = max(1, int(math.ceil(3 * sigma)))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = (kernel / kernel.sum()).view([1, 1] + [len(t) if a == axis else 1 for a in range(3)])
        padding = [radius if a == axis else 0 for a in range(3)]
        out = F.conv3d(F.pad(out, [p for p in padding[::-1] for _ in (0, 1)], mode="replicate"), kernel)
    return out[0, 0]


def _sample(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``(1, C, z, y, x)`` at voxel coordinates ``(..., 3)`` (z, y, x); 0 outside."""
    size = torch.tensor(volume.shape[2:], dtype=torch.float32)
    grid = (2 * coords / (size - 1) - 1).flip(-1)  # grid_sample wants x, y, z in [-1, 1]
    out = F.grid_sample(volume, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0]


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation matrix with angles up to ``max_deg`` about each axis."""
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rz = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rx = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


# ----------------------------------------------------------------------------------------------------------------
# The case
# ----------------------------------------------------------------------------------------------------------------


class _Mapping:
    """Output grid (mm, centred) -> atlas voxel coordinates: affine, elastic field, mass effect."""

    def __init__(self, rng: np.random.Generator, config: AnatomyConfig, anatomy: Anatomy) -> None:
        self.config = config
        self.shape = config.shape
        scale = rng.uniform(*config.scale) * rng.uniform(0.95, 1.05, 3)
        flip = np.diag([1.0, 1.0, -1.0 if rng.random() < 0.5 else 1.0])
        self.matrix = _rotation(rng, config.rotation_deg) @ np.diag(1 / scale) @ flip
        support = np.argwhere(anatomy.brain > 0.5)
        self.centre = (support.min(0) + support.max(0)) / 2 + rng.uniform(-1, 1, 3) * config.shift_mm
        extent = np.array(self.shape) * config.spacing
        self.elastic_sd = rng.uniform(*config.elastic_mm)
        ctrl = tuple(int(math.ceil(e / 25.0)) + 2 for e in extent)
        self.elastic = torch.from_numpy(rng.standard_normal((3,) + ctrl).astype(np.float32) * self.elastic_sd)
        self.mass: tuple[np.ndarray, float, float] | None = None

    def output_mm(self, box: tuple[slice, ...], stride: int = 1) -> torch.Tensor:
        """Output positions (mm, relative to the grid centre) of a box, ``(z, y, x, 3)``."""
        axes = [
            (torch.arange(b.start, b.stop, stride, dtype=torch.float32) - (n - 1) / 2) * self.config.spacing
            for b, n in zip(box, self.shape)
        ]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)

    def to_atlas(self, mm: torch.Tensor, with_mass: bool = True) -> torch.Tensor:
        """Atlas voxel coordinates of output positions ``(..., 3)``."""
        extent = torch.tensor(self.shape, dtype=torch.float32) * self.config.spacing
        ctrl_shape = torch.tensor(self.elastic.shape[1:], dtype=torch.float32)
        ctrl = (mm / extent + 0.5) * (ctrl_shape - 3) + 1  # control-grid coordinates
        disp = _sample(self.elastic[None], ctrl).permute(1, 2, 3, 0) if mm.dim() == 4 else 0.0
        matrix = torch.from_numpy(self.matrix.astype(np.float32))
        atlas = (mm + disp) @ matrix.T + torch.from_numpy(self.centre.astype(np.float32))
        if with_mass and self.mass is not None:
            centre, radius, reach = self.mass
            q = atlas - torch.from_numpy(centre.astype(np.float32))
            r = q.norm(dim=-1, keepdim=True).clamp_min(1e-3)
            pushed = radius**3 * torch.exp(-(((r - radius).clamp_min(0) / reach) ** 2))
            s = (r**3 - pushed).clamp_min(0) ** (1 / 3)
            atlas = torch.from_numpy(centre.astype(np.float32)) + q * (s / r)
        return atlas


def _tumour_focus(
    rng: np.random.Generator, mm: torch.Tensor, centre: np.ndarray, radius: float, config: AnatomyConfig, lgg: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bulk, necrosis and enhancing-tumour fractions of one focus at the positions ``mm``."""
    rotation = _rotation(rng, 180.0)
    radii = radius * rng.uniform(0.75, 1.3, 3)
    radii *= radius / np.prod(radii) ** (1 / 3)  # keep the volume
    q = (mm - torch.from_numpy(centre.astype(np.float32))) @ torch.from_numpy((rotation / radii).T.astype(np.float32))
    shape = mm.shape[:3]
    vox = radius / config.spacing
    lobes = _smooth_field(rng, shape, max(3.0, 0.5 * vox))
    detail = _smooth_field(rng, shape, max(2.0, 0.2 * vox))
    r = q.norm(dim=-1) / (1 + rng.uniform(0.08, 0.25) * lobes + 0.05 * detail).clamp_min(0.3)
    w = 0.5 * config.spacing / radius  # partial-volume width: half a voxel
    bulk = torch.sigmoid(-(r - 1) / w)
    necrosis = torch.zeros_like(bulk)
    rim = rng.uniform(*config.rim_mm)
    if rng.random() >= config.p_solid and radius > rim + 2:
        inner = 1 - rim / radius
        rim_noise = _smooth_field(rng, shape, max(2.0, 0.3 * vox))
        necrosis = torch.sigmoid(-(r - inner * (1 + 0.08 * rim_noise)) / w) * bulk
    shell = bulk - necrosis
    if lgg:
        enhancing = torch.zeros_like(bulk)
    else:
        completeness = rng.uniform(*config.rim_completeness)
        field = _smooth_field(rng, shape, max(3.0, 0.6 * vox))
        threshold = float(torch.quantile(field.flatten()[::97], 1 - completeness)) if completeness < 1 else -1e9
        enhancing = shell * torch.sigmoid((field - threshold) / 0.15)
    return bulk, necrosis, enhancing


def _diffuse(
    source: torch.Tensor, diffusivity: torch.Tensor, steps: int, dt: float = 0.15, stride: int = 3
) -> torch.Tensor:
    """Concentration after ``steps`` explicit diffusion steps on a grid ``stride`` times coarser (source held at 1)."""
    pool = functools.partial(F.avg_pool3d, kernel_size=stride, stride=stride, ceil_mode=True)
    s = pool(source[None, None])[0, 0] > 0.5
    d = pool(diffusivity[None, None])[0, 0]
    c = s.float()
    faces = [(d + d.roll(1, a)) / 2 for a in range(3)]
    for a, f in enumerate(faces):  # no flux through the box walls
        index = [slice(None)] * 3
        index[a] = 0
        f[tuple(index)] = 0
    for _ in range(steps):
        flux = torch.zeros_like(c)
        for a, f in enumerate(faces):
            g = f * (c - c.roll(1, a))
            flux -= g
            flux += g.roll(-1, a)
        c = torch.where(s, torch.ones_like(c), c + dt * flux)
    up = F.interpolate(c[None, None], scale_factor=stride, mode="trilinear", align_corners=False)[0, 0]
    return up[: source.shape[0], : source.shape[1], : source.shape[2]]


def _contrasts(rng: np.random.Generator, config: AnatomyConfig) -> tuple[np.ndarray, bool]:
    """Mean intensity per modality and tissue ``(4, 7)``; True when fully random (domain randomisation)."""
    if rng.random() < config.p_random_contrast:
        return rng.uniform(*RANDOM_CONTRAST_RANGE, BASE_CONTRAST.shape), True
    jitter = rng.uniform(*config.contrast_jitter)
    for _ in range(100):
        means = BASE_CONTRAST * np.exp(rng.normal(0.0, jitter, BASE_CONTRAST.shape))
        if visible(means):
            return means, False
        jitter *= 0.95
    return BASE_CONTRAST.copy(), False


def visible(means: np.ndarray) -> bool:
    """True when mean intensities ``(4, 7)`` keep every :data:`VISIBILITY_RULES` ratio."""
    column = {name: k for k, name in enumerate(TISSUES)}
    return all(
        means[m, column[bright]] >= ratio * means[m, column[other]]
        for m, bright, others, ratio in VISIBILITY_RULES
        for other in others
    )


def _brain_box(mapping: _Mapping, anatomy: torch.Tensor, margin: int = 6) -> tuple[tuple[slice, ...], torch.Tensor]:
    """The box of the output grid that holds the warped brain, and the coarse warped maps (stride 4)."""
    full = tuple(slice(0, n) for n in mapping.shape)
    coarse = _sample(anatomy, mapping.to_atlas(mapping.output_mm(full, 4), with_mass=False))
    idx = torch.nonzero(coarse[0] > 0.01)
    if not len(idx):
        raise ValueError("the random transform moved the brain out of the grid")
    lo = (idx.min(0).values * 4 - margin).clamp_min(0)
    hi = idx.max(0).values * 4 + margin + 1
    box = tuple(slice(int(a), min(int(b), n)) for a, b, n in zip(lo, hi, mapping.shape))
    return box, coarse


#: The grid of the compact sample case (``cldl sample --compact``: a :data:`REALISTIC` draw, shipped with the Slicer
#: extension): the BraTS field of view in 1.2 mm voxels, 1.7 times fewer than at 1 mm. A model trained on 1 mm
#: voxels sees the brain at 0.83 of its size (0.79-0.88 with REALISTIC's scale), about the 0.80-1.02 scale range
#: of its training data (``AnatomyConfig.scale``).
COMPACT_GRID = {"shape": (130, 200, 200), "spacing": 1.2}


def anatomy_case(seed: int, config: AnatomyConfig | None = None, anatomy: Anatomy | None = None) -> PhantomCase:
    """One synthetic BraTS case (FLAIR, T1, T1ce, T2; labels 0/1/2/4; int16-valued images) from real anatomy."""
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    config = config or AnatomyConfig()
    anatomy = anatomy or mni152_anatomy()
    rng = np.random.default_rng([int(seed), 20261129])
    with torch.random.fork_rng(devices=[]):
        return _build(rng, int(seed), config, anatomy)


def _build(rng: np.random.Generator, seed: int, config: AnatomyConfig, anatomy: Anatomy) -> PhantomCase:
    """The body of :func:`anatomy_case`."""
    atlas = anatomy.tensor()
    mapping = _Mapping(rng, config, anatomy)
    box, coarse = _brain_box(mapping, atlas)
    centre_mm, radius, healthy = _place_tumour(rng, config, mapping, coarse)

    mm = mapping.output_mm(box)
    maps = _sample(atlas, mapping.to_atlas(mm))  # (3, z, y, x): brain, gm, wm
    brain = maps[0].clamp(0, 1)
    gm = torch.minimum(maps[1].clamp_min(0), brain)
    wm = torch.minimum(maps[2].clamp_min(0), brain - gm)

    bulk, necrosis, enhancing, non_enhancing = _tumour_classes(rng, config, mm, centre_mm, radius, brain, healthy)
    edema = _edema(rng, config, bulk, brain, gm, wm)

    # Tissue fractions: the tumour takes its share of every tissue; edema replaces grey and white matter.
    keep = (1 - bulk / brain.clamp_min(1e-6)).clamp(0, 1)
    parenchyma = ((gm + wm) * keep).clamp_min(1e-6)
    spare = (1 - edema / parenchyma).clamp(0, 1)
    tissues = torch.stack(
        [
            (brain - gm - wm).clamp_min(0) * keep,
            gm * keep * spare,
            wm * keep * spare,
            necrosis,
            non_enhancing,
            edema,
            enhancing,
        ]
    )
    mask, remnant = _strip_mask(rng, config, brain)
    tissues = tissues * torch.minimum(mask, torch.ones_like(mask))
    images = _modalities(rng, config, anatomy, mapping, mm, tissues, remnant, mask)

    # Labels from the exact class fractions (BraTS classes: background, NCR/NET, ED, ET).
    tumour_core = (necrosis + non_enhancing) * mask
    fractions = torch.stack([tumour_core, edema * mask, enhancing * mask])
    fractions = torch.cat([(1 - fractions.sum(0, keepdim=True)).clamp_min(0), fractions])
    return _assemble(seed, config, box, torch.stack(images), fractions)


def _place_tumour(
    rng: np.random.Generator, config: AnatomyConfig, mapping: _Mapping, coarse: torch.Tensor
) -> tuple[np.ndarray, float, bool]:
    """Draw the tumour's centre (mm), core radius (mm) and whether the case is healthy; set the mass effect."""
    # Core volume, centre (mostly in white matter, away from the brain's edge).
    volume_ml = _log_uniform(rng, *config.tumour_ml)
    radius = (3 * volume_ml * 1000 / (4 * math.pi)) ** (1 / 3)
    inside = -F.max_pool3d(-coarse[0:1][None], 5, stride=1, padding=2)[0, 0]  # brain eroded by ~8 mm
    weight = coarse[2] ** 2 if rng.random() < 0.85 else coarse[1] + coarse[2]
    weight = (weight * (inside > 0.95)).flatten().double()
    if float(weight.sum()) <= 0:
        weight = (coarse[0] > 0.5).flatten().double()
    pick = int(rng.choice(weight.numel(), p=(weight / weight.sum()).numpy()))
    zyx = np.array(np.unravel_index(pick, coarse.shape[1:])) * 4
    centre_mm = (zyx - (np.array(mapping.shape) - 1) / 2) * config.spacing
    # the mass effect's centre: the affine image of the tumour centre (a single point skips the elastic field, so
    # the push may be centred up to the elastic amplitude, <= 3 mm, off the tumour's centre; kept: seeds reproduce)
    centre_atlas = mapping.to_atlas(torch.from_numpy(centre_mm.astype(np.float32))[None], with_mass=False)[0]
    mapping.mass = (centre_atlas.numpy(), radius * rng.uniform(*config.mass_effect), rng.uniform(10, 25))
    healthy = config.p_healthy > 0 and rng.random() < config.p_healthy
    if healthy:
        mapping.mass = None
    return centre_mm, radius, healthy


def _tumour_classes(
    rng: np.random.Generator,
    config: AnatomyConfig,
    mm: torch.Tensor,
    centre_mm: np.ndarray,
    radius: float,
    brain: torch.Tensor,
    healthy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fractions of the tumour bulk, necrosis, enhancing and non-enhancing tumour (LGG-like or not, multifocal)."""
    lgg = rng.random() < config.p_lgg
    bulk, necrosis, enhancing = _tumour_focus(rng, mm, centre_mm, radius, config, lgg)
    if rng.random() < config.p_multifocal:
        direction = rng.normal(size=3)
        offset = direction / np.linalg.norm(direction) * (radius + rng.uniform(8, 25))
        b2, n2, e2 = _tumour_focus(rng, mm, centre_mm + offset, radius * rng.uniform(0.3, 0.6), config, lgg)
        bulk, necrosis, enhancing = torch.maximum(bulk, b2), torch.maximum(necrosis, n2), torch.maximum(enhancing, e2)
    bulk = torch.minimum(bulk, brain) * (not healthy)
    necrosis = torch.minimum(necrosis, bulk)
    enhancing = torch.minimum(enhancing, bulk - necrosis)
    return bulk, necrosis, enhancing, bulk - necrosis - enhancing


def _edema(
    rng: np.random.Generator,
    config: AnatomyConfig,
    bulk: torch.Tensor,
    brain: torch.Tensor,
    gm: torch.Tensor,
    wm: torch.Tensor,
) -> torch.Tensor:
    """Edema: the front of a diffusion from the bulk, fast in WM, slow in GM, none in CSF or outside the brain."""
    reach = rng.uniform(*config.edema_mm)
    steps = int(min(400, (reach / 3.0) ** 2 / (2 * 0.15) * 1.5))
    concentration = _diffuse((bulk > 0.5).float(), wm + 0.1 * gm, steps)
    threshold = rng.uniform(0.08, 0.3)
    healthy_tissue = (gm + wm) * (1 - bulk / brain.clamp_min(1e-6))
    floor = math.exp(-threshold / 0.03) / (1 + math.exp(-threshold / 0.03))  # the front's value far away: none
    front = ((torch.sigmoid((concentration - threshold) / 0.03) - floor) / (1 - floor)).clamp_min(0)
    edema = front * healthy_tissue
    return torch.minimum(edema, brain - bulk)


def _strip_mask(
    rng: np.random.Generator, config: AnatomyConfig, brain: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The skull-strip mask (its edge moved in or out by a few mm in some cases) and the dura/CSF remnant it keeps."""
    mask = (brain > 0.5).float()
    if rng.random() < config.p_strip_error:
        smooth = _gaussian_blur(brain, (2.0, 2.0, 2.0))
        level = 0.5 + 0.2 * _smooth_field(rng, tuple(brain.shape), 15.0 / config.spacing)
        mask = torch.sigmoid((smooth - level.clamp(0.1, 0.9)) / 0.05)
        remnant = (mask - brain).clamp_min(0) * (mask > 0.5)  # outside the brain, inside the mask: dura/CSF
    else:
        remnant = torch.zeros_like(brain)
    return mask, remnant


def _modalities(
    rng: np.random.Generator,
    config: AnatomyConfig,
    anatomy: Anatomy,
    mapping: _Mapping,
    mm: torch.Tensor,
    tissues: torch.Tensor,
    remnant: torch.Tensor,
    mask: torch.Tensor,
) -> list[torch.Tensor]:
    """The four acquired modalities: contrasts and texture per tissue, the real T1 where there is one, acquisition."""
    means, random_contrast = _contrasts(rng, config)
    texture_sd = rng.uniform(*config.texture, size=(len(TISSUES),))
    shape = tuple(mask.shape)
    textures = [_smooth_field(rng, shape, rng.uniform(1.0, 3.0)) for _ in range(3)]
    remnant_level = rng.uniform(0.1, 1.5, 4)
    images = []
    for m, name in enumerate(BRATS.modalities):
        image = torch.zeros_like(mask)
        for k in range(len(TISSUES)):
            tex = 1 + texture_sd[k] * textures[(k + m) % 3]
            image += tissues[k] * float(means[m, k]) * tex
        if name == "t1" and anatomy.t1 is not None and not random_contrast:
            real = _sample(torch.from_numpy(anatomy.t1)[None, None], mapping.to_atlas(mm))[0]
            healthy = tissues[:3].sum(0)
            # the real T1 replaces the synthetic healthy tissue; the tumour and edema terms stay
            synthetic = (tissues[:3] * torch.tensor(means[m, :3], dtype=torch.float32).view(3, 1, 1, 1)).sum(0)
            image = image - synthetic + healthy * real * float(means[m, 2])
        image += remnant * float(remnant_level[m])
        images.append(_acquire(rng, image, mask, config))
    return images


def _acquire(rng: np.random.Generator, image: torch.Tensor, mask: torch.Tensor, config: AnatomyConfig) -> torch.Tensor:
    """Bias field, blur, thick slices, Rician noise, gamma and int16 scaling of one modality (0 outside the mask)."""
    shape = tuple(image.shape)
    bias = rng.uniform(*config.bias)
    image = image * torch.exp(bias * _smooth_field(rng, shape, 60.0 / config.spacing))
    image = _gaussian_blur(image, tuple(rng.uniform(*config.blur_mm, 3) / config.spacing))
    if rng.random() < config.p_thick_slices:
        axis, factor = int(rng.integers(3)), int(rng.integers(2, 6))
        kernel = [factor if a == axis else 1 for a in range(3)]
        low = F.avg_pool3d(image[None, None], kernel, stride=kernel, ceil_mode=True)
        image = F.interpolate(low, scale_factor=kernel, mode="trilinear", align_corners=False)[0, 0]
        image = image[: shape[0], : shape[1], : shape[2]]
    inside = mask > 0.5
    level = float(image[inside].mean()) if bool(inside.any()) else 1.0
    sd = rng.uniform(*config.noise) * level
    noise = torch.from_numpy(rng.standard_normal((2,) + shape).astype(np.float32)) * sd
    image = torch.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)
    if rng.random() < config.p_gamma:
        top = float(torch.quantile(image[inside][::31], 0.995)) if bool(inside.any()) else 1.0
        image = (image / top).clamp_min(0) ** rng.uniform(0.7, 1.5) * top
    image = image * (mask > 0.5)  # skull stripping cuts: exactly 0 outside the mask, as in BraTS
    top = float(torch.quantile(image[inside][::31], 0.995)) if bool(inside.any()) else 1.0
    return torch.round(image * (rng.uniform(400, 3000) / max(top, 1e-6))).clamp(0, 32767)


def _assemble(
    seed: int, config: AnatomyConfig, box: tuple[slice, ...], images: torch.Tensor, fractions: torch.Tensor
) -> PhantomCase:
    """Paste the box into the full grid and build the case."""
    full_images = np.zeros((4,) + tuple(config.shape), dtype=np.float32)
    full_fractions = np.zeros((4,) + tuple(config.shape), dtype=np.float32)
    full_fractions[0] = 1
    full_images[(slice(None),) + box] = images.numpy()
    full_fractions[(slice(None),) + box] = (fractions / fractions.sum(0, keepdim=True)).numpy()
    lut = np.asarray(BRATS.label_values, dtype=np.uint8)
    labels = lut[np.argmax(full_fractions, axis=0)]
    extent = np.array(config.shape, dtype=float) * config.spacing
    origin_zyx = -(extent - config.spacing) / 2
    geometry = Geometry(
        size=tuple(int(n) for n in config.shape[::-1]),
        spacing=(config.spacing,) * 3,
        origin=tuple(float(o) for o in origin_zyx[::-1]),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    return PhantomCase(
        case_id=f"anatomy_{seed:05d}",
        images=full_images,
        labels=labels,
        geometry=geometry,
        modalities=BRATS.modalities,
        fractions=full_fractions,
    )
