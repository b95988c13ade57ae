from __future__ import annotations

from dataclasses import dataclass, field

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import TrainingHistory
from cnnclinic.doctor.symptoms._shared import batchnorm, median, scaled_lr
from cnnclinic.doctor.symptoms.base import Symptom, register


@register
class ExplodingGradient(Symptom):
    """Exploding gradients: updates so large that training diverges.

    **Theory.** When the product of layer Jacobians exceeds one, or the learning rate is far too high,
    gradients grow from step to step, the weights take huge jumps and the loss blows up, ending in
    NaN/Inf (floating-point overflow).

    **Evidence.** Every step: the loss and the total gradient norm (one reduction over all gradients); a
    NaN/Inf in either (and so in the weights after the step) is reported *immediately* as critical and sets
    ``doctor.should_stop``. Otherwise the gradient norm relative to its median over the first steps and the
    loss relative to the initial loss, over the last steps: when the median of the last ``window`` steps
    is ``grad_growth`` times the initial gradient norm, or their loss ``loss_growth`` times the initial
    loss, the gradients are exploding (scale-free: no absolute magnitudes).

    **Prescriptions.** Clip the gradient norm (``train.grad_clip=1.0``); divide the learning rate by 10;
    add BatchNorm.
    """

    id = "exploding_gradient"

    @dataclass
    class Thresholds:
        grad_growth: float = field(default=1000.0, metadata={"help": "recent / initial gradient norm"})
        loss_growth: float = field(default=5.0, metadata={"help": "recent / initial loss"})
        window: int = field(default=10, metadata={"help": "steps whose median must exceed a growth limit"})

    def check(self, history: TrainingHistory, t: Thresholds) -> Finding | None:
        if history.nonfinite is not None:
            evidence = dict(history.nonfinite, lr=history.lr)
            return self._finding(history, "critical", evidence, f"The {history.nonfinite['where']} became NaN/Inf")
        if len(history.losses) < max(t.window, 10) + 5 or not history.initial_losses:
            return None
        recent_grad = median(list(history.grad_norms)[-t.window :])
        recent_loss = median(list(history.losses)[-t.window :])
        initial_grad = median(history.initial_grad_norms)
        initial_loss = history.initial_loss or 0.0
        grad_growth = recent_grad / initial_grad if initial_grad > 0 else 0.0
        loss_growth = recent_loss / initial_loss if initial_loss > 0 else 0.0
        if grad_growth < t.grad_growth and loss_growth < t.loss_growth:
            return None
        evidence = {
            "grad_norm_growth": grad_growth,
            "loss_growth": loss_growth,
            "initial_grad_norm": initial_grad,
            "recent_grad_norm": recent_grad,
            "initial_loss": initial_loss,
            "recent_loss": recent_loss,
            "lr": history.lr,
        }
        return self._finding(history, "warning", evidence, "The gradients or the loss grew by orders of magnitude")

    @staticmethod
    def _finding(history: TrainingHistory, severity: str, evidence: dict, what: str) -> Finding:
        return history.finding(
            "exploding_gradient",
            severity,  # type: ignore[arg-type]
            evidence,
            f"{what}: the updates are so large that training diverges instead of learning.",
            [
                Prescription(["train.grad_clip=1.0"], "Clip the total gradient norm to 1 before each optimizer step."),
                Prescription([scaled_lr(history, 0.1)], "Divide the learning rate by 10."),
                batchnorm(),
            ],
        )
