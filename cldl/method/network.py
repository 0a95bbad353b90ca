"""UNetLDL: the CLDL network (3D U-Net with region label distribution heads and prior perceiving modules).

Architecture (the paper and the authors' ``UNetLDL``): a "No New-Net" 3D U-Net with 4 poolings and base width 30.
The first ``ldl_stages`` decoder levels (coarsest first) carry a 1x1x1 label-distribution head; with ``use_ppm`` the
head's softmax and its entropy re-weight the decoder feature (PPM) before it is upsampled into the next level.
With the defaults the network has exactly 21,737,806 parameters and computes what the authors' ``UNetLDL``
computes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

ENTROPY_EPS = 1e-3
PPM_NORMS = ("batch", "instance", "group")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of :class:`UNetLDL`; stored in checkpoints."""

    in_channels: int = 4
    num_classes: int = 4
    base_width: int = 30
    ldl_stages: int = 3
    use_ppm: bool = True
    ppm_norm: str = "batch"

    def __post_init__(self) -> None:
        if not 0 <= self.ldl_stages <= 3:
            raise ValueError(f"ldl_stages must be 0..3, got {self.ldl_stages}")
        if self.ppm_norm not in PPM_NORMS:
            raise ValueError(f"ppm_norm must be one of {PPM_NORMS}, got {self.ppm_norm!r}")
        if self.in_channels < 1 or self.num_classes < 2 or self.base_width < 2:
            raise ValueError("in_channels >= 1, num_classes >= 2 and base_width >= 2 are required")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form for checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`, ignoring unknown keys."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class ModelOutput(NamedTuple):
    """Final logits plus, per LDL stage (coarsest first), log-probabilities and entropy maps."""

    logits: torch.Tensor
    stage_log_probs: tuple[torch.Tensor, ...]
    stage_entropy: tuple[torch.Tensor, ...]


def prior_entropy(probs: torch.Tensor, eps: float = ENTROPY_EPS) -> torch.Tensor:
    """Voxel-wise entropy with ``eps`` inside both factors, as the PPM's boundary prior (B x D x H x W)."""
    shifted = probs + eps
    return -(shifted * torch.log(shifted)).sum(dim=1)


class ConvBlock(nn.Sequential):
    """Two (Conv3d 3x3x3 -> InstanceNorm3d(affine) -> LeakyReLU 0.01) layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        layers: list[nn.Module] = []
        for index in range(2):
            layers += [
                nn.Conv3d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1),
                nn.InstanceNorm3d(out_channels, eps=1e-5, affine=True),
                nn.LeakyReLU(0.01, inplace=True),
            ]
        super().__init__(*layers)


def _norm(kind: str, channels: int) -> nn.Module:
    """The PPM normalisation layer."""
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.GroupNorm(num_groups=max(1, min(8, channels // 4)), num_channels=channels)


class PriorPerceivingModule(nn.Module):
    """PPM: ``F * (1 + A(q) + H(q))`` with A a two-layer conv-norm-ReLU map of the class distribution q."""

    def __init__(self, num_classes: int, channels: int, norm: str = "batch") -> None:
        super().__init__()
        middle = channels // 2
        self.distribution_prior = nn.Sequential(
            nn.Conv3d(num_classes, middle, 3, padding=1),
            _norm(norm, middle),
            nn.ReLU(inplace=True),
            nn.Conv3d(middle, channels, 3, padding=1),
            _norm(norm, channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, feature: torch.Tensor, probs: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        """Re-weight ``feature`` by the distribution prior and the entropy (boundary) prior."""
        attention = self.distribution_prior(probs)
        return feature * (1.0 + attention + entropy.unsqueeze(1))


class UNetLDL(nn.Module):
    """The CLDL network; ``ldl_stages=0`` is the plain U-Net baseline, ``use_ppm=False`` drops the PPMs."""

    def __init__(self, config: ModelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        base = config or ModelConfig()
        self.config = ModelConfig(**{**base.to_dict(), **overrides})
        cfg = self.config
        widths = [cfg.base_width * 2**i for i in range(5)]
        self.encoder = nn.ModuleList(
            [ConvBlock(cfg.in_channels, widths[0])] + [ConvBlock(widths[i - 1], widths[i]) for i in range(1, 5)]
        )
        # decoder level j (0 = coarsest) upsamples width[4 - j] and joins the skip of width[3 - j]
        self.decoder = nn.ModuleList([ConvBlock(widths[4 - j] + widths[3 - j], widths[3 - j]) for j in range(4)])
        self.ldl_heads = nn.ModuleList([nn.Conv3d(widths[3 - j], cfg.num_classes, 1) for j in range(cfg.ldl_stages)])
        self.ppms = nn.ModuleList(
            [PriorPerceivingModule(cfg.num_classes, widths[3 - j], cfg.ppm_norm) for j in range(cfg.ldl_stages)]
            if cfg.use_ppm
            else []
        )
        self.seg_head = nn.Conv3d(widths[0], cfg.num_classes, 1)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Run the network on ``B x Cin x D x H x W`` (edges divisible by 16)."""
        if any(s % 16 for s in x.shape[2:]):
            raise ValueError(f"patch edges must be divisible by 16, got {tuple(x.shape[2:])}")
        skips = []
        feature = x
        for level, block in enumerate(self.encoder):
            feature = block(feature if level == 0 else F.max_pool3d(feature, 2))
            skips.append(feature)
        feature = skips.pop()
        log_probs: list[torch.Tensor] = []
        entropies: list[torch.Tensor] = []
        for level, block in enumerate(self.decoder):
            upsampled = F.interpolate(feature, scale_factor=2, mode="trilinear", align_corners=False)
            feature = block(torch.cat([upsampled, skips.pop()], dim=1))
            if level < self.config.ldl_stages:
                stage_logits = self.ldl_heads[level](feature)
                probs = torch.softmax(stage_logits, dim=1)
                entropy = prior_entropy(probs)
                if self.config.use_ppm:
                    feature = self.ppms[level](feature, probs, entropy)
                log_probs.append(torch.log_softmax(stage_logits, dim=1))
                entropies.append(entropy)
        return ModelOutput(self.seg_head(feature), tuple(log_probs), tuple(entropies))


def _init_weights(module: nn.Module) -> None:
    """He (Kaiming-normal, a=0.01) init for every Conv3d with zero bias; norms start at weight 1, bias 0."""
    if isinstance(module, nn.Conv3d):
        nn.init.kaiming_normal_(module.weight, a=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm)) and module.weight is not None:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
