"""Losses: the formulas, hard vs soft targets, class weighting and the focal down-weighting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnclinic.config import TrainConfig
from cnnclinic.errors import UserError
from cnnclinic.training.losses import FocalLoss, build_loss, inverse_frequency_weights

COUNTS = [100, 50, 10, 40]


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 4, generator=generator) * 3
    targets = torch.randint(0, 4, (32,), generator=generator)
    return logits, targets


def focal_by_hand(logits, targets, gamma, alpha=None) -> float:
    total = 0.0
    for row, y in zip(logits.tolist(), targets.tolist()):
        p = torch.tensor(row).softmax(0)[y].item()
        weight = 1.0 if alpha is None else alpha[y]
        total += -weight * (1 - p) ** gamma * torch.log(torch.tensor(p)).item()
    return total / len(targets)


@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_focal_loss_matches_the_formula(batch, gamma: float) -> None:
    logits, targets = batch
    alpha = [0.5, 1.0, 2.0, 0.5]
    assert FocalLoss(gamma)(logits, targets).item() == pytest.approx(focal_by_hand(logits, targets, gamma), rel=1e-5)
    loss = FocalLoss(gamma, torch.tensor(alpha))(logits, targets).item()
    assert loss == pytest.approx(focal_by_hand(logits, targets, gamma, alpha), rel=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_with_gamma_zero_is_cross_entropy(batch, smoothing: float) -> None:
    logits, targets = batch
    focal = FocalLoss(gamma=0.0, label_smoothing=smoothing)(logits, targets)
    torch.testing.assert_close(focal, F.cross_entropy(logits, targets, label_smoothing=smoothing))


def test_focal_down_weights_easy_examples() -> None:
    easy = torch.tensor([[6.0, 0.0, 0.0]])  # p_y ~ 0.995
    hard = torch.tensor([[0.0, 0.0, 0.0]])  # p_y = 1/3
    target = torch.tensor([0])
    ce = torch.nn.CrossEntropyLoss()
    focal = FocalLoss(gamma=2.0)
    # the easy example loses almost all of its (already small) loss, the hard one far less
    assert focal(easy, target) / ce(easy, target) < 1e-4
    assert focal(hard, target) / ce(hard, target) > 0.4


def test_inverse_frequency_weights_mean_one_and_rare_classes_heavier() -> None:
    weights = inverse_frequency_weights(COUNTS)
    assert weights.mean().item() == pytest.approx(1.0)
    ratio = (weights * torch.tensor(COUNTS, dtype=torch.float32)) / weights[0] / COUNTS[0]
    torch.testing.assert_close(ratio, torch.ones(4))  # w_k proportional to 1 / n_k
    assert weights.argmax().item() == 2


def test_weighted_cross_entropy_scales_each_example_by_its_class_weight(batch) -> None:
    logits, targets = batch
    loss_fn = build_loss(TrainConfig(loss="weighted_cross_entropy"), COUNTS)
    weights = inverse_frequency_weights(COUNTS)
    expected = (weights[targets] * F.cross_entropy(logits, targets, reduction="none")).mean()
    torch.testing.assert_close(loss_fn(logits, targets), expected)


@pytest.mark.parametrize(
    "settings",
    [
        {"loss": "cross_entropy"},
        {"loss": "cross_entropy", "label_smoothing": 0.1},
        {"loss": "weighted_cross_entropy", "label_smoothing": 0.1},
        {"loss": "focal", "focal_alpha": "balanced"},
        {"loss": "focal", "focal_alpha": [1.0, 2.0, 3.0, 4.0], "label_smoothing": 0.05},
    ],
)
def test_one_hot_soft_targets_give_the_same_loss_as_class_indices(batch, settings) -> None:
    logits, targets = batch
    loss_fn = build_loss(TrainConfig(**settings), COUNTS)
    one_hot = F.one_hot(targets, 4).float()
    torch.testing.assert_close(loss_fn(logits, one_hot), loss_fn(logits, targets))


def test_mixed_soft_targets_interpolate_the_loss(batch) -> None:
    logits, targets = batch
    other = targets.roll(1)
    mixed = 0.7 * F.one_hot(targets, 4).float() + 0.3 * F.one_hot(other, 4).float()
    for loss in ("cross_entropy", "weighted_cross_entropy", "focal"):
        loss_fn = build_loss(TrainConfig(loss=loss), COUNTS)
        expected = 0.7 * loss_fn(logits, targets) + 0.3 * loss_fn(logits, other)
        torch.testing.assert_close(loss_fn(logits, mixed), expected)


def test_balanced_focal_alpha_uses_inverse_frequency(batch) -> None:
    logits, targets = batch
    loss_fn = build_loss(TrainConfig(loss="focal", focal_gamma=1.5, focal_alpha="balanced"), COUNTS)
    alpha = inverse_frequency_weights(COUNTS).tolist()
    assert loss_fn(logits, targets).item() == pytest.approx(focal_by_hand(logits, targets, 1.5, alpha), rel=1e-5)


def test_focal_alpha_of_the_wrong_length_is_a_user_error() -> None:
    with pytest.raises(UserError, match="focal_alpha has 2 weights but the data has 4 classes"):
        build_loss(TrainConfig(loss="focal", focal_alpha=[1.0, 2.0]), COUNTS)
