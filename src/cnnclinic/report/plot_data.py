"""The numbers behind each plot of the report, computed from plain run-directory records.

Every function here takes lists of dicts (the JSON lines of a run directory) or numpy arrays and
returns plain data, so the plots can be checked without drawing them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from cnnclinic.training.metrics import classification_metrics

# Probabilities are clipped here before taking the log, so a confident mistake costs a finite loss.
_PROB_FLOOR = 1e-7


@dataclass
class LayerMatrix:
    """One per-layer statistic over time: ``values[i, j]`` is layer ``layers[i]`` at step ``steps[j]``."""

    layers: list[str]
    steps: list[int]
    # NaN where a layer was not measured at a step.
    values: np.ndarray


def layer_stat_matrix(layer_stats: list[dict[str, Any]], key: str) -> LayerMatrix:
    """Arrange ``layer_stats.jsonl`` records' ``key`` ({layer: x}) as a layers x steps matrix.

    Layers keep the order in which they first appear (the doctor records them input to output);
    records sharing a step are merged, the later one winning.
    """
    by_step: dict[int, dict[str, float]] = {}
    layers: dict[str, None] = {}
    for record in layer_stats:
        per_layer = record.get(key) or {}
        if not per_layer:
            continue
        by_step.setdefault(int(record["step"]), {}).update(per_layer)
        layers.update(dict.fromkeys(per_layer))
    steps = sorted(by_step)
    layer_names = list(layers)
    values = np.full((len(layer_names), len(steps)), np.nan)
    for column, step in enumerate(steps):
        for row, layer in enumerate(layer_names):
            value = by_step[step].get(layer)
            if value is not None:
                values[row, column] = float(value)
    return LayerMatrix(layer_names, steps, values)


def gradient_flow_matrix(layer_stats: list[dict[str, Any]]) -> LayerMatrix:
    """Per-layer gradient norm over steps (layers on rows, input layer first)."""
    return layer_stat_matrix(layer_stats, "grad_norm")


def first_last_gradient_ratio(matrix: LayerMatrix) -> list[float]:
    """Per step: gradient norm of the first layer / that of the last layer (NaN where undefined).

    Far below 1 means the gradient fades on its way back to the input: vanishing gradients.
    """
    ratios: list[float] = []
    if len(matrix.layers) < 2:
        return [math.nan] * len(matrix.steps)
    for first, last in zip(matrix.values[0], matrix.values[-1]):
        ratios.append(float(first / last) if last > 0 and not math.isnan(first) else math.nan)
    return ratios


@dataclass
class TrainingCurves:
    epochs: list[int]
    train_loss: list[float]
    val_loss: list[float]
    train_acc: list[float]
    val_acc: list[float]


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def training_curves(metrics: list[dict[str, Any]]) -> TrainingCurves:
    """Train vs validation loss and accuracy per epoch from ``metrics.jsonl`` records."""
    return TrainingCurves(
        epochs=[int(m["epoch"]) for m in metrics],
        train_loss=[_number(m.get("train_loss")) for m in metrics],
        val_loss=[_number(m.get("val_loss")) for m in metrics],
        train_acc=[_number(m.get("train_acc")) for m in metrics],
        val_acc=[_number(m.get("val_acc")) for m in metrics],
    )


def best_epoch_record(metrics: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch with the highest validation accuracy (the first one on ties), or None."""
    scored = [m for m in metrics if m.get("val_acc") is not None]
    return max(scored, key=lambda m: m["val_acc"]) if scored else None


def learning_rate_curve(steps: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """(step, lr) pairs from ``steps.jsonl`` records."""
    pairs = [(int(s["step"]), float(s["lr"])) for s in steps if s.get("lr") is not None]
    return [step for step, _ in pairs], [lr for _, lr in pairs]


@dataclass
class RocCurve:
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


def roc_curves(probs: np.ndarray, targets: np.ndarray, class_names: list[str]) -> dict[str, RocCurve]:
    """One-vs-rest ROC curve per class; classes without both positives and negatives are left out."""
    per_class_auc = classification_metrics(probs, targets, class_names).auc
    curves: dict[str, RocCurve] = {}
    for k, name in enumerate(class_names):
        auc = per_class_auc[name]
        if auc is None:
            continue
        fpr, tpr, _ = roc_curve(targets == k, probs[:, k])
        curves[name] = RocCurve(fpr=fpr, tpr=tpr, auc=auc)
    return curves


@dataclass
class ConfusedPair:
    true_class: str
    predicted_class: str
    count: int
    # Share of the true class's images that went to predicted_class.
    fraction: float


def most_confused_pairs(confusion: Any, class_names: list[str], k: int = 5) -> list[ConfusedPair]:
    """The ``k`` largest off-diagonal cells of a confusion matrix (rows true, columns predicted)."""
    matrix = np.asarray(confusion, dtype=np.int64)
    row_totals = matrix.sum(axis=1)
    cells = [
        (int(matrix[i, j]), i, j)
        for i in range(matrix.shape[0])
        for j in range(matrix.shape[1])
        if i != j and matrix[i, j] > 0
    ]
    # Largest count first; ties keep class order so the table is stable.
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [
        ConfusedPair(class_names[i], class_names[j], count, count / int(row_totals[i]))
        for count, i, j in cells[:k]
    ]


@dataclass
class LossItem:
    index: int
    target: int
    predicted: int
    prob_target: float
    loss: float


def highest_loss_items(probs: Any, targets: Any, k: int = 8) -> list[LossItem]:
    """The ``k`` validation items with the highest cross-entropy, worst first."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    prob_target = probs[np.arange(len(targets)), targets]
    losses = -np.log(np.clip(prob_target, _PROB_FLOOR, 1.0))
    # Stable sort so equal losses keep dataset order.
    order = np.argsort(-losses, kind="stable")[:k]
    return [
        LossItem(
            index=int(i),
            target=int(targets[i]),
            predicted=int(probs[i].argmax()),
            prob_target=float(prob_target[i]),
            loss=float(losses[i]),
        )
        for i in order
    ]


def class_to_explain(findings: list[dict[str, Any]], auc_by_class: dict[str, float | None]) -> str | None:
    """The class Grad-CAM should explain: the lagging class the doctor named, else the lowest-AUC class."""
    for finding in findings:
        if finding.get("symptom") == "lagging_class":
            evidence = finding.get("evidence") or {}
            name = finding.get("subject") or evidence.get("class")
            if name in auc_by_class:
                return str(name)
    defined = {name: auc for name, auc in auc_by_class.items() if auc is not None}
    return min(defined, key=defined.__getitem__) if defined else None
