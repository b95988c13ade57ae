from __future__ import annotations

from dataclasses import dataclass, field

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import SQUASHING_KINDS, LayerSample, TrainingHistory
from cnnclinic.doctor.symptoms._shared import batchnorm
from cnnclinic.doctor.symptoms.base import Symptom, register


def gradient_spread(history: TrainingHistory, sample: LayerSample) -> tuple[float, str, str] | None:
    """(weakest / strongest per-parameter gradient RMS, weakest layer, strongest layer) over the main-path
    layers with a non-zero gradient (all-zero gradients are dead units, a different symptom)."""
    rms = {name: value for name, value in history.main_path(sample.grad_rms).items() if value > 0}
    if len(rms) < 2:
        return None
    weakest = min(rms, key=rms.__getitem__)
    strongest = max(rms, key=rms.__getitem__)
    return rms[weakest] / rms[strongest], weakest, strongest


@register
class VanishingGradient(Symptom):
    """Vanishing gradients: the early layers get almost no gradient, so they do not learn.

    **Theory.** Backpropagation multiplies the gradient by each layer's Jacobian. Sigmoid (slope ≤ 0.25)
    and tanh stacks, too-small initial weights or great depth without normalisation or skip connections
    shrink it geometrically, so the first layers' gradients are orders of magnitude smaller than the last
    layers' and the loss barely moves.

    **Evidence.** At every sampled step, the per-parameter gradient RMS (‖g‖ / √n) of each conv/linear
    layer. The spread is the weakest layer's RMS divided by the strongest layer's (scale-free: it does not
    depend on the loss scale or the learning rate). Vanishing when the spread is below ``max_spread`` on
    ``samples`` consecutive sampled steps. Layers whose gradient is exactly zero are left to ``dying_relu``;
    gating branches (squeeze-and-excitation, CBAM: small sub-networks ending in a sigmoid that scales the
    features) naturally get tiny gradients and are left out (see ``cnnclinic.doctor.gates``).

    **Prescriptions.** With sigmoid/tanh activations, switch to ReLU (``model.activation=relu``) with He
    initialisation; add BatchNorm; add residual connections.
    """

    id = "vanishing_gradient"

    @dataclass
    class Thresholds:
        max_spread: float = field(default=1e-3, metadata={"help": "weakest / strongest layer gradient RMS"})
        samples: int = field(default=3, metadata={"help": "consecutive sampled steps it must hold"})

    def check(self, history: TrainingHistory, t: Thresholds) -> Finding | None:
        recent = history.recent_samples(t.samples)
        spreads = [gradient_spread(history, sample) for sample in recent]
        if not recent or any(s is None or s[0] >= t.max_spread for s in spreads):
            return None
        spread, weakest, strongest = spreads[-1]  # type: ignore[misc]
        latest = recent[-1]
        evidence = {
            "gradient_spread": spread,
            "weakest_layer": weakest,
            "strongest_layer": strongest,
            "grad_rms": latest.grad_rms,
            "samples": t.samples,
        }
        prescriptions = [batchnorm(), Prescription(["model.residual=true"], "Add skip (residual) connections.")]
        if history.kinds_present() & set(SQUASHING_KINDS):
            prescriptions.insert(
                0,
                Prescription(
                    ["model.activation=relu", "model.init=he"],
                    "Replace sigmoid/tanh by ReLU with He initialisation: its slope is 1, not at most 0.25.",
                ),
            )
        else:
            prescriptions.append(Prescription(["model.init=he"], "Initialise with He (Kaiming) initialisation."))
        return history.finding(
            self.id,
            "warning",
            evidence,
            f"The gradient of layer '{weakest}' is {1 / spread:.3g} times weaker than that of '{strongest}', "
            "so the early layers hardly learn.",
            prescriptions,
        )
