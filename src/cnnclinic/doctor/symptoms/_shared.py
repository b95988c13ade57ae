"""Small helpers shared by several symptom detectors."""

from __future__ import annotations

import math

from cnnclinic.doctor.finding import Prescription
from cnnclinic.doctor.history import TrainingHistory


def scaled_lr(history: TrainingHistory, factor: float) -> str:
    """``train.lr=<current lr x factor>`` rounded to 2 significant digits (1e-3 when the lr is unknown)."""
    lr = history.lr if history.lr and history.lr > 0 else 1e-3
    value = min(lr * factor, 100.0)
    return f"train.lr={float(f'{value:.2g}'):g}"


def smaller_lr(history: TrainingHistory) -> Prescription:
    return Prescription([scaled_lr(history, 0.1)], "Divide the learning rate by 10.")


def peak_update_ratio(history: TrainingHistory) -> float | None:
    """The largest measured update-to-weight ratio ‖Δw‖/‖w‖ of any layer at any sampled step after the
    first (None: none measured yet). The first step is left out: Adam's bias-corrected first step moves
    every weight by about the learning rate whatever the gradient, so it is large in healthy runs too."""
    ratios = [r for s in history.samples if s.step > 0 for r in s.update_ratio.values() if not math.isnan(r)]
    return max(ratios) if ratios else None


def learning_rate_evidence(history: TrainingHistory, lr_update_ratio: float) -> dict[str, float | bool | None]:
    """Whether the steps say the learning rate is too high: a layer moved by ``lr_update_ratio`` of its
    weights in one step (healthy training moves them by ~1e-3..1e-2)."""
    peak = peak_update_ratio(history)
    return {"peak_update_ratio": peak, "learning_rate_too_high": peak is not None and peak >= lr_update_ratio}


def overshooting_steps(evidence: dict) -> str:
    """The explanation's sentence when ``learning_rate_evidence`` found the learning rate too high."""
    return (f" Single steps moved a layer's weights by {evidence['peak_update_ratio']:.0%} (healthy runs: at most "
            "5%): the learning rate is too high.")


def activation_swap() -> Prescription:
    return Prescription(
        ["model.activation=leaky_relu"],
        "Use LeakyReLU (or ELU) instead: a small slope for negative inputs keeps gradients flowing.",
    )


def batchnorm() -> Prescription:
    return Prescription(
        ["model.batchnorm=true"],
        "Add BatchNorm after each conv/linear layer: it keeps every layer's inputs centred and scaled.",
    )


def median(values: list[float]) -> float:
    ordered = sorted(v for v in values if math.isfinite(v))
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
