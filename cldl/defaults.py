"""Every default and choice list the engine and the Slicer modules share, in one torch-free place.

The engine (``infer``, ``curriculum``, ``train``, the commands) and the Slicer parameter nodes read these names, so
that a default changes in one line; ``Testing/test_defaults.py`` checks that every user agrees.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

#: Sliding-window overlap: on held-out phantoms 0.25 matched 0.5 in Dice at ~3.5x fewer windows
#: (``benchmarks/overlap.py``).
OVERLAP = 0.25
#: Curriculum modes of training: ``joint`` (the authors' code) and ``pacing`` (an extension).
CURRICULUM_MODES = ("joint", "pacing")
CURRICULUM = "joint"
#: Built-in task names, in the order a user sees them; ``custom`` means a ``dataset.json`` in the dataset folder.
TASKS = ("brats", "mmwhs_ct", "mmwhs_mr", "binary")
CUSTOM_TASK = "custom"
#: The authors' training recipe.
EPOCHS = 250
ITERS_PER_EPOCH = 250
LEARNING_RATE = 1e-4
PATCH_SIZE = 128
#: Patch sides must be positive multiples of this (four 2x poolings in the network).
PATCH_MULTIPLE = 16
#: The largest image file read, in GB of voxel data as its header promises (BraTS: 0.04, a 512x512x1000 CT: 0.5);
#: ``--max-image-gb`` raises it.
MAX_IMAGE_GB = 2.0
#: The choice lists of the command line and the Slicer modules' combo boxes.
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")  # the network's arithmetic at inference (cldl.inference.precision)
UNCERTAINTY_MAPS = ("entropy", "max_prob")  # normalised entropy, 1 - max probability (cldl.method.distributions)
SKULL_STRIP_CHOICES = ("auto", "yes", "no")  # preparation of raw scans (cldl.prepare)
#: The oldest torch the engine supports.
TORCH_MINIMUM = (2, 1)
TORCH_REQUIREMENT = ">=" + ".".join(str(v) for v in TORCH_MINIMUM)


def check_patch_size(size: int | Sequence[int], name: str = "the patch size") -> list[int]:
    """Three patch sides (an int means a cube); raises ValueError (naming ``name``) unless all are positive multiples
    of :data:`PATCH_MULTIPLE` and the bottleneck keeps more than one voxel (InstanceNorm needs two)."""
    sides = [int(size)] * 3 if isinstance(size, int) else [int(s) for s in size]
    if len(sides) != 3 or any(s <= 0 or s % PATCH_MULTIPLE for s in sides):
        raise ValueError(f"{name} must be three positive multiples of {PATCH_MULTIPLE}, got {size}")
    if math.prod(s // PATCH_MULTIPLE for s in sides) < 2:
        smallest = f"{PATCH_MULTIPLE}x{PATCH_MULTIPLE}x{2 * PATCH_MULTIPLE}"
        raise ValueError(f"{name} {size} leaves one voxel at the bottleneck; use at least {smallest}")
    return sides


def reference_modality(modalities: Sequence[str]) -> str:
    """The sequence preparation registers the others to: T1ce when the model takes it (as the BraTS pipeline), else
    the first input (the single input of MM-WHS)."""
    return "t1ce" if "t1ce" in modalities else modalities[0]


def torch_supported(version: str) -> bool:
    """Whether a torch version string (``2.5.1+cu124``, ``2.10.0a0``) is at least :data:`TORCH_MINIMUM`."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return (int(match.group(1)), int(match.group(2))) >= TORCH_MINIMUM
