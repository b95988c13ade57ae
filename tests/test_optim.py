"""Optimizers and LR schedules: the learning rate each step actually uses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnclinic.config import TrainConfig
from cnnclinic.errors import UserError
from cnnclinic.training.optim import build_optimizer, build_scheduler


def lr_trace(steps: int, steps_per_epoch: int = 5, **settings) -> list[float]:
    """Learning rate used at each of ``steps`` optimizer steps."""
    cfg = TrainConfig(**settings)
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_optimizers_get_their_settings() -> None:
    model = nn.Linear(3, 2)
    sgd = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD)
    assert {k: sgd.defaults[k] for k in ("lr", "momentum", "nesterov", "weight_decay")} == {
        "lr": 0.1, "momentum": 0.8, "nesterov": True, "weight_decay": 1e-4,
    }
    assert isinstance(build_optimizer(model, TrainConfig(optimizer="adam")), torch.optim.Adam)
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.05


def test_frozen_parameters_are_not_optimized() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, TrainConfig())
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 3 * 2 + 2


def test_nesterov_without_momentum_is_a_user_error() -> None:
    with pytest.raises(UserError, match="nesterov"):
        build_optimizer(nn.Linear(3, 2), TrainConfig(optimizer="sgd", nesterov=True, momentum=0.0))


def test_constant_schedule_keeps_lr() -> None:
    assert lr_trace(20, lr=0.01) == [0.01] * 20


def test_step_decay_every_step_epochs() -> None:
    lrs = lr_trace(25, steps_per_epoch=5, lr=0.1, schedule="step", step_epochs=2, step_gamma=0.5)
    assert lrs[:10] == pytest.approx([0.1] * 10)
    assert lrs[10:20] == pytest.approx([0.05] * 10)
    assert lrs[20] == pytest.approx(0.025)


def test_cosine_anneals_to_zero_over_all_steps() -> None:
    lrs = lr_trace(50 + 1, steps_per_epoch=5, epochs=10, lr=0.1, schedule="cosine")
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[25] == pytest.approx(0.05)
    assert lrs[50] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_triangular_cycle_goes_base_max_base() -> None:
    # half-cycle = 2 epochs x 5 steps = 10 steps; bounds default to lr/10 .. lr
    lrs = lr_trace(41, steps_per_epoch=5, lr=0.1, schedule="cyclic", cyclic_step_epochs=2)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.055)
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx(0.01)
    assert lrs[30] == pytest.approx(0.1)
    assert min(lrs) == pytest.approx(0.01) and max(lrs) == pytest.approx(0.1)


def test_triangular2_halves_the_amplitude_each_cycle() -> None:
    lrs = lr_trace(
        41, steps_per_epoch=4, lr=1.0, schedule="cyclic", cyclic_mode="triangular2",
        cyclic_step_epochs=2.5, cyclic_base_lr=0.2, cyclic_max_lr=0.6,
    )
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[10] == pytest.approx(0.6)
    assert lrs[20] == pytest.approx(0.2)
    assert lrs[30] == pytest.approx(0.4)
    assert lrs[40] == pytest.approx(0.2)


def test_exp_range_shrinks_the_cycles() -> None:
    lrs = lr_trace(50, steps_per_epoch=5, epochs=10, lr=0.1, schedule="cyclic", cyclic_mode="exp_range")
    first_peak, second_peak = max(lrs[:20]), max(lrs[20:40])
    assert 0.01 < second_peak < first_peak < 0.1


def test_cyclic_momentum_cycles_inversely_for_sgd_only() -> None:
    cfg = TrainConfig(optimizer="sgd", momentum=0.9, schedule="cyclic", cyclic_step_epochs=1)
    optimizer = build_optimizer(nn.Linear(3, 2), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=10)
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.9)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.8)  # lr at its peak

    adam_cfg = TrainConfig(optimizer="adam", schedule="cyclic")
    adam = build_optimizer(nn.Linear(3, 2), adam_cfg)
    build_scheduler(adam, adam_cfg, steps_per_epoch=10)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999)


def test_onecycle_peaks_at_lr_and_runs_all_steps() -> None:
    lrs = lr_trace(40, steps_per_epoch=4, epochs=10, lr=0.2, schedule="onecycle")
    peak = max(range(40), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(0.2)
    assert 0.2 * 40 - 2 <= peak <= 0.3 * 40 + 1  # OneCycleLR warms up for 30% of the run
    assert lrs[0] < 0.2 / 10 and lrs[-1] < lrs[0]


def test_inverted_cyclic_bounds_are_a_user_error() -> None:
    cfg = TrainConfig(schedule="cyclic", cyclic_base_lr=0.1, cyclic_max_lr=0.01)
    with pytest.raises(UserError, match="cyclic_base_lr"):
        build_scheduler(build_optimizer(nn.Linear(3, 2), cfg), cfg, steps_per_epoch=5)
