"""TCL, the task-oriented curriculum: region sizes per LDL stage and the stage weights over training.

The authors' code trains all stages jointly with weight 1 from the first iteration ("joint", the default).
"pacing" is an extension beyond the paper: the coarsest (easiest) LDL stage starts at full weight and each
harder task (finer LDL stages, then the voxel segmentation) is ramped in linearly, one after another, over the
first ``ramp_epochs`` epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..defaults import CURRICULUM_MODES


def region_sizes(ldl_stages: int = 3, down_scale: int = 2) -> tuple[int, ...]:
    """Region edge per LDL stage, coarsest first: (4s, 2s, s) truncated to ``ldl_stages`` (8, 4, 2 for s = 2)."""
    if not 0 <= ldl_stages <= 3:
        raise ValueError(f"ldl_stages must be 0..3, got {ldl_stages}")
    return tuple(4 * down_scale // 2**i for i in range(ldl_stages))


@dataclass(frozen=True)
class Curriculum:
    """Weights of the LDL stages and of the final segmentation loss as a function of training progress."""

    ldl_stages: int = 3
    mode: str = "joint"
    ramp_epochs: float = 10.0

    def __post_init__(self) -> None:
        if self.mode not in CURRICULUM_MODES:
            raise ValueError(f"curriculum mode must be one of {CURRICULUM_MODES}, got {self.mode!r}")
        if self.mode == "pacing" and self.ramp_epochs <= 0:
            raise ValueError("ramp_epochs must be positive for the pacing curriculum")

    def weights(self, epoch_progress: float) -> tuple[list[float], float]:
        """(LDL stage weights coarsest first, segmentation weight) at ``epoch_progress`` (epochs, fractional)."""
        tasks = self.ldl_stages + 1
        if self.mode == "joint" or tasks == 1:
            return [1.0] * self.ldl_stages, 1.0
        step = self.ramp_epochs / (tasks - 1)
        ramp = [1.0] + [min(1.0, max(0.0, (epoch_progress - (t - 1) * step) / step)) for t in range(1, tasks)]
        return ramp[:-1], ramp[-1]
