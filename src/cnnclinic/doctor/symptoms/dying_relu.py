from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import TrainingHistory
from cnnclinic.doctor.symptoms._shared import activation_swap, batchnorm, scaled_lr
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

    **Prescriptions.** LeakyReLU (``model.activation=leaky_relu``); a 10x smaller learning rate; He
    initialisation; BatchNorm.
    """

    id = "dying_relu"

    @dataclass
    class Thresholds:
        dead_unit_fraction: float = field(default=0.5, metadata={"help": "dead share of all ReLU units"})
        layer_dead_fraction: float = field(default=0.9, metadata={"help": "dead share of a single layer"})
        samples: int = field(default=3, metadata={"help": "consecutive sampled batches a unit stays zero"})

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
        }
        return history.finding(
            self.id,
            "warning",
            evidence,
            f"{overall:.0%} of the ReLU units (and {per_layer[worst]:.0%} of layer '{worst}') output zero for "
            "every input, so they pass no gradient and have stopped learning.",
            [
                activation_swap(),
                Prescription([scaled_lr(history, 0.1)], "Use a 10x smaller learning rate."),
                Prescription(["model.init=he"], "Initialise with He (Kaiming) initialisation and zero biases."),
                batchnorm(),
            ],
        )
