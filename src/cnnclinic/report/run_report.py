"""RUN_DIR/report.html: the verdict first, then the evidence behind it, on one self-contained page."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from cnnclinic.errors import UserError
from cnnclinic.report import figures
from cnnclinic.report.explain import gradcam_maps, load_val_images, to_display
from cnnclinic.report.html import format_value, percent, render, write_page
from cnnclinic.report.plot_data import (
    class_to_explain,
    first_last_gradient_ratio,
    gradient_flow_matrix,
    highest_loss_items,
    layer_stat_matrix,
    learning_rate_curve,
    most_confused_pairs,
    roc_curves,
    training_curves,
)
from cnnclinic.report.run_files import RunFiles, load_run
from cnnclinic.report.summary import summarize_run, validation_metrics
from cnnclinic.training.metrics import ClassificationMetrics
from cnnclinic.training.trainer import load_trained_model

SEVERITY_ORDER = ("critical", "warning", "info")
IMAGES_SHOWN = 8


def _finding_title(finding: dict[str, Any]) -> str:
    """``lagging_class`` about ``pike`` -> "Lagging class — pike"."""
    symptom = str(finding.get("symptom", "finding")).replace("_", " ").capitalize()
    return " — ".join(filter(None, [symptom, finding.get("subject")]))


def _finding_views(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    views = []
    for finding in findings:
        severity = finding.get("severity") if finding.get("severity") in SEVERITY_ORDER else "info"
        if not finding.get("epoch"):
            # Epochs count from 1; the data doctor's findings (epoch 0 or None) come from the data itself.
            when = "found in the data, before training"
        else:
            when = "first seen at " + ", ".join(
                f"{name} {finding[name]}" for name in ("epoch", "step") if finding.get(name) is not None
            )
        views.append(
            {
                "severity": severity,
                "title": _finding_title(finding),
                "when": when,
                "explanation": finding.get("explanation", ""),
                "evidence": [(key, format_value(value)) for key, value in (finding.get("evidence") or {}).items()],
                "prescriptions": finding.get("prescriptions") or [],
                "order": (SEVERITY_ORDER.index(severity), finding.get("epoch") or 0),
            }
        )
    return sorted(views, key=lambda view: view["order"])


def _judged_value(name: str, value: float | None) -> str:
    """An accuracy as a percentage, an AUC as a number (a lagging class is judged on its AUC)."""
    return format_value(value) if name.startswith("val_auc") else percent(value)


def _treatment_view(treatment: dict[str, Any] | None) -> dict[str, Any] | None:
    """treatment.json (written by auto-repair) as table rows, one per attempt, and the findings the budget
    left untreated; None when auto-repair had nothing to report."""
    attempts = (treatment or {}).get("attempts") or []
    untreated = (treatment or {}).get("untreated") or []
    if not attempts and not untreated:
        return None
    rows = []
    for attempt in attempts:
        metric = attempt.get("metric_name") or "val_acc"
        verdict = attempt.get("verdict") or ("cured" if attempt.get("cured") else "rolled back")
        rows.append(
            {
                "number": attempt.get("attempt"),
                "treating": _finding_title(attempt.get("trigger") or {}),
                "change": attempt.get("change") or [],
                "advice": attempt.get("advice") or "",
                "start": attempt.get("start", "–"),
                "epochs": attempt.get("epochs", "–"),
                "metric": metric,
                "before": _judged_value(metric, attempt.get("metric_before")),
                "after": _judged_value(metric, attempt.get("metric_after")),
                "symptom_gone": format_value(attempt.get("symptom_gone")),
                "outcome": f"{verdict}, kept" if attempt.get("kept") else verdict,
                "kept": bool(attempt.get("kept")),
            }
        )
    return {
        "rows": rows,
        "untreated": [
            {
                "finding": _finding_title(record),
                "epoch": record.get("epoch"),
                "cure": record.get("cure") or [],
                "start": record.get("start", "–"),
                "needed": format_value(record.get("epochs_needed")),
                "left": format_value(record.get("epochs_left")),
            }
            for record in untreated
        ],
        "kept_attempt": treatment.get("kept_attempt"),
        "epochs_spent": format_value(treatment.get("epochs_spent")),
        "epoch_budget": format_value(treatment.get("epoch_budget")),
    }


def _curves_section(run: RunFiles) -> dict[str, str | None]:
    lr_steps, learning_rates = learning_rate_curve(run.steps)
    return {
        "training": figures.training_curves_figure(training_curves(run.metrics)) if run.metrics else None,
        "lr": figures.learning_rate_figure(lr_steps, learning_rates) if lr_steps else None,
    }


def _doctor_disabled(run: RunFiles) -> bool:
    return (run.config.get("doctor") or {}).get("enabled") is False


def _doctor_off_note(run: RunFiles, what: str) -> str:
    if _doctor_disabled(run):
        return f"No {what}: the doctor was disabled for this run (doctor.enabled=false)."
    return f"No {what} recorded (layer_stats.jsonl is empty)."


def _gradient_section(run: RunFiles) -> dict[str, str | None]:
    matrix = gradient_flow_matrix(run.layer_stats)
    if not matrix.steps:
        return {"figure": None, "note": _doctor_off_note(run, "per-layer gradient norms"), "caption": None}
    ratios = first_last_gradient_ratio(matrix)
    defined = [r for r in ratios if not math.isnan(r)]
    caption = "Layers from input (top) to output; grey: zero gradient or not measured."
    if defined:
        caption += (
            f" First-layer / last-layer gradient norm at the last sample: {defined[-1]:.3g}"
            " (a ratio far below 1 means the gradient fades before it reaches the input)."
        )
    return {"figure": figures.gradient_flow_figure(matrix, ratios), "note": None, "caption": caption}


def _activation_section(run: RunFiles) -> dict[str, str | None]:
    section: dict[str, str | None] = {}
    for key, name, title, activations in (
        ("dead_fraction", "dead", "Dead units per layer (fraction)", "ReLU"),
        ("saturation", "saturation", "Saturated units per layer (fraction)", "sigmoid or tanh"),
    ):
        matrix = layer_stat_matrix(run.layer_stats, key)
        section[name] = figures.fraction_heatmap_figure(matrix, title, "fraction of units") if matrix.steps else None
        section[f"{name}_note"] = (
            f"{title.split(' per')[0]}: no layer measured (the model has no {activations} activations)."
            if run.layer_stats
            else _doctor_off_note(run, "activation statistics")
        )
    return section


def _classes_section(run: RunFiles, metrics: ClassificationMetrics | None, explained: str | None) -> dict[str, Any]:
    if metrics is None or run.predictions is None:
        return {"note": "No validation predictions were saved (val_predictions.npz is missing)."}
    curves = roc_curves(run.predictions.probs, run.predictions.targets, run.class_names)
    rows = [
        {
            "name": name,
            "auc": "–" if m.auc is None else f"{m.auc:.3f}",
            "precision": f"{m.precision:.2f}",
            "recall": f"{m.recall:.2f}",
            "f1": f"{m.f1:.2f}",
            "support": m.support,
            "emph": name == explained,
        }
        for name, m in metrics.per_class.items()
    ]
    return {
        "note": None,
        "roc": figures.roc_figure(curves, highlight=explained) if curves else None,
        "rows": rows,
        "pairs": most_confused_pairs(metrics.confusion, run.class_names, k=5),
        "confusion": figures.confusion_figure(metrics.confusion, run.class_names),
    }


def _images_section(run: RunFiles, model: nn.Module | None, model_note: str, explained: str | None) -> dict[str, Any]:
    section: dict[str, Any] = {
        "highest_loss": None,
        "highest_loss_note": "",
        "gradcam": None,
        "gradcam_note": "",
        "gradcam_caption": None,
        "explained_class": explained,
    }
    predictions = run.predictions
    if predictions is None or not predictions.paths:
        section["highest_loss_note"] = section["gradcam_note"] = (
            "No validation predictions with image paths were saved."
        )
        return section
    data = run.config.get("data") or {}
    source, image_size = data.get("source"), int(data.get("image_size", 64))
    names = run.class_names
    missing_note = (
        "The validation images are not at their recorded paths (a built-in dataset without files, "
        "or a data folder that moved), so they cannot be shown."
    )

    worst = highest_loss_items(predictions.probs, predictions.targets, k=IMAGES_SHOWN)
    loaded = load_val_images([predictions.paths[item.index] for item in worst], source, image_size)
    shown = [(item, image) for item, image in zip(worst, loaded) if image is not None]
    if shown:
        section["highest_loss"] = figures.image_grid_figure(
            [to_display(image) for _, image in shown],
            [
                f"true {names[item.target]} · pred {names[item.predicted]}\n"
                f"p(true) {item.prob_target:.2f} · loss {item.loss:.2f}"
                for item, _ in shown
            ],
        )
    else:
        section["highest_loss_note"] = missing_note

    if explained is None:
        section["gradcam_note"] = "No class has a defined AUC, so there is no class to explain."
        return section
    if model is None:
        section["gradcam_note"] = model_note
        return section
    k = names.index(explained)
    # The explained class's own images, hardest first: does the model look at the fish or the background?
    of_class = np.flatnonzero(predictions.targets == k)
    class_items = highest_loss_items(predictions.probs[of_class], predictions.targets[of_class], k=IMAGES_SHOWN)
    indices = [int(of_class[item.index]) for item in class_items]
    loaded = load_val_images([predictions.paths[i] for i in indices], source, image_size)
    kept = [(i, image) for i, image in zip(indices, loaded) if image is not None]
    if not kept:
        section["gradcam_note"] = missing_note
        return section
    batch = torch.stack([image for _, image in kept])
    maps = gradcam_maps(model, batch, k)
    if maps is None:
        section["gradcam_note"] = "The model has no convolution layer, so Grad-CAM does not apply."
        return section
    section["gradcam"] = figures.image_grid_figure(
        [to_display(image) for _, image in kept],
        [
            f"pred {names[int(predictions.probs[i].argmax())]} · p({explained}) {predictions.probs[i, k]:.2f}"
            for i, _ in kept
        ],
        heatmaps=list(maps),
    )
    section["gradcam_caption"] = (
        f"Where the best model finds evidence for “{explained}” (red: strong) in that class's hardest validation "
        "images (Grad-CAM on the last convolution layer). Red on the body and fins is good; red on the background "
        "means the model learned the scenery, not the fish."
    )
    return section


def _data_section(run: RunFiles) -> dict[str, Any]:
    summary = run.data_summary
    counts: dict[str, dict[str, int]] = summary.get("counts") or {}
    splits = list(counts)
    class_names = run.class_names or list(dict.fromkeys(name for split in counts.values() for name in split))
    rows = [(name, [counts[split].get(name, 0) for split in splits]) for name in class_names]
    skipped = summary.get("skipped")
    skipped_files = summary.get("skipped_files") or (skipped if isinstance(skipped, list) else [])
    groups = summary.get("groups")
    return {
        "source": summary.get("source") or (run.config.get("data") or {}).get("source", "?"),
        "counts": {"splits": splits, "rows": rows},
        "groups": ", ".join(f"{count} in {split}" for split, count in groups.items()) if groups else None,
        "skipped_count": skipped if isinstance(skipped, int) else len(skipped_files),
        "skipped": skipped_files,
    }


def _load_model(run: RunFiles) -> tuple[nn.Module | None, str]:
    """The best model, or None and the reason it cannot be rebuilt (shown instead of Grad-CAM)."""
    try:
        return load_trained_model(run.run_dir).model, ""
    except UserError as error:
        # No best checkpoint yet, or weights that no longer fit the config: the rest of the report still stands.
        return None, f"Grad-CAM needs the best model, which cannot be loaded: {error}."


def _headline(run: RunFiles, model: nn.Module | None, metrics: ClassificationMetrics | None) -> list[tuple[str, str]]:
    summary = summarize_run(run, model, metrics)
    best = percent(summary.best_val_acc)
    if summary.best_epoch is not None:
        best += f" (epoch {summary.best_epoch})"
    return [
        ("best val accuracy", best),
        ("macro AUC", "–" if summary.macro_auc is None else f"{summary.macro_auc:.3f}"),
        ("epochs", str(summary.epochs)),
        ("parameters", "–" if summary.parameters is None else f"{summary.parameters:,}"),
        ("findings", str(len(run.findings))),
    ]


def write_report(run_dir: str | Path, *, console: Console | None = None, out: str | Path | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``out``) from the run directory's files; return its path."""
    run = load_run(run_dir)
    with Progress(
        TextColumn("report: {task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
        transient=True,
    ) as progress:
        task = progress.add_task("loading the model", total=6)
        model, model_note = _load_model(run)
        metrics = validation_metrics(run)
        explained = class_to_explain(run.findings, metrics.auc) if metrics else None
        progress.update(task, advance=1, description="training curves")
        curves = _curves_section(run)
        progress.update(task, advance=1, description="gradient flow")
        gradients = _gradient_section(run)
        progress.update(task, advance=1, description="dead and saturated units")
        activations = _activation_section(run)
        progress.update(task, advance=1, description="classes")
        classes = _classes_section(run, metrics, explained)
        progress.update(task, advance=1, description="images and Grad-CAM")
        images = _images_section(run, model, model_note, explained)
        progress.update(task, advance=1)
    data = run.config.get("data") or {}
    html = render(
        "report.html",
        run_name=run.name,
        subtitle=f"{(run.config.get('model') or {}).get('arch', '?')} on {data.get('source', '?')} · {run.run_dir}",
        headline=_headline(run, model, metrics),
        findings=_finding_views(run.findings),
        healthy_note=(
            "The doctor was disabled for this run (doctor.enabled=false), so nothing was looked for."
            if _doctor_disabled(run)
            else "The doctor watched the whole run and found nothing to treat."
        ),
        treatment=_treatment_view(run.treatment),
        curves=curves,
        gradients=gradients,
        activations=activations,
        classes=classes,
        images=images,
        data=_data_section(run),
        config_yaml=yaml.safe_dump(run.config, sort_keys=False),
    )
    return write_page(Path(out) if out else run.run_dir / "report.html", html)
