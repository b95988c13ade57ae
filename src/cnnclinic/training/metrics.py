"""Classification metrics computed from predicted probabilities with scikit-learn."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score


@dataclass
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int
    # One-vs-rest AUC-ROC; None when the class is absent from the targets (or is the only one present).
    auc: float | None


@dataclass
class ClassificationMetrics:
    accuracy: float
    per_class: dict[str, ClassMetrics]
    # Mean of the defined per-class AUCs; None when no class has one.
    macro_auc: float | None
    # Rows are true classes, columns predicted classes, in class_names order.
    confusion: list[list[int]]

    @property
    def auc(self) -> dict[str, float | None]:
        return {name: metrics.auc for name, metrics in self.per_class.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _one_vs_rest_auc(scores: np.ndarray, is_class: np.ndarray) -> float | None:
    # AUC needs both positives and negatives.
    if is_class.all() or not is_class.any():
        return None
    return float(roc_auc_score(is_class, scores))


def classification_metrics(probs: Any, targets: Any, class_names: list[str]) -> ClassificationMetrics:
    """Accuracy, per-class precision/recall/F1/AUC, macro AUC and confusion matrix.

    ``probs`` is N x K (rows are class probabilities or any scores ranked like them),
    ``targets`` N integer labels in ``range(K)``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    num_classes = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ValueError(f"probs must be N x {num_classes}, got shape {probs.shape}")
    if probs.shape[0] != targets.shape[0]:
        raise ValueError(f"{probs.shape[0]} predictions but {targets.shape[0]} targets")
    labels = list(range(num_classes))
    predictions = probs.argmax(axis=1)
    with warnings.catch_warnings():
        # A class never predicted has undefined precision; zero is the honest value here.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, support = precision_recall_fscore_support(
            targets, predictions, labels=labels, zero_division=0
        )
    per_class = {
        name: ClassMetrics(
            precision=float(precision[k]),
            recall=float(recall[k]),
            f1=float(f1[k]),
            support=int(support[k]),
            auc=_one_vs_rest_auc(probs[:, k], targets == k),
        )
        for k, name in enumerate(class_names)
    }
    defined = [m.auc for m in per_class.values() if m.auc is not None]
    return ClassificationMetrics(
        accuracy=float(accuracy_score(targets, predictions)) if len(targets) else 0.0,
        per_class=per_class,
        macro_auc=float(np.mean(defined)) if defined else None,
        confusion=confusion_matrix(targets, predictions, labels=labels).tolist(),
    )
