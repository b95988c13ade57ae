"""``cnnclinic compare``: key numbers, findings and curves of several runs side by side."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import track

from cnnclinic.errors import UserError
from cnnclinic.report import figures
from cnnclinic.report.html import percent, render, write_page
from cnnclinic.report.plot_data import training_curves
from cnnclinic.report.run_files import load_run
from cnnclinic.report.summary import RunSummary, summarize_run


def _unique_names(run_dirs: list[Path]) -> list[str]:
    """Directory names, widened with their parent when two runs share a name (runs/a/best, runs/b/best)."""
    names = [path.name for path in run_dirs]
    return [
        f"{path.parent.name}/{path.name}" if names.count(path.name) > 1 else path.name
        for path in run_dirs
    ]


def _row(summary: RunSummary) -> dict[str, object]:
    return {
        "name": summary.name,
        "arch": summary.arch,
        "parameters": "–" if summary.parameters is None else f"{summary.parameters:,}",
        "best_val_acc": percent(summary.best_val_acc),
        "best_epoch": "–" if summary.best_epoch is None else summary.best_epoch,
        "train_acc": percent(summary.train_acc_at_best),
        "macro_auc": "–" if summary.macro_auc is None else f"{summary.macro_auc:.3f}",
        "epochs": summary.epochs,
        "findings": [
            {"symptom": f.get("symptom", "?"), "severity": f.get("severity", "info")} for f in summary.findings
        ],
    }


def write_comparison(
    run_dirs: list[str | Path], out: str | Path = "compare.html", *, console: Console | None = None
) -> Path:
    """Write an HTML page comparing the runs; UserError for fewer than two or for a non-run directory."""
    paths = [Path(run_dir) for run_dir in run_dirs]
    if len(paths) < 2:
        raise UserError("compare: give at least two run directories")
    runs = [load_run(path) for path in paths]
    summaries = []
    for run, name in track(
        list(zip(runs, _unique_names(paths))),
        description="compare: reading runs",
        console=console,
        disable=console is None,
        transient=True,
    ):
        summary = summarize_run(run)
        summary.name = name
        summaries.append(summary)
    curves = {summary.name: training_curves(run.metrics) for summary, run in zip(summaries, runs) if run.metrics}
    sized = [s for s in summaries if s.parameters is not None and s.best_val_acc is not None]
    html = render(
        "compare.html",
        rows=[_row(summary) for summary in summaries],
        curves=figures.overlaid_curves_figure(curves) if curves else None,
        scatter=figures.params_vs_accuracy_figure(
            [s.name for s in sized], [s.parameters for s in sized], [s.best_val_acc for s in sized]
        )
        if sized
        else None,
    )
    return write_page(Path(out), html)
