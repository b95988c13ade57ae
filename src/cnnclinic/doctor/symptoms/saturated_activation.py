from __future__ import annotations

from dataclasses import dataclass, field

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import TrainingHistory
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

    **Prescriptions.** Xavier initialisation (``model.init=xavier``); BatchNorm before the activation;
    ReLU-family activations, which do not saturate for positive inputs.
    """

    id = "saturated_activation"

    @dataclass
    class Thresholds:
        saturated_share: float = field(default=0.5, metadata={"help": "share of a layer's outputs in the tails"})
        samples: int = field(default=3, metadata={"help": "consecutive sampled steps it must hold"})

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
        evidence = {
            "saturated_share": latest,
            "saturated_layers": saturated,
            "worst_layer": worst,
            "samples": t.samples,
        }
        return history.finding(
            self.id,
            "warning",
            evidence,
            f"{latest[worst]:.0%} of the outputs of '{worst}' sit in the flat tails of the sigmoid/tanh, "
            "where the slope is almost zero, so little gradient passes.",
            [
                Prescription(["model.init=xavier"], "Initialise with Xavier (Glorot) initialisation."),
                batchnorm(),
                Prescription(
                    ["model.activation=leaky_relu", "model.init=he"],
                    "Use a ReLU-family activation, which does not saturate, with He initialisation.",
                ),
            ],
        )
