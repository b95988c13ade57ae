from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import TrainingHistory
from cnnclinic.doctor.symptoms._shared import (
    activation_swap,
    batchnorm,
    learning_rate_evidence,
    overshooting_steps,
    scaled_lr,
    smaller_lr,
)
from cnnclinic.doctor.symptoms.base import Symptom, register


@register
class DyingReLU(Symptom):
    """Dying ReLU: many ReLU units output zero for every input, so they get no gradient and never recover.

    **Theory.** ReLU's slope is 0 for negative inputs. A large update (too-high learning rate) or a
    strongly negative bias can push a unit's pre-activation below zero for all inputs; from then on it
    outputs 0, passes no gradient, and is dead. With most units dead the loss goes flat: the flat loss is
    the echo, the dead units the cause.

    **Evidence.** At every sampled step a forward hook on each ReLU (module or functional call) marks the
    units (conv channels / linear features) that output zero for every sample and position of the batch. A
    unit is *dead* when it was zero in each of the last ``samples`` sampled batches (so a small batch does
    not fake it). Reported when the dead units make up at least ``dead_unit_fraction`` of all ReLU units, or
    at least ``layer_dead_fraction`` of one layer (a fully dead layer blocks the whole network). Only ReLUs on
    the main path count: the narrow bottleneck of an attention gate (squeeze-and-excitation, CBAM) is often
    silent without blocking anything, since the gate still passes the features it scales.

    **Root cause.** The largest update-to-weight ratio ‖Δw‖/‖w‖ of any layer at any sampled step after the
    first (``peak_update_ratio``) tells a too-high learning rate from other causes (a negative bias, a bad
    init): at ``lr_update_ratio`` (15% of a layer's weights in one step) or more, the learning rate killed
    the units (``learning_rate_too_high``). Measured: healthy set-ups peak at 0.01-0.05 (the eight of
    ``tests/test_doctor_cases.py``; the demo's base fish CNN at Adam 1e-3: 0.02), Adam 5e-3 at batch 8, which
    trains to 77-98%, at 0.11; the demo's dying-ReLU case (Adam lr 0.05) at 0.38, SGD lr 1.0 with momentum
    0.9 on digits at 0.49; units killed by a bias of -3 at 0.

    **Prescriptions.** LeakyReLU (``model.activation=leaky_relu``); a 10x smaller learning rate; He
    initialisation; BatchNorm. When the learning rate is the cause, a 10x smaller learning rate *together
    with* LeakyReLU comes first: a leaky slope alone does not save units that the same large steps keep
    pushing around (demo case, 5 epochs: LeakyReLU at lr 0.05 stays at 20% validation accuracy, LeakyReLU
    at lr 0.005 reaches 80%), and the architecture change restarts from fresh weights, not dead ones.
    """

    id = "dying_relu"

    @dataclass
    class Thresholds:
        dead_unit_fraction: float = field(default=0.5, metadata={"help": "dead share of all ReLU units"})
        layer_dead_fraction: float = field(default=0.9, metadata={"help": "dead share of a single layer"})
        samples: int = field(default=3, metadata={"help": "consecutive sampled batches a unit stays zero"})
        lr_update_ratio: float = field(default=0.15, metadata={"help": "peak update/weight ratio: LR is the cause"})

    def check(self, history: TrainingHistory, t: Thresholds) -> Finding | None:
        per_layer: dict[str, float] = {}
        dead_units = total_units = 0
        for name, masks in history.dead_masks.items():
            if len(masks) < t.samples or name in history.gate_members:
                continue
            dead = np.logical_and.reduce(list(masks)[-t.samples :])
            per_layer[name] = float(dead.mean())
            dead_units += int(dead.sum())
            total_units += dead.size
        if not total_units:
            return None
        overall = dead_units / total_units
        worst = max(per_layer, key=per_layer.__getitem__)
        if overall < t.dead_unit_fraction and per_layer[worst] < t.layer_dead_fraction:
            return None
        evidence = {
            "dead_unit_fraction": overall,
            "dead_fraction_per_layer": per_layer,
            "worst_layer": worst,
            "lr": history.lr,
            **learning_rate_evidence(history, t.lr_update_ratio),
        }
        prescriptions = [
            activation_swap(),
            smaller_lr(history),
            Prescription(["model.init=he"], "Initialise with He (Kaiming) initialisation and zero biases."),
            batchnorm(),
        ]
        why = ""
        if evidence["learning_rate_too_high"]:
            why = overshooting_steps(evidence)
            prescriptions.insert(0, Prescription(
                [scaled_lr(history, 0.1), "model.activation=leaky_relu"],
                "Divide the learning rate by 10 and use LeakyReLU, from fresh weights: smaller steps stop killing "
                "units, and the leaky slope lets any that stall recover.",
            ))
        return history.finding(
            self.id,
            "warning",
            evidence,
            f"{overall:.0%} of the ReLU units (and {per_layer[worst]:.0%} of layer '{worst}') output zero for "
            f"every input, so they pass no gradient and have stopped learning.{why}",
            prescriptions,
        )
