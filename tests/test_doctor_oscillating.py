"""oscillating_loss tells overshooting steps from mini-batch noise (hand-built histories, milliseconds).

The loss sequences copy the shapes measured on the demo's fish CNN: a run that learns, with per-step noise and
two outlier batches (the quick sick run of demo case 4, formerly a false alarm), and a run stuck near its
initial loss with overshoot spikes (the benchmark's oscillating case, Adam lr 0.02 at batch 16).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from cnnclinic.doctor.finding import Finding
from cnnclinic.doctor.history import LayerSample, TrainingHistory
from cnnclinic.doctor.symptoms import SYMPTOMS

OSCILLATING = SYMPTOMS["oscillating_loss"]
INITIAL_LOSS = 1.6  # ln 5: five classes at chance
# Peak ‖Δw‖/‖w‖ measured after the first step: case 4's quick sick run, and the benchmark's oscillating case.
NORMAL_STEP, OVERSHOOTING_STEP = 0.024, 0.31


def learning_with_outliers() -> list[float]:
    """A loss down to a fifth of its initial value, per-step noise (sd 0.08), two batches the model gets
    badly wrong (2.3 and 2.5, as measured)."""
    noise = np.random.default_rng(0).normal(0.0, 0.08, 80)
    losses = np.clip(np.linspace(0.35, 0.28, 80) + noise, 0.02, None)
    losses[[39, 69]] = 2.3, 2.5
    return losses.tolist()


def swinging() -> list[float]:
    """A loss stuck near its initial value, thrown up to 12-16 by an overshooting step every ~15 steps."""
    losses = np.full(80, INITIAL_LOSS) + np.random.default_rng(0).normal(0.0, 0.1, 80)
    losses[[27, 41, 52, 66]] = 16.0, 4.3, 12.4, 15.1
    return losses.tolist()


def history(losses: list[float], update_ratio: float) -> TrainingHistory:
    """``losses`` as the last steps of a run whose largest sampled step moved a layer by ``update_ratio`` of
    its weights (the first step, Adam's full-size one, moved it by 5x and does not count)."""
    run = TrainingHistory(num_classes=5, class_names=list("abcde"), num_parameters=10_000, lr=0.02)
    run.initial_losses = [INITIAL_LOSS] * 3
    run.losses = deque(losses)
    run.step = len(losses) + 20
    for step, ratio in ((0, 5.0), (30, update_ratio), (60, 0.001)):
        run.samples.append(
            LayerSample(step=step, epoch=1, grad_norm={}, grad_rms={}, weight_norm={}, init_scale={},
                        update_ratio={"conv": ratio})
        )
    return run


def check(losses: list[float], update_ratio: float) -> Finding | None:
    return OSCILLATING().check(history(losses, update_ratio), OSCILLATING.Thresholds())


def test_swinging_loss_with_overshooting_steps_is_found_and_the_lr_cut_comes_first() -> None:
    finding = check(swinging(), OVERSHOOTING_STEP)
    assert isinstance(finding, Finding)
    assert finding.evidence["learning_rate_too_high"] and finding.evidence["peak_update_ratio"] == OVERSHOOTING_STEP
    assert finding.evidence["relative_amplitude"] >= OSCILLATING.Thresholds().min_amplitude
    assert finding.prescriptions[0].config == ["train.lr=0.002"]
    assert ["train.grad_clip=1.0"] in [p.config for p in finding.prescriptions]


def test_noisy_but_learning_run_is_not_oscillating() -> None:
    assert check(learning_with_outliers(), NORMAL_STEP) is None
    # Outlier batches in a swinging loss are mini-batch noise too when the steps are of a normal size.
    assert check(swinging(), NORMAL_STEP) is None


def test_overshoot_follows_the_step_size_threshold() -> None:
    limit = OSCILLATING.Thresholds().lr_update_ratio
    assert check(swinging(), limit * 0.9) is None
    assert isinstance(check(swinging(), limit * 1.1), Finding)
