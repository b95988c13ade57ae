from __future__ import annotations

from dataclasses import dataclass, field

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import TrainingHistory
from cnnclinic.doctor.symptoms.base import Symptom, register


@register
class ClassImbalance(Symptom):
    """Class imbalance: some classes are seen far more often than others during training.

    **Theory.** With skewed class frequencies the loss is dominated by the frequent classes; the model
    learns to favour them and the rare classes are recognised poorly.

    **Evidence.** The targets passed to ``after_backward``, counted per class over all epochs (so a
    balanced sampler shows as balanced). Reported at the end of an epoch when the most frequent class was
    seen at least ``max_ratio`` times as often as the least frequent one, once at least
    ``min_samples_per_class`` x num_classes targets have been seen.

    **Prescriptions.** Balanced sampling (``data.balanced_sampling=true``); class-weighted cross-entropy;
    focal loss with balanced class weights.
    """

    id = "class_imbalance"

    @dataclass
    class Thresholds:
        max_ratio: float = field(default=3.0, metadata={"help": "most / least frequent class count"})
        min_samples_per_class: int = field(default=20, metadata={"help": "targets per class before judging"})

    def check(self, history: TrainingHistory, t: Thresholds) -> Finding | None:
        counts = history.class_counts
        if counts is None or counts.sum() < t.min_samples_per_class * history.num_classes:
            return None
        ratio = counts.max() / max(counts.min(), 1)
        if counts.min() > 0 and ratio < t.max_ratio:
            return None
        rare, common = int(counts.argmin()), int(counts.argmax())
        names = history.class_names
        evidence = {
            "ratio": float(ratio) if counts.min() > 0 else "inf",
            "counts": {names[c]: int(n) for c, n in enumerate(counts)},
            "rarest_class": names[rare],
            "most_common_class": names[common],
        }
        return history.finding(
            self.id,
            "warning",
            evidence,
            (
                f"Class '{names[common]}' was seen {ratio:.1f}x as often as class '{names[rare]}'"
                if counts.min() > 0
                else f"Class '{names[rare]}' never appeared among the training targets"
            )
            + ", so the model learns to favour the frequent classes.",
            [
                Prescription(["data.balanced_sampling=true"], "Sample every class equally often in each epoch."),
                Prescription(["train.loss=weighted_cross_entropy"], "Weight the loss by inverse class frequency."),
                Prescription(
                    ["train.loss=focal", "train.focal_alpha=balanced"],
                    "Use focal loss with balanced class weights.",
                ),
            ],
        )
