from __future__ import annotations

import json
from dataclasses import dataclass, field

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import EpochRecord, TrainingHistory
from cnnclinic.doctor.symptoms._shared import median
from cnnclinic.doctor.symptoms.base import Symptom, register


@register
class LaggingClass(Symptom):
    """Lagging class: one class is recognised far worse than the others.

    **Theory.** A class that looks like another one (a similar species), has few or noisy examples, or
    whose distinguishing detail is small stays behind while the others are learned; its one-vs-rest ROC
    AUC stays below the others' and its images are predicted as one or two partner classes.

    **Evidence.** Each epoch with validation logits: one-vs-rest ROC AUC per class (scikit-learn
    ``roc_auc_score`` on the softmax probabilities) and the confusion matrix. A class lags when it has at
    least ``min_class_samples`` validation images, the median AUC of the other classes is at least
    ``min_others_auc``, and either its AUC is ``auc_gap`` below that median, or its error (1 - AUC) is at
    least ``error_ratio`` times the others' median error and at least ``min_gap`` below in AUC. It must
    hold on ``epochs`` consecutive epochs, or once when the class has ``clear_samples`` validation images
    and the gap is twice ``auc_gap``. The partners are the classes it is most confused with (both
    directions of the confusion matrix).

    **Prescriptions.** Stronger augmentation for that class (``data.augment.strong_classes=[name]``);
    focal loss with balanced class weights; SE channel attention; a stronger backbone
    (``model.arch=efficientnet_b0``).
    """

    id = "lagging_class"

    @dataclass
    class Thresholds:
        auc_gap: float = field(default=0.2, metadata={"help": "AUC below the others' median"})
        error_ratio: float = field(default=10.0, metadata={"help": "(1 - AUC) / others' median (1 - AUC)"})
        min_gap: float = field(default=0.05, metadata={"help": "least AUC gap for the error-ratio rule"})
        min_others_auc: float = field(default=0.8, metadata={"help": "others' median AUC (they are learned)"})
        min_class_samples: int = field(default=5, metadata={"help": "validation images of the class"})
        clear_samples: int = field(default=30, metadata={"help": "images to decide from one epoch"})
        epochs: int = field(default=2, metadata={"help": "consecutive epochs it must hold"})

    def _lagging(self, record: EpochRecord, t: Thresholds) -> dict[str, dict]:
        """Lagging classes of one epoch -> their evidence."""
        aucs = record.val_auc or {}
        counts = record.val_counts or []
        names = list(aucs)
        result: dict[str, dict] = {}
        for name, auc in aucs.items():
            index = names.index(name)
            others = [v for other, v in aucs.items() if other != name]
            if len(others) < 1:
                continue
            others_median = median(others)
            samples = counts[index] if index < len(counts) else 0
            gap = others_median - auc
            if samples < t.min_class_samples or others_median < t.min_others_auc:
                continue
            wide = gap >= t.auc_gap
            relative = gap >= t.min_gap and (1 - auc) >= t.error_ratio * max(1 - others_median, 1e-6)
            if wide or relative:
                result[name] = {
                    "auc": auc,
                    "others_median_auc": others_median,
                    "others_min_auc": min(others),
                    "auc_gap": gap,
                    "val_samples": samples,
                }
        return result

    def check(self, history: TrainingHistory, t: Thresholds) -> list[Finding]:
        records = [e for e in history.epochs if e.val_auc]
        if not records or records[-1] is not history.epochs[-1]:
            return []
        latest = self._lagging(records[-1], t)
        earlier = [self._lagging(r, t) for r in records[-t.epochs : -1]] if t.epochs > 1 else []
        findings = []
        for name, evidence in latest.items():
            persistent = len(earlier) == t.epochs - 1 and all(name in e for e in earlier)
            clear = evidence["val_samples"] >= t.clear_samples and evidence["auc_gap"] >= 2 * t.auc_gap
            if persistent or clear:
                findings.append(self._finding(history, records[-1], name, evidence))
        return findings

    @staticmethod
    def _finding(history: TrainingHistory, record: EpochRecord, name: str, evidence: dict) -> Finding:
        index = history.class_names.index(name)
        confusion = record.confusion or []
        row = confusion[index] if index < len(confusion) else []
        total = sum(row) or 1
        # Confusions both ways: its images predicted as c, and c's images predicted as it.
        mixed = {
            c: row[c] + confusion[c][index]
            for c in range(len(row))
            if c != index and row[c] + confusion[c][index] > 0
        }
        partners = sorted(mixed, key=mixed.__getitem__, reverse=True)[:3]
        evidence = dict(
            evidence,
            **{
                "class": name,
                "confused_with": [history.class_names[c] for c in partners],
                "predicted_as": {history.class_names[c]: row[c] / total for c in range(len(row)) if row[c]},
            },
        )
        partner_text = f", mostly with {', '.join(evidence['confused_with'][:2])}" if partners else ""
        return history.finding(
            "lagging_class",
            "warning",
            evidence,
            f"Class '{name}' is recognised far worse than the others (AUC {evidence['auc']:.2f} vs "
            f"{evidence['others_median_auc']:.2f}){partner_text}.",
            [
                Prescription(
                    [f"data.augment.strong_classes={json.dumps([name])}"],
                    f"Augment the images of '{name}' more strongly (and collect more of them).",
                ),
                Prescription(
                    ["train.loss=focal", "train.focal_alpha=balanced"],
                    "Use focal loss with balanced class weights, which focuses training on hard examples.",
                ),
                Prescription(["model.attention=se"], "Add squeeze-and-excitation channel attention."),
                Prescription(["model.arch=efficientnet_b0"], "Use a stronger backbone."),
            ],
            subject=name,
        )
