"""Rigid co-registration of MRI sequences of one head (SimpleITK): 6 degrees of freedom, Mattes mutual
information, three resolution levels, N4 bias-field correction for the metric only.

Each image is first resampled onto a coarse isotropic working grid in its own frame (``WORK_SPACING_MM``; a 1 mm
T1 and a 4 mm-thick FLAIR alike) and bias-corrected there with N4; the registration then runs on that grid with
shrink factors 4, 2, 1 (8, 4 and 2 mm), starting from the images' intensity centres of mass (moments). The
corrected images serve only the metric: the transform found is applied to the original intensities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

WORK_SPACING_MM = 2.0
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_MM = (4.0, 2.0, 0.0)
HISTOGRAM_BINS = 32
SAMPLING_FRACTION = 0.1
N4_SHRINK = 3
HEAD_THRESHOLD = 0.1
N4_ITERATIONS = [20, 20, 10]
MAX_ROTATION_DEG = 45.0
"""A rotation beyond this between two sequences of one sitting is not head motion: the registration failed."""
MAX_TRANSLATION_MM = 60.0
"""Likewise for the translation (at the reference image's centre)."""
MIN_SIMILARITY = 0.93
"""The lowest :func:`head_similarity` accepted for two sequences of one head: measured 0.96-0.99 for sequences of one
head (Testing/test_prepare.py, docs/prepare.md), 0.87 for Colin27 registered to another (synthetic) head."""


class RegistrationError(RuntimeError):
    """A sequence could not be registered to the reference."""


@dataclass(frozen=True)
class RigidResult:
    """The transform mapping reference points to moving-image points, and how the registration went."""

    transform: sitk.Euler3DTransform
    metric: float  # final Mattes mutual information (negative: lower is better)
    similarity: float  # head_similarity after registration (1: the heads' outlines agree perfectly)
    rotation_deg: float
    translation_mm: tuple[float, float, float]
    iterations: int


def _working_image(image: sitk.Image, spacing: float = WORK_SPACING_MM) -> sitk.Image:
    """``image`` resampled (linearly, after smoothing) onto an isotropic grid of ``spacing`` mm in its own frame."""
    old_spacing = np.asarray(image.GetSpacing())
    size = np.asarray(image.GetSize())
    new_size = [max(1, int(math.ceil(n * s / spacing))) for n, s in zip(size, old_spacing)]
    sigmas = [max(0.0, (spacing**2 - s**2)) ** 0.5 / 2.355 for s in old_spacing]
    smoothed = image
    if max(sigmas) > 0:
        smoothed = sitk.SmoothingRecursiveGaussian(image, [max(s, 1e-3) for s in sigmas])
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    corner = np.asarray(image.GetOrigin()) - direction @ (old_spacing / 2)  # outer corner of the first voxel
    origin = corner + direction @ np.full(3, spacing / 2)
    return sitk.Resample(
        smoothed,
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        [spacing] * 3,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def head_mask(image: sitk.Image) -> sitk.Image:
    """The head: voxels above ``HEAD_THRESHOLD`` of the image's 99th intensity percentile (scalp and brain in every
    MRI contrast, not the air), the largest component, closed and with its holes (the dark skull) filled."""
    values = sitk.GetArrayViewFromImage(image)
    threshold = HEAD_THRESHOLD * float(np.percentile(values[values > 0], 99)) if (values > 0).any() else 0.0
    above = sitk.BinaryThreshold(image, threshold, float("inf"), 1, 0) if threshold > 0 else image > 0
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(above), sortByObjectSize=True) == 1
    return sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(largest, [3, 3, 3]))


def bias_corrected(image: sitk.Image, mask: sitk.Image | None = None) -> sitk.Image:
    """N4 bias-field correction of a (coarse) image inside its head mask, the field fitted at half resolution; for
    the registration metric only."""
    mask = head_mask(image) if mask is None else mask
    positive = sitk.Maximum(image, 1e-3)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(N4_ITERATIONS)
    n4.Execute(sitk.Shrink(positive, [N4_SHRINK] * 3), sitk.Shrink(mask, [N4_SHRINK] * 3))
    field = sitk.Exp(sitk.Cast(n4.GetLogBiasFieldAsImage(positive), sitk.sitkFloat32))
    return sitk.Cast(positive / field, sitk.sitkFloat32)


@dataclass(frozen=True)
class MetricImage:
    """A sequence ready for the registration metric: coarse, bias-corrected, with its head mask."""

    image: sitk.Image
    mask: sitk.Image


def metric_image(image: sitk.Image) -> MetricImage:
    """The coarse bias-corrected copy of ``image`` that the registration compares."""
    coarse = _working_image(sitk.Cast(image, sitk.sitkFloat32))
    mask = head_mask(coarse)
    return MetricImage(bias_corrected(coarse, mask), mask)


def head_similarity(fixed: MetricImage, moving: MetricImage, transform: sitk.Transform) -> float:
    """How well two heads' outlines agree under ``transform``: Dice of the head masks inside the part of the fixed
    grid that the moving image covers (1: identical outlines; two different heads or a failed registration give
    clearly less)."""
    warped = sitk.Resample(moving.mask, fixed.mask, transform, sitk.sitkNearestNeighbor, 0)
    coverage = sitk.Resample(
        sitk.Image(moving.mask.GetSize(), sitk.sitkUInt8) + 1, fixed.mask, transform, sitk.sitkNearestNeighbor, 0
    )
    a = sitk.GetArrayViewFromImage(fixed.mask).astype(bool)
    b = sitk.GetArrayViewFromImage(warped).astype(bool)
    inside = sitk.GetArrayViewFromImage(coverage).astype(bool)
    a, b = a & inside, b & inside
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 0.0


def rotation_angle_deg(transform: sitk.Euler3DTransform) -> float:
    """The total rotation angle of a rigid transform, in degrees."""
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    return math.degrees(math.acos(float(np.clip((np.trace(matrix) - 1) / 2, -1.0, 1.0))))


def register_rigid(
    fixed: MetricImage,
    moving: MetricImage,
    name: str = "moving",
    cancel: Callable[[], bool] | None = None,
    seed: int = 0,
) -> RigidResult:
    """Register ``moving`` to ``fixed`` (both from :func:`metric_image`); RegistrationError when the result is not a
    plausible head motion between two sequences of one head."""
    initial = sitk.CenteredTransformInitializer(
        sitk.Cast(fixed.mask, sitk.sitkFloat32) * fixed.image,
        sitk.Cast(moving.mask, sitk.sitkFloat32) * moving.image,
        sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_FRACTION, seed)
    method.SetMetricFixedMask(sitk.BinaryDilate(fixed.mask, [2, 2, 2]))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    iterations = [0]

    def count() -> None:
        iterations[0] += 1
        if cancel is not None and cancel():
            method.StopRegistration()

    method.AddCommand(sitk.sitkIterationEvent, count)
    try:
        found = method.Execute(fixed.image, moving.image)
    except RuntimeError as exc:  # e.g. "All samples map outside moving image buffer"
        raise RegistrationError(f"{name}: registration failed ({str(exc).strip().splitlines()[-1]})") from None
    transform = sitk.Euler3DTransform(sitk.CompositeTransform(found).GetNthTransform(0))
    angle = rotation_angle_deg(transform)
    centre = np.asarray(transform.GetCenter())
    translation = tuple(float(v) for v in np.asarray(transform.TransformPoint(centre.tolist())) - centre)
    similarity = head_similarity(fixed, moving, transform)
    metric = float(method.GetMetricValue())
    if angle > MAX_ROTATION_DEG or float(np.linalg.norm(translation)) > MAX_TRANSLATION_MM:
        raise RegistrationError(
            f"{name}: registration found a motion of {angle:.0f} degrees and {np.linalg.norm(translation):.0f} mm, "
            "far beyond head motion between sequences; is it the same patient and the same session?"
        )
    if similarity < MIN_SIMILARITY:
        raise RegistrationError(
            f"{name}: after registration the head outlines agree poorly (Dice {similarity:.2f} < {MIN_SIMILARITY}); "
            "is it the same patient? (registration failed)"
        )
    return RigidResult(transform, metric, similarity, angle, translation, iterations[0])
