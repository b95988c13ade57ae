"""The ``small_class`` data check."""

from __future__ import annotations

from dataclasses import dataclass, field

from cnnclinic.datadoctor.base import DataCheck, register
from cnnclinic.datadoctor.view import DataView
from cnnclinic.doctor.finding import Finding, Prescription


@register
class SmallClass(DataCheck):
    """A class with too few images to learn, or too few validation images to judge.

    Theory: a handful of training images cannot teach a class from scratch, and a handful of
    validation images makes its per-class accuracy and AUC a coin toss (one image moves the AUC by
    1/n of the positives), so a "lagging class" verdict on it is not trustworthy.

    Evidence: the class's train and validation counts and the minimums.

    Thresholds: fewer than ``min_train`` training images, or fewer than ``min_val`` validation images.

    Prescriptions: collect more of the class; ``data.augment.strong_classes=[class]`` to stretch the
    few images; when only validation is short, a larger ``data.val_fraction``.
    """

    id = "small_class"

    @dataclass(frozen=True)
    class Thresholds:
        min_train: int = field(default=20, metadata={"help": "fewest training images to learn a class"})
        min_val: int = field(default=10, metadata={"help": "fewest validation images for a per-class AUC"})

    def check(self, view: DataView, thresholds: Thresholds) -> list[Finding]:
        train, val = view.counts("train"), view.counts("val")
        has_val = bool((view.split == "val").any())
        findings = []
        for index, name in enumerate(view.class_names):
            short_train = train[index] < thresholds.min_train
            short_val = has_val and val[index] < thresholds.min_val
            if not (short_train or short_val):
                continue
            problems = []
            if short_train:
                problems.append(
                    f"{train[index]} training images (fewer than {thresholds.min_train} is too few to learn)"
                )
            if short_val:
                problems.append(
                    f"{val[index]} validation images (fewer than {thresholds.min_val} makes its AUC a coin toss)"
                )
            prescriptions = [
                Prescription([], f"Collect more {name} photos."),
                Prescription([f"data.augment.strong_classes=[{name}]"], f"Augment {name} harder than the others."),
            ]
            if short_val and not short_train:
                prescriptions.append(Prescription(["data.val_fraction=0.3"], "Hold out more images for validation."))
            findings.append(
                self.finding(
                    severity="warning",
                    subject=name,
                    evidence={
                        "train_images": int(train[index]),
                        "val_images": int(val[index]),
                        "min_train": thresholds.min_train,
                        "min_val": thresholds.min_val,
                    },
                    explanation=f"{name} has {' and '.join(problems)}.",
                    prescriptions=prescriptions,
                )
            )
        return findings
