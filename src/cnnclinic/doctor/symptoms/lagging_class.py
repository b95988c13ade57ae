from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import EpochRecord, TrainingHistory
from cnnclinic.doctor.symptoms._shared import median
from cnnclinic.doctor.symptoms.base import Symptom, register


def short_of_images(facts: dict | None) -> bool:
    """Whether the data doctor found the class short of images (``small_class`` or ``class_imbalance``)."""
    flagged = (facts or {}).get("data_findings") or []
    return "small_class" in flagged or "class_imbalance" in flagged


def data_reasons(facts: dict) -> list[str]:
    """What in the data explains a lagging class (``class_data_facts`` keys), as phrases about it."""
    reasons = []
    flagged = facts.get("data_findings") or []
    if short_of_images(facts):
        reasons.append(f"has only {facts.get('train_images', 'few')} training images")
    if str(facts.get("blur_rank", "")).startswith("1 of "):
        reasons.append("is the blurriest class")
    if "image_quality" in flagged:
        reasons.append("has photos of poor quality")
    suspicious = facts.get("suspicious_labels")
    if isinstance(suspicious, int) and suspicious > 0:
        reasons.append(f"has {suspicious} label(s) that look wrong")
    return reasons


@register
class LaggingClass(Symptom):
    """Lagging class: one class is recognised far worse than the others.

    **Theory.** A class that looks like another one (a similar species), has few or noisy examples, or
    whose distinguishing detail is small stays behind while the others are learned; its one-vs-rest ROC
    AUC stays below the others', or its images are mostly predicted as one or two partner classes.

    **Evidence.** Each epoch with validation logits: one-vs-rest ROC AUC per class (scikit-learn
    ``roc_auc_score`` on the softmax probabilities), the confusion matrix and per-class recall. A class lags
    in an epoch when it has at least ``min_class_samples`` validation images, the others are learned (their
    median AUC is at least ``min_others_auc``) and either its AUC is ``auc_gap`` below the others' median,
    or its AUC error (1 - AUC) is ``error_ratio`` times the others' median error and at least ``min_gap``
    below in AUC, or its recall is ``recall_gap`` below the others' median recall and its misses are
    ``recall_error_ratio`` times theirs (noisy labels: the ranking survives, the arg-max does not). In the
    first epoch and in epochs in which the training loss still fell by more than ``max_loss_drop`` only a
    severe lag counts (AUC ``auc_gap`` behind, or the error-ratio rule with recall twice ``recall_gap``
    behind): a class a little behind then is merely learned later and catches up. Reported when the class
    lags in the latest epoch and in at least two thirds of the persistence window: the last ``epochs``
    epochs, extended back until they span ``min_steps`` training steps (very short epochs). The partners
    are the classes it is most confused with (both directions of the confusion matrix).

    When the data doctor ran before training (``Doctor(data_facts=...)``, wired by the trainer), the
    evidence holds what the data says about the class (``evidence.data``: image counts, blur rank,
    suspicious labels) and the explanation names it when it explains the lag (few images, the blurriest
    class, labels that look wrong).

    **Prescriptions.** Stronger augmentation for that class (``data.augment.strong_classes=[name]``);
    focal loss with balanced class weights; SE channel attention; a stronger backbone
    (``model.arch=efficientnet_b0``). When the data doctor found the class short of images (``small_class``,
    ``class_imbalance``), class weights together with oversampling come first: the rare class then counts as
    much and is seen as often as the others, which augmentation cannot make up for. Measured on the demo's
    case 4 (bream's twin with 30 training photos against 225, plain cross-entropy; its AUC, mean of the last
    3 of 12 epochs, seeds 0/1/2): sick 0.85/0.90/0.82; class weights and oversampling 0.99/0.99/0.98; class
    weights alone 0.97/0.97/0.95; oversampling alone 0.94/0.94/0.97; focal loss with balanced weights 0.91
    (seed 0); targeted augmentation made it worse wherever it was tried. That cure asks for fresh weights
    (``Prescription.fresh_weights``): continued from the imbalanced run's weights after 3 epochs it lifted
    the class to 0.94 in 8 more epochs, from fresh weights to 0.98-0.99 (seeds 0-2): the features the
    imbalanced run shaped serve the common classes.
    """

    id = "lagging_class"

    @dataclass
    class Thresholds:
        auc_gap: float = field(default=0.2, metadata={"help": "AUC below the others' median"})
        error_ratio: float = field(default=10.0, metadata={"help": "(1 - AUC) / others' median (1 - AUC)"})
        min_gap: float = field(default=0.05, metadata={"help": "least AUC gap for the error-ratio rule"})
        recall_gap: float = field(default=0.3, metadata={"help": "recall below the others' median recall"})
        recall_error_ratio: float = field(default=8.0, metadata={"help": "(1 - recall) / others' median"})
        min_others_auc: float = field(default=0.8, metadata={"help": "others' median AUC (they are learned)"})
        min_class_samples: int = field(default=5, metadata={"help": "validation images of the class"})
        epochs: int = field(default=3, metadata={"help": "epochs in the persistence window"})
        min_steps: int = field(default=60, metadata={"help": "training steps the persistence window spans"})
        max_loss_drop: float = field(default=0.25, metadata={"help": "epoch's relative train-loss drop"})

    def _lagging(self, record: EpochRecord, t: Thresholds, learning_fast: bool) -> dict[str, dict]:
        """Lagging classes of one epoch -> their evidence. While the model still learns fast only a severe lag
        counts (a wide AUC gap, or a clear AUC gap with a recall twice ``recall_gap`` behind): a class a
        little behind then is merely learned later and catches up."""
        aucs = record.val_auc or {}
        counts = record.val_counts or []
        confusion = record.confusion or []
        names = list(aucs)
        recalls = {
            name: confusion[i][i] / sum(confusion[i]) if i < len(confusion) and sum(confusion[i]) else float("nan")
            for i, name in enumerate(names)
        }
        result: dict[str, dict] = {}
        for index, (name, auc) in enumerate(aucs.items()):
            others = [v for other, v in aucs.items() if other != name]
            if not others:
                continue
            others_median = median(others)
            samples = counts[index] if index < len(counts) else 0
            if samples < t.min_class_samples or others_median < t.min_others_auc:
                continue
            gap = others_median - auc
            others_recall = median([v for other, v in recalls.items() if other != name])
            recall = recalls[name]
            recall_gap = others_recall - recall
            relative = gap >= t.min_gap and (1 - auc) >= t.error_ratio * max(1 - others_median, 1e-6)
            severe = gap >= t.auc_gap or (relative and recall_gap >= 2 * t.recall_gap)
            missed = recall_gap >= t.recall_gap and (1 - recall) >= t.recall_error_ratio * max(1 - others_recall, 1e-6)
            if severe or (not learning_fast and (relative or missed)):
                result[name] = {
                    "auc": auc,
                    "others_median_auc": others_median,
                    "others_min_auc": min(others),
                    "auc_gap": gap,
                    "recall": recall,
                    "others_median_recall": others_recall,
                    "val_samples": samples,
                }
        return result

    def check(self, history: TrainingHistory, t: Thresholds) -> list[Finding]:
        if not history.at_epoch_end or not history.epochs[-1].val_auc:
            return []
        window: list[EpochRecord] = []
        for record in reversed(history.epochs):
            window.append(record)
            if len(window) >= t.epochs and sum(r.steps for r in window) >= t.min_steps:
                break
        else:
            return []
        previous = {e.epoch: e.train_loss for e in history.epochs}
        verdicts = []
        for record in window:
            before = previous.get(record.epoch - 1)
            learning_fast = before is None or (before > 0 and (before - record.train_loss) / before > t.max_loss_drop)
            verdicts.append(self._lagging(record, t, learning_fast) if record.val_auc else {})
        needed = math.ceil(len(window) * 2 / 3)
        return [
            self._finding(history, history.epochs[-1], name, evidence)
            for name, evidence in verdicts[0].items()
            if sum(name in verdict for verdict in verdicts) >= needed
        ]

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
        facts = history.data_facts(name) if history.data_facts is not None else None
        reasons = data_reasons(facts) if facts else []
        if facts:
            evidence["data"] = facts
        why = f" The data explains it: '{name}' {' and '.join(reasons)}." if reasons else ""
        prescriptions = [
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
        ]
        if short_of_images(facts):
            prescriptions.insert(0, Prescription(
                ["train.loss=weighted_cross_entropy", "data.balanced_sampling=true"],
                f"Weight the loss by inverse class frequency and oversample '{name}', so that it counts as much "
                "and is seen as often as the others, from fresh weights.",
                fresh_weights=True,
            ))
        return history.finding(
            "lagging_class",
            "warning",
            evidence,
            f"Class '{name}' is recognised far worse than the others (AUC {evidence['auc']:.2f} vs "
            f"{evidence['others_median_auc']:.2f}, recall {evidence['recall']:.0%} vs "
            f"{evidence['others_median_recall']:.0%}){partner_text}.{why}",
            prescriptions,
            subject=name,
        )
