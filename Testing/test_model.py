"""Tests of cldl.method.network: parameter counts, shapes, stage outputs, PPM fusion and gradient flow, config, init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cldl.method.network import (
    ENTROPY_EPS,
    ModelConfig,
    PriorPerceivingModule,
    UNetLDL,
    count_parameters,
    prior_entropy,
)

# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny convolutions run fastest on one thread (and do not fight a busy machine); restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def conv_block_params(cin: int, cout: int) -> int:
    """Two conv3x3x3 (+bias) and two affine InstanceNorms."""
    return 27 * cout * (cin + cout) + 6 * cout


def ppm_params(num_classes: int, channels: int) -> int:
    """conv3(K->c/2) + BN(c/2) + conv3(c/2->c) + BN(c)."""
    middle = channels // 2
    return 27 * num_classes * middle + 3 * middle + 27 * middle * channels + 3 * channels


def expected_params(cin: int = 4, k: int = 4, w: int = 30, stages: int = 3, ppm: bool = True) -> int:
    """Parameter count of UNetLDL derived by hand from the layer widths of the authors' network."""
    widths = [w * 2**i for i in range(5)]
    total = conv_block_params(cin, widths[0]) + sum(conv_block_params(widths[i - 1], widths[i]) for i in range(1, 5))
    total += sum(conv_block_params(widths[4 - j] + widths[3 - j], widths[3 - j]) for j in range(4))
    total += widths[0] * k + k  # segmentation head
    for j in range(stages):
        c = widths[3 - j]
        total += c * k + k
        if ppm:
            total += ppm_params(k, c)
    return total


def first_conv(model: UNetLDL) -> nn.Conv3d:
    """The very first encoder convolution."""
    conv = model.encoder[0][0]
    assert isinstance(conv, nn.Conv3d)
    return conv


# ------------------------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    ("overrides", "count"),
    [
        ({}, 21_737_806),
        ({"ldl_stages": 0}, 20_690_944),
        ({"use_ppm": False}, 20_692_636),
        ({"ldl_stages": 1}, 21_483_548),
        ({"ldl_stages": 2}, 21_685_452),
        ({"ldl_stages": 0, "use_ppm": False}, 20_690_944),
    ],
)
def test_parameter_counts(overrides: dict, count: int) -> None:
    """Default model has 21,737,806 parameters; the ablations have the documented counts."""
    model = UNetLDL(**overrides)
    assert count_parameters(model) == count
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize(
    ("cin", "k", "w", "stages", "ppm"),
    [(4, 4, 30, 3, True), (1, 8, 16, 3, True), (2, 3, 4, 2, False), (1, 2, 6, 1, True), (3, 5, 8, 0, True)],
)
def test_parameter_count_matches_hand_derivation(cin: int, k: int, w: int, stages: int, ppm: bool) -> None:
    """The count follows the hand-derived formula for other widths, class and channel numbers."""
    model = UNetLDL(in_channels=cin, num_classes=k, base_width=w, ldl_stages=stages, use_ppm=ppm)
    assert count_parameters(model) == expected_params(cin, k, w, stages, ppm)


def test_ablation_module_lists() -> None:
    """ldl_stages sets the number of heads and PPMs; use_ppm=False keeps the heads but drops the PPMs."""
    for stages in range(4):
        model = UNetLDL(base_width=2, ldl_stages=stages)
        assert len(model.ldl_heads) == stages and len(model.ppms) == stages
    no_ppm = UNetLDL(base_width=2, use_ppm=False)
    assert len(no_ppm.ldl_heads) == 3 and len(no_ppm.ppms) == 0


# ----------------------------------------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def tiny_eval_model() -> UNetLDL:
    """A width-2 model in eval mode (4 input channels, 4 classes)."""
    torch.manual_seed(0)
    return UNetLDL(base_width=2).eval()


@pytest.mark.parametrize("shape", [(96, 96, 96), (128, 128, 128), (32, 48, 64)])
def test_output_shapes(tiny_eval_model: UNetLDL, shape: tuple[int, int, int]) -> None:
    """Logits at full size; stage log-probs and entropies at /8, /4, /2 (coarsest first)."""
    with torch.no_grad():
        out = tiny_eval_model(torch.randn(1, 4, *shape))
    assert out.logits.shape == (1, 4, *shape)
    assert len(out.stage_log_probs) == 3 and len(out.stage_entropy) == 3
    for stage, factor in enumerate((8, 4, 2)):
        grid = tuple(s // factor for s in shape)
        assert out.stage_log_probs[stage].shape == (1, 4, *grid)
        assert out.stage_entropy[stage].shape == (1, *grid)
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("shape", [(24, 32, 32), (32, 32, 40), (32, 8, 32)])
def test_edges_not_divisible_by_16_raise(tiny_eval_model: UNetLDL, shape: tuple[int, int, int]) -> None:
    """Every patch edge must divide by 16."""
    with pytest.raises(ValueError, match="divisible by 16"):
        tiny_eval_model(torch.zeros(1, 4, *shape))


@pytest.mark.parametrize(
    "bad",
    [
        {"ldl_stages": 4},
        {"ldl_stages": -1},
        {"ppm_norm": "foo"},
        {"num_classes": 1},
        {"in_channels": 0},
        {"base_width": 1},
    ],
)
def test_bad_configs_raise(bad: dict) -> None:
    """Invalid hyper-parameters are rejected by ModelConfig and by UNetLDL overrides."""
    with pytest.raises(ValueError):
        ModelConfig(**bad)
    with pytest.raises(ValueError):
        UNetLDL(**bad)


@pytest.mark.parametrize("stages", [0, 1, 2])
def test_stage_outputs_follow_ldl_stages(stages: int) -> None:
    """ldl_stages=0 returns no stage outputs; 1 and 2 return the coarsest stages only."""
    model = UNetLDL(in_channels=1, num_classes=3, base_width=2, ldl_stages=stages).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 32, 32, 32))
    assert len(out.stage_log_probs) == stages and len(out.stage_entropy) == stages
    for stage in range(stages):
        assert out.stage_log_probs[stage].shape[2:] == (32 // 8 * 2**stage,) * 3
    assert out.logits.shape == (1, 3, 32, 32, 32)
    if stages == 0:
        assert out.stage_log_probs == () and out.stage_entropy == ()


# ------------------------------------------------------------------------------------ stage distributions


@pytest.fixture(scope="module")
def stage_output() -> tuple[torch.Tensor, ...]:
    """Stage log-probs and entropies of a random width-2 model, batch 2, 32^3."""
    torch.manual_seed(1)
    model = UNetLDL(in_channels=2, num_classes=4, base_width=2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 2, 32, 32, 32))
    return out


def test_stage_log_probs_are_distributions(stage_output) -> None:
    """exp(log_probs) is non-negative and sums to 1 over classes at every voxel of every stage."""
    for log_probs in stage_output.stage_log_probs:
        probs = log_probs.exp()
        assert (probs >= 0).all()
        torch.testing.assert_close(probs.sum(1), torch.ones_like(probs[:, 0]), atol=1e-5, rtol=0)
        assert (log_probs <= 1e-6).all()


def test_stage_entropy_is_the_eps_shifted_entropy(stage_output) -> None:
    """H = sum_k -(q_k + 1e-3) log(q_k + 1e-3), with q = exp(log_probs), at every stage."""
    assert ENTROPY_EPS == 1e-3
    for log_probs, ent in zip(stage_output.stage_log_probs, stage_output.stage_entropy):
        q = log_probs.double().exp()
        by_hand = -((q + 1e-3) * torch.log(q + 1e-3)).sum(1)
        torch.testing.assert_close(ent.double(), by_hand, atol=1e-5, rtol=0)
        # the eps term matters: the plain Shannon entropy differs measurably
        plain = -(q * log_probs.double()).sum(1)
        assert (ent.double() - plain).abs().max() > 1e-4


def test_prior_entropy_hand_values() -> None:
    """prior_entropy on one-hot and uniform voxels against values computed by hand."""
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]).T.reshape(1, 4, 2, 1, 1)
    e = 1e-3
    one_hot = -((1 + e) * math.log(1 + e) + 3 * e * math.log(e))
    uniform = -4 * (0.25 + e) * math.log(0.25 + e)
    expected = torch.tensor([one_hot, uniform], dtype=torch.float32).reshape(1, 2, 1, 1)
    torch.testing.assert_close(prior_entropy(probs), expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- PPM fusion


def test_ppm_fusion_formula_with_learned_prior() -> None:
    """PPM output equals F * (1 + A(q) + H) with A the module's own distribution prior."""
    torch.manual_seed(2)
    ppm = PriorPerceivingModule(num_classes=3, channels=6).eval()
    feature = torch.randn(2, 6, 4, 5, 3)
    probs = torch.softmax(torch.randn(2, 3, 4, 5, 3), dim=1)
    ent = prior_entropy(probs)
    with torch.no_grad():
        attention = ppm.distribution_prior(probs)
        out = ppm(feature, probs, ent)
    assert attention.shape == feature.shape and (attention >= 0).all() and attention.abs().sum() > 0
    torch.testing.assert_close(out, feature * (1 + attention + ent.unsqueeze(1)))


def test_ppm_fusion_hand_computed() -> None:
    """With the prior's last conv set to weight 0 / bias c (BN in eval: x / sqrt(1 + 1e-5)), out = F (1 + A + H)."""
    ppm = PriorPerceivingModule(num_classes=2, channels=4).eval()
    last_conv = ppm.distribution_prior[3]
    bias = torch.tensor([0.5, 2.0, -1.0, 0.0])
    with torch.no_grad():
        last_conv.weight.zero_()
        last_conv.bias.copy_(bias)
    feature = torch.tensor([1.0, -2.0, 3.0, 4.0]).reshape(1, 4, 1, 1, 1).repeat(1, 1, 2, 1, 1)
    probs = torch.rand(1, 2, 2, 1, 1)
    ent = torch.tensor([0.25, 1.5]).reshape(1, 2, 1, 1)
    with torch.no_grad():
        out = ppm(feature, probs, ent)
    attention = [max(0.0, b / math.sqrt(1 + 1e-5)) for b in bias.tolist()]  # ReLU(BN(bias))
    for c, f in enumerate([1.0, -2.0, 3.0, 4.0]):
        for d, h in enumerate([0.25, 1.5]):
            assert out[0, c, d, 0, 0].item() == pytest.approx(f * (1 + attention[c] + h), rel=1e-6)


@pytest.mark.parametrize(("norm", "layer"), [("instance", nn.InstanceNorm3d), ("group", nn.GroupNorm)])
def test_ppm_norm_variants_run(norm: str, layer: type) -> None:
    """ppm_norm instance/group build the requested layers and run forward and backward in train mode."""
    torch.manual_seed(3)
    model = UNetLDL(in_channels=1, num_classes=3, base_width=4, ppm_norm=norm)
    kinds = [type(m) for ppm in model.ppms for m in ppm.distribution_prior if not isinstance(m, (nn.Conv3d, nn.ReLU))]
    assert kinds == [layer] * 6
    assert not any(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    out = model(torch.randn(1, 1, 32, 32, 32))
    out.logits.square().mean().backward()
    assert len(out.stage_log_probs) == 3 and torch.isfinite(out.logits).all()
    assert model.ppms[0].distribution_prior[0].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ gradient flow


def _logits_loss_grads(model: UNetLDL, x: torch.Tensor, target: torch.Tensor, hooks=()) -> tuple[torch.Tensor, ...]:
    """Backprop a loss on the final logits only; returns (logits, first-conv grad)."""
    model.zero_grad(set_to_none=True)
    handles = [ppm.register_forward_pre_hook(hook) for ppm in model.ppms for hook in hooks]
    try:
        out = model(x)
        F.cross_entropy(out.logits, target).backward()
    finally:
        for handle in handles:
            handle.remove()
    return out.logits.detach(), first_conv(model).weight.grad.clone()


def _detach(probs: bool, entropy: bool):
    """A PPM forward pre-hook that cuts the gradient through q and/or H (values unchanged)."""

    def hook(module, args):
        feature, q, h = args
        return feature, q.detach() if probs else q, h.detach() if entropy else h

    return hook


@pytest.fixture(scope="module")
def grad_setup() -> tuple[UNetLDL, torch.Tensor, torch.Tensor]:
    """A width-4 model in train mode, one 32^3 input and random labels."""
    torch.manual_seed(4)
    model = UNetLDL(in_channels=1, num_classes=3, base_width=4).train()
    x = torch.randn(1, 1, 32, 32, 32)
    target = torch.randint(0, 3, (1, 32, 32, 32))
    return model, x, target


def test_final_loss_reaches_ppm_and_stage_heads(grad_setup) -> None:
    """A loss on the final logits alone gives every PPM conv and every LDL head a non-zero gradient."""
    model, x, target = grad_setup
    _logits_loss_grads(model, x, target)
    for ppm in model.ppms:
        for index in (0, 3):
            assert ppm.distribution_prior[index].weight.grad.abs().sum() > 0
    for head in model.ldl_heads:  # the heads feed the logits only through q and H in the PPMs
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_first_conv_gradient_flows_through_ppm(grad_setup) -> None:
    """Cutting q and H at the PPM inputs keeps the forward identical but changes the first-conv gradient."""
    model, x, target = grad_setup
    logits_full, grad_full = _logits_loss_grads(model, x, target)
    logits_cut, grad_cut = _logits_loss_grads(model, x, target, hooks=[_detach(True, True)])
    torch.testing.assert_close(logits_cut, logits_full)  # same values, only the PPM-prior gradient path is gone
    assert grad_cut.abs().sum() > 0
    difference = (grad_full - grad_cut).abs().max() / grad_full.abs().max()
    assert difference > 1e-3
    for head in model.ldl_heads:  # no other path from a head to the logits
        assert head.weight.grad is None


@pytest.mark.parametrize(("cut_probs", "cut_entropy"), [(True, False), (False, True)])
def test_gradient_passes_through_each_prior(grad_setup, cut_probs: bool, cut_entropy: bool) -> None:
    """Neither the distribution prior nor the entropy prior is detached: each alone carries gradient to the heads."""
    model, x, target = grad_setup
    _, grad_full = _logits_loss_grads(model, x, target)
    _, grad_part = _logits_loss_grads(model, x, target, hooks=[_detach(cut_probs, cut_entropy)])
    for head in model.ldl_heads:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert not torch.allclose(grad_full, grad_part)


def test_first_conv_gradient_differs_without_ppm(grad_setup) -> None:
    """The same backbone and head weights without the PPM branch give a different first-conv gradient."""
    model, x, target = grad_setup
    _, grad_ppm = _logits_loss_grads(model, x, target)
    plain = UNetLDL(model.config, use_ppm=False).train()
    result = plain.load_state_dict(model.state_dict(), strict=False)
    assert result.missing_keys == [] and all(k.startswith("ppms.") for k in result.unexpected_keys)
    _, grad_plain = _logits_loss_grads(plain, x, target)
    assert grad_plain.abs().sum() > 0
    assert (grad_ppm - grad_plain).abs().max() / grad_ppm.abs().max() > 1e-3
    for head in plain.ldl_heads:
        assert head.weight.grad is None


# -------------------------------------------------------------------------------------- config and init


def test_model_config_round_trip() -> None:
    """to_dict/from_dict round-trips, ignores unknown keys, and UNetLDL applies overrides on top of a config."""
    config = ModelConfig(in_channels=1, num_classes=8, base_width=16, ldl_stages=2, use_ppm=False, ppm_norm="group")
    data = config.to_dict()
    assert data == {
        "in_channels": 1,
        "num_classes": 8,
        "base_width": 16,
        "ldl_stages": 2,
        "use_ppm": False,
        "ppm_norm": "group",
    }
    assert ModelConfig.from_dict(data) == config
    assert ModelConfig.from_dict({**data, "unknown": 3}) == config
    assert ModelConfig.from_dict({"num_classes": 8}) == ModelConfig(num_classes=8)
    model = UNetLDL(config, base_width=2, use_ppm=True)
    assert model.config == ModelConfig(1, 8, 2, 2, True, "group")
    assert UNetLDL().config == ModelConfig()


@pytest.fixture(scope="module")
def default_model() -> UNetLDL:
    """The full-size default model (construction only)."""
    torch.manual_seed(5)
    return UNetLDL()


def test_initialisation(default_model: UNetLDL) -> None:
    """Conv3d biases are 0; BatchNorm and InstanceNorm weights 1 and biases 0."""
    convs = [m for m in default_model.modules() if isinstance(m, nn.Conv3d)]
    norms = [m for m in default_model.modules() if isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d))]
    assert len(convs) == 18 + 3 + 1 + 6  # 9 conv blocks x 2, 3 LDL heads, seg head, 3 PPMs x 2
    assert sum(isinstance(m, nn.BatchNorm3d) for m in norms) == 6
    for conv in convs:
        assert torch.count_nonzero(conv.bias) == 0
        assert conv.weight.abs().sum() > 0
    for norm in norms:
        assert torch.all(norm.weight == 1) and torch.count_nonzero(norm.bias) == 0


@pytest.mark.parametrize("path", ["decoder.0.0", "ppms.0.distribution_prior.3", "encoder.4.3"])
def test_kaiming_normal_std(default_model: UNetLDL, path: str) -> None:
    """Conv weights (PPM included) have the Kaiming-normal std sqrt(2 / (1 + 0.01^2)) / sqrt(fan_in)."""
    conv = default_model.get_submodule(path)
    fan_in = conv.weight[0].numel()
    expected = math.sqrt(2.0 / (1 + 0.01**2)) / math.sqrt(fan_in)
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.01)
    assert abs(conv.weight.mean().item()) < 0.01 * expected
