"""Matplotlib figures of the report, each returned as an embeddable ``data:image/png;base64`` URI.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas) instead of pyplot, so no global figure
registry holds on to them: each one is freed as soon as its PNG is written.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from cnnclinic.report.plot_data import LayerMatrix, RocCurve, TrainingCurves

# Sized for a laptop screen: the page column is ~1000 px wide and figures are drawn at 100 dpi.
_DPI = 100
_FULL_WIDTH = 10.0
_HALF_WIDTH = 5.0
_TRAIN_COLOUR = "#1f77b4"
_VAL_COLOUR = "#d62728"
_MISSING_COLOUR = "#d0d0d0"


def figure_to_data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight", pad_inches=0.08)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _style(axes, title: str, xlabel: str, ylabel: str) -> None:
    axes.set_title(title, fontsize=11, loc="left")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.spines[["top", "right"]].set_visible(False)


def training_curves_figure(curves: TrainingCurves) -> str:
    """Train vs validation loss (left) and accuracy (right) per epoch."""
    figure = _new_figure(_FULL_WIDTH, 3.4)
    loss_axes, acc_axes = figure.subplots(1, 2)
    marker = "o" if len(curves.epochs) <= 30 else None
    for axes, train, val, name in (
        (loss_axes, curves.train_loss, curves.val_loss, "loss"),
        (acc_axes, curves.train_acc, curves.val_acc, "accuracy"),
    ):
        axes.plot(curves.epochs, train, marker=marker, color=_TRAIN_COLOUR, label=f"train {name}")
        axes.plot(curves.epochs, val, marker=marker, color=_VAL_COLOUR, label=f"val {name}")
        _style(axes, name.capitalize(), "epoch", name)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(frameon=False)
    acc_axes.set_ylim(0, 1.02)
    return figure_to_data_uri(figure)


def learning_rate_figure(steps: Sequence[int], learning_rates: Sequence[float]) -> str:
    figure = _new_figure(_FULL_WIDTH, 2.4)
    axes = figure.subplots()
    axes.plot(steps, learning_rates, color="#2ca02c")
    positive = [lr for lr in learning_rates if lr > 0]
    # A schedule spanning more than a decade reads better on a log axis.
    if positive and max(positive) / min(positive) > 10:
        axes.set_yscale("log")
    else:
        axes.set_ylim(bottom=0)
    _style(axes, "Learning rate", "step", "learning rate")
    return figure_to_data_uri(figure)


def _heatmap(figure: Figure, axes, matrix: LayerMatrix, norm: Normalize, cmap_name: str, label: str) -> None:
    cmap = colormaps[cmap_name].with_extremes(bad=_MISSING_COLOUR)
    values = np.ma.masked_invalid(matrix.values)
    if isinstance(norm, LogNorm):
        values = np.ma.masked_less_equal(values, 0)
    rows = np.arange(len(matrix.layers))
    mesh = axes.pcolormesh(matrix.steps, rows, values, cmap=cmap, norm=norm, shading="nearest")
    # Beyond 40 layers the names cannot be read: label every few.
    labelled = rows[:: math.ceil(len(rows) / 40)]
    axes.set_yticks(labelled, [matrix.layers[i] for i in labelled], fontsize=7 if len(rows) > 12 else 8)
    axes.invert_yaxis()  # input layer on top
    axes.set_xlabel("step")
    figure.colorbar(mesh, ax=axes, label=label, pad=0.01)


def _heatmap_height(matrix: LayerMatrix) -> float:
    return min(9.0, max(2.2, 0.9 + 0.22 * len(matrix.layers)))


def gradient_flow_figure(matrix: LayerMatrix, first_last_ratio: Sequence[float]) -> str:
    """Per-layer gradient norm over steps (log colour scale) above the first/last-layer ratio."""
    figure = _new_figure(_FULL_WIDTH, _heatmap_height(matrix) + 2.0)
    heat_axes, ratio_axes = figure.subplots(2, 1, sharex=True, height_ratios=[_heatmap_height(matrix), 2.0])
    finite = matrix.values[np.isfinite(matrix.values) & (matrix.values > 0)]
    low, high = (finite.min(), finite.max()) if finite.size else (1e-8, 1.0)
    norm = LogNorm(vmin=low, vmax=max(high, low * 10))
    _heatmap(figure, heat_axes, matrix, norm, "viridis", "gradient norm (log)")
    heat_axes.set_title("Gradient norm per layer", fontsize=11, loc="left")
    heat_axes.set_xlabel("")
    ratio_axes.plot(matrix.steps, first_last_ratio, color="#9467bd")
    ratio_axes.axhline(1.0, color="#888888", linewidth=0.8, linestyle="--")
    if any(r > 0 for r in first_last_ratio if not math.isnan(r)):
        ratio_axes.set_yscale("log")
    _style(ratio_axes, "First-layer / last-layer gradient norm", "step", "ratio")
    return figure_to_data_uri(figure)


def fraction_heatmap_figure(matrix: LayerMatrix, title: str, label: str) -> str:
    """A per-layer fraction (dead units, saturated units) over steps, 0..1 colour scale."""
    figure = _new_figure(_FULL_WIDTH, _heatmap_height(matrix))
    axes = figure.subplots()
    _heatmap(figure, axes, matrix, Normalize(0.0, 1.0), "magma", label)
    axes.set_title(title, fontsize=11, loc="left")
    return figure_to_data_uri(figure)


def roc_figure(curves: dict[str, RocCurve], highlight: str | None = None) -> str:
    """One-vs-rest ROC per class; the highlighted class (the one explained) is drawn thicker."""
    figure = _new_figure(_HALF_WIDTH + 0.6, _HALF_WIDTH)
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="#888888", linewidth=0.8, linestyle="--", label="chance")
    colours = colormaps["tab10" if len(curves) <= 10 else "tab20"]
    for k, (name, curve) in enumerate(curves.items()):
        emphasis = name == highlight
        axes.plot(
            curve.fpr,
            curve.tpr,
            color=colours(k % colours.N),
            linewidth=2.8 if emphasis else 1.4,
            label=f"{name} (AUC {curve.auc:.3f})",
        )
    _style(axes, "ROC per class (one vs rest)", "false positive rate", "true positive rate")
    axes.set_aspect("equal")
    axes.legend(fontsize=8, frameon=False, loc="lower right")
    return figure_to_data_uri(figure)


def confusion_figure(confusion: Sequence[Sequence[int]], class_names: list[str]) -> str:
    """Confusion matrix: counts written in each cell, colour = share of the true class's images."""
    matrix = np.asarray(confusion, dtype=np.int64)
    row_totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_totals, out=np.zeros(matrix.shape), where=row_totals > 0)
    size = min(7.0, max(_HALF_WIDTH, 0.55 * len(class_names) + 2.0))
    figure = _new_figure(size + 0.8, size)
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(ticks, class_names, fontsize=8)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            axes.text(
                j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                color="white" if shares[i, j] > 0.6 else "black",
            )
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("Confusion matrix (validation)", fontsize=11, loc="left")
    figure.colorbar(image, ax=axes, label="share of true class", shrink=0.8)
    return figure_to_data_uri(figure)


def image_grid_figure(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    heatmaps: Sequence[np.ndarray] | None = None,
    columns: int = 4,
) -> str:
    """Images (H x W x 3 uint8) with a caption each; ``heatmaps`` (H x W, 0..1) are overlaid when given.

    The overlay's opacity follows the heatmap, so the image stays visible where the map is zero.
    """
    jet = colormaps["jet"]
    rows = math.ceil(len(images) / columns)
    # A fixed grid: constrained layout would cost more than the drawing itself for many small axes.
    figure = Figure(figsize=(_FULL_WIDTH, 2.75 * rows), dpi=_DPI)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / (2.75 * rows), wspace=0.05, hspace=0.25)
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for k, axes in enumerate(grid):
        axes.axis("off")
        if k >= len(images):
            continue
        axes.imshow(images[k])
        if heatmaps is not None:
            overlay = jet(heatmaps[k])
            overlay[..., 3] = 0.7 * heatmaps[k]
            axes.imshow(overlay)
        axes.set_title(captions[k], fontsize=8)
    return figure_to_data_uri(figure)


def overlaid_curves_figure(runs: dict[str, TrainingCurves]) -> str:
    """Validation accuracy (left) and validation loss (right) of several runs on shared axes."""
    figure = _new_figure(_FULL_WIDTH, 3.6)
    acc_axes, loss_axes = figure.subplots(1, 2)
    colours = colormaps["tab10"]
    for k, (name, curves) in enumerate(runs.items()):
        colour = colours(k % colours.N)
        acc_axes.plot(curves.epochs, curves.val_acc, color=colour, label=name)
        loss_axes.plot(curves.epochs, curves.val_loss, color=colour, label=f"{name} val")
        loss_axes.plot(curves.epochs, curves.train_loss, color=colour, linestyle=":", linewidth=1)
    _style(acc_axes, "Validation accuracy", "epoch", "accuracy")
    acc_axes.set_ylim(0, 1.02)
    for axes in (acc_axes, loss_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    _style(loss_axes, "Loss (solid: val, dotted: train)", "epoch", "loss")
    acc_axes.legend(fontsize=8, frameon=False)
    return figure_to_data_uri(figure)


def params_vs_accuracy_figure(names: Sequence[str], parameters: Sequence[int], accuracies: Sequence[float]) -> str:
    """Model size against best validation accuracy, one labelled point per run."""
    figure = _new_figure(_HALF_WIDTH + 1.0, 3.6)
    axes = figure.subplots()
    axes.scatter(parameters, accuracies, color=_TRAIN_COLOUR, zorder=3)
    for name, x, y in zip(names, parameters, accuracies):
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if parameters and max(parameters) / max(min(parameters), 1) > 10:
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(NullFormatter())  # decade labels only
    _style(axes, "Parameters vs best validation accuracy", "trainable parameters", "best val accuracy")
    return figure_to_data_uri(figure)
