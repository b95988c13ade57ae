"""The doctor's measurements: bounded summaries of steps, sampled layer statistics and epochs (no tensors
except a few small per-unit masks)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cnnclinic.doctor.finding import Finding, Prescription, Severity

# Kinds of activation the doctor measures: "relu" zeroes negative inputs (units can die),
# "sigmoid"/"tanh" squash (units can saturate).
ZEROING_KINDS = ("relu",)
SQUASHING_KINDS = ("sigmoid", "tanh")
# What the data says about one class (``cnnclinic.datadoctor.class_data_facts``), or None when unknown.
ClassFacts = Callable[[str], dict[str, Any] | None]


@dataclass
class LayerSample:
    """Per-layer statistics of one sampled step (a ``doctor.layer_history`` record).

    ``update_ratio`` is the measured ‖Δw‖/‖w‖ of the optimizer step that followed this backward pass
    (weights copied before the step and compared at the next ``after_backward``), so it is optimizer-agnostic.
    ``init_scale`` is std(w) / sqrt(2 / fan_in), the weight scale relative to He initialisation.
    """

    step: int
    epoch: int
    grad_norm: dict[str, float]
    grad_rms: dict[str, float]
    weight_norm: dict[str, float]
    init_scale: dict[str, float]
    update_ratio: dict[str, float] = field(default_factory=dict)
    dead_fraction: dict[str, float] = field(default_factory=dict)
    zero_share: dict[str, float] = field(default_factory=dict)
    saturation: dict[str, float] = field(default_factory=dict)
    logit_spread: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochRecord:
    """Summary of one epoch (1-based). Validation fields are None when no validation data was given."""

    epoch: int
    steps: int
    train_loss: float
    train_acc: float | None
    val_loss: float | None = None
    # Standard error of val_loss (the mean of per-image losses): how far it moves by chance.
    val_loss_se: float | None = None
    val_acc: float | None = None
    val_auc: dict[str, float] | None = None
    val_counts: list[int] | None = None
    confusion: list[list[int]] | None = None


@dataclass(frozen=True)
class RunSoFar:
    """What a resumed run had done before a Doctor started watching it: the steps and epochs it had trained,
    so that findings and ``layer_stats.jsonl`` go on counting from there, and the losses of its first steps,
    the reference of "has the loss moved at all since training began" (``TrainingHistory.initial_loss``)."""

    steps: int
    epochs: int
    initial_losses: tuple[float, ...] = ()


@dataclass
class TrainingHistory:
    """Everything the symptom detectors read. Detectors are pure functions of this history."""

    num_classes: int
    class_names: list[str]
    num_parameters: int
    step: int = 0  # index of the current after_backward call (0-based)
    epoch: int = 1  # current epoch (1-based)
    lr: float | None = None
    losses: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    grad_norms: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    initial_losses: list[float] = field(default_factory=list)
    initial_grad_norms: list[float] = field(default_factory=list)
    samples: list[LayerSample] = field(default_factory=list)
    epochs: list[EpochRecord] = field(default_factory=list)
    class_counts: np.ndarray | None = None
    samples_per_epoch: int | None = None
    nonfinite: dict[str, Any] | None = None
    activation_kinds: dict[str, str] = field(default_factory=dict)
    # Per zeroing activation: the last few sampled "unit was zero for the whole batch" masks.
    dead_masks: dict[str, deque[np.ndarray]] = field(default_factory=dict)
    # Layers and activations of gating branches (SE, CBAM, ...; see ``doctor.gates``): not the main path.
    gate_members: set[str] = field(default_factory=set)
    data_facts: ClassFacts | None = None

    def record_step(self, loss: float, grad_norm: float) -> None:
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        # The first steps, before a too-large learning rate has had time to blow things up.
        if len(self.initial_losses) < 3 and math.isfinite(loss):
            self.initial_losses.append(loss)
        if len(self.initial_grad_norms) < 3 and math.isfinite(grad_norm):
            self.initial_grad_norms.append(grad_norm)

    @property
    def initial_loss(self) -> float | None:
        """Median loss of the first steps: the reference for "has the loss moved at all"."""
        return float(np.median(self.initial_losses)) if self.initial_losses else None

    def kinds_present(self) -> set[str]:
        return set(self.activation_kinds.values())

    @property
    def at_epoch_end(self) -> bool:
        """Whether the checks run at the end of an epoch (epoch verdicts are not repeated at later steps)."""
        return bool(self.epochs) and self.epochs[-1].epoch == self.epoch

    def main_path(self, values: dict[str, float]) -> dict[str, float]:
        """``values`` (per layer or activation) without the gating branches."""
        return {name: value for name, value in values.items() if name not in self.gate_members}

    def recent_samples(self, count: int) -> list[LayerSample]:
        return self.samples[-count:] if len(self.samples) >= count else []

    def finding(
        self,
        symptom: str,
        severity: Severity,
        evidence: dict[str, Any],
        explanation: str,
        prescriptions: list[Prescription],
        subject: str | None = None,
    ) -> Finding:
        """A Finding stamped with the current epoch and step."""
        return Finding(symptom, severity, self.epoch, self.step, evidence, explanation, prescriptions, subject)
