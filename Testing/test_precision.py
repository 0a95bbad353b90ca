"""Reduced-precision inference: which dtype each setting picks, and bf16 labels agree with fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cldl.data.phantoms import brats_phantom
from cldl.inference.precision import autocast_dtype, cpu_has_native_bf16
from cldl.inference.predictor import Predictor
from cldl.registry import PHANTOM_MODEL, resolve_model


def test_precision_settings() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", cpu) is (torch.bfloat16 if cpu_has_native_bf16() else None)
    with pytest.raises(ValueError, match="fp16"):
        autocast_dtype("fp16", cpu)


def test_bf16_inference_agrees_with_fp32() -> None:
    """On the bundled phantom model, bf16 labels equal fp32 labels on >= 99.5 % of head voxels."""
    case = brats_phantom(20_001, shape=(96, 96, 96))
    path = resolve_model(PHANTOM_MODEL)
    fp32 = Predictor(path, device="cpu", precision="fp32").predict(case.images)
    bf16 = Predictor(path, device="cpu", precision="bf16").predict(case.images)
    head = case.images.max(axis=0) > 0
    assert (fp32.classes == bf16.classes)[head].mean() >= 0.995
    assert np.abs(fp32.uncertainty.astype(np.float32) - bf16.uncertainty.astype(np.float32)).mean() < 0.01
