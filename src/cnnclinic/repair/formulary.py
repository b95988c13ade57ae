"""The cures auto-repair can apply for a finding, in the order it tries them.

The Doctor's own prescriptions come first, in its order, which follows its evidence (e.g. class weights
with oversampling first for a lagging class the data doctor found short of images). After them come the
other cures the analysis names for the same pathology that the Doctor does not list (ELU/PReLU swaps,
class weights, oversampling, a simpler head, a learning rate from a range test), so every cure is
available to auto-repair. ``train.lr=range_test`` is a marker, not a config value: auto-repair replaces it by the
learning rate that ``training.lr_find.lr_range_test`` suggests.
"""

from __future__ import annotations

from cnnclinic.config import Config
from cnnclinic.doctor import Finding, Prescription
from cnnclinic.errors import UserError

LR_RANGE_TEST = "train.lr=range_test"

_RANGE_TEST = Prescription([LR_RANGE_TEST], "Use the learning rate an LR range test suggests (Smith 2017).")
_ELU = Prescription(["model.activation=elu"], "Use ELU: smooth, non-zero slope for negative inputs.")
_PRELU = Prescription(["model.activation=prelu"], "Use PReLU: the negative slope is learnt per channel.")

# Cures the analysis names per symptom beyond the Doctor's own list.
SUPPLEMENTS: dict[str, list[Prescription]] = {
    "dying_relu": [_ELU, _PRELU, _RANGE_TEST],
    "vanishing_gradient": [Prescription(["model.activation=leaky_relu", "model.init=he"],
                                        "Use LeakyReLU with He initialisation.")],
    "saturated_activation": [_ELU],
    "exploding_gradient": [_RANGE_TEST],
    "oscillating_loss": [_RANGE_TEST],
    "loss_stagnation": [_RANGE_TEST, Prescription(["model.batchnorm=true"], "Add BatchNorm.")],
    "lagging_class": [
        Prescription(["train.loss=weighted_cross_entropy"], "Weight the loss by inverse class frequency."),
        Prescription(["data.balanced_sampling=true"], "Oversample: every class equally often per epoch."),
    ],
    "overfitting": [Prescription(["model.head=[]"], "Use a simpler head: one linear layer, no hidden layer.")],
}


def prescriptions_for(finding: Finding) -> list[Prescription]:
    """The Doctor's prescriptions for ``finding`` followed by the supplements, without repeats."""
    seen: set[tuple[str, ...]] = set()
    ordered = []
    for prescription in [*finding.prescriptions, *SUPPLEMENTS.get(finding.symptom, [])]:
        key = tuple(sorted(prescription.config))
        if key not in seen:
            seen.add(key)
            ordered.append(prescription)
    return ordered


def changes_config(cfg: Config, changes: list[str]) -> bool:
    """Whether ``changes`` are valid for ``cfg`` and change it (a range test always gives a new lr)."""
    if LR_RANGE_TEST in changes:
        return True
    try:
        return cfg.with_overrides(changes) != cfg
    except UserError:  # the change does not fit this configuration
        return False
