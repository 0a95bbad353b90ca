"""Kept for old import paths (``from cldl.model import UNetLDL``): the network lives in :mod:`cldl.method.network`."""

from .method.network import (
    ENTROPY_EPS,
    PPM_NORMS,
    ConvBlock,
    ModelConfig,
    ModelOutput,
    PriorPerceivingModule,
    UNetLDL,
    count_parameters,
    prior_entropy,
)

__all__ = [
    "ENTROPY_EPS",
    "PPM_NORMS",
    "ConvBlock",
    "ModelConfig",
    "ModelOutput",
    "PriorPerceivingModule",
    "UNetLDL",
    "count_parameters",
    "prior_entropy",
]
