"""The Doctor puts the cure of the measured root cause first (the cure auto-repair tries first).

Each rule is checked on a hand-built TrainingHistory, on both sides of its threshold: the learning-rate rule
of dying_relu and exploding_gradient (peak update-to-weight ratio after the first step), and the stack-depth
rule of saturated_activation (number of sigmoid/tanh layers), and loss_stagnation's causes and window.
oscillating_loss needs overshooting steps to be found at all (tests/test_doctor_oscillating.py).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from cnnclinic.doctor.finding import Finding
from cnnclinic.doctor.history import EpochRecord, LayerSample, TrainingHistory
from cnnclinic.doctor.symptoms import SYMPTOMS

# ‖Δw‖/‖w‖ of a healthy step and of a step that moves a layer by half its weights.
HEALTHY_STEP, HUGE_STEP = 0.01, 0.5


def history_with_steps(update_ratio: float) -> TrainingHistory:
    """Three sampled steps whose largest layer moved by ``update_ratio`` after the first step; the first step
    (Adam's full-size one) moved a layer by 5x its weights, which must not count."""
    history = TrainingHistory(num_classes=3, class_names=["a", "b", "c"], num_parameters=10_000, lr=0.05)
    history.initial_losses = [1.1, 1.1, 1.1]
    for step in (0, 2, 4):
        ratios = {"conv": 5.0 if step == 0 else update_ratio, "fc": 0.001}
        history.samples.append(
            LayerSample(
                step=step, epoch=1, grad_norm={}, grad_rms={}, weight_norm={}, init_scale={}, update_ratio=ratios
            )
        )
    history.step = 4
    return history


def check(symptom: str, history: TrainingHistory) -> Finding:
    finding = SYMPTOMS[symptom]().check(history, SYMPTOMS[symptom].Thresholds())
    assert isinstance(finding, Finding), f"{symptom} not found in its own set-up"
    return finding


def dead_units(history: TrainingHistory) -> TrainingHistory:
    history.dead_masks = {"relu": deque([np.ones(16, dtype=bool)] * 3)}
    return history


def nan_loss(history: TrainingHistory) -> TrainingHistory:
    history.nonfinite = {"where": "loss", "step": 4, "loss": float("nan"), "grad_norm": float("nan")}
    return history


PROVOKE = {"dying_relu": dead_units, "exploding_gradient": nan_loss}


@pytest.mark.parametrize(
    ("symptom", "lr_cause_first", "otherwise_first"),
    [
        ("dying_relu", ["train.lr=0.005", "model.activation=leaky_relu"], ["model.activation=leaky_relu"]),
        ("exploding_gradient", ["train.lr=0.005", "train.grad_clip=1.0"], ["train.grad_clip=1.0"]),
    ],
)
def test_learning_rate_cut_first_only_when_steps_are_too_large(
    symptom: str, lr_cause_first: list[str], otherwise_first: list[str]
) -> None:
    provoke = PROVOKE[symptom]
    large = check(symptom, provoke(history_with_steps(HUGE_STEP)))
    assert large.evidence["learning_rate_too_high"] and large.evidence["peak_update_ratio"] == HUGE_STEP
    assert large.prescriptions[0].config == lr_cause_first
    healthy = check(symptom, provoke(history_with_steps(HEALTHY_STEP)))
    # The huge first step is Adam's bias-corrected one: it says nothing about the learning rate.
    assert not healthy.evidence["learning_rate_too_high"] and healthy.evidence["peak_update_ratio"] == HEALTHY_STEP
    assert healthy.prescriptions[0].config == otherwise_first
    # Both orders keep every cure: auto-repair can still try the others.
    assert {c for p in large.prescriptions for c in p.config} >= {c for p in healthy.prescriptions for c in p.config}


def test_learning_rate_rule_follows_its_threshold() -> None:
    limit = SYMPTOMS["dying_relu"].Thresholds().lr_update_ratio
    just_below = check("dying_relu", dead_units(history_with_steps(limit * 0.9)))
    just_above = check("dying_relu", dead_units(history_with_steps(limit * 1.1)))
    assert not just_below.evidence["learning_rate_too_high"] and just_above.evidence["learning_rate_too_high"]


def saturated_stack(layers: int) -> TrainingHistory:
    """``layers`` sigmoid layers, the first of them saturated on three sampled steps."""
    history = history_with_steps(HEALTHY_STEP)
    history.activation_kinds = {f"sigmoid{i}": "sigmoid" for i in range(layers)}
    for sample in history.samples:
        sample.saturation = {"sigmoid0": 0.9, **{f"sigmoid{i}": 0.1 for i in range(1, layers)}}
    return history


def test_saturation_in_a_deep_stack_swaps_the_activation_first() -> None:
    deep_stack = SYMPTOMS["saturated_activation"].Thresholds().deep_stack
    deep = check("saturated_activation", saturated_stack(deep_stack))
    assert deep.evidence["squashing_layers"] == deep_stack
    assert deep.prescriptions[0].config == ["model.activation=leaky_relu", "model.init=he"]
    assert deep.prescriptions[1].config == ["model.batchnorm=true"]
    shallow = check("saturated_activation", saturated_stack(deep_stack - 1))
    assert shallow.prescriptions[0].config == ["model.init=xavier"]


def test_attention_gates_do_not_count_towards_the_stack() -> None:
    deep_stack = SYMPTOMS["saturated_activation"].Thresholds().deep_stack
    history = saturated_stack(deep_stack - 1)
    history.activation_kinds["se.gate"] = "sigmoid"
    history.gate_members = {"se.gate"}
    assert check("saturated_activation", history).prescriptions[0].config == ["model.init=xavier"]


def flat_loss_with_default_init(update_ratio: float) -> TrainingHistory:
    """A loss flat at ln 5 for 100 steps; PyTorch's default weight scale (0.41 of He) and logits spread by
    0.0008 across the batch, as the demo's lr-1e-6 run measured; every layer moved by ``update_ratio`` a step."""
    history = TrainingHistory(num_classes=5, class_names=list("abcde"), num_parameters=100_000, lr=1e-6)
    history.initial_losses = [1.609] * 3
    history.losses = deque([1.609] * 100, maxlen=4096)
    for step in range(0, 100, 20):
        history.samples.append(LayerSample(
            step=step, epoch=1, grad_norm={}, grad_rms={}, weight_norm={}, init_scale={"conv": 0.41, "fc": 0.41},
            update_ratio={"conv": update_ratio, "fc": update_ratio}, logit_spread=0.0008,
        ))
    history.step = 100
    return history


def test_flat_loss_names_a_too_small_learning_rate_before_collapsed_logits() -> None:
    # The weights hardly move: the logits stay collapsed because nothing learns; the learning rate is the cause.
    frozen = check("loss_stagnation", flat_loss_with_default_init(6e-6))
    assert frozen.evidence["cause"] == "learning_rate_too_small"
    assert frozen.prescriptions[0].config == ["train.lr=0.001"]
    # The weights move at a healthy rate and the logits still do not spread: the signal dies in the forward pass.
    moving = check("loss_stagnation", flat_loss_with_default_init(1e-3))
    assert moving.evidence["cause"] == "bad_initialization"
    assert moving.prescriptions[0].config == ["model.init=he"]


def test_a_loss_flat_for_four_short_epochs_is_named_before_100_steps() -> None:
    history = flat_loss_with_default_init(1e-3)
    history.losses = deque([1.609] * 52, maxlen=4096)
    history.step = 52
    assert SYMPTOMS["loss_stagnation"]().check(history, SYMPTOMS["loss_stagnation"].Thresholds()) is None
    history.epochs = [EpochRecord(epoch=e, steps=13, train_loss=1.609, train_acc=0.2) for e in (1, 2, 3, 4)]
    assert check("loss_stagnation", history).explanation.startswith("The loss has stayed flat around 1.61 for 52 steps")


def test_a_flat_loss_after_overshooting_steps_blames_a_too_large_learning_rate() -> None:
    # SGD with momentum at lr 2.0 (the repair benchmark's exploding case, train seed 2): early steps moved a layer
    # by 16% of its weights; the weights they inflated make the later ratios look healthy (1%).
    history = flat_loss_with_default_init(0.01)
    history.samples[1].update_ratio = {"conv": 0.165, "fc": 0.01}
    finding = check("loss_stagnation", history)
    assert finding.evidence["cause"] == "learning_rate_too_large" and finding.evidence["peak_update_ratio"] == 0.165
    assert finding.evidence["learning_rate_too_high"]  # auto-repair then restarts weights left at chance
    assert finding.prescriptions[0].config == ["train.lr=1e-07"]
