"""Tests of cldl.method.curriculum: region sizes per LDL stage and the joint / pacing stage weights."""

from __future__ import annotations

import pytest

from cldl.method.curriculum import CURRICULUM_MODES, Curriculum, region_sizes


@pytest.mark.parametrize(
    ("stages", "down_scale", "expected"),
    [(3, 2, (8, 4, 2)), (2, 2, (8, 4)), (1, 2, (8,)), (0, 2, ()), (3, 1, (4, 2, 1)), (3, 4, (16, 8, 4))],
)
def test_region_sizes(stages: int, down_scale: int, expected: tuple[int, ...]) -> None:
    """(4s, 2s, s) truncated to the number of LDL stages, coarsest first."""
    assert region_sizes(stages, down_scale) == expected


def test_region_sizes_defaults_and_errors() -> None:
    """Defaults are 3 stages with s = 2; stage counts outside 0..3 raise."""
    assert region_sizes() == (8, 4, 2)
    for bad in (-1, 4):
        with pytest.raises(ValueError):
            region_sizes(bad)


@pytest.mark.parametrize("stages", [0, 1, 2, 3])
@pytest.mark.parametrize("progress", [0.0, 0.3, 5.0, 1e6])
def test_joint_weights_are_one(stages: int, progress: float) -> None:
    """The authors' joint training: every LDL stage and the segmentation weigh 1 from the first iteration."""
    curriculum = Curriculum(ldl_stages=stages)
    assert curriculum.mode == "joint"
    assert curriculum.weights(progress) == ([1.0] * stages, 1.0)


@pytest.mark.parametrize(
    ("progress", "stage_weights", "seg_weight"),
    [
        (0.0, [1.0, 0.0, 0.0], 0.0),
        (1.5, [1.0, 0.5, 0.0], 0.0),
        (3.0, [1.0, 1.0, 0.0], 0.0),
        (4.5, [1.0, 1.0, 0.5], 0.0),
        (6.0, [1.0, 1.0, 1.0], 0.0),
        (7.5, [1.0, 1.0, 1.0], 0.5),
        (9.0, [1.0, 1.0, 1.0], 1.0),
        (50.0, [1.0, 1.0, 1.0], 1.0),
    ],
)
def test_pacing_hand_values(progress: float, stage_weights: list[float], seg_weight: float) -> None:
    """ramp_epochs 9 with 3 LDL stages: each later task ramps linearly over 3 epochs, one after another."""
    weights, seg = Curriculum(ldl_stages=3, mode="pacing", ramp_epochs=9.0).weights(progress)
    assert weights == pytest.approx(stage_weights, abs=1e-12)
    assert seg == pytest.approx(seg_weight, abs=1e-12)


@pytest.mark.parametrize("stages", [1, 2, 3])
@pytest.mark.parametrize("ramp", [0.5, 4.0, 10.0])
def test_pacing_monotone_and_saturating(stages: int, ramp: float) -> None:
    """At 0 only the first LDL stage counts; weights never decrease; all are 1 from ramp_epochs on."""
    curriculum = Curriculum(ldl_stages=stages, mode="pacing", ramp_epochs=ramp)
    weights, seg = curriculum.weights(0.0)
    assert weights == [1.0] + [0.0] * (stages - 1) and seg == 0.0
    previous = [*weights, seg]
    for i in range(1, 401):
        progress = 1.5 * ramp * i / 400
        weights, seg = curriculum.weights(progress)
        current = [*weights, seg]
        assert len(weights) == stages
        assert all(0.0 <= c <= 1.0 for c in current)
        assert all(c >= p for c, p in zip(current, previous)), progress
        if progress >= ramp:
            assert current == [1.0] * (stages + 1)
        else:
            assert seg < 1.0
        previous = current


def test_pacing_single_stage_ramps_segmentation() -> None:
    """With one LDL stage the segmentation ramps in over the whole ramp_epochs."""
    curriculum = Curriculum(ldl_stages=1, mode="pacing", ramp_epochs=4.0)
    assert curriculum.weights(1.0) == ([1.0], 0.25)
    assert curriculum.weights(3.0) == ([1.0], 0.75)


def test_pacing_without_ldl_stages() -> None:
    """No LDL stages: there is nothing to pace, the segmentation weighs 1."""
    assert Curriculum(ldl_stages=0, mode="pacing").weights(0.0) == ([], 1.0)


def test_invalid_curriculum_raises() -> None:
    """Unknown modes raise; pacing needs a positive ramp (joint ignores it)."""
    assert set(CURRICULUM_MODES) == {"joint", "pacing"}
    with pytest.raises(ValueError, match="curriculum mode"):
        Curriculum(mode="anti")
    for ramp in (0.0, -1.0):
        with pytest.raises(ValueError, match="ramp_epochs"):
            Curriculum(mode="pacing", ramp_epochs=ramp)
    assert Curriculum(mode="joint", ramp_epochs=0.0).weights(0.0) == ([1.0, 1.0, 1.0], 1.0)
