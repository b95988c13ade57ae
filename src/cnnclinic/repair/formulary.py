"""The cures auto-repair can apply for a finding, in the order it tries them.

The Doctor's own prescriptions come first, in its order, except where the evidence says which works best:
a lagging class that the data doctor found short of images (``small_class``, ``class_imbalance``) gets the
cures that rebalance the classes before targeted augmentation, which cannot make up for missing photos;
first of them class weights together with oversampling. Measured on the demo's case 4 (species_x, bream's
twin, 30 training photos against 225, plain cross-entropy; species_x AUC, mean of the last 3 of 12 epochs,
seeds 0/1/2): sick 0.85/0.90/0.82; class weights and oversampling 0.99/0.99/0.98; class weights alone
0.97/0.97/0.95; oversampling alone 0.94/0.94/0.97; focal loss with balanced weights 0.91 (seed 0), and
0.94 with oversampling; targeted augmentation made it worse wherever it was tried. After them come the other cures the analysis
names for the same pathology that the Doctor does not list (ELU/PReLU swaps, class weights,
oversampling, a simpler head, a learning rate from a range test), so every cure is available to
auto-repair. ``train.lr=range_test`` is a marker, not a config value: auto-repair replaces it by the
learning rate that ``training.lr_find.lr_range_test`` suggests.
"""

from __future__ import annotations

from cnnclinic.config import Config, needs_fresh_weights
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
        Prescription(["train.loss=weighted_cross_entropy", "data.balanced_sampling=true"],
                     "Weight the loss by inverse class frequency and oversample: the rare class counts and is seen "
                     "as often as the others."),
        Prescription(["train.loss=weighted_cross_entropy"], "Weight the loss by inverse class frequency."),
        Prescription(["data.balanced_sampling=true"], "Oversample: every class equally often per epoch."),
    ],
    "overfitting": [Prescription(["model.head=[]"], "Use a simpler head: one linear layer, no hidden layer.")],
}


# Config keys of the cures that rebalance the classes.
_REBALANCING = ("train.loss=", "train.focal_alpha=", "data.balanced_sampling=")
# What the data doctor says about a class that rebalancing cures.
_FEW_IMAGES = {"small_class", "class_imbalance"}


def prescriptions_for(finding: Finding) -> list[Prescription]:
    """The Doctor's prescriptions for ``finding`` followed by the supplements, without repeats; for a
    lagging class short of images, the rebalancing cures first."""
    seen: set[tuple[str, ...]] = set()
    ordered = []
    for prescription in [*finding.prescriptions, *SUPPLEMENTS.get(finding.symptom, [])]:
        key = tuple(sorted(prescription.config))
        if key not in seen:
            seen.add(key)
            ordered.append(prescription)
    if finding.symptom == "lagging_class" and _FEW_IMAGES & set(finding.evidence.get("data", {}).get("data_findings") or []):
        # sorted is stable: the Doctor's order is kept within each group.
        ordered.sort(key=_rank_for_few_images)
    return ordered


def _rank_for_few_images(prescription: Prescription) -> int:
    """0: weights the loss and oversamples (the measured best for a rare class), 1: other rebalancing, 2: the rest."""
    rebalancing = [c for c in prescription.config if c.startswith(_REBALANCING)]
    if not rebalancing:
        return 2
    weights_and_oversamples = any(c.startswith("train.loss=") for c in rebalancing) and any(
        c.startswith("data.balanced_sampling=") for c in rebalancing
    )
    return 0 if weights_and_oversamples else 1


def changes_config(cfg: Config, changes: list[str]) -> bool:
    """Whether ``changes`` are valid for ``cfg`` and change it (a range test always gives a new lr)."""
    if LR_RANGE_TEST in changes:
        return True
    try:
        return cfg.with_overrides(changes) != cfg
    except UserError:  # the change does not fit this configuration
        return False
