from __future__ import annotations

from dataclasses import dataclass, field

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import SQUASHING_KINDS, TrainingHistory
from cnnclinic.doctor.symptoms._shared import batchnorm
from cnnclinic.doctor.symptoms.base import Symptom, register


@register
class SaturatedActivation(Symptom):
    """Saturated activations: sigmoid/tanh units sit in their flat tails, where the slope is almost zero.

    **Theory.** sigmoid and tanh flatten out for large |inputs|. Large initial weights or inputs push the
    pre-activations far out, the outputs stick at 0/1 (sigmoid) or ±1 (tanh), and the gradient through
    them vanishes.

    **Evidence.** At every sampled step a forward hook on each sigmoid/tanh (module or functional call)
    measures the share of outputs in the tails, where the slope is below 5% of its maximum
    (sigmoid output < 0.0127 or > 0.9873, i.e. |x| > 4.4; |tanh output| > 0.975, i.e. |x| > 2.2).
    Reported when a layer's share is at least ``saturated_share`` on ``samples`` consecutive samples. The
    sigmoid gates of attention branches (squeeze-and-excitation, CBAM) are meant to switch channels on or
    off and are not judged.

    **Root cause.** How many sigmoid/tanh activations sit on the main path (``squashing_layers``). Below
    ``deep_stack``, the initial weights pushed a shallow net out of range, and a well-scaled init is all it
    needs (digits, tanh MLP with 2 hidden layers at init std 1.0: Xavier 91% validation accuracy, LeakyReLU +
    He 90%). From ``deep_stack`` on, even a well-scaled sigmoid/tanh stack shrinks the gradient at every
    layer (sigmoid's slope is at most 0.25): the activation is the cause (the benchmark's saturated fish CNN,
    5 sigmoid layers at init std 1.0, 6 epochs: Xavier turns it into vanishing gradients at 20%, BatchNorm
    41%, LeakyReLU + He 70%).

    **Prescriptions.** Xavier initialisation (``model.init=xavier``); BatchNorm before the activation;
    ReLU-family activations, which do not saturate for positive inputs. For a stack of ``deep_stack`` or
    more squashing layers, the ReLU-family swap comes first, then BatchNorm, then Xavier.
    """

    id = "saturated_activation"

    @dataclass
    class Thresholds:
        saturated_share: float = field(default=0.5, metadata={"help": "share of a layer's outputs in the tails"})
        samples: int = field(default=3, metadata={"help": "consecutive sampled steps it must hold"})
        deep_stack: int = field(
            default=3, metadata={"help": "sigmoid/tanh layers from which the activation is the cause"}
        )

    def check(self, history: TrainingHistory, t: Thresholds) -> Finding | None:
        recent = history.recent_samples(t.samples)
        latest = history.main_path(recent[-1].saturation) if recent else {}
        saturated = [
            name
            for name in latest
            if all(sample.saturation.get(name, 0.0) >= t.saturated_share for sample in recent)
        ]
        if not saturated:
            return None
        worst = max(saturated, key=latest.__getitem__)
        squashing = [
            name for name, kind in history.activation_kinds.items()
            if kind in SQUASHING_KINDS and name not in history.gate_members
        ]
        evidence = {
            "saturated_share": latest,
            "saturated_layers": saturated,
            "worst_layer": worst,
            "samples": t.samples,
            "squashing_layers": len(squashing),
        }
        xavier = Prescription(["model.init=xavier"], "Initialise with Xavier (Glorot) initialisation.")
        swap = Prescription(
            ["model.activation=leaky_relu", "model.init=he"],
            "Use a ReLU-family activation, which does not saturate, with He initialisation.",
        )
        prescriptions, why = [xavier, batchnorm(), swap], ""
        if len(squashing) >= t.deep_stack:
            prescriptions = [swap, batchnorm(), xavier]
            why = (f" With {len(squashing)} sigmoid/tanh layers stacked, even well-scaled weights leave the "
                   "gradient shrinking at every layer: the activation itself is the cause.")
        return history.finding(
            self.id,
            "warning",
            evidence,
            f"{latest[worst]:.0%} of the outputs of '{worst}' sit in the flat tails of the sigmoid/tanh, "
            f"where the slope is almost zero, so little gradient passes.{why}",
            prescriptions,
        )
