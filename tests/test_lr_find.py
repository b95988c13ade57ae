"""LR range test: records the loss over growing LRs, leaves the model untouched, suggests a usable LR."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnnclinic.errors import UserError
from cnnclinic.training.lr_find import lr_range_test, plot_lr_finder, suggest_lr


def overlapping_blobs(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 10, generator=generator) * 0.6
    targets = torch.randint(0, 4, (n,), generator=generator)
    return centers[targets] + torch.randn(n, 10, generator=generator), targets


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.BatchNorm1d(10), nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))


@pytest.fixture(scope="module")
def finder_run():
    inputs, targets = overlapping_blobs()
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=32, shuffle=True)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_range_test(model, loader, nn.CrossEntropyLoss(), optimizer, num_steps=80, console=Console(quiet=True))
    return result, model, optimizer, before, (inputs, targets)


def test_losses_are_recorded_for_exponentially_growing_lrs(finder_run) -> None:
    result = finder_run[0]
    assert result.lrs[0] == pytest.approx(1e-7)
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses) >= 20
    ratios = np.diff(np.log(result.lrs))
    assert np.allclose(ratios, math.log(1e8) / 79)
    assert all(math.isfinite(x) for x in result.losses + result.raw_losses)


def test_model_and_optimizer_are_restored(finder_run) -> None:
    _, model, optimizer, before, _ = finder_run
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)  # BN running stats included
    assert optimizer.param_groups[0]["lr"] == 0.01
    assert optimizer.state_dict()["state"] == {}
    assert all(p.grad is None for p in model.parameters())


def test_test_stops_at_divergence_and_suggests_an_lr_below_it(finder_run) -> None:
    result = finder_run[0]
    assert len(result.lrs) < 80, "SGD up to lr=10 should diverge on this problem"
    assert result.losses[-1] > 5 * min(result.losses)
    assert "exceeded 5x" in result.reason
    assert result.lrs[0] <= result.suggested_lr < result.lrs[-1]
    assert result.suggested_lr <= result.lrs[int(np.argmin(result.losses))]


def test_suggested_lr_trains_better_than_the_extremes(finder_run) -> None:
    result, model, _, before, (inputs, targets) = finder_run

    def loss_after_training(lr: float) -> float:
        model.load_state_dict(before)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        for _ in range(3):
            for batch_inputs, batch_targets in DataLoader(TensorDataset(inputs, targets), batch_size=32):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(batch_inputs), batch_targets).backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            loss = nn.functional.cross_entropy(model(inputs), targets).item()
        model.train()
        return loss

    suggested = loss_after_training(result.suggested_lr)
    too_small = loss_after_training(result.lrs[0] * 100)
    too_large = loss_after_training(result.lrs[-1])
    assert suggested < too_small - 0.2
    assert not suggested > too_large  # nan at the divergent end also counts as worse
    model.load_state_dict(before)


def test_suggestion_is_the_steepest_descent_of_the_curve() -> None:
    lrs = list(np.logspace(-6, 0, 61))
    # a loss that falls fastest at lr = 1e-3 and rises again after 1e-1
    losses = [2 - math.tanh(2 * (math.log10(lr) + 3)) + max(0.0, math.log10(lr) + 1) ** 2 for lr in lrs]
    suggested, reason = suggest_lr(lrs, losses)
    assert suggested == pytest.approx(1e-3, rel=0.05)
    assert "steepest descent" in reason


def test_a_loss_that_never_falls_falls_back_to_a_tenth_of_the_best_lr() -> None:
    lrs = list(np.logspace(-6, 0, 20))
    losses = [1.0 + 0.01 * i for i in range(20)]
    suggested, reason = suggest_lr(lrs, losses)
    assert suggested == pytest.approx(lrs[0] / 10)
    assert "never fell" in reason


def test_plot_is_written(finder_run, tmp_path: Path) -> None:
    path = plot_lr_finder(finder_run[0], tmp_path / "plots" / "lr_find.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_short_loader_is_cycled_and_bad_arguments_are_user_errors() -> None:
    inputs, targets = overlapping_blobs(n=16)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=8)
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters())
    result = lr_range_test(model, loader, nn.CrossEntropyLoss(), optimizer, end_lr=1e-3, num_steps=10)
    assert len(result.lrs) == 10 and result.lrs[-1] == pytest.approx(1e-3)
    with pytest.raises(UserError, match="start_lr"):
        lr_range_test(model, loader, nn.CrossEntropyLoss(), optimizer, start_lr=1.0, end_lr=0.1)
    with pytest.raises(UserError, match="no batches"):
        lr_range_test(model, [], nn.CrossEntropyLoss(), optimizer)
