"""The ``class_imbalance`` data check."""

from __future__ import annotations

from dataclasses import dataclass, field

from cnnclinic.datadoctor.base import DataCheck, register
from cnnclinic.datadoctor.view import DataView
from cnnclinic.doctor.finding import Finding, Prescription


@register
class ClassImbalance(DataCheck):
    """Some classes have many times more training images than others.

    Theory: with plain cross-entropy the gradient is dominated by the large classes; a rare class is
    predicted rarely and learned last (or never). Measured here from the data set's counts before
    training; the training Doctor's ``class_imbalance`` (from the targets it sees) is dropped for a
    run where this one is reported, so the two never appear together.

    Evidence: training images per class, the imbalance ratio (largest / smallest class), the rarest.

    Threshold: ratio >= ``ratio``.

    Prescriptions: ``data.balanced_sampling=true`` (each batch sees classes equally often) or
    ``train.loss=weighted_cross_entropy``; and collect more images of the rarest class.
    """

    id = "class_imbalance"

    @dataclass(frozen=True)
    class Thresholds:
        ratio: float = field(default=3.0, metadata={"help": "largest / smallest training class"})

    def check(self, view: DataView, thresholds: Thresholds) -> list[Finding]:
        counts = {name: int(n) for name, n in zip(view.class_names, view.counts("train"))}
        present = {name: n for name, n in counts.items() if n > 0}
        if len(present) < 2:
            return []
        rarest = min(present, key=present.__getitem__)
        largest = max(present, key=present.__getitem__)
        ratio = present[largest] / present[rarest]
        if ratio < thresholds.ratio:
            return []
        return [
            self.finding(
                severity="warning",
                evidence={"train_counts": counts, "imbalance_ratio": ratio, "rarest": rarest, "largest": largest},
                explanation=(
                    f"{largest} has {ratio:.1f}x as many training images as {rarest} "
                    f"({present[largest]} vs {present[rarest]}): the loss is dominated by the large classes "
                    "and the rare one is learned last, if at all."
                ),
                prescriptions=[
                    Prescription(
                        ["data.balanced_sampling=true"], "Sample batches so every class is seen equally often."
                    ),
                    Prescription(["train.loss=weighted_cross_entropy"], "Weight the loss by inverse class frequency."),
                    Prescription([], f"Collect more {rarest} photos."),
                ],
            )
        ]
