"""The plain CNN: each ModelConfig switch changes the network the way its name says."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from cnnclinic.config import ModelConfig
from cnnclinic.errors import UserError
from cnnclinic.models import MODELS, build_model, count_parameters
from cnnclinic.models.layers import ACTIVATIONS, CBAM, ResidualBlock


def plain(num_classes: int = 5, image_size: int = 32, **switches) -> nn.Module:
    return build_model(ModelConfig(**{"depth": 3, "width": 8, **switches}), num_classes, image_size)


def modules_of(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def main_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The stack's own convs (no attention or shortcut convs), first to last."""
    return [m for m in model.features.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]


def test_registry_lists_all_architectures_and_rejects_unknown_names() -> None:
    assert {"plain_cnn", "resnet18", "efficientnet_b0", "mobilenet_v3_small"} <= set(MODELS)
    bad = ModelConfig.model_construct(**{**ModelConfig().model_dump(), "arch": "vgg99"})
    with pytest.raises(UserError, match="vgg99.*plain_cnn"):
        build_model(bad, 5)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_builds_only_its_own_modules_and_runs(activation: str) -> None:
    model = plain(activation=activation, attention="se")
    expected = ACTIVATIONS[activation]
    # SE's sigmoid gate (scale_activation) is part of the attention, not the model's activation
    found = [m for name, m in model.named_modules() if isinstance(m, expected) and "scale" not in name]
    # one per conv, one per hidden FC layer, one inside each SE bottleneck
    assert len(found) == 3 + 1 + 3
    assert len({id(m) for m in found}) == len(found), "activation modules must not be shared"
    others = [m for m in model.modules() if type(m) in set(ACTIVATIONS.values()) - {expected, nn.Sigmoid}]
    assert others == []
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_elu_model_has_no_relu() -> None:
    model = plain(activation="elu", head=[16, 16])
    assert modules_of(model, nn.ELU) and not modules_of(model, nn.ReLU)


def test_batchnorm_switch_adds_bn_after_each_conv_and_in_head() -> None:
    assert not modules_of(plain(), nn.BatchNorm2d)
    model = plain(batchnorm=True, head=[16])
    assert len(modules_of(model, nn.BatchNorm2d)) == 3
    assert len(modules_of(model, nn.BatchNorm1d)) == 1
    assert all(conv.bias is None for conv in main_convs(model))


def test_residual_block_carries_the_identity() -> None:
    model = plain(residual=True, activation="relu", depth=6)
    blocks = modules_of(model, ResidualBlock)
    assert len(blocks) == 6
    same_width = next(b for b in blocks if isinstance(b.shortcut, nn.Identity))
    with torch.no_grad():
        for param in same_width.block.parameters():
            param.zero_()
    x = torch.randn(2, same_width.block[0].in_channels, 8, 8)
    # with a dead branch (relu(0) = 0) the block is exactly its skip connection
    torch.testing.assert_close(same_width(x), x)
    # a change of width gets a 1x1 projection
    assert isinstance(blocks[0].shortcut, nn.Sequential)
    assert blocks[0].shortcut[0].kernel_size == (1, 1)


def _first_to_last_gradient_ratio(residual: bool) -> float:
    torch.manual_seed(0)
    model = plain(depth=12, activation="sigmoid", residual=residual, head=[])
    nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 5, (8,))).backward()
    convs = main_convs(model)
    return (convs[0].weight.grad.norm() / convs[-1].weight.grad.norm()).item()


def test_residual_connections_let_gradient_reach_the_first_layer_of_a_deep_sigmoid_stack() -> None:
    plain_ratio = _first_to_last_gradient_ratio(residual=False)
    residual_ratio = _first_to_last_gradient_ratio(residual=True)
    assert plain_ratio < 1e-6  # the vanishing gradient the doctor diagnoses
    assert residual_ratio > 1e4 * plain_ratio


@pytest.mark.parametrize(("attention", "kind"), [("se", SqueezeExcitation), ("cbam", CBAM)])
def test_attention_after_each_conv_block(attention: str, kind: type) -> None:
    model = plain(attention=attention)
    assert len(modules_of(model, kind)) == 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert not modules_of(plain(), kind)


def test_head_sizes_and_dropout() -> None:
    model = plain(head=[64, 32], dropout=0.3, num_classes=7)
    linears = modules_of(model.classifier, nn.Linear)
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(32, 64), (64, 32), (32, 7)]
    assert [d.p for d in modules_of(model.classifier, nn.Dropout)] == [0.3, 0.3, 0.3]
    linear_only = plain(head=[], num_classes=7)
    assert len(modules_of(linear_only.classifier, nn.Linear)) == 1


def test_channels_double_per_stage_up_to_eight_times_width() -> None:
    model = plain(depth=6, width=4, image_size=128)
    widths = [conv.out_channels for conv in main_convs(model)]
    assert widths == [4, 8, 16, 32, 32, 32]


@pytest.mark.parametrize("pool", ["max", "avg", "none"])
def test_deep_stack_at_32px_keeps_a_usable_feature_map(pool: str) -> None:
    model = plain(depth=16, pool=pool)
    pools = modules_of(model, (nn.MaxPool2d, nn.AvgPool2d))
    assert len(pools) == (0 if pool == "none" else 3)  # 32 -> 16 -> 8 -> 4 px, never below
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = weight[0][0].numel()
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def test_he_init_std_matches_sqrt_2_over_fan_in() -> None:
    model = plain(init="he", width=32, head=[128])
    for weight in _weights(model):
        fan_in, _ = _fans(weight)
        assert weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)


def test_xavier_init_std_matches_glorot_with_activation_gain() -> None:
    for activation, gain in (("sigmoid", 1.0), ("tanh", 5 / 3)):
        model = plain(init="xavier", activation=activation, width=32, head=[128])
        for weight in _weights(model):
            fan_in, fan_out = _fans(weight)
            assert weight.std().item() == pytest.approx(gain * math.sqrt(2 / (fan_in + fan_out)), rel=0.1)


def test_normal_init_uses_init_std_and_zero_biases() -> None:
    model = plain(init="normal", init_std=0.05, width=32, head=[128])
    for weight in _weights(model):
        assert weight.std().item() == pytest.approx(0.05, rel=0.1)
    biases = [m.bias for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(torch.count_nonzero(b) == 0 for b in biases)


def test_orthogonal_init_gives_orthonormal_rows() -> None:
    model = plain(init="orthogonal", width=8, head=[16])
    for weight in _weights(model):
        flat = weight.reshape(weight.shape[0], -1)
        gram = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
        torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-4, rtol=0)


def test_default_init_is_left_to_pytorch() -> None:
    torch.manual_seed(3)
    ours = plain()
    torch.manual_seed(3)
    reference = plain(init="he")
    assert any(w.std() != r.std() for w, r in zip(_weights(ours), _weights(reference)))
    biases = [m.bias for m in ours.modules() if isinstance(m, nn.Conv2d)]
    assert all(torch.count_nonzero(b) > 0 for b in biases)


def test_count_parameters_counts_trainable_weights() -> None:
    model = plain(depth=1, width=4, head=[], num_classes=3)
    # conv 3->4 3x3 + bias, linear 4->3 + bias
    assert count_parameters(model) == 3 * 4 * 9 + 4 + 4 * 3 + 3
    model.classifier.requires_grad_(False)
    assert count_parameters(model) == 3 * 4 * 9 + 4


def test_features_and_classifier_are_exposed() -> None:
    model = plain()
    features = model.features(torch.randn(1, 3, 32, 32))
    assert features.shape[1] == model.classifier[0].in_features
