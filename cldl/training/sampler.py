"""Seeded random training patches (:class:`PatchSampler`), foreground-centred at a set rate and augmented."""

from __future__ import annotations

import numpy as np
import torch

from ..data.augment import PlannedBatch, PlannedPatch, draw_intensity, source_region, spatial_matrix
from ..data.augment import preset as augment_preset
from ..data.preprocess import Preprocessed


class PatchSampler:
    """Seeded random patches with optional foreground-centred crops and augmentation (:mod:`cldl.data.augment`).

    ``rank`` > 0 (another process of a multi-process run) draws its own stream from ``(seed, rank)``; rank 0 draws
    the single-process stream, so a one-process run is unchanged. ``deferred``: :meth:`sample` returns the drawn
    batch unaugmented (:class:`cldl.data.augment.PlannedBatch`) for the training device to augment; the random
    draws, and so the patches, are the same either way.
    """

    def __init__(
        self,
        cases: list[Preprocessed],
        patch: tuple[int, int, int],
        fg_rate: float,
        flip_prob: float,
        seed: int,
        pad_value: float = 0.0,
        rank: int = 0,
        augment: str = "paper",
        deferred: bool = False,
    ) -> None:
        self.patch = patch
        self.deferred = deferred
        self.fg_rate = fg_rate
        self.augmentation = augment_preset(augment, flip_prob)
        self.pad_value = pad_value
        self.rng = np.random.default_rng(seed if rank == 0 else [seed, rank])
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.foreground: list[np.ndarray] = []
        for case in cases:
            pad = [(0, max(0, p - s)) for s, p in zip(case.labels.shape, patch)]
            images = (
                np.pad(case.images, [(0, 0)] + pad, constant_values=pad_value)
                if any(b for _, b in pad)
                else case.images
            )
            labels = np.pad(case.labels, pad) if any(b for _, b in pad) else case.labels
            self.images.append(images)
            self.labels.append(labels)
            self.foreground.append(np.flatnonzero(labels.ravel()))

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | PlannedBatch:
        """A batch ``(B x C x P^3 float32, B x P^3 int64)``; with ``deferred`` its :class:`PlannedBatch`, whose
        ``apply(device)`` gives the same batch augmented on that device."""
        batch = PlannedBatch(tuple(self._plan() for _ in range(batch_size)), self.patch, self.pad_value)
        return batch if self.deferred else batch.apply()

    def _plan(self) -> PlannedPatch:
        """Draw one patch: case, position, then its augmentation (the order of draws exact resume relies on)."""
        index = int(self.rng.integers(len(self.images)))
        images, labels = self.images[index], self.labels[index]
        shape = labels.shape
        use_fg = self.fg_rate > 0 and len(self.foreground[index]) and self.rng.random() < self.fg_rate
        if use_fg:
            centre = np.unravel_index(self.foreground[index][self.rng.integers(len(self.foreground[index]))], shape)
            start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch, shape)]
        else:
            start = [int(self.rng.integers(s - p + 1)) for s, p in zip(shape, self.patch)]
        aug = self.augmentation
        matrix = spatial_matrix(self.rng, aug) if aug.spatial else None
        centre = None
        if matrix is None:
            region = tuple(slice(a, a + p) for a, p in zip(start, self.patch))
        else:
            centre = np.array(start) + (np.array(self.patch) - 1) / 2
            region = source_region(shape, centre, self.patch, matrix)
            centre = centre - np.array([s.start for s in region])
        intensity = draw_intensity(self.rng, aug, (images.shape[0], *self.patch)) if aug.intensity else None
        flips = tuple(axis for axis in range(3) if self.rng.random() < aug.flip_prob)
        return PlannedPatch(
            torch.from_numpy(np.array(images[(slice(None),) + region], dtype=np.float32)),
            torch.from_numpy(np.array(labels[region])),
            matrix,
            centre,
            intensity,
            flips,
        )
