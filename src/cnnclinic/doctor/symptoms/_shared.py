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
