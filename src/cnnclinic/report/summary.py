"""The key numbers of one run, shared by the report's headline and the run comparison."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from cnnclinic.config import build_config
from cnnclinic.errors import UserError
from cnnclinic.models import build_model, count_parameters
from cnnclinic.report.plot_data import best_epoch_record
from cnnclinic.report.run_files import RunFiles
from cnnclinic.training.metrics import ClassificationMetrics, classification_metrics


@dataclass
class RunSummary:
    name: str
    arch: str
    parameters: int | None
    epochs: int
    best_epoch: int | None
    best_val_acc: float | None
    # Train accuracy of the best epoch: next to best_val_acc it shows the generalisation gap.
    train_acc_at_best: float | None
    macro_auc: float | None
    findings: list[dict[str, Any]]


def validation_metrics(run: RunFiles) -> ClassificationMetrics | None:
    """Metrics of the best checkpoint's validation predictions, None when they were not saved."""
    if run.predictions is None or not run.class_names:
        return None
    return classification_metrics(run.predictions.probs, run.predictions.targets, run.class_names)


def parameter_count(run: RunFiles, model: nn.Module | None = None) -> int | None:
    """Trainable parameters of the run's model (rebuilt from config.yaml when not given)."""
    if model is None:
        if len(run.class_names) < 2:
            return None
        try:
            cfg = build_config(run.config)
            model = build_model(cfg.model, len(run.class_names), cfg.data.image_size)
        except UserError:
            return None
    return count_parameters(model)


def summarize_run(
    run: RunFiles, model: nn.Module | None = None, metrics: ClassificationMetrics | None = None
) -> RunSummary:
    best = best_epoch_record(run.metrics)
    metrics = metrics or validation_metrics(run)
    if metrics is not None:
        macro_auc = metrics.macro_auc
    else:
        macro_auc = best.get("val_macro_auc") if best else None
    return RunSummary(
        name=run.name,
        arch=str((run.config.get("model") or {}).get("arch", "?")),
        parameters=parameter_count(run, model),
        epochs=len(run.metrics),
        best_epoch=int(best["epoch"]) if best else None,
        best_val_acc=float(best["val_acc"]) if best else None,
        train_acc_at_best=float(best["train_acc"]) if best and best.get("train_acc") is not None else None,
        macro_auc=macro_auc,
        findings=run.findings,
    )
